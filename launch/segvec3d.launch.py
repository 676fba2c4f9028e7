"""Launch the segvec3d segmentation and query nodes, and optionally RViz.

    ros2 launch segvec3d_ros segvec3d.launch.py points_topic:=/camera/depth/points rviz:=true
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'segvec3d_ros'


def generate_launch_description() -> LaunchDescription:
    """Both nodes share one params file; `device` overrides the file's value."""
    share = FindPackageShare(PACKAGE)
    namespace = LaunchConfiguration('namespace')
    params_file = LaunchConfiguration('params_file')
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of both nodes and their topics'),
        DeclareLaunchArgument('points_topic', default_value='/camera/depth/points',
                              description='the sensor_msgs/PointCloud2 topic to segment'),
        DeclareLaunchArgument('device', default_value='auto',
                              description='auto | cpu | cuda'),
        DeclareLaunchArgument('params_file',
                              default_value=PathJoinSubstitution([share, 'config',
                                                                  'segvec3d.yaml']),
                              description='parameters of both nodes'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='start RViz with the segvec3d display config'),
    ]
    segmentation = Node(
        package=PACKAGE, executable='segmentation_node', name='segvec3d_segmentation',
        namespace=namespace, output='screen', emulate_tty=True,
        parameters=[params_file, {'device': LaunchConfiguration('device')}],
        remappings=[('points', LaunchConfiguration('points_topic'))])
    query = Node(
        package=PACKAGE, executable='query_node', name='segvec3d_query',
        namespace=namespace, output='screen', emulate_tty=True, parameters=[params_file])
    rviz = Node(
        package='rviz2', executable='rviz2', name='segvec3d_rviz', namespace=namespace,
        arguments=['-d', PathJoinSubstitution([share, 'config', 'segvec3d.rviz'])],
        condition=IfCondition(LaunchConfiguration('rviz')))
    return LaunchDescription([*arguments, segmentation, query, rviz])
