"""DDS isolation for programs and tests that start their own segvec3d nodes."""
from __future__ import annotations

import os
import random


def isolate_dds() -> None:
    """Use a private DDS domain on loopback unless one is set, so parallel runs never mix.

    Call it before rclpy.init and before starting node processes, which inherit it.
    """
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(1, 100)))
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
