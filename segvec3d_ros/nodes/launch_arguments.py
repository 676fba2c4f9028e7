"""What the launch file does with its arguments, kept free of launch_ros so that it is tested.

A launch argument that the user did not give must leave the params file's value alone, and the
shipped Fast DDS profile is applied only where Fast DDS is the middleware and the user has not
chosen a profile of their own.
"""
from __future__ import annotations

from collections.abc import Mapping

PROFILE_VARIABLES = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')
FAST_DDS_RMWS = ('', 'rmw_fastrtps_cpp', 'rmw_fastrtps_dynamic_cpp')


def parameter_overrides(arguments: Mapping[str, str]) -> dict[str, str]:
    """The parameters that launch arguments set: those given, i.e. not left empty."""
    return {name: value for name, value in arguments.items() if value != ''}


def launch_flag(name: str, text: str) -> bool:
    """A boolean launch argument as `ros2 launch` users write it; ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in ('true', '1', 'yes', 'on'):
        return True
    if lowered in ('false', '0', 'no', 'off'):
        return False
    raise ValueError(f'launch argument {name}:={text!r} must be true or false')


def profile_environment(enabled: str, environ: Mapping[str, str],
                        profile_path: str) -> dict[str, str]:
    """Environment that gives a node the large-cloud Fast DDS profile, or nothing.

    Nothing when the argument turns it off, when another RMW (Cyclone DDS, Zenoh) runs, or when
    the user already points Fast DDS at a profile of theirs.
    """
    if not launch_flag('large_clouds_profile', enabled):
        return {}
    if environ.get('RMW_IMPLEMENTATION', '') not in FAST_DDS_RMWS:
        return {}
    if any(environ.get(variable) for variable in PROFILE_VARIABLES):
        return {}
    return {'FASTRTPS_DEFAULT_PROFILES_FILE': profile_path}
