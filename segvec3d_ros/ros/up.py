"""segvec3d-up: the segmentation and query nodes in one process, sharing one params file.

rclpy has no component containers, so this is how the product runs without `ros2 launch`:
    segvec3d-up --ros-args --params-file config/segvec3d.yaml -r points:=/camera/points
"""
from __future__ import annotations

from segvec3d_ros.ros.query_node import QueryNode
from segvec3d_ros.ros.runner import run
from segvec3d_ros.ros.segmentation_node import SegmentationNode


def main(args: list[str] | None = None) -> None:
    """Spin both nodes on one single-threaded executor until Ctrl-C or shutdown."""
    run(SegmentationNode, QueryNode, args=args)


if __name__ == '__main__':
    main()
