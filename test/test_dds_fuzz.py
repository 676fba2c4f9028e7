"""A real-DDS fuzz run: thousands of malformed clouds interleaved with valid ones into segvec3d-up.

Malformed messages come from a seeded random mutator of valid ones. The node keeps only the
latest frame, so each valid frame is paced: it is published (again, if lost) until its outputs
arrive, and only then come the malformed ones that follow it.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

rclpy = pytest.importorskip('rclpy')

from ros_harness import make_header, wait_for
from scenes import tabletop_points
from segvec3d_ros.frame_flow import SequenceGaps
from segvec3d_ros.ros.dds import isolate_dds

isolate_dds()

from sensor_msgs.msg import PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from segvec3d_ros.io.pointcloud2 import (CloudDecodeError, PackedCloud,  # noqa: E402
                                         decode_pointcloud2, encode_pointcloud2)
from segvec3d_ros.ros.conversions import pointcloud2_msg  # noqa: E402

pytestmark = pytest.mark.ros
MALFORMED_PER_VALID = 7
MALFORMED_GAP_S = 0.005    # at most 200 malformed messages a second
FIELD_NAMES = ['x', 'y', 'z', 'rgb', 'rgba', 'label', 'X', '', 'x ']
COUNTERS = ('frames_received', 'frames_processed', 'frames_rejected', 'frames_dropped',
            'frames_missed', 'frames_failed')


def base_clouds() -> list[PackedCloud]:
    """Valid bodies to send and to break: with and without colour, organized or not."""
    xyz, rgb, _ = tabletop_points(seed=0)
    xyz, rgb = xyz[::29], rgb[::29]   # 1000 points: the three boxes still have 100 each
    return [encode_pointcloud2(xyz, rgb), encode_pointcloud2(xyz),
            encode_pointcloud2(xyz, rgb, height=20, width=50)]


def _set_field(attribute: str, values: Callable[[random.Random], object]):
    def mutate(msg: PointCloud2, rng: random.Random) -> None:
        if msg.fields:
            setattr(rng.choice(msg.fields), attribute, values(rng))
    return mutate


def _duplicate_field(msg: PointCloud2, rng: random.Random) -> None:
    if msg.fields:
        field = rng.choice(msg.fields)
        msg.fields = [*msg.fields, PointField(name=field.name, offset=field.offset,
                                              datatype=field.datatype, count=field.count)]


def _drop_field(msg: PointCloud2, rng: random.Random) -> None:
    if msg.fields:
        dropped = rng.randrange(len(msg.fields))
        msg.fields = [f for i, f in enumerate(msg.fields) if i != dropped]


# Each breaks one thing a driver can get wrong, within the ranges the message types allow.
MUTATIONS: dict[str, Callable[[PointCloud2, random.Random], None]] = {
    'height': lambda m, r: setattr(m, 'height', r.choice([0, m.height + 1, 2 * m.height,
                                                          r.randrange(2**20)])),
    'width': lambda m, r: setattr(m, 'width', r.choice([0, m.width - 1, m.width + 1,
                                                        r.randrange(2**20)])),
    'point_step': lambda m, r: setattr(m, 'point_step', r.choice([0, 1, m.point_step - 4,
                                                                  m.point_step + 4,
                                                                  r.randrange(64)])),
    'row_step': lambda m, r: setattr(m, 'row_step', r.choice([0, m.row_step - 1, m.row_step + 1,
                                                              2 * m.row_step,
                                                              r.randrange(2**16)])),
    'truncate data': lambda m, r: setattr(m, 'data', bytes(m.data)[:r.randrange(len(m.data))]),
    'extend data': lambda m, r: setattr(m, 'data', bytes(m.data) + bytes(r.randrange(1, 64))),
    'field name': _set_field('name', lambda r: r.choice(FIELD_NAMES)),
    'field datatype': _set_field('datatype', lambda r: r.randrange(256)),
    'field offset': _set_field('offset', lambda r: r.randrange(64)),
    'field count': _set_field('count', lambda r: r.randrange(5)),
    'duplicate field': _duplicate_field,
    'drop field': _drop_field,
    'endianness': lambda m, r: setattr(m, 'is_bigendian', not m.is_bigendian),
    'empty frame_id': lambda m, r: setattr(m.header, 'frame_id', ''),
}


def stamped(index: int) -> Header:
    """A header unique to message `index`."""
    header = make_header()
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000 + index, 0
    return header


def node_rejects(msg: PointCloud2, max_points: int) -> bool:
    """Whether the node refuses this message, by the codec it runs."""
    if not msg.header.frame_id:
        return True
    try:
        decode_pointcloud2(msg, max_points=max_points)
    except CloudDecodeError:
        return True
    return False


def counters(values: dict[str, str]) -> dict[str, int]:
    return {key: int(values[key]) for key in COUNTERS}


@pytest.mark.parametrize('messages', [2000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_malformed_and_valid_clouds_interleaved(system, messages: int) -> None:
    rng = random.Random(messages)
    bases = base_clouds()
    max_points = system.get_parameter('segvec3d_segmentation', 'max_input_points')
    before = counters(wait_for(lambda: system.pipeline_status(), timeout=10.0))
    sends = 0

    def publish(msg: PointCloud2) -> None:
        nonlocal sends
        sends += 1
        system.points_pub.publish(msg)

    valid = lost_valid = malformed = expected_rejected = 0
    mutations_seen: dict[str, int] = {}
    start = time.monotonic()
    for index in range(messages):
        base = bases[index % len(bases)]
        msg = pointcloud2_msg(stamped(index), base)
        # Valid frames come last in each group, so the run ends on an answered one.
        if (index + 1) % (MALFORMED_PER_VALID + 1) == 0:
            valid += 1
            found = system.publish_until_answered(msg, timeout=30.0, publish=publish)
            if not found:
                lost_valid += 1
                continue
            labels = decode_pointcloud2(found['segvec3d/labeled_points']).extra['label']
            assert labels.shape == (base.height * base.width,)
            continue
        for name in rng.sample(sorted(MUTATIONS), rng.randint(1, 3)):
            MUTATIONS[name](msg, rng)
            mutations_seen[name] = mutations_seen.get(name, 0) + 1
        malformed += 1
        expected_rejected += node_rejects(msg, max_points)
        publish(msg)
        time.sleep(MALFORMED_GAP_S)
    elapsed = time.monotonic() - start
    assert system.process.poll() is None, system.output_text[-3000:]
    # Two diagnostics periods after the last (valid, answered) frame, every count is final.
    reports = len(system.received['/diagnostics'])
    assert wait_for(lambda: len(system.received['/diagnostics']) >= reports + 2, timeout=10.0)
    delta = {key: value - before[key]
             for key, value in counters(system.pipeline_status()).items()}
    warnings = system.output_text.count('rejected a cloud:')
    print(f'DDS fuzz: {messages} messages ({sends} sends) in {elapsed:.0f} s: {valid} valid, '
          f'{lost_valid} of them lost; {malformed} malformed, {expected_rejected} of which the '
          f'codec rejects; node counts {delta}; {warnings} rejection warnings; '
          f'mutations {mutations_seen}')

    assert lost_valid == 0
    assert delta['frames_failed'] == 0
    # Every frame sent is accounted for exactly once: missed before the node (a full 5-deep
    # sensor-data queue), or taken and then segmented, rejected or dropped as stale.
    assert sends == delta['frames_missed'] + delta['frames_received']
    assert delta['frames_received'] == (delta['frames_processed'] + delta['frames_rejected']
                                        + delta['frames_dropped'])
    assert delta['frames_missed'] < 0.1 * sends
    # A malformed frame is rejected unless a later one replaced it first.
    assert (expected_rejected - delta['frames_dropped'] - delta['frames_missed']
            <= delta['frames_rejected'] <= expected_rejected)
    assert valid <= delta['frames_processed'] <= valid + malformed - expected_rejected
    # Throttled to one warning per 2 s, however many frames are rejected.
    assert 1 <= warnings <= elapsed / 2.0 + 2


def test_sequence_gaps_count_what_one_publisher_sent_but_never_arrived() -> None:
    gaps = SequenceGaps()
    for sequence in [4, 5, 8, 9, 12]:   # the first sets the baseline
        gaps.observe(sequence, single_publisher=True)
    assert gaps.missed == 4
    gaps.observe(1, single_publisher=True)      # a restarted publisher counts afresh
    gaps.observe(3, single_publisher=True)
    assert gaps.missed == 5
    gaps.observe(10, single_publisher=False)    # interleaved numbers: not counted
    gaps.observe(None, single_publisher=True)   # a middleware without numbers
    gaps.observe(20, single_publisher=True)
    assert gaps.missed == 5
