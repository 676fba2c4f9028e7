"""Real-DDS test harness: runs segvec3d executables as processes and talks to them with rclpy."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'segvec3d.yaml'


def start_executable(name: str, *ros_args: str) -> subprocess.Popen:
    """Start an installed segvec3d executable with the repo's params file."""
    command = [name, '--ros-args', '--params-file', str(PARAMS_FILE), *ros_args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))


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
    """Poll until predicate() is truthy; return its value, or None at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


class Client:
    """A test-side rclpy node spinning in a background thread, recording what it receives."""

    def __init__(self, name: str = 'segvec3d_test_client') -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
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
        done = wait_for(future.done, timeout)
        if not done:
            raise TimeoutError(f'no response from {client.srv_name}')
        return future.result()

    def close(self) -> None:
        """Shut the client's context down and join its thread."""
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


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
