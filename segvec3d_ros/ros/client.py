"""One client of a running segvec3d, for the demo, the tests and users' scripts.

    client = Segvec3dClient()
    client.points_pub.publish(cloud)            # or let a camera driver publish
    answer = client.ask('the red mug left of the bowl')
    part = client.segment_at((0.1, 0.0, 0.8), 'camera_color_optical_frame', scale=0.03)
    client.close()

The client is a node of its own, in a context of its own, spinning in a background thread: a
script calls it from its main thread and blocks only on what it waits for.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point, PointStamped
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
from segvec3d_msgs.srv import QueryInstance, SegmentAt
from segvec3d_ros.names import (CLICKED_POINT_TOPIC, DIAGNOSTICS_TOPIC, INSTANCES_TOPIC,
                                LABELED_POINTS_TOPIC, MARKERS_TOPIC, POINTS_TOPIC, QUERY_SERVICE,
                                SEGMENT_AT_SERVICE)

# The outputs of one frame, each stamped with the input cloud's header.
OUTPUT_TOPICS = (LABELED_POINTS_TOPIC, INSTANCES_TOPIC, MARKERS_TOPIC)


def header_of(msg: Any) -> Header | None:
    """Header of an output message; a MarkerArray's is its first marker's."""
    if isinstance(msg, MarkerArray):
        return msg.markers[0].header if msg.markers else None
    return msg.header


def point_stamped(xyz: tuple[float, float, float], frame_id: str) -> PointStamped:
    """Make a PointStamped at `xyz` in `frame_id`."""
    x, y, z = (float(v) for v in xyz)
    return PointStamped(header=Header(frame_id=frame_id), point=Point(x=x, y=y, z=z))


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


class Segvec3dClient:
    """Publishes clouds to segvec3d, records its outputs and asks its query service."""

    def __init__(self, name: str = 'segvec3d_client', domain_id: int | None = None,
                 record_outputs: bool = True) -> None:
        """Start the client's node; `record_outputs` subscribes to the outputs and diagnostics.

        A client that only queries, or measures rates, may leave them out.
        """
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[Any]] = {}
        self.points_pub = self.node.create_publisher(PointCloud2, POINTS_TOPIC,
                                                     qos_profile_sensor_data)
        self.query_client = self.node.create_client(QueryInstance, QUERY_SERVICE)
        self.segment_at_client = self.node.create_client(SegmentAt, SEGMENT_AT_SERVICE)
        self.clicked_point_pub = self.node.create_publisher(PointStamped, CLICKED_POINT_TOPIC, 10)
        if record_outputs:
            self.record(PointCloud2, LABELED_POINTS_TOPIC)
            self.record(InstanceArray, INSTANCES_TOPIC)
            self.record(MarkerArray, MARKERS_TOPIC)
            self.record(DiagnosticArray, DIAGNOSTICS_TOPIC)
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
        """Call a service and wait for the response; TimeoutError when none comes."""
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

    def ask(self, text: str, top_k: int = 1, timeout: float = 30.0) -> QueryInstance.Response:
        """Query service's answer for `text`."""
        return self.call(self.query_client, QueryInstance.Request(text=text, top_k=top_k),
                         timeout)

    def segment_at(self, xyz: tuple[float, float, float], frame_id: str, scale: float = 0.0,
                   timeout: float = 30.0) -> SegmentAt.Response:
        """segment_at's answer for the point `xyz` in `frame_id`: an object, or a part (scale)."""
        return self.call(self.segment_at_client,
                         SegmentAt.Request(point=point_stamped(xyz, frame_id), scale=scale),
                         timeout)

    def click(self, xyz: tuple[float, float, float], frame_id: str) -> None:
        """Publish a point as RViz's Publish Point tool does."""
        self.clicked_point_pub.publish(point_stamped(xyz, frame_id))

    def outputs_for(self, header: Header, timeout: float = 30.0) -> dict[str, Any] | None:
        """Wait for all three outputs stamped with this header; None at the timeout."""
        def find() -> dict[str, Any] | None:
            found = {}
            for topic in OUTPUT_TOPICS:
                match = [m for m in self.received[topic] if header_of(m) == header]
                if not match:
                    return None
                found[topic] = match[-1]
            return found
        return wait_for(find, timeout)

    def publish_until_answered(self, msg: PointCloud2, timeout: float = 60.0,
                               period: float = 2.0,
                               publish: Callable[[PointCloud2], None] | None = None
                               ) -> dict[str, Any] | None:
        """Publish `msg` every `period` s until all its outputs arrive; None at the timeout.

        Sensor-data QoS is best effort, so a message can be lost; a repeat is harmless because
        the node processes only the latest frame. `publish` defaults to `points_pub`.
        """
        publish = publish or self.points_pub.publish
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            publish(msg)
            found = self.outputs_for(msg.header,
                                     timeout=min(period, deadline - time.monotonic()))
            if found:
                return found
        return None

    def pipeline_status(self) -> dict[str, str] | None:
        """Key values of the latest pipeline status on /diagnostics, or None before the first."""
        for array in reversed(self.received.get(DIAGNOSTICS_TOPIC, [])):
            for status in array.status:
                if status.name.endswith('pipeline'):
                    return {kv.key: kv.value for kv in status.values}
        return None

    def set_parameter(self, node: str, name: str, value: Any) -> SetParametersResult:
        """Set one parameter of a running node through its set_parameters service."""
        service = self.node.create_client(SetParameters, f'{node}/set_parameters')
        request = SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self.call(service, request).results[0]

    def get_parameter(self, node: str, name: str, timeout: float = 30.0) -> Any:
        """Get the current value of one parameter of a running node."""
        service = self.node.create_client(GetParameters, f'{node}/get_parameters')
        value = self.call(service, GetParameters.Request(names=[name]), timeout).values[0]
        return Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value

    def close(self) -> None:
        """Shut the client's context down and join its thread."""
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)
