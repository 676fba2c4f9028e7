"""Real-DDS test harness: runs segvec3d executables as processes and talks to them with rclpy."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter as ParameterMsg, SetParametersResult
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from segvec3d_msgs.msg import InstanceArray
from segvec3d_msgs.srv import QueryInstance
from segvec3d_ros.io.pointcloud2 import encode_pointcloud2
from segvec3d_ros.nodes.conversions import pointcloud2_msg
from segvec3d_ros.tools.dds import isolate_dds

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'segvec3d.yaml'
FRAME = 'camera_depth_optical_frame'
OUTPUT_TOPICS = ('segvec3d/labeled_points', 'segvec3d/instances', 'segvec3d/markers')


# Every process of a test run, and every node it starts, uses the shipped large-cloud Fast DDS
# profile, as a robot should: with Fast DDS's defaults a best-effort message above 512 KiB (a
# 30k-point cloud with extra fields, a camera frame) travels as UDP fragments and is lost now
# and then. Set on import, before anything here initialises rclpy; children inherit it.
os.environ.setdefault('FASTRTPS_DEFAULT_PROFILES_FILE',
                      str(REPO / 'config' / 'fastdds_large_clouds.xml'))


def separate_domain_env() -> dict[str, str]:
    """A DDS domain of its own for a second system beside the module's (isolate_dds() domains
    are 1-100), so that neither hears the other."""
    return {'ROS_DOMAIN_ID': str(int(os.environ['ROS_DOMAIN_ID']) + 100)}


def start_executable(name: str, *ros_args: str, env: Mapping[str, str] | None = None,
                     params_file: Path | None = PARAMS_FILE,
                     new_session: bool = False) -> subprocess.Popen:
    """Start an installed segvec3d executable with a params file (the repo's by default, none
    when None) and extra `env`; `new_session` makes it the leader of its own process group."""
    files = [] if params_file is None else ['--params-file', str(params_file)]
    return subprocess.Popen([name, '--ros-args', *files, *ros_args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=new_session,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', **(env or {})))


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


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its value, or None at the timeout.

    The predicate is asked at least once, so a timeout of 0 is a plain check.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class Client:
    """A test-side rclpy node spinning in a background thread, recording what it receives."""

    def __init__(self, name: str = 'segvec3d_test_client', domain_id: int | None = None) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[Any]] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - shutting down mid-spin
                if self.context.ok():
                    raise

    def record(self, msg_type: type, topic: str, reliable: bool = True) -> list[Any]:
        """Subscribe to a topic and return the list its messages are appended to."""
        messages: list[Any] = self.received.setdefault(topic, [])
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.node.create_subscription(msg_type, topic, messages.append, qos)
        return messages

    def call(self, client: Any, request: Any, timeout: float = 30.0) -> Any:
        """Call a service and wait for the response."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f'service {client.srv_name} not available')
        future = client.call_async(request)
        # Set from the spinning thread as the answer arrives: polling future.done() would round
        # every measured latency up to the polling period.
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        if not answered.wait(timeout):
            raise TimeoutError(f'no response from {client.srv_name}')
        return future.result()

    def close(self) -> None:
        """Shut the client's context down and join its thread."""
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


class UpClient(Client):
    """segvec3d-up in its own process, and a Client recording its outputs and /diagnostics.

    The node's stdout and stderr are read continuously into `output`, so that a long run can
    never block on a full pipe and a test can look for a log line while the node runs.
    """

    def __init__(self, *ros_args: str, name: str = 'segvec3d_test_client',
                 env: Mapping[str, str] | None = None, startup_timeout: float = 60.0,
                 params_file: Path | None = PARAMS_FILE) -> None:
        """Start segvec3d-up with `ros_args`, `params_file` (None: none) and extra `env`, which
        may set its ROS_DOMAIN_ID."""
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
        self.record(PointCloud2, 'segvec3d/labeled_points')
        self.record(InstanceArray, 'segvec3d/instances')
        self.record(MarkerArray, 'segvec3d/markers')
        self.record(DiagnosticArray, '/diagnostics')
        self.points_pub = self.node.create_publisher(PointCloud2, 'points',
                                                     qos_profile_sensor_data)
        self.query = self.node.create_client(QueryInstance, 'segvec3d/query')
        started = wait_for(lambda: self.process.poll() is not None
                           or self.query.wait_for_service(timeout_sec=0.5), startup_timeout)
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
        """A memory figure of the node from /proc/<pid>/status: VmRSS, VmHWM (peak), RssAnon."""
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
    """segvec3d-up with `ros_args` and its client, in a domain apart from a module's system;
    on exit the node stops and its output must hold no traceback."""
    up = UpClient(*ros_args, env=separate_domain_env(), params_file=params_file)
    try:
        yield up
    finally:
        _, output = up.stop()
    assert 'Traceback' not in output, output


