"""segvec3d_query: answers free-text queries about the objects segmented recently.

The latest frame's instances and, with tracked ids, the objects seen in earlier frames within
max_scene_age.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from segvec3d_msgs.msg import InstanceArray
from segvec3d_msgs.srv import QueryInstance
from segvec3d_ros.config import setting
from segvec3d_ros.grounding.query import DEFAULT_MIN_SCORE, make_query_engine
from segvec3d_ros.grounding.scene_store import SceneStore
from segvec3d_ros.io.pointcloud2 import CloudDecodeError, decode_pointcloud2, encode_pointcloud2
from segvec3d_ros.names import INSTANCES_TOPIC, LABELED_POINTS_TOPIC, QUERY_NODE, QUERY_SERVICE
from segvec3d_ros.ros.conversions import instance_info, pointcloud2_msg
from segvec3d_ros.ros.params import check_parameters, declare_settings, read_settings
from segvec3d_ros.ros.runner import run

WARN_THROTTLE_S = 2.0


@dataclass
class QueryNodeSettings:
    """Parameters of the query node."""

    max_scene_age: float = setting(
        10.0, 'seconds after which the latest scene is too old to answer from; 0 = no limit',
        range=(0.0, 86400.0))
    min_score: float = setting(
        DEFAULT_MIN_SCORE, 'fit score (0-1) of the best match below which the answer is '
        'success=false, "not found" (the candidates are still returned); 0 = always answer',
        range=(0.0, 1.0))
    text_device: str = setting(
        'cpu', 'device of the frozen text encoder', choices=('cpu', 'cuda'), read_only=True)
    grounding_model_path: str = setting(
        '', 'grounding head that maps text into the instances\' embedding space; empty = the '
        'bundled models/grounding.pt', read_only=True)


def _frame_key(header: Header) -> tuple[int, int, str]:
    return (header.stamp.sec, header.stamp.nanosec, header.frame_id)


class QueryNode(Node):
    """Follows the segmentation outputs and ranks the latest scene's instances for text."""

    def __init__(self) -> None:
        super().__init__(QUERY_NODE)
        declare_settings(self, QueryNodeSettings)
        self._settings: QueryNodeSettings = read_settings(self, QueryNodeSettings)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        # Loading the encoder takes seconds: pay it at start-up, not in the first query.
        self._engine, engine_status = make_query_engine(self._settings.grounding_model_path,
                                                        self._settings.text_device)
        self._scenes = SceneStore()
        self._instances_sub = self._follow(InstanceArray, INSTANCES_TOPIC,
                                           self._on_instances)
        self._points_sub = self._follow(PointCloud2, LABELED_POINTS_TOPIC, self._on_points)
        self._service = self.create_service(QueryInstance, QUERY_SERVICE, self._on_query)
        self.get_logger().info(f'answering queries on {self._service.srv_name}; {engine_status}')

    def _follow(self, msg_type: type, topic: str, callback: Callable[[Any], None]
                ) -> Subscription:
        """Subscribe to a scene output with the QoS its publisher offers.

        Best available takes the segmentation node's transient-local durability, so that a
        query node started later still gets the last scene, and matches either output
        reliability. Policies are chosen when the subscription is made; a publisher that comes
        later with a QoS that does not match is followed by making the subscription anew.
        """
        qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.BEST_AVAILABLE,
                         durability=DurabilityPolicy.BEST_AVAILABLE)
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda _: self._refollow(msg_type, topic, callback))
        return self.create_subscription(msg_type, topic, callback, qos, event_callbacks=events)

    def _refollow(self, msg_type: type, topic: str, callback: Callable[[Any], None]) -> None:
        """Make a subscription anew after its QoS did not match a new publisher's."""
        attribute = '_instances_sub' if msg_type is InstanceArray else '_points_sub'
        self.get_logger().info(f'a publisher on {topic} offers another QoS; subscribing anew')
        self.destroy_subscription(getattr(self, attribute))
        setattr(self, attribute, self._follow(msg_type, topic, callback))

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Check a change: every value in range."""
        return check_parameters(parameters, (QueryNodeSettings,))

    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        """Apply a change that passed the check."""
        self._settings = read_settings(self, QueryNodeSettings)

    def _on_instances(self, msg: InstanceArray) -> None:
        self._scenes.put_instances(_frame_key(msg.header), msg.header,
                                   [instance_info(i) for i in msg.instances], msg.instances,
                                   msg.tracked)

    def _on_points(self, msg: PointCloud2) -> None:
        try:
            cloud = decode_pointcloud2(msg)
        except CloudDecodeError as error:
            self.get_logger().warning(f'ignored a labeled cloud: {error}',
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return
        if 'label' not in cloud.extra:
            self.get_logger().warning('ignored a labeled cloud without a label field',
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return
        self._scenes.put_points(_frame_key(msg.header), cloud)

    def _on_query(self, request: QueryInstance.Request,
                  response: QueryInstance.Response) -> QueryInstance.Response:
        """Answer from the latest scene and the objects tracked recently; never raise."""
        scene = self._scenes.current()
        max_age = self._settings.max_scene_age
        if scene is None:
            response.success, response.message = False, 'no scene received yet'
            return response
        response.header = scene.header
        if max_age > 0 and scene.age() > max_age:
            response.success = False
            response.message = (f'the latest scene is {scene.age():.1f} s old '
                                f'(max_scene_age {max_age:.1f} s)')
            return response
        candidates = self._scenes.candidates(max_age)
        try:
            result = self._engine.query(request.text, [c.instance for c in candidates],
                                        request.top_k, scene.header.frame_id,
                                        self._settings.min_score)
        except Exception as error:  # noqa: BLE001 - a query must never take the node down
            self.get_logger().error(f'query failed: {type(error).__name__}: {error}')
            response.success, response.message = False, f'internal error: {error}'
            return response
        response.success, response.message = result.success, result.message
        # A "not found" still carries its ranked candidates, for a planner to inspect.
        response.matches = [candidates[i].instance_msg for i in result.order]
        response.scores = result.scores.tolist()
        response.fit_scores = result.fit_scores.tolist()
        if not result.success:
            return response
        best = candidates[result.order[0]]
        if best.header is not scene.header:
            response.header = best.header
            response.message += f'; not in the latest frame, last seen {best.age():.1f} s ago'
        if best.points is not None:
            response.points = pointcloud2_msg(best.header, encode_pointcloud2(
                best.points.xyz, best.points.rgb, best.points.extra['label'].astype(np.uint32)))
        else:
            response.message += '; the labeled points of this scene have not arrived'
        return response


def main(args: list[str] | None = None) -> None:
    """Run the query node until Ctrl-C or shutdown."""
    run(QueryNode, args=args)


if __name__ == '__main__':
    main()
