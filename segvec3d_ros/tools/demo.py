"""The product end to end, on a bag it records itself (what `make demo` runs).

    python -m segvec3d_ros.tools.demo --out-dir out/demo [--text "the mug"] [--scan PCD]
                                      [--params-file YAML] [--timeout 120]

Records a few frames of a real scan (../shared/data/real_scans, when present) or else of a
synthetic tabletop scene into DIR/demo_bag, starts segvec3d-up, plays the bag into it with
segvec3d-play, asks segvec3d/query for the text and prints the answer. Writes DIR/answer.png (the
answered scene by instance, the best match highlighted) and DIR/outputs.bag (segvec3d-bag on the
recorded bag); the nodes' logs go to DIR/*.log. Exit code 0 on success, 1 on failure or timeout.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from segvec3d_msgs.msg import InstanceArray
from segvec3d_msgs.srv import QueryInstance
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.io.files import read_cloud
from segvec3d_ros.io.pointcloud2 import decode_pointcloud2
from segvec3d_ros.nodes.conversions import instance_info
from segvec3d_ros.render import render_instances
from segvec3d_ros.tools.bag import segment_bag, write_cloud_bag
from segvec3d_ros.tools.cli import pipeline_config, pipeline_or_warn
from segvec3d_ros.tools.dds import isolate_dds

REPO = Path(__file__).resolve().parents[2]
SCAN = REPO.parent / 'shared' / 'data' / 'real_scans' / 'table_scene_mug_stereo_textured.pcd'
BAG_TOPIC = '/camera/depth_registered/points'
FRAME_ID = 'camera_rgb_optical_frame'
FRAMES = 3
FRAME_PERIOD_NS = 200_000_000  # a 5 Hz camera
STOP_TIMEOUT_S = 15.0


class DemoError(RuntimeError):
    """Why the demo could not finish."""


def default_params_file() -> Path:
    """config/segvec3d.yaml of the source tree, else of the installed segvec3d_ros."""
    candidates = [REPO / 'config' / 'segvec3d.yaml']
    candidates += [Path(prefix) / 'share' / 'segvec3d_ros' / 'config' / 'segvec3d.yaml'
                   for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)
                   if prefix]
    return next((path for path in candidates if path.is_file()), candidates[0])


def demo_cloud(scan: Path) -> tuple[str, Cloud]:
    """(description, cloud) of the scan when it exists, else of synthetic tabletop scene 0."""
    if scan.is_file():
        return scan.name, read_cloud(scan)
    from segvec3d_ros.data.scenes import generate_scene  # only needed without the real scan
    return 'synthetic tabletop scene 0', generate_scene(0, kind='tabletop').cloud


def start_process(module: str, args: list[str], log: Path) -> subprocess.Popen:
    """Run `python -m module args` with its output in `log`."""
    with log.open('w') as stream:
        return subprocess.Popen([sys.executable, '-m', module, *args], stdout=stream,
                                stderr=subprocess.STDOUT, env=dict(os.environ,
                                                                   PYTHONUNBUFFERED='1'))


def stop_process(process: subprocess.Popen | None) -> int | None:
    """Ctrl-C a process as a user would, kill it if it hangs; return its exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log file, indented, for error messages."""
    text = log.read_text(errors='replace').splitlines()[-lines:] if log.is_file() else []
    return '\n'.join(f'    {line}' for line in text)


def _key(msg: Any) -> tuple[int, int, str]:
    return (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)


class Demo:
    """The demo's own node: records segvec3d-up's outputs and calls its query service."""

    def __init__(self, deadline: float, up: subprocess.Popen) -> None:
        self.deadline = deadline
        self.up = up
        self.node = Node('segvec3d_demo')
        self.labeled: dict[tuple[int, int, str], PointCloud2] = {}
        self.instances: dict[tuple[int, int, str], InstanceArray] = {}
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(PointCloud2, 'segvec3d/labeled_points',
                                      lambda m: self.labeled.__setitem__(_key(m), m), qos)
        self.node.create_subscription(InstanceArray, 'segvec3d/instances',
                                      lambda m: self.instances.__setitem__(_key(m), m), qos)
        self.query = self.node.create_client(QueryInstance, 'segvec3d/query')

    def spin_until(self, done: Callable[[], Any], waiting_for: str) -> Any:
        """Spin until done() is truthy and return it; DemoError at the deadline or if up dies."""
        while time.monotonic() < self.deadline:
            value = done()
            if value:
                return value
            if self.up.poll() is not None:
                raise DemoError(f'segvec3d-up exited with code {self.up.returncode} while '
                                f'waiting for {waiting_for}')
            rclpy.spin_once(self.node, timeout_sec=0.1)
        raise DemoError(f'timed out waiting for {waiting_for}')

    def ask(self, text: str) -> QueryInstance.Response:
        """The query service's answer for `text`."""
        future = self.query.call_async(QueryInstance.Request(text=text, top_k=3))
        return self.spin_until(lambda: future.result() if future.done() else None,
                               'the query answer')


