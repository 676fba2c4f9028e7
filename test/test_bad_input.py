"""Bad input over real DDS: malformed and degenerate clouds, stale and busy scenes, bad models.

test_nodes.py covers truncated data, an empty frame_id, organized clouds with holes, odd query
texts and parameters; these are the other cases of the reliability issue.
"""
from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from ros_harness import (UpClient, cloud_msg, columns_msg, diagnostics_count, make_header,
                         publish_until_answered, read_until, separate_domain_env, separate_system,
                         start_executable, stop_process, wait_and_read, wait_for)
from scenes import tabletop_points
from segvec3d_ros.ros.client import Segvec3dClient as Client
from segvec3d_ros.ros.dds import isolate_dds

isolate_dds()

from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from segvec3d_ros.io.pointcloud2 import (FLOAT32, FLOAT64, UINT16, UINT32,  # noqa: E402
                                         decode_pointcloud2, pack_rgb)

pytestmark = pytest.mark.ros
UNKNOWN_DATATYPE = 42
MiB = 2**20


def small_tabletop(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every 100th point of a tabletop: a valid cloud for the malformed cases to break."""
    xyz, rgb, _ = tabletop_points(seed)
    return xyz[::100], rgb[::100]


def assert_good_frame_processed(client: UpClient, seed: int) -> None:
    """A normal tabletop after the bad input gets all its outputs, with its three boxes."""
    xyz, rgb, _ = tabletop_points(seed)
    found = publish_until_answered(client, xyz, rgb, make_header())
    assert found, client.output_text[-3000:]
    assert len(found['segvec3d/instances'].instances) == 3


# --- malformed clouds: rejected, counted, logged ----------------------------------------------

def _resize(width_change: int) -> Callable[[PointCloud2], None]:
    def mutate(msg: PointCloud2) -> None:
        msg.width += width_change
        msg.row_step = msg.width * msg.point_step
    return mutate


def _narrow_points(msg: PointCloud2) -> None:
    msg.point_step, msg.row_step = 8, msg.width * 8
    msg.data = bytes(msg.data)[:msg.row_step]


def _set_field(index: int, **values: object) -> Callable[[PointCloud2], None]:
    def mutate(msg: PointCloud2) -> None:
        for key, value in values.items():
            setattr(msg.fields[index], key, value)
    return mutate


# case -> (how to break a valid xyz+rgb message, what the rejection must say)
MALFORMED: dict[str, tuple[Callable[[PointCloud2], None], str]] = {
    'width * height above the data': (_resize(+10), r'data truncated'),
    'width * height below the data': (_resize(-10), r'data too long'),
    'row_step below width * point_step': (lambda m: setattr(m, 'row_step', m.row_step - 1),
                                          r'row_step \d+ < width \* point_step'),
    'point_step below the fields': (_narrow_points, r"'z' .* overruns point_step 8"),
    'point_step 0': (lambda m: (setattr(m, 'point_step', 0), setattr(m, 'row_step', 0)),
                     r'point_step is 0'),
    'missing z': (_set_field(2, name='depth'), r"missing coordinate field\(s\) \['z'\]"),
    'no fields': (lambda m: setattr(m, 'fields', []),
                  r"missing coordinate field\(s\) \['x', 'y', 'z'\]"),
    'unknown datatype on x': (_set_field(0, datatype=UNKNOWN_DATATYPE),
                              rf"'x' has unknown datatype {UNKNOWN_DATATYPE}"),
    'duplicated field names': (_set_field(1, name='x'), r"duplicated field names \['x'\]"),
}


@pytest.mark.parametrize('case', MALFORMED)
def test_malformed_cloud_is_rejected_counted_and_logged_then_a_good_one_processed(system, case):
    mutate, reason = MALFORMED[case]
    msg = cloud_msg(make_header(), *small_tabletop(seed=len(case)))
    mutate(msg)
    rejected_before = diagnostics_count(system, 'frames_rejected')
    warning = re.compile(r'rejected a cloud: .*' + reason)

    def reported() -> bool:
        diagnostics = system.pipeline_status() or {}
        return (int(diagnostics.get('frames_rejected', 0)) > rejected_before
                and re.search(reason, diagnostics.get('last_problem', '')) is not None
                and warning.search(system.output_text) is not None)
    # Repeats cover a lost best-effort message and the 2 s throttle of the warning.
    deadline = time.monotonic() + 15.0
    while not reported() and time.monotonic() < deadline:
        system.points_pub.publish(msg)
        wait_for(reported, timeout=0.5)
    assert reported(), (system.pipeline_status(), system.output_text[-3000:])
    assert not system.outputs_for(msg.header, timeout=0.0)
    assert system.process.poll() is None
    assert diagnostics_count(system, 'frames_failed') == 0
    assert_good_frame_processed(system, seed=len(case))


# --- degenerate but valid clouds: processed, outputs with the same header ---------------------

def _points(xyz: np.ndarray) -> Callable[[Header], PointCloud2]:
    return lambda header: cloud_msg(header, np.asarray(xyz, np.float32))


def _partly_non_finite(header: Header) -> PointCloud2:
    xyz, rgb = small_tabletop(seed=5)
    xyz = xyz.copy()
    xyz[::5, 0], xyz[1::5, 1], xyz[2::5, 2] = np.nan, np.inf, -np.inf
    return cloud_msg(header, xyz, rgb)


def _packed_tabletop(header: Header, big_endian: bool, mixed: bool) -> PointCloud2:
    """The tabletop in big-endian and/or mixed datatypes, with extra fields a driver may add."""
    xyz, rgb, _ = tabletop_points(seed=6)
    coordinate = FLOAT64 if mixed else FLOAT32
    return columns_msg(header, {
        'x': (coordinate, xyz[:, 0]), 'y': (FLOAT32, xyz[:, 1]), 'z': (coordinate, xyz[:, 2]),
        'rgb': (UINT32, pack_rgb(rgb)),
        'ring': (UINT16, np.arange(len(xyz)) % 64),
        'flags': (UNKNOWN_DATATYPE if mixed else UINT16, np.ones(len(xyz))),
    }, big_endian=big_endian)


RNG = np.random.default_rng(0)
# case -> (message for a header, how many instances it must give; None = any number)
DEGENERATE: dict[str, tuple[Callable[[Header], PointCloud2], int | None]] = {
    'empty': (_points(np.empty((0, 3))), 0),
    'empty default message': (lambda header: PointCloud2(header=header), 0),
    'single point': (_points([[0.1, 0.2, 1.0]]), 0),
    # One voxel: under the least size of an instance, like a single point.
    'identical points': (_points(np.tile([0.1, 0.2, 1.0], (1000, 1))), 0),
    'all NaN': (_points(np.full((1000, 3), np.nan)), 0),
    'partly NaN and Inf': (_partly_non_finite, None),
    'coordinates of 1e9': (_points(RNG.uniform(-1e9, 1e9, (2000, 3))), None),
    'tabletop 1e9 away': (_points(tabletop_points(seed=7)[0] + np.float32(1e9)), None),
    'big-endian': (lambda header: _packed_tabletop(header, big_endian=True, mixed=False), 3),
    'mixed and unknown datatypes': (
        lambda header: _packed_tabletop(header, big_endian=False, mixed=True), 3),
    'big-endian mixed datatypes': (
        lambda header: _packed_tabletop(header, big_endian=True, mixed=True), 3),
}


@pytest.mark.parametrize('case', DEGENERATE)
def test_degenerate_cloud_is_processed_with_the_same_header(system, case):
    make_msg, num_instances = DEGENERATE[case]
    header = make_header()
    msg = make_msg(header)
    found = system.publish_until_answered(msg)
    assert found, system.output_text[-3000:]
    sent = decode_pointcloud2(msg)
    labeled = found['segvec3d/labeled_points']
    assert (labeled.height, labeled.width) == (msg.height, msg.width)
    labels = decode_pointcloud2(labeled).extra['label']
    assert labels.shape == (len(sent),)
    assert not labels[~sent.valid].any()
    instances = found['segvec3d/instances'].instances
    if num_instances is not None:
        assert len(instances) == num_instances
    assert sorted(int(i.id) for i in instances) == sorted(set(labels[labels > 0].tolist()))
    markers = found['segvec3d/markers'].markers
    assert markers[0].action == Marker.DELETEALL
    assert all(m.header == header for m in markers)
    assert len(markers) == 1 + 2 * len(instances)
    assert diagnostics_count(system, 'frames_failed') == 0


# --- queries: stale and busy scenes -------------------------------------------------------------

def test_a_scene_older_than_max_scene_age_is_not_answered_from(system):
    xyz, rgb, _ = tabletop_points(seed=8)
    old_header = make_header()
    assert publish_until_answered(system, xyz, rgb, old_header)
    assert system.set_parameter('segvec3d_query', 'max_scene_age', 3.0).successful
    try:
        time.sleep(3.5)
        stale = system.ask('the red box')
        assert not stale.success
        assert 'old' in stale.message and 'max_scene_age' in stale.message, stale.message
        assert stale.header == old_header and not stale.matches
        new_header = make_header()
        assert publish_until_answered(system, xyz, rgb, new_header)
        fresh = system.ask('the red box')
        assert fresh.success and fresh.header == new_header, fresh.message
    finally:
        assert system.set_parameter('segvec3d_query', 'max_scene_age', 0.0).successful


def _frame_key(header: Header) -> tuple[int, int, str]:
    return header.stamp.sec, header.stamp.nanosec, header.frame_id


def test_queries_while_frames_stream_each_answer_from_one_consistent_scene(system):
    # Ids by rank: an answer is one frame's (tracked ids also answer with earlier frames').
    assert system.set_parameter('segvec3d_segmentation', 'tracking', False).successful
    boxes_in: dict[tuple[int, int, str], int] = {}   # frame -> boxes in it
    stop = threading.Event()

    def stream() -> None:
        frame = 0
        while not stop.is_set():
            # 1 to 4 boxes, so that an answer mixing two frames shows in the counts.
            xyz, rgb, _ = tabletop_points(seed=frame, n_objects=1 + frame % 4)
            header = make_header()
            boxes_in[_frame_key(header)] = 1 + frame % 4
            system.points_pub.publish(cloud_msg(header, xyz, rgb))
            frame += 1
            stop.wait(0.1)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        assert wait_for(lambda: any(_frame_key(m.header) in boxes_in
                                    for m in system.received['segvec3d/instances']), 30.0)
        latencies, without_points = [], 0
        deadline = time.monotonic() + 10.0
        texts = ['the red box', 'a small object', 'the blue thing', 'something green']
        while time.monotonic() < deadline:
            start = time.monotonic()
            response = system.ask(texts[len(latencies) % len(texts)], top_k=10)
            latencies.append(time.monotonic() - start)
            assert response.success, response.message
            frame = _frame_key(response.header)
            assert frame in boxes_in, response.header
            instances = {int(i.id): i for m in system.received['segvec3d/instances']
                         if _frame_key(m.header) == frame for i in m.instances}
            assert len(response.matches) == len(instances) == boxes_in[frame]
            for match in response.matches:
                assert match.num_points == instances[match.id].num_points
            assert list(response.scores) == sorted(response.scores, reverse=True)
            if response.points.width == 0:
                assert 'not arrived' in response.message
                without_points += 1
                continue
            best = decode_pointcloud2(response.points)
            assert len(best) == response.matches[0].num_points
            assert (best.extra['label'] == response.matches[0].id).all()
    finally:
        stop.set()
        streamer.join(timeout=5.0)
        system.set_parameter('segvec3d_segmentation', 'tracking', True)
    print(f'{len(latencies)} queries while streaming at 10 Hz: median '
          f'{np.median(latencies) * 1e3:.0f} ms, p95 {np.percentile(latencies, 95) * 1e3:.0f} ms,'
          f' {without_points} before the scene\'s points')
    assert len(latencies) >= 10
    assert without_points < len(latencies) / 2
    assert diagnostics_count(system, 'frames_failed') == 0


# --- start-up: unusable model files, signals while loading ----------------------------------

BAD_MODELS: dict[str, Callable[[Path], Path]] = {
    'missing': lambda folder: folder / 'missing.onnx',
    'corrupt onnx': lambda folder: _random_file(folder / 'corrupt.onnx'),
    'corrupt checkpoint': lambda folder: _random_file(folder / 'corrupt.pt'),
}


def _random_file(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def start_with_model(model: Path, fallback: bool) -> subprocess.Popen:
    """segmentation_node set to the learned segmenter with this model file, in a domain apart
    from the module's segvec3d-up (which has a node of the same name)."""
    return start_executable('segmentation_node', '-p', 'segmenter:=segvec3d',
                            '-p', f'model_path:={model}',
                            '-p', f'fallback_to_euclidean:={str(fallback).lower()}',
                            env=separate_domain_env())


@pytest.mark.parametrize('kind', BAD_MODELS)
def test_unusable_model_without_fallback_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    model = BAD_MODELS[kind](tmp_path)
    process = start_with_model(model, fallback=False)
    try:
        out, err = process.communicate(timeout=120)
    finally:
        stop_process(process)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert process.returncode == 1
    assert len(lines) == 1 and 'FATAL' in lines[0] and str(model) in lines[0], lines


@pytest.mark.parametrize('kind', BAD_MODELS)
def test_unusable_model_with_fallback_warns_and_segments_euclidean(tmp_path: Path,
                                                                   kind: str) -> None:
    model = BAD_MODELS[kind](tmp_path)
    process = start_with_model(model, fallback=True)
    client = Client('segvec3d_model_test', int(separate_domain_env()['ROS_DOMAIN_ID']))
    try:
        # The parameter service shows up when the node exists and answers once the node has
        # loaded (torch, onnxruntime, the failed model, the fallback) and spins: on a busy
        # 2-core CI machine that took over 30 s once.
        assert client.get_parameter('segvec3d_segmentation', 'segmenter',
                                    timeout=120.0) == 'euclidean'
        assert process.poll() is None
    finally:
        client.close()
        code, out, err = stop_process(process)
    warnings = [line for line in err.splitlines() if 'falling back to the euclidean' in line]
    assert len(warnings) == 1 and 'WARN' in warnings[0] and str(model) in warnings[0], err
    assert 'Traceback' not in err and code in (0, -signal.SIGINT), err


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_query_node_loads_stops_cleanly(sig: int) -> None:
    process = start_executable('segvec3d-up', env=separate_domain_env())
    # The segmentation node is up when it says so; then the query node loads for seconds.
    seen = read_until(process, 'segmenting')
    process.send_signal(sig)
    code, output = wait_and_read(process, seen)
    assert any('segmenting' in line for line in seen), output
    assert 'answering queries' not in output  # the signal came while the encoder loaded
    assert 'Traceback' not in output, output
    assert code in (0, -sig, 128 + sig), (code, output)


# --- huge clouds ------------------------------------------------------------------------------

def huge_tabletop(n: int, seed: int) -> tuple[np.ndarray, int]:
    """n points: a 4 x 4 m floor, with more voxels than max_points, and three boxes on it.

    Returns the points and the number of points of each box.
    """
    rng = np.random.default_rng(seed)
    n_box = n // 20
    n_floor = n - 3 * n_box
    floor = np.column_stack([rng.uniform(-2.0, 2.0, n_floor), np.full(n_floor, 0.3),
                             rng.uniform(0.5, 4.5, n_floor)])
    boxes = [np.array([-0.3 + 0.3 * i, 0.24, 1.0]) + rng.uniform(-0.05, 0.05, (n_box, 3))
             for i in range(3)]
    return np.concatenate([floor, *boxes]), n_box


@pytest.mark.parametrize('n', [1_500_000, pytest.param(5_000_000, marks=pytest.mark.slow)])
def test_huge_clouds_are_capped_in_bounded_time_and_memory(n: int) -> None:
    # The geometric segmenter: this bounds what the node itself holds per input point; the
    # learned segmenter's ONNX arena grows further at 50k working points (an open problem).
    with separate_system('-p', 'max_scene_age:=0.0', '-p', 'segmenter:=euclidean') as up:
        rss_before = up.memory_bytes('VmRSS')
        heap = [up.memory_bytes('RssAnon')]
        answer_s = []
        for frame in range(3):
            xyz, n_box = huge_tabletop(n, seed=frame)
            msg = cloud_msg(make_header(), xyz)
            start = time.monotonic()
            # A repeat makes the node do the work again: only after a long wait.
            found = up.publish_until_answered(msg, timeout=120.0, period=20.0)
            answer_s.append(time.monotonic() - start)
            assert found, up.output_text[-3000:]
            labels = decode_pointcloud2(found['segvec3d/labeled_points']).extra['label']
            assert labels.shape == (n,)
            sizes = sorted((i.num_points for i in found['segvec3d/instances'].instances),
                           reverse=True)
            assert len(sizes) >= 3 and sizes[2] > 0.9 * n_box, sizes
            heap.append(up.memory_bytes('RssAnon'))
        peak = up.memory_bytes('VmHWM')
        print(f'{n} points: answered in {", ".join(f"{s:.1f}" for s in answer_s)} s; node heap '
              f'(RssAnon) {" -> ".join(f"{h / MiB:.0f}" for h in heap)} MiB; RSS '
              f'{rss_before / MiB:.0f} MiB before, peak {peak / MiB:.0f} MiB')
        assert max(answer_s) < 60.0
        # Per point: 12 bytes in, 16 out, 16 for the query node's copy of the scene, and the
        # pipeline's float64 working copies; the allocator and DDS histories keep some after.
        assert max(heap) - heap[0] < 200 * n + 64 * MiB, heap
        assert peak - rss_before < 350 * n + 256 * MiB, (rss_before, peak)
        assert diagnostics_count(up, 'frames_failed') == 0
