"""The product end to end, on a bag it records itself (what `make demo` runs).

    python -m segvec3d_ros.ros.demo --out-dir out/demo [--text "the mug"] [--scan PCD]
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

from rclpy.executors import ExternalShutdownException

from segvec3d_ros.cli.common import pipeline_config, pipeline_or_warn
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.io.files import read_cloud
from segvec3d_ros.io.pointcloud2 import decode_pointcloud2
from segvec3d_ros.names import INSTANCES_TOPIC, LABELED_POINTS_TOPIC
from segvec3d_ros.render import render_instances
from segvec3d_ros.ros.bag import segment_bag, write_cloud_bag
from segvec3d_ros.ros.client import Segvec3dClient
from segvec3d_ros.ros.conversions import instance_info
from segvec3d_ros.ros.dds import isolate_dds

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
    """Load the scan when it exists, else synthetic tabletop scene 0, as (description, cloud)."""
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
    """Last lines of a log file, indented, for error messages."""
    text = log.read_text(errors='replace').splitlines()[-lines:] if log.is_file() else []
    return '\n'.join(f'    {line}' for line in text)


def _key(msg: Any) -> tuple[int, int, str]:
    return (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id)


def wait_until(done: Callable[[], Any], waiting_for: str, deadline: float,
               up: subprocess.Popen) -> Any:
    """Wait until done() is truthy and return it; DemoError at the deadline or if up dies."""
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        if up.poll() is not None:
            raise DemoError(f'segvec3d-up exited with code {up.returncode} while waiting for '
                            f'{waiting_for}')
        time.sleep(0.1)
    raise DemoError(f'timed out waiting for {waiting_for}')


def _by_frame(client: Segvec3dClient, topic: str) -> dict[tuple[int, int, str], Any]:
    """Messages received on `topic`, by the frame they answer."""
    return {_key(m): m for m in list(client.received[topic])}


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
    up = start_process('segvec3d_ros.ros.up',
                       ['--ros-args', '--params-file', str(args.params_file)], up_log)
    player = None
    client = Segvec3dClient('segvec3d_demo')
    try:
        wait_until(client.query_client.service_is_ready, 'segvec3d-up to start', deadline, up)
        print(f'segvec3d-up is up (log: {up_log}); playing the bag into it')
        # --loop: the first frames may go out before the node has discovered the player.
        # --restamp: recorded stamps would age past the query node's max_scene_age.
        player = start_process('segvec3d_ros.ros.play',
                               [str(bag_dir), '--loop', '--restamp', '--remap', 'points'],
                               play_log)
        wait_until(lambda: (_by_frame(client, LABELED_POINTS_TOPIC).keys()
                            & _by_frame(client, INSTANCES_TOPIC).keys()),
                   'the segmentation outputs', deadline, up)
        stop_process(player)

        try:
            response = client.ask(args.text, top_k=3,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except TimeoutError as error:
            raise DemoError(str(error)) from error
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
        labeled, instances = wait_until(
            lambda: ((_by_frame(client, LABELED_POINTS_TOPIC).get(key),
                      _by_frame(client, INSTANCES_TOPIC).get(key))
                     if key in _by_frame(client, LABELED_POINTS_TOPIC).keys()
                     & _by_frame(client, INSTANCES_TOPIC).keys() else None),
            'the answered frame', deadline, up)
        scene = decode_pointcloud2(labeled)
        render_instances(out_dir / 'answer.png', scene, scene.extra['label'],
                         [instance_info(i) for i in instances.instances],
                         highlight=int(best.id), title=f'"{args.text}": instance {best.id}')
        print(f'wrote {out_dir / "answer.png"}')
    finally:
        client.close()
        stop_process(player)
        up_code = stop_process(up)
    if up_code not in (0, -signal.SIGINT):
        raise DemoError(f'segvec3d-up exited with code {up_code} on Ctrl-C')

    report = segment_bag(bag_dir, outputs_bag,
                         pipeline_or_warn(pipeline_config(args.params_file), 'segvec3d demo'))
    print(f'segvec3d-bag: {report.segmented} clouds segmented, {report.skipped} skipped, '
          f'into {outputs_bag}')


def build_parser() -> argparse.ArgumentParser:
    """Command line of the demo."""
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