def run(args: argparse.Namespace) -> None:
    """Record, play, segment, query and render; raises DemoError saying what failed."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bag_dir, outputs_bag = out_dir / 'demo_bag', out_dir / 'outputs.bag'
    for old in (bag_dir, outputs_bag):  # bags are never overwritten in place
        shutil.rmtree(old, ignore_errors=True)
    deadline = time.monotonic() + args.timeout

    source, cloud = demo_cloud(Path(args.scan))
    start_ns = time.time_ns()
    write_cloud_bag(bag_dir, [(start_ns + i * FRAME_PERIOD_NS, cloud) for i in range(FRAMES)],
                    BAG_TOPIC, FRAME_ID)
    print(f'recorded {FRAMES} frames of {source} ({cloud.height} x {cloud.width} points) '
          f'on {BAG_TOPIC} in {bag_dir}')

    isolate_dds()
    up_log, play_log = out_dir / 'segvec3d-up.log', out_dir / 'segvec3d-play.log'
    up = start_process('segvec3d_ros.nodes.up',
                       ['--ros-args', '--params-file', str(args.params_file)], up_log)
    player = None
    rclpy.init()
    demo = Demo(deadline, up)
    try:
        demo.spin_until(demo.query.service_is_ready, 'segvec3d-up to start')
        print(f'segvec3d-up is up (log: {up_log}); playing the bag into it')
        # --loop: the first frames may go out before the node has discovered the player.
        # --restamp: recorded stamps would age past the query node's max_scene_age.
        player = start_process('segvec3d_ros.tools.play',
                               [str(bag_dir), '--loop', '--restamp', '--remap', 'points'],
                               play_log)
        demo.spin_until(lambda: demo.labeled.keys() & demo.instances.keys(),
                        'the segmentation outputs')
        stop_process(player)

        response = demo.ask(args.text)
        print(f'query {args.text!r}: success={response.success} message={response.message!r}')
        if not response.success or not response.matches:
            raise DemoError(f'the query failed: {response.message}')
        best = response.matches[0]
        print(f'best match: instance {best.id} label={best.label!r} '
              f'score={response.scores[0]:.3f} points={len(decode_pointcloud2(response.points))}')
        for match, score in zip(response.matches[1:], response.scores[1:]):
            print(f'      then: instance {match.id} label={match.label!r} score={score:.3f} '
                  f'({match.num_points} points)')

        key = _key(response)
        demo.spin_until(lambda: key in demo.labeled and key in demo.instances,
                        'the answered frame')
        scene = decode_pointcloud2(demo.labeled[key])
        instances = [instance_info(i) for i in demo.instances[key].instances]
        render_instances(out_dir / 'answer.png', scene, scene.extra['label'], instances,
                         highlight=int(best.id), title=f'"{args.text}": instance {best.id}')
        print(f'wrote {out_dir / "answer.png"}')
    finally:
        demo.node.destroy_node()
        rclpy.try_shutdown()
        stop_process(player)
        up_code = stop_process(up)
    if up_code not in (0, -signal.SIGINT):
        raise DemoError(f'segvec3d-up exited with code {up_code} on Ctrl-C')

    report = segment_bag(bag_dir, outputs_bag, pipeline_or_warn(pipeline_config(args.params_file), 'segvec3d demo'))
    print(f'segvec3d-bag: {report.segmented} clouds segmented, {report.skipped} skipped, '
          f'into {outputs_bag}')


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out-dir', default='out/demo', metavar='DIR')
    parser.add_argument('--text', default='the mug', help='what to ask for (default: the mug)')
    parser.add_argument('--scan', default=str(SCAN),
                        help='PCD/PLY/NPY scan to record (default: the mug scan in ../shared; '
                             'a synthetic scene when it is absent)')
    parser.add_argument('--params-file', default=str(default_params_file()), metavar='YAML')
    parser.add_argument('--timeout', type=float, default=120.0, metavar='S',
                        help='give up after this many seconds (default: 120)')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 on success, 1 with a message on failure."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except DemoError as error:
        out_dir = Path(args.out_dir)
        print(f'demo: error: {error}\nsegvec3d-up log:\n{log_tail(out_dir / "segvec3d-up.log")}',
              file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        print('demo: interrupted', file=sys.stderr)
        return 130
    print('demo: done')
    return 0


if __name__ == '__main__':
    sys.exit(main())
