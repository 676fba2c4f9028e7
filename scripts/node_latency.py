"""Measure segvec3d-up's latency over real DDS on one real frame, each segmenter in turn.

The frame (a .pcd/.ply/.npy file, or a rosbag's first cloud) is published again and again,
the same message under a fresh stamp: at a fixed rate, or with `--rate 0` each time the
previous one's instance list has come back, so that no frame waits for the one before. For
each segmenter a fresh segvec3d-up starts with the params file; the node's /diagnostics give
its latency (arrival to every output published, over its last 5 s), and the client times
publishing to receiving the instance list (over every frame).

    python scripts/node_latency.py ../shared/data/mosd/learn/learn30.pcd --points 20000
    python scripts/node_latency.py ../shared/data/mosd/learn/learn30.pcd --resize 1280x720
    python scripts/node_latency.py ../shared/data/lidar/OS-0-128-U1_v2.3.0_1024x10 \
        --params-file config/lidar.yaml --segmenters range_image

Run it with a ROS_DOMAIN_ID of its own; it uses the test harness's process handling.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import PointCloud2

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.io.bags import iter_bag_clouds
from segvec3d_ros.io.files import read_cloud
from segvec3d_ros.io.pointcloud2 import encode_pointcloud2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))
from ros_harness import make_header  # noqa: E402
from test_throughput import Rig, run_at_rate, run_in_turn  # noqa: E402

from segvec3d_ros.ros.conversions import pointcloud2_msg  # noqa: E402

COLUMNS = ('segmenter', 'processed', 'dropped', 'latency_median_ms', 'latency_p95_ms',
           'client_median_ms', 'client_p95_ms', 'instances')


def subsample(cloud: Cloud, points: int, seed: int = 0) -> Cloud:
    """Draw `points` of the cloud's valid points without replacement (unorganized)."""
    valid = np.flatnonzero(cloud.valid)
    keep = np.sort(np.random.default_rng(seed).choice(valid, min(points, len(valid)),
                                                      replace=False))
    return Cloud(cloud.xyz[keep], None if cloud.rgb is None else cloud.rgb[keep])


def resize(cloud: Cloud, width: int, height: int) -> Cloud:
    """Resample the organized cloud to width x height pixels, each from its nearest pixel."""
    if not cloud.is_organized:
        raise SystemExit('--resize needs an organized cloud')
    rows = (np.arange(height) * cloud.height // height)[:, None]
    cols = (np.arange(width) * cloud.width // width)[None, :]
    pixels = (rows * cloud.width + cols).reshape(-1)
    return Cloud(cloud.xyz[pixels], None if cloud.rgb is None else cloud.rgb[pixels],
                 height=height, width=width)


def frame_message(path: Path, points: int | None, size: str | None) -> PointCloud2:
    """Return the message to publish: a bag's first cloud, or a file's cloud re-shaped."""
    if path.is_dir():
        return deserialize_message(next(iter(iter_bag_clouds(path))).raw, PointCloud2)
    cloud = read_cloud(path)
    if points:
        cloud = subsample(cloud, points)
    if size:
        width, height = (int(v) for v in size.lower().split('x'))
        cloud = resize(cloud, width, height)
    packed = encode_pointcloud2(cloud.xyz, cloud.rgb, height=cloud.height, width=cloud.width)
    return pointcloud2_msg(make_header(), packed)


def main() -> None:
    """Print one markdown row per segmenter."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('frame', type=Path, help='a cloud file, or a rosbag directory')
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument('--points', type=int, help='publish this many of its points, unorganized')
    shape.add_argument('--resize', metavar='WxH', help='publish it resampled to W x H pixels')
    parser.add_argument('--params-file', type=Path, default=REPO / 'config' / 'segvec3d.yaml')
    parser.add_argument('--segmenters', default='euclidean,segvec3d')
    parser.add_argument('--rate', type=float, default=0.0,
                        help='publishing rate in Hz; 0: the next frame once the last is answered')
    parser.add_argument('--frames', type=int, default=50)
    args = parser.parse_args()
    msg = frame_message(args.frame, args.points, args.resize)
    pace = f'at {args.rate:g} Hz' if args.rate > 0 else 'one at a time'
    print(f'{args.frame.name}: {msg.width} x {msg.height} points {pace}, '
          f'{args.frames} frames, {args.params_file.name}')
    print('| ' + ' | '.join(COLUMNS) + ' |')
    print('|' + ' --- |' * len(COLUMNS))
    for segmenter in args.segmenters.split(','):
        rig = Rig('-p', f'segmenter:={segmenter}',
                  params_file=args.params_file.resolve())
        try:
            result = (run_at_rate(rig, [msg], args.frames, args.rate) if args.rate > 0
                      else run_in_turn(rig, msg, args.frames))
            result['instances'] = max(rig.instances.values(), default=0)
        finally:
            rig.stop()
        print('| ' + ' | '.join(str(result[key]) for key in COLUMNS) + ' |', flush=True)


if __name__ == '__main__':
    main()
