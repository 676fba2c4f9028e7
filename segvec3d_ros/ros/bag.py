"""segvec3d-bag: segment every cloud of a rosbag2 offline, into a new bag of the node's outputs.

    segvec3d-bag IN OUT [--topic T] [--params-file config/segvec3d.yaml]
                        [--storage sqlite3|mcap]

OUT gets /segvec3d/labeled_points, /segvec3d/instances and /segvec3d/markers, one message each
per input cloud, at the input's bag time and with the input's header: what recording the
running node would give. Messages are built by `segvec3d_ros.ros.conversions`, like the
node's. Clouds that cannot be decoded are skipped with a warning and counted.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rclpy.serialization import deserialize_message, serialize_message
from rclpy.time import Time
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from segvec3d_ros.cli.common import pipeline_config, pipeline_or_warn
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.io.bags import POINTCLOUD2, STORAGES, BagError, BagWriter, iter_bag_clouds
from segvec3d_ros.io.pointcloud2 import CloudDecodeError, decode_pointcloud2, encode_pointcloud2
from segvec3d_ros.names import (INSTANCES_TOPIC as NODE_INSTANCES_TOPIC, LABELED_POINTS_TOPIC,
                                MARKERS_TOPIC as NODE_MARKERS_TOPIC, SEGMENTATION_NODE)
from segvec3d_ros.pipeline import Pipeline
from segvec3d_ros.ros.conversions import (instance_array_msg, labeled_cloud_msg, marker_array_msg,
                                          pointcloud2_msg)

# The node's outputs, as a bag recorded at the root namespace holds them.
LABELED_TOPIC = f'/{LABELED_POINTS_TOPIC}'
INSTANCES_TOPIC = f'/{NODE_INSTANCES_TOPIC}'
MARKERS_TOPIC = f'/{NODE_MARKERS_TOPIC}'
INSTANCE_ARRAY = 'segvec3d_msgs/msg/InstanceArray'
MARKER_ARRAY = 'visualization_msgs/msg/MarkerArray'


@dataclass
class BagReport:
    """What a segvec3d-bag run did."""

    segmented: int = 0
    skipped: int = 0


def stamp_header(stamp_ns: int, frame_id: str) -> Header:
    """Header at `stamp_ns` nanoseconds since the epoch."""
    return Header(stamp=Time(nanoseconds=stamp_ns).to_msg(), frame_id=frame_id)


def write_cloud_bag(path: str | Path, clouds: Iterable[tuple[int, Cloud]], topic: str,
                    frame_id: str, storage: str = 'sqlite3') -> None:
    """Record (stamp_ns, cloud) pairs as PointCloud2 on `topic`, stamped and timed at stamp_ns."""
    with BagWriter(path, storage) as writer:
        for stamp_ns, cloud in clouds:
            msg = pointcloud2_msg(stamp_header(stamp_ns, frame_id), encode_pointcloud2(
                cloud.xyz, cloud.rgb, height=cloud.height, width=cloud.width))
            writer.write(topic, POINTCLOUD2, stamp_ns, serialize_message(msg))


def segment_bag(bag_in: str | Path, bag_out: str | Path, pipeline: Pipeline,
                topic: str | None = None, storage: str = 'sqlite3') -> BagReport:
    """Segment each cloud of `bag_in` and record the outputs in the new bag `bag_out`."""
    report = BagReport()
    with BagWriter(bag_out, storage) as writer:
        for index, message in enumerate(iter_bag_clouds(bag_in, topic)):
            try:
                msg = deserialize_message(message.raw, PointCloud2)
                cloud = decode_pointcloud2(msg)
            except (CloudDecodeError, RuntimeError) as error:  # rclpy: RMWError on bad CDR
                print(f'segvec3d-bag: warning: skipped cloud {index} at {message.timestamp} ns: '
                      f'{error}', file=sys.stderr)
                report.skipped += 1
                continue
            result = pipeline.process(cloud)
            outputs = {
                LABELED_TOPIC: (POINTCLOUD2, labeled_cloud_msg(msg.header, cloud, result.labels)),
                INSTANCES_TOPIC: (INSTANCE_ARRAY,
                                  instance_array_msg(msg.header, result.instances)),
                MARKERS_TOPIC: (MARKER_ARRAY, marker_array_msg(msg.header, result.instances)),
            }
            for out_topic, (msgtype, out) in outputs.items():
                writer.write(out_topic, msgtype, message.timestamp, serialize_message(out))
            report.segmented += 1
    return report


def build_parser() -> argparse.ArgumentParser:
    """Command line of segvec3d-bag."""
    parser = argparse.ArgumentParser(prog='segvec3d-bag', description=__doc__.split('\n\n')[0])
    parser.add_argument('bag_in', metavar='IN', help='rosbag2 folder, or a .db3 / .mcap file')
    parser.add_argument('bag_out', metavar='OUT', help='new rosbag2 folder (must not exist)')
    parser.add_argument('--topic', help='PointCloud2 topic to segment (default: the only one)')
    parser.add_argument('--params-file', metavar='YAML',
                        help=f'ROS params file; its {SEGMENTATION_NODE} section sets the pipeline')
    parser.add_argument('--storage', choices=STORAGES, default='sqlite3',
                        help='storage of OUT (default: sqlite3)')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run segvec3d-bag; 0 on success, 1 if no cloud could be segmented, 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        pipeline = pipeline_or_warn(pipeline_config(args.params_file), 'segvec3d-bag')
        report = segment_bag(args.bag_in, args.bag_out, pipeline, args.topic, args.storage)
    except (BagError, ValueError, OSError) as error:
        print(f'segvec3d-bag: error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('segvec3d-bag: interrupted; OUT holds the clouds done so far', file=sys.stderr)
        return 130
    print(f'{args.bag_out}: {report.segmented} clouds segmented, {report.skipped} skipped')
    return 0 if report.segmented else 1


if __name__ == '__main__':
    sys.exit(main())
