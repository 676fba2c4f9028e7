"""segvec3d-up over real DDS at a sensor's rate: throughput, dropped frames, latency, queries.

As tests (~10 s) they check the bookkeeping of a short run, never the speed. As a script they
run as long as asked and write the figures that `segvec3d bench --dds` puts in the report:

    python test/test_throughput.py --frames 900 [--segmenter segvec3d --model-path P] --out R.json
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from ros_harness import PARAMS_FILE, make_header, start_executable, stop_process, wait_for
from segvec3d_ros.bench.measure import bench_frame
from segvec3d_ros.bench.report import DDS_COLUMNS
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.io.pointcloud2 import encode_pointcloud2
from segvec3d_ros.ros.client import Segvec3dClient as Client
from segvec3d_ros.ros.dds import isolate_dds

isolate_dds()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402

from segvec3d_msgs.msg import InstanceArray  # noqa: E402
from segvec3d_msgs.srv import QueryInstance  # noqa: E402
from segvec3d_ros.ros.conversions import pointcloud2_msg  # noqa: E402

pytestmark = pytest.mark.ros
VGA = 640 * 480
QUERY_TEXTS = ('the red mug', 'a large box', 'the small blue can', 'a green bottle')
# Full-size frames cost the client ~0.3 s each to render; this many are published in turn.
DISTINCT_FRAMES = 4


class Rig:
    """segvec3d-up in its own process, and a client publishing clouds and timing the outputs.

    Both run with the harness's large-cloud Fast DDS profile. Unlike the functional tests'
    client this one keeps no labeled clouds (6 MB each at 640 x 480): at 30 Hz they would fill
    memory and take CPU from the node it measures.
    """

    def __init__(self, *ros_args: str, params_file: Path = PARAMS_FILE) -> None:
        self.process = start_executable('segvec3d-up', *ros_args, params_file=params_file)
        self.client = Client('segvec3d_throughput_client', record_outputs=False)
        self.client.record(DiagnosticArray, '/diagnostics')
        self.answered: dict[tuple[int, int], float] = {}   # stamp -> monotonic arrival
        self.instances: dict[tuple[int, int], int] = {}    # stamp -> instance count
        self._lock = threading.Lock()
        node = self.client.node
        node.create_subscription(InstanceArray, 'segvec3d/instances', self._on_instances,
                                 QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        if not wait_for(lambda: self.process.poll() is not None
                        or self.client.query_client.wait_for_service(timeout_sec=0.5),
                        timeout=120.0) \
                or self.process.poll() is not None:
            _, out, err = self.stop()
            raise RuntimeError(f'segvec3d-up did not come up:\n{out}\n{err}')
        self.publisher = self.client.points_pub
        # Best effort: what goes out before the node's subscription has matched is lost.
        wait_for(self.publisher.get_subscription_count, timeout=30.0)

    def _on_instances(self, msg: InstanceArray) -> None:
        now = time.monotonic()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._lock:
            self.answered.setdefault(key, now)
            self.instances[key] = len(msg.instances)

    def publish(self, msg: PointCloud2) -> tuple[int, int]:
        """Publish `msg` under a fresh stamp; return the stamp."""
        msg.header = make_header()
        self.publisher.publish(msg)
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    def stop(self) -> tuple[int, str, str]:
        """Stop the client and the node: (exit code, stdout, stderr)."""
        self.client.close()
        return stop_process(self.process)


def vga_messages(count: int, num_objects: int | None = None) -> list[PointCloud2]:
    """`count` different 640 x 480 organized tabletop frames as PointCloud2 messages."""
    messages = []
    for seed in range(count):
        cloud = (bench_frame(VGA, seed) if num_objects is None
                 else _crowded_frame(seed, num_objects))
        packed = encode_pointcloud2(cloud.xyz, cloud.rgb, height=cloud.height, width=cloud.width)
        messages.append(pointcloud2_msg(make_header(), packed))
    return messages


def _crowded_frame(seed: int, num_objects: int) -> Cloud:
    """A 640 x 480 tabletop frame with `num_objects` objects."""
    from segvec3d_ros.data.scenes import SceneConfig, generate_scene
    config = SceneConfig(sensors=('kinect_v1',), num_objects=(num_objects, num_objects))
    return generate_scene(seed, 'tabletop', config).cloud


def _settled(rig: Rig) -> dict[str, str] | None:
    """Diagnostics once every received frame is accounted for, else None."""
    values = rig.client.pipeline_status()
    if values is None:
        return None
    accounted = sum(int(values[key]) for key in ('frames_processed', 'frames_dropped',
                                                 'frames_rejected', 'frames_failed'))
    return values if accounted == int(values['frames_received']) else None


def run_at_rate(rig: Rig, messages: list[PointCloud2], frames: int,
                rate_hz: float) -> dict[str, Any]:
    """Publish `frames` messages at `rate_hz` and return what the node and the client saw."""
    def publish(sent: dict[tuple[int, int], float]) -> None:
        start = time.monotonic()
        for index in range(frames):
            time.sleep(max(0.0, start + index / rate_hz - time.monotonic()))
            published_at = time.monotonic()
            sent[rig.publish(messages[index % len(messages)])] = published_at
    return _measure(rig, frames, rate_hz, publish)


def run_in_turn(rig: Rig, message: PointCloud2, frames: int,
                warmup: int = 3) -> dict[str, Any]:
    """Publish `message` `frames` times, each once the last one's instance list came back.

    No frame waits for the node to finish the one before, so the latency is one frame's own.
    The client's figures leave out the first `warmup` frames.
    """
    def publish(sent: dict[tuple[int, int], float]) -> None:
        for index in range(warmup + frames):
            published_at = time.monotonic()
            key = rig.publish(message)
            if index >= warmup:
                sent[key] = published_at
            wait_for(lambda: key in rig.answered, timeout=30.0)
    result = _measure(rig, warmup + frames, 0.0, publish)
    result['frames'] = frames
    return result


def _measure(rig: Rig, frames: int, rate_hz: float,
             publish: Callable[[dict[tuple[int, int], float]], None]) -> dict[str, Any]:
    """Run `publish` (it records each stamp's publishing time) and gather the figures.

    The node's counters are cumulative, so the figures are differences from the diagnostics
    before the run; its rate and latency percentiles cover its last 5 s window.
    """
    before = wait_for(lambda: _settled(rig), timeout=30.0)
    assert before, 'no settled diagnostics before the run'
    sent: dict[tuple[int, int], float] = {}
    start = time.monotonic()
    publish(sent)
    # The node finishes its frame in hand, then its diagnostics show every frame settled.
    wait_for(lambda: (v := _settled(rig)) is not None
             and int(v['frames_received']) > int(before['frames_received']), timeout=60.0)
    time.sleep(2.0)     # a diagnostics period or two more, for the last frame's outputs
    after = _settled(rig) or rig.client.pipeline_status()
    with rig._lock:
        delays = [1e3 * (rig.answered[key] - at) for key, at in sent.items()
                  if key in rig.answered]

    def grown(key: str) -> int:
        return int(after[key]) - int(before[key])
    received = grown('frames_received')
    return {'segmenter': after['segmenter'], 'frames': frames, 'rate_hz': rate_hz,
            'transport': 'Fast DDS, config/fastdds_large_clouds.xml '
                         '(256 MiB shared-memory segment)',
            'seconds': round(time.monotonic() - start, 1), 'received': received,
            'processed': grown('frames_processed'), 'dropped': grown('frames_dropped'),
            'rejected': grown('frames_rejected'), 'failed': grown('frames_failed'),
            'lost': frames - received, 'answered': len(delays),
            'processed_rate_hz': float(after['processed_rate_hz']),
            'latency_median_ms': float(after['latency_median_ms']),
            'latency_p95_ms': float(after['latency_p95_ms']),
            'client_median_ms': round(float(np.median(delays)), 1) if delays else None,
            'client_p95_ms': round(float(np.percentile(delays, 95)), 1) if delays else None}


def time_queries(rig: Rig, scene: PointCloud2, calls: int) -> dict[str, Any]:
    """Latency of the query service over DDS, from the client, on the scene's instances."""
    deadline = time.monotonic() + 120.0
    key = None
    while key not in rig.answered and time.monotonic() < deadline:
        key = rig.publish(scene)
        wait_for(lambda: key in rig.answered, timeout=5.0)
    assert key in rig.answered, f'no answer to the query scene: {rig.client.pipeline_status()}'
    for text in QUERY_TEXTS:    # the encoder caches the texts and the scene's captions
        rig.client.call(rig.client.query_client, QueryInstance.Request(text=text, top_k=5))
    seconds = []
    for index in range(calls):
        request = QueryInstance.Request(text=QUERY_TEXTS[index % len(QUERY_TEXTS)], top_k=5)
        start = time.monotonic()
        response = rig.client.call(rig.client.query_client, request)
        seconds.append(time.monotonic() - start)
        # 'Not found' is an answer too (below min_score), ranked the same way.
        assert response.success or response.message.startswith('not found'), response.message
    return {'calls': calls, 'instances': rig.instances[key],
            'median_ms': round(1e3 * float(np.median(seconds)), 1),
            'p95_ms': round(1e3 * float(np.percentile(seconds, 95)), 1)}


@pytest.fixture(scope='module')
def rig():
    """segvec3d-up with the repo's parameters, answering from scenes of any age."""
    rig = Rig('-p', 'max_scene_age:=0.0')
    yield rig
    _, _, err = rig.stop()
    assert 'Traceback' not in err, err


def test_every_frame_at_30_hz_is_processed_dropped_or_lost_and_counted(rig):
    result = run_at_rate(rig, vga_messages(2), frames=60, rate_hz=30.0)
    assert 1 <= result['received'] <= result['frames']
    assert result['processed'] >= 1 and result['rejected'] == result['failed'] == 0
    assert result['processed'] + result['dropped'] == result['received']
    assert result['lost'] == result['frames'] - result['received']
    assert 1 <= result['answered'] <= result['processed']
    assert result['latency_p95_ms'] >= result['latency_median_ms'] >= 0
    assert result['client_p95_ms'] >= result['client_median_ms'] > 0
    assert {key for key, _ in DDS_COLUMNS} <= set(result)


def test_frames_sent_in_turn_are_each_processed_and_none_dropped(rig):
    result = run_in_turn(rig, vga_messages(1)[0], frames=4, warmup=2)
    assert result['frames'] == 4 and result['answered'] == 4
    assert result['received'] == result['processed'] == 6
    assert result['dropped'] == result['lost'] == result['failed'] == 0
    assert result['client_p95_ms'] >= result['client_median_ms'] > 0


def test_query_service_answers_every_call_on_a_crowded_scene(rig):
    scene = vga_messages(1, num_objects=8)[0]
    result = time_queries(rig, scene, calls=10)
    assert result['instances'] >= 2 and result['calls'] == 10
    assert result['p95_ms'] >= result['median_ms'] > 0


def main(argv: list[str] | None = None) -> int:
    """The long run: throughput at a rate, then query latency; figures to --out as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=900, help='clouds to publish')
    parser.add_argument('--rate', type=float, default=30.0, help='publishing rate in Hz')
    parser.add_argument('--segmenter', choices=('euclidean', 'segvec3d'), default='euclidean')
    parser.add_argument('--model-path', default='', help='weights of the learned segmenter')
    parser.add_argument('--query-calls', type=int, default=200)
    parser.add_argument('--query-objects', type=int, default=20,
                        help='objects in the generated scene the queries are answered on')
    parser.add_argument('--out', required=True, metavar='JSON')
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    ros_args = ['-p', 'max_scene_age:=0.0', '-p', f'segmenter:={args.segmenter}']
    if args.model_path:
        ros_args += ['-p', f'model_path:={Path(args.model_path).resolve()}']
    messages = vga_messages(DISTINCT_FRAMES)
    scene = vga_messages(1, num_objects=args.query_objects)[0]
    rig = Rig(*ros_args)
    try:
        result = run_at_rate(rig, messages, args.frames, args.rate)
        result['query'] = (time_queries(rig, scene, args.query_calls) if args.query_calls
                           else None)
    finally:
        rig.stop()
    result['command'] = shlex.join(['python', 'test/test_throughput.py', *argv])
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
