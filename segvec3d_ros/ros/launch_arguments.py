"""What the launch file does with its arguments, kept free of launch_ros so that it is tested.

A launch argument that the user did not give must leave the params file's value alone, and a
shipped middleware profile is applied only where the user has not chosen one of their own.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

FAST_DDS_RMWS = ('', 'rmw_fastrtps_cpp', 'rmw_fastrtps_dynamic_cpp')
FAST_DDS_VARIABLES = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
FAST_DDS_PROFILE = 'fastdds_large_clouds.xml'
CYCLONE_DDS_RMW = 'rmw_cyclonedds_cpp'
CYCLONE_DDS_PROFILE = 'cyclonedds_large_clouds.xml'
# The shipped params file of each `sensor` launch argument, in the package's config folder.
SENSOR_PARAMS = {'camera': 'segvec3d.yaml', 'lidar': 'lidar.yaml',
                 'lidar_indoor': 'lidar_indoor.yaml'}


def params_file_for(sensor: str, params_file: str, config_dir: str) -> str:
    """Return the params file of both nodes: `params_file` when given, else the sensor's.

    Raises ValueError naming the argument when `sensor` is none of SENSOR_PARAMS.
    """
    if sensor not in SENSOR_PARAMS:
        raise ValueError(f'launch argument sensor:={sensor!r} must be one of '
                         f'{", ".join(SENSOR_PARAMS)}')
    return params_file or os.path.join(config_dir, SENSOR_PARAMS[sensor])


def parameter_overrides(arguments: Mapping[str, str]) -> dict[str, str]:
    """Parameters that launch arguments set: those given, i.e. not left empty."""
    return {name: value for name, value in arguments.items() if value != ''}


def launch_flag(name: str, text: str) -> bool:
    """Parse a boolean launch argument as `ros2 launch` users write it; ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in ('true', '1', 'yes', 'on'):
        return True
    if lowered in ('false', '0', 'no', 'off'):
        return False
    raise ValueError(f'launch argument {name}:={text!r} must be true or false')


def profile_environment(enabled: str, environ: Mapping[str, str],
                        config_dir: str) -> dict[str, str]:
    """Environment that gives a node the shipped large-cloud middleware profile, or nothing.

    Fast DDS (the Jazzy default) gets `FAST_DDS_PROFILE` and Cyclone DDS `CYCLONE_DDS_PROFILE`
    from `config_dir`. Nothing when the argument turns it off, when another RMW (Zenoh,
    Connext) runs, or when the user already points the middleware at a profile of theirs.
    """
    if not launch_flag('large_clouds_profile', enabled):
        return {}
    rmw = environ.get('RMW_IMPLEMENTATION', '')
    if rmw in FAST_DDS_RMWS and not any(environ.get(v) for v in FAST_DDS_VARIABLES):
        return {'FASTRTPS_DEFAULT_PROFILES_FILE': os.path.join(config_dir, FAST_DDS_PROFILE)}
    if rmw == CYCLONE_DDS_RMW and not environ.get('CYCLONEDDS_URI'):
        return {'CYCLONEDDS_URI': 'file://' + os.path.join(config_dir, CYCLONE_DDS_PROFILE)}
    return {}
