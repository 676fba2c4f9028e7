"""Launch the segvec3d segmentation and query nodes, and optionally RViz.

For example:

    ros2 launch segvec3d_ros segvec3d.launch.py points_topic:=/camera/depth/points rviz:=true
    ros2 launch segvec3d_ros segvec3d.launch.py sensor:=lidar points_topic:=/ouster/points
"""
import os

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from segvec3d_ros.names import PACKAGE, QUERY_NODE, SEGMENTATION_NODE
from segvec3d_ros.ros.launch_arguments import (parameter_overrides, params_file_for,
                                               profile_environment)


def _nodes(context: LaunchContext) -> list[Node]:
    """Both nodes, with launch arguments applied over the params file only where given."""
    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    config_dir = os.path.join(FindPackageShare(PACKAGE).perform(context), 'config')
    params_file = params_file_for(value('sensor'), value('params_file'), config_dir)
    env = profile_environment(value('large_clouds_profile'), os.environ, config_dir)
    segmentation = Node(
        package=PACKAGE, executable='segmentation_node', name=SEGMENTATION_NODE,
        namespace=value('namespace'), output='screen', emulate_tty=True,
        parameters=[params_file, parameter_overrides({'device': value('device')})],
        remappings=[('points', value('points_topic'))], additional_env=env)
    query = Node(
        package=PACKAGE, executable='query_node', name=QUERY_NODE,
        namespace=value('namespace'), output='screen', emulate_tty=True,
        parameters=[params_file], additional_env=env)
    return [segmentation, query]


def generate_launch_description() -> LaunchDescription:
    """Both nodes share one params file; a launch argument overrides it only when given."""
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of both nodes and their topics'),
        DeclareLaunchArgument('points_topic', default_value='/camera/depth/points',
                              description='the sensor_msgs/PointCloud2 topic to segment'),
        DeclareLaunchArgument('device', default_value='',
                              description='auto | cpu | cuda; empty = the params file\'s'),
        DeclareLaunchArgument('sensor', default_value='camera',
                              description='camera | lidar | lidar_indoor: the shipped '
                                          'params file, config/segvec3d.yaml, config/lidar.yaml '
                                          '(streets, yards) or config/lidar_indoor.yaml (rooms '
                                          'and tables, learned), used when params_file is not '
                                          'given'),
        DeclareLaunchArgument('params_file', default_value='',
                              description='parameters of both nodes; empty = the sensor '
                                          'argument\'s shipped file'),
        DeclareLaunchArgument('large_clouds_profile', default_value='true',
                              description='give both nodes the shipped Fast DDS or Cyclone DDS '
                                          'profile for camera-sized clouds, unless one is set '
                                          'already in the environment'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='start RViz with the segvec3d display config'),
    ]
    rviz = Node(
        package='rviz2', executable='rviz2', name='segvec3d_rviz',
        namespace=LaunchConfiguration('namespace'),
        arguments=['-d', PathJoinSubstitution([share, 'config', 'segvec3d.rviz'])],
        condition=IfCondition(LaunchConfiguration('rviz')))
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes), rviz])
