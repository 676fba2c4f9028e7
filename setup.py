"""ament_python package segvec3d_ros: the nodes, the ROS-free core and the command-line tools."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'segvec3d_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*')),
        (f'share/{PACKAGE}/models', glob('models/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='segvec3d maintainers',
    maintainer_email='maintainers@segvec3d.dev',
    description='3D instance segmentation and language queries for ROS 2 (SegVec3D).',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'segmentation_node = segvec3d_ros.ros.segmentation_node:main',
            'query_node = segvec3d_ros.ros.query_node:main',
            'segvec3d-up = segvec3d_ros.ros.up:main',
            'segvec3d-play = segvec3d_ros.ros.play:main',
            'segvec3d-bag = segvec3d_ros.ros.bag:main',
            'segvec3d = segvec3d_ros.cli.main:main',
        ],
    },
)
