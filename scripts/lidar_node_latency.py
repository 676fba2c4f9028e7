"""Measure the node latency of a real LiDAR scan over DDS.

segvec3d-up runs with config/lidar.yaml; the bag's first message is published at a rate, and
the node's own /diagnostics are read at the end.

    python scripts/lidar_node_latency.py ../shared/data/lidar/OS-0-128-U1_v2.3.0_1024x10 \
        --rate 10 --frames 50

Run it with a ROS_DOMAIN_ID of its own; it uses the test harness's process handling.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rclpy.serialization import deserialize_message
from sensor_msgs.msg import PointCloud2

from segvec3d_ros.io.bags import iter_bag_clouds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'test'))
from ros_harness import UpClient, make_header  # noqa: E402

KEYS = ('latency_median_ms', 'latency_p95_ms', 'frames_received', 'frames_processed',
        'frames_dropped', 'frames_missed', 'segmenter')


def main() -> None:
    """Print the node's latency figures and the last frame's instance count."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bag')
    parser.add_argument('--rate', type=float, default=10.0, help='Hz (an Ouster sends 10)')
    parser.add_argument('--frames', type=int, default=50)
    args = parser.parse_args()
    msg = deserialize_message(next(iter(iter_bag_clouds(args.bag))).raw, PointCloud2)
    up = UpClient(params_file=REPO / 'config' / 'lidar.yaml')
    try:
        for _ in range(args.frames):
            msg.header = make_header(frame_id=msg.header.frame_id)
            up.points_pub.publish(msg)
            time.sleep(1.0 / args.rate)
        time.sleep(2.0)   # the diagnostics period, and the last frame
        status = up.pipeline_status() or {}
        instances = up.received['segvec3d/instances'][-1].instances
        print(Path(args.bag).name, {key: status.get(key) for key in KEYS},
              f'instances {len(instances)}')
    finally:
        up.stop()


if __name__ == '__main__':
    main()