def make_header(frame_id: str = FRAME, sec: int = 0) -> Header:
    """A header stamped now (or at `sec`), unique to the nanosecond."""
    header = Header(frame_id=frame_id)
    header.stamp.sec = sec or int(time.time())
    header.stamp.nanosec = int(time.time_ns() % 1_000_000_000)
    return header


def header_of(msg: Any) -> Header | None:
    """The header of an output message; a MarkerArray's is its first marker's."""
    if isinstance(msg, MarkerArray):
        return msg.markers[0].header if msg.markers else None
    return msg.header


def outputs_for(client: Client, header: Header, timeout: float = 30.0) -> dict[str, Any] | None:
    """Wait for all three outputs stamped with this header (re-publishing is the caller's job)."""
    def find() -> dict[str, Any] | None:
        found = {}
        for topic in OUTPUT_TOPICS:
            match = [m for m in client.received[topic] if header_of(m) == header]
            if not match:
                return None
            found[topic] = match[-1]
        return found
    return wait_for(find, timeout)


def publish_msg_until_answered(client: UpClient, msg: PointCloud2, timeout: float = 60.0,
                               period: float = 2.0,
                               publish: Callable[[PointCloud2], None] | None = None
                               ) -> dict[str, Any] | None:
    """Publish `msg` every `period` s until all its outputs arrive; None at the timeout.

    Sensor-data QoS is best effort, so a message can be lost; a repeat is harmless because the
    node processes only the latest frame. `publish` defaults to the client's publisher.
    """
    publish = publish or client.points_pub.publish
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        publish(msg)
        found = outputs_for(client, msg.header, timeout=min(period, deadline - time.monotonic()))
        if found:
            return found
    return None


def cloud_msg(header: Header, xyz: np.ndarray, rgb: np.ndarray | None = None,
              height: int = 1) -> PointCloud2:
    """The PointCloud2 the codec writes for these points."""
    return pointcloud2_msg(header, encode_pointcloud2(xyz, rgb, height=height))


def publish_until_answered(client: UpClient, xyz: np.ndarray, rgb: np.ndarray | None,
                           header: Header, height: int = 1,
                           timeout: float = 60.0) -> dict[str, Any] | None:
    """Encode and publish a cloud until all its outputs arrive; None at the timeout."""
    return publish_msg_until_answered(client, cloud_msg(header, xyz, rgb, height), timeout)


def query(client: UpClient, text: str, top_k: int = 1) -> QueryInstance.Response:
    """Ask the query service and wait for its answer."""
    return client.call(client.query, QueryInstance.Request(text=text, top_k=top_k))


def pipeline_diagnostics(client: Client) -> dict[str, str] | None:
    """Key values of the latest pipeline status on /diagnostics, or None before the first."""
    for array in reversed(client.received.get('/diagnostics', [])):
        for status in array.status:
            if status.name.endswith('pipeline'):
                return {kv.key: kv.value for kv in status.values}
    return None


def diagnostics_count(client: Client, key: str) -> int:
    """A counter of the latest pipeline diagnostics, e.g. frames_rejected; 0 before the first."""
    return int((pipeline_diagnostics(client) or {}).get(key, 0))


def set_parameter(client: Client, node: str, name: str, value: Any) -> SetParametersResult:
    """Set one parameter of a running node through its set_parameters service."""
    service = client.node.create_client(SetParameters, f'{node}/set_parameters')
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return client.call(service, request).results[0]


def get_parameter(client: Client, node: str, name: str, timeout: float = 30.0) -> Any:
    """The current value of one parameter of a running node."""
    service = client.node.create_client(GetParameters, f'{node}/get_parameters')
    value = client.call(service, GetParameters.Request(names=[name]), timeout).values[0]
    return Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value


def tabletop_points(seed: int = 0, n_objects: int = 3) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """A table plane and separated boxes seen from a camera frame (z forward, y down).

    Returns xyz (N,3) float32, rgb (N,3) uint8 and the true instance id per point (0 = table).
    """
    rng = np.random.default_rng(seed)
    table = np.column_stack([rng.uniform(-0.5, 0.5, 20000), np.full(20000, 0.3),
                             rng.uniform(0.6, 1.4, 20000)])
    parts, ids = [table], [np.zeros(len(table), np.int64)]
    for obj in range(n_objects):
        centre = np.array([-0.3 + 0.3 * obj, 0.3 - 0.06, 1.0])
        box = centre + rng.uniform(-0.05, 0.05, (3000, 3)) * np.array([1.0, 1.2, 1.0])
        parts.append(box)
        ids.append(np.full(len(box), obj + 1))
    xyz = np.concatenate(parts).astype(np.float32)
    truth = np.concatenate(ids)
    palette = np.array([[150, 110, 70], [220, 30, 30], [30, 60, 220], [40, 170, 50],
                        [230, 210, 40]], np.uint8)
    rgb = palette[truth % len(palette)]
    return xyz, rgb, truth
