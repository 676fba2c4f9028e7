"""Translate between ROS messages and the ROS-free core (the only place that builds messages)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from segvec3d_msgs.msg import Instance, InstanceArray
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.colors import instance_color
from segvec3d_ros.instances import InstanceInfo
from segvec3d_ros.io.pointcloud2 import PackedCloud, encode_pointcloud2

MARKER_ALPHA = 0.35
TEXT_HEIGHT = 0.04  # m
# m of text height per m from the frame's origin (the sensor, for a sensor-frame cloud):
# beyond 3.3 m a label grows with its distance, so that a LiDAR's instances 10-30 m away
# (0.12-0.36 m labels) read from the sensor's viewpoint as large as a label at 3.3 m; within
# 3.3 m, where a camera's objects are, TEXT_HEIGHT holds.
TEXT_HEIGHT_PER_METRE = 0.012


def text_height(info: InstanceInfo) -> float:
    """Return the height of an instance's marker text: TEXT_HEIGHT, or more when it is far."""
    return max(TEXT_HEIGHT, TEXT_HEIGHT_PER_METRE * float(np.linalg.norm(info.bbox_center)))


def pointcloud2_msg(header: Header, packed: PackedCloud) -> PointCloud2:
    """Wrap an encoded cloud body in a sensor_msgs/PointCloud2 with the given header."""
    return PointCloud2(
        header=header, height=packed.height, width=packed.width,
        fields=[PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                for f in packed.fields],
        is_bigendian=packed.is_bigendian, point_step=packed.point_step,
        row_step=packed.row_step, data=packed.data, is_dense=packed.is_dense)


def labeled_cloud_msg(header: Header, cloud: Cloud, labels: np.ndarray) -> PointCloud2:
    """Input points with an instance `label` per point (PCL PointXYZRGBL convention)."""
    return pointcloud2_msg(header, encode_pointcloud2(
        cloud.xyz, cloud.rgb, labels, height=cloud.height, width=cloud.width))


def instance_mask_msg(header: Header, cloud: Cloud, labels: np.ndarray) -> Image:
    """Instance id per pixel of an organized cloud (32SC1, 0 = none).

    This is the form grasp networks such as Contact-GraspNet take beside the depth image.
    """
    mask = np.ascontiguousarray(labels, dtype='<i4').reshape(cloud.height, cloud.width)
    return Image(header=header, height=cloud.height, width=cloud.width, encoding='32SC1',
                 is_bigendian=0, step=cloud.width * 4, data=mask.tobytes())


def box_pose(info: InstanceInfo) -> Pose:
    """Return the pose of an instance's oriented box: its centre and orientation."""
    bx, by, bz = (float(v) for v in info.bbox_center)
    qx, qy, qz, qw = (float(v) for v in info.bbox_quaternion)
    return Pose(position=Point(x=bx, y=by, z=bz), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))


def instance_msg(info: InstanceInfo) -> Instance:
    """Convert one InstanceInfo into a segvec3d_msgs/Instance."""
    cx, cy, cz = (float(v) for v in info.centroid)
    sx, sy, sz = (float(v) for v in info.bbox_size)
    r, g, b, a = (float(v) for v in info.mean_color)
    return Instance(
        id=int(info.id), label=info.label, label_score=float(info.label_score),
        num_points=int(info.num_points), centroid=Point(x=cx, y=cy, z=cz),
        bbox_center=box_pose(info),
        bbox_size=Vector3(x=sx, y=sy, z=sz), mean_color=ColorRGBA(r=r, g=g, b=b, a=a),
        embedding=np.asarray(info.embedding, dtype=np.float32).tolist(),
        first_seen=time_msg(info.first_seen), track_age=float(info.track_age))


_INT32_MAX = 2**31 - 1


def time_msg(seconds: float) -> Time:
    """builtin_interfaces/Time of a stamp in seconds (sec clamped to int32)."""
    whole = int(np.floor(seconds))
    nanosec = min(int(round((seconds - whole) * 1e9)), 999_999_999)
    # A stamp at the int32 limit (2147483647.999999999) rounds past it in float64.
    if whole > _INT32_MAX:
        return Time(sec=_INT32_MAX, nanosec=999_999_999)
    return Time(sec=max(whole, -_INT32_MAX - 1), nanosec=nanosec)


def stamp_seconds(stamp: Time) -> float:
    """Seconds of a builtin_interfaces/Time."""
    return stamp.sec + stamp.nanosec * 1e-9


def instance_info(msg: Instance) -> InstanceInfo:
    """Convert a segvec3d_msgs/Instance back into the ROS-free InstanceInfo."""
    pose = msg.bbox_center
    return InstanceInfo(
        id=int(msg.id), num_points=int(msg.num_points),
        centroid=np.array([msg.centroid.x, msg.centroid.y, msg.centroid.z]),
        bbox_center=np.array([pose.position.x, pose.position.y, pose.position.z]),
        bbox_quaternion=np.array([pose.orientation.x, pose.orientation.y,
                                  pose.orientation.z, pose.orientation.w]),
        bbox_size=np.array([msg.bbox_size.x, msg.bbox_size.y, msg.bbox_size.z]),
        mean_color=np.array([msg.mean_color.r, msg.mean_color.g, msg.mean_color.b,
                             msg.mean_color.a]),
        label=msg.label, label_score=float(msg.label_score),
        embedding=np.asarray(msg.embedding, dtype=np.float32),
        first_seen=stamp_seconds(msg.first_seen), track_age=float(msg.track_age))


def instance_array_msg(header: Header, instances: Sequence[InstanceInfo],
                       tracked: bool = False) -> InstanceArray:
    """All instances of one frame, stamped with the input cloud's header.

    `tracked`: their ids are tracked objects' ids.
    """
    return InstanceArray(header=header, instances=[instance_msg(i) for i in instances],
                         tracked=tracked)


def marker_array_msg(header: Header, instances: Sequence[InstanceInfo],
                     lifetime_s: float = 0.0) -> MarkerArray:
    """DELETEALL, then one oriented box and one text label per instance, coloured by id."""
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    lifetime = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1.0) * 1e9))
    for info in instances:
        r, g, b = instance_color(int(info.id))
        box = Marker(header=header, ns='segvec3d/boxes', id=int(info.id), type=Marker.CUBE,
                     action=Marker.ADD, lifetime=lifetime,
                     color=ColorRGBA(r=r, g=g, b=b, a=MARKER_ALPHA))
        box.pose = box_pose(info)
        sx, sy, sz = (max(float(v), 1e-3) for v in info.bbox_size)
        box.scale = Vector3(x=sx, y=sy, z=sz)
        text = Marker(header=header, ns='segvec3d/labels', id=int(info.id),
                      type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, lifetime=lifetime,
                      color=ColorRGBA(r=r, g=g, b=b, a=1.0),
                      text=f'{info.id}: {info.label}' if info.label else f'#{info.id}')
        text.pose.position = Point(x=float(info.bbox_center[0]), y=float(info.bbox_center[1]),
                                   z=float(info.bbox_center[2]))
        text.pose.orientation.w = 1.0
        text.scale.z = text_height(info)
        markers += [box, text]
    return MarkerArray(markers=markers)
