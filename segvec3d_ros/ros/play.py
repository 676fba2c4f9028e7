"""segvec3d-play: publish the PointCloud2 topic of a rosbag2, the `ros2 bag play` stand-in.

    segvec3d-play BAG [--topic T] [--rate R] [--loop] [--remap OUT] [--restamp] [--reliable]
                      [--ros-args ...]

Messages go out as recorded (the CDR bytes deserialized, nothing converted), at the recorded
pace scaled by --rate, with sensor-data QoS unless --reliable.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import PointCloud2

from segvec3d_ros.io.bags import BagError, iter_bag_clouds
from segvec3d_ros.names import PLAY_NODE


def build_parser() -> argparse.ArgumentParser:
    """Command line of segvec3d-play."""
    parser = argparse.ArgumentParser(
        prog='segvec3d-play', description=__doc__.split('\n\n')[0],
        epilog='ROS arguments after --ros-args (e.g. -r, -p use_sim_time:=true) are honoured.')
    parser.add_argument('bag', help='rosbag2 folder, or a .db3 / .mcap file')
    parser.add_argument('--topic', help='PointCloud2 topic to play (default: the only one)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='speed factor; 1.0 = recorded timing, 2.0 = twice as fast')
    parser.add_argument('--loop', action='store_true', help='play again from the start, forever')
    parser.add_argument('--remap', metavar='TOPIC',
                        help='publish on this topic (default: the recorded topic name)')
    parser.add_argument('--restamp', action='store_true',
                        help='put the current time in each header (e.g. for max_scene_age)')
    parser.add_argument('--reliable', action='store_true',
                        help='reliable QoS instead of sensor-data (best effort) QoS')
    return parser


def play(node: Node, args: argparse.Namespace, stop: threading.Event) -> int:
    """Publish the bag's clouds until the end, or forever with --loop, or until `stop` is set.

    Returns how many were published.
    """
    publisher = None
    qos = (QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if args.reliable
           else qos_profile_sensor_data)
    count = 0
    while True:
        start_wall, start_bag = time.monotonic(), None
        for message in iter_bag_clouds(args.bag, args.topic):
            if publisher is None:
                publisher = node.create_publisher(PointCloud2, args.remap or message.topic, qos)
                node.get_logger().info(f'playing {message.topic} on {publisher.topic_name}')
            start_bag = message.timestamp if start_bag is None else start_bag
            due = start_wall + (message.timestamp - start_bag) * 1e-9 / args.rate
            if stop.wait(max(0.0, due - time.monotonic())):
                return count
            msg = deserialize_message(message.raw, PointCloud2)
            if args.restamp:
                msg.header.stamp = node.get_clock().now().to_msg()
            try:
                publisher.publish(msg)
            except Exception:
                # rclpy's own SIGINT and SIGTERM handlers shut the context down before `stop`
                # is set: a publish in between fails on the invalid context, a clean stop.
                if node.context.ok():
                    raise
                return count
            count += 1
        if not args.loop or start_bag is None:
            return count


def main(argv: list[str] | None = None) -> int:
    """Play a bag until its end, or until Ctrl-C or shutdown; exit 2 on a bad bag or option."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(remove_ros_args(argv))
    if not args.rate > 0:
        parser.error(f'--rate must be > 0, got {args.rate}')
    # Ctrl-C only sets a flag that the loop checks between clouds: a KeyboardInterrupt raised
    # wherever the interpreter is, inside deserialize_message for one, surfaced as another error.
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    rclpy.init(args=['segvec3d-play', *argv])
    node = Node(PLAY_NODE)
    exit_code = 0
    try:
        count = play(node, args, stop)
        node.get_logger().info(f'published {count} clouds')
    except BagError as error:
        print(f'segvec3d-play: error: {error}', file=sys.stderr)
        exit_code = 2
    except Exception:
        # A SIGTERM, or a Ctrl-C before the first cloud, shuts the context down under the
        # node, and its next call fails: that is a clean stop.
        if node.context.ok():
            raise
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return exit_code


if __name__ == '__main__':
    sys.exit(main())
