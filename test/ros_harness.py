"""Real-DDS test harness: runs segvec3d executables as processes and talks to them with rclpy."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from scenes import PARAMS_FILE, REPO
from segvec3d_ros.io.pointcloud2 import POINT_FIELD_TYPES, encode_pointcloud2
from segvec3d_ros.ros.client import Segvec3dClient, wait_for
from segvec3d_ros.ros.conversions import pointcloud2_msg
from segvec3d_ros.ros.dds import isolate_dds

FRAME = 'camera_depth_optical_frame'


# Every process of a test run, and every node it starts, uses the shipped large-cloud Fast DDS
# profile, as a robot should: with Fast DDS's defaults a best-effort message above 512 KiB (a
# 30k-point cloud with extra fields, a camera frame) travels as UDP fragments and is lost now
# and then. Set on import, before anything here initialises rclpy; children inherit it.
os.environ.setdefault('FASTRTPS_DEFAULT_PROFILES_FILE',
                      str(REPO / 'config' / 'fastdds_large_clouds.xml'))


def separate_domain_env() -> dict[str, str]:
    """Environment giving a second system a DDS domain of its own, beside the module's.

    isolate_dds() domains are 1-100, so the two are apart and neither hears the other.
    """
    return {'ROS_DOMAIN_ID': str(int(os.environ['ROS_DOMAIN_ID']) + 100)}


def start_executable(name: str, *ros_args: str, env: Mapping[str, str] | None = None,
                     params_file: Path | None = PARAMS_FILE,
                     new_session: bool = False) -> subprocess.Popen:
    """Start an installed segvec3d executable with a params file and extra `env`.

    The params file is the repo's by default, none when None; `new_session` makes the process
    the leader of its own process group.
    """
    files = [] if params_file is None else ['--params-file', str(params_file)]
    return subprocess.Popen([name, '--ros-args', *files, *ros_args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=new_session,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})))


def read_until(process: subprocess.Popen, text: str) -> list[str]:
    """Read the lines a process writes to stderr, up to and including the first holding `text`."""
    seen = []
    for line in iter(process.stderr.readline, ''):
        seen.append(line)
        if text in line:
            break
    return seen


def wait_and_read(process: subprocess.Popen, seen: list[str],
                  timeout: float = 60.0) -> tuple[int, str]:
    """Wait for a signalled process to exit; (exit code, all it printed, `seen` first).

    Not communicate(): it would skip what readline() has buffered.
    """
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return code, ''.join(seen) + process.stderr.read() + process.stdout.read()


def stop_process(process: subprocess.Popen, sig: int = signal.SIGINT,
                 timeout: float = 15.0) -> tuple[int, str, str]:
    """Signal a process and return (exit code, stdout, stderr)."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


class UpClient(Segvec3dClient):
    """segvec3d-up in its own process, and the product's client recording its outputs.

    The node's stdout and stderr are read continuously into `output`, so that a long run can
    never block on a full pipe and a test can look for a log line while the node runs.
    """

    def __init__(self, *ros_args: str, name: str = 'segvec3d_test_client',
                 env: Mapping[str, str] | None = None, startup_timeout: float = 60.0,
                 params_file: Path | None = PARAMS_FILE) -> None:
        """Start segvec3d-up with `ros_args`, `params_file` (None: none) and extra `env`.

        `env` may set its ROS_DOMAIN_ID.
        """
        isolate_dds()
        self.process = start_executable('segvec3d-up', *ros_args, env=env,
                                        params_file=params_file)
        self.output: list[str] = []
        self._readers = [threading.Thread(target=self._collect, args=(stream,), daemon=True)
                         for stream in (self.process.stdout, self.process.stderr)]
        for reader in self._readers:
            reader.start()
        domain = (env or {}).get('ROS_DOMAIN_ID')
        super().__init__(name, None if domain is None else int(domain))
        started = wait_for(lambda: self.process.poll() is not None
                           or self.query_client.wait_for_service(timeout_sec=0.5),
                           startup_timeout)
        if not started or self.process.poll() is not None:
            code, output = self.stop()
            raise RuntimeError(f'segvec3d-up did not come up (exit code {code}):\n{output}')

    def _collect(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line)

    @property
    def output_text(self) -> str:
        """Everything the node printed so far."""
        return ''.join(self.output)

    def memory_bytes(self, key: str = 'VmRSS') -> int:
        """One memory figure of the node from /proc/<pid>/status: VmRSS, VmHWM (peak), RssAnon."""
        for line in Path(f'/proc/{self.process.pid}/status').read_text().splitlines():
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024  # reported in kB
        raise KeyError(f'{key} not in /proc/{self.process.pid}/status')

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> tuple[int, str]:
        """Close the client, signal the node and return (exit code, everything it printed)."""
        self.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5.0)
        return self.process.returncode, self.output_text


@contextmanager
def separate_system(*ros_args: str, params_file: Path | None = PARAMS_FILE
                    ) -> Iterator[UpClient]:
    """segvec3d-up with `ros_args` and its client, in a domain apart from a module's system.

    On exit the node stops and its output must hold no traceback.
    """
    up = UpClient(*ros_args, env=separate_domain_env(), params_file=params_file)
    try:
        yield up
    finally:
        _, output = up.stop()
    assert 'Traceback' not in output, output


def make_header(frame_id: str = FRAME, sec: int = 0) -> Header:
    """Header stamped now (or at `sec`), unique to the nanosecond."""
    header = Header(frame_id=frame_id)
    header.stamp.sec = sec or int(time.time())
    header.stamp.nanosec = int(time.time_ns() % 1_000_000_000)
    return header


def cloud_msg(header: Header, xyz: np.ndarray, rgb: np.ndarray | None = None,
              height: int = 1) -> PointCloud2:
    """PointCloud2 the codec writes for these points."""
    return pointcloud2_msg(header, encode_pointcloud2(xyz, rgb, height=height))


def columns_msg(header: Header, columns: dict[str, tuple[int, np.ndarray]],
                big_endian: bool = False, height: int = 1) -> PointCloud2:
    """Pack name -> (PointField datatype, values) columns back to back into a cloud.

    `height` > 1 makes it organized, height rows of n / height points.
    """
    order = '>' if big_endian else '<'
    # An unknown datatype still needs bytes in the record: one, as a driver might send.
    formats = [POINT_FIELD_TYPES.get(datatype, np.dtype('u1')).newbyteorder(order)
               for datatype, _ in columns.values()]
    dtype = np.dtype({'names': list(columns), 'formats': formats})
    n = len(next(iter(columns.values()))[1])
    records = np.zeros(n, dtype)
    for name, (_, values) in columns.items():
        records[name] = values
    width = n // height
    return PointCloud2(
        header=header, height=height, width=width, is_bigendian=big_endian, is_dense=False,
        point_step=dtype.itemsize, row_step=width * dtype.itemsize, data=records.tobytes(),
        fields=[PointField(name=name, offset=dtype.fields[name][1], datatype=datatype, count=1)
                for name, (datatype, _) in columns.items()])


def publish_until_answered(client: UpClient, xyz: np.ndarray, rgb: np.ndarray | None,
                           header: Header, height: int = 1,
                           timeout: float = 60.0) -> dict[str, Any] | None:
    """Encode and publish a cloud until all its outputs arrive; None at the timeout."""
    return client.publish_until_answered(cloud_msg(header, xyz, rgb, height), timeout)


def diagnostics_count(client: Segvec3dClient, key: str) -> int:
    """Counter of the latest pipeline diagnostics, e.g. frames_rejected; 0 before the first."""
    return int((client.pipeline_status() or {}).get(key, 0))
