# Source this file (bash/sh) to use the environment that scripts/setup.sh built:
#     . scripts/env.sh
# venv with ROS 2 Jazzy from PyPI wheels + the colcon workspace in .ws (segvec3d_msgs,
# segvec3d_ros). On a robot with ROS 2 installed, source /opt/ros/jazzy and your workspace instead.
_segvec3d_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
. "$_segvec3d_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV" CMAKE_PREFIX_PATH="$VIRTUAL_ENV"
. "$_segvec3d_root/.ws/install/setup.sh"
export PATH="$_segvec3d_root/.ws/install/segvec3d_ros/lib/segvec3d_ros:$PATH"
# DDS discovery stays on this machine unless the user says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset _segvec3d_root
