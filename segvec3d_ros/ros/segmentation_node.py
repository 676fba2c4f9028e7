"""segvec3d_segmentation: PointCloud2 in; labeled cloud, instances, markers and diagnostics out."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from segvec3d_msgs.msg import Instance, InstanceArray
from segvec3d_msgs.srv import SegmentAt
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.config import PipelineConfig, setting
from segvec3d_ros.frame_flow import FrameStats, LatestSlot, SequenceGaps, SilentInput
from segvec3d_ros.instances import InstanceInfo
from segvec3d_ros.io.pointcloud2 import CloudDecodeError, decode_pointcloud2, encode_pointcloud2
from segvec3d_ros.names import (CLICKED_POINT_TOPIC, DIAGNOSTICS_TOPIC, INSTANCE_MASK_TOPIC,
                                INSTANCES_TOPIC, LABELED_POINTS_TOPIC, MARKERS_TOPIC,
                                POINTS_TOPIC, SEGMENT_AT_SERVICE, SEGMENTATION_NODE,
                                SELECTED_POINTS_TOPIC, SELECTED_TOPIC)
from segvec3d_ros.pipeline import Pipeline, pipeline_or_baseline
from segvec3d_ros.prompts import PROMPT_RADIUS, PromptError, Selection, select_at
from segvec3d_ros.ros.conversions import (instance_array_msg, instance_mask_msg, instance_msg,
                                          labeled_cloud_msg, marker_array_msg, pointcloud2_msg,
                                          stamp_seconds)
from segvec3d_ros.ros.params import check_parameters, declare_settings, read_settings
from segvec3d_ros.ros.runner import StartupError, run
from segvec3d_ros.tracking import Tracker

WARN_THROTTLE_S = 2.0
SILENT_INPUT_THROTTLE_S = 30.0
README_LARGE_CLOUDS = 'README.md, section "Large clouds over DDS"'
# Caps that drop part of a frame's output; max_points only subsamples the working points.
OUTPUT_CAPS = ('max_instances',)


@dataclass
class SegmentationNodeSettings:
    """Parameters of the node itself; the segmentation ones are PipelineConfig's fields."""

    output_reliability: str = setting(
        'reliable', 'QoS reliability of the outputs (RViz default subscriptions are reliable)',
        choices=('reliable', 'best_effort'), read_only=True)
    max_input_points: int = setting(
        20_000_000, 'messages with more points are rejected before decoding',
        range=(1, 100_000_000))
    fallback_to_euclidean: bool = setting(
        True, 'use the euclidean segmenter when the learned model cannot be loaded at start-up')
    diagnostics_period: float = setting(
        1.0, 'seconds between /diagnostics messages', range=(0.1, 60.0), read_only=True)
    marker_lifetime: float = setting(
        0.0, 'seconds a marker stays without refresh; 0 = until the next DELETEALL',
        range=(0.0, 3600.0))
    input_timeout: float = setting(
        5.0, 'seconds a matched publisher may go without a cloud arriving before the node warns '
        'and /diagnostics says WARN (large clouds lost in transport); 0 = never',
        range=(0.0, 3600.0))
    tracking: bool = setting(
        True, 'give each object the same instance id in every frame while it is in view (and '
        'for track_timeout s after); off: ids are ranks by size within each frame')
    track_timeout: float = setting(
        2.0, 'seconds (of cloud stamps) a tracked object keeps its id after it was last seen',
        range=(0.0, 3600.0))
    prompt_radius: float = setting(
        PROMPT_RADIUS, 'm; a clicked or requested point must lie this close to a point of the '
        'latest cloud', range=(0.001, 1.0))


@dataclass
class LatestScene:
    """What the latest frame produced, kept for point prompts."""

    header: Header
    cloud: Cloud
    labels: np.ndarray
    instances: list[InstanceInfo]


class SegmentationNode(Node):
    """Segments the latest cloud on a worker thread; the subscription never blocks or queues."""

    def __init__(self) -> None:
        super().__init__(SEGMENTATION_NODE)
        declare_settings(self, PipelineConfig)
        declare_settings(self, SegmentationNodeSettings)
        self._settings: SegmentationNodeSettings = read_settings(self, SegmentationNodeSettings)
        self._pipeline_lock = threading.Lock()
        self._pipeline: Pipeline = self._initial_pipeline(read_settings(self, PipelineConfig))
        self._pending_pipeline: Pipeline | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)

        reliability = (ReliabilityPolicy.RELIABLE
                       if self._settings.output_reliability == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        # Transient local: a query node or RViz started later still gets the last scene.
        output_qos = QoSProfile(depth=5, reliability=reliability,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._labeled_pub = self.create_publisher(
            PointCloud2, LABELED_POINTS_TOPIC, output_qos)
        self._instances_pub = self.create_publisher(
            InstanceArray, INSTANCES_TOPIC, output_qos)
        self._markers_pub = self.create_publisher(MarkerArray, MARKERS_TOPIC, output_qos)
        self._mask_pub = self.create_publisher(Image, INSTANCE_MASK_TOPIC, output_qos)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._selected_points_pub = self.create_publisher(
            PointCloud2, SELECTED_POINTS_TOPIC, output_qos)
        self._selected_pub = self.create_publisher(Instance, SELECTED_TOPIC, output_qos)

        self._tracker = Tracker(self._settings.track_timeout)
        self._scene_lock = threading.Lock()
        self._latest: LatestScene | None = None
        self._clicks = self.create_subscription(
            PointStamped, CLICKED_POINT_TOPIC, self._on_clicked_point, 10)
        self._segment_at = self.create_service(SegmentAt, SEGMENT_AT_SERVICE,
                                               self._on_segment_at)

        self._slot: LatestSlot[PointCloud2] = LatestSlot()
        self._stats = FrameStats()
        self._missed = SequenceGaps()
        self._silent = SilentInput()
        self._subscription = self.create_subscription(
            PointCloud2, POINTS_TOPIC, self._on_cloud, qos_profile_sensor_data)
        self._diagnostics_timer = self.create_timer(
            self._settings.diagnostics_period, self._publish_diagnostics)
        self._worker = threading.Thread(target=self._work, name='segvec3d-worker', daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'segmenting {self._subscription.topic_name} with '
            f'{self._pipeline.segmenter_status}; {self._pipeline.grounding_status}')

    def _initial_pipeline(self, config: PipelineConfig) -> Pipeline:
        """Build the configured pipeline, or fall back to the euclidean one if allowed."""
        try:
            if self._settings.fallback_to_euclidean:
                pipeline, warning = pipeline_or_baseline(config)
            else:
                pipeline, warning = Pipeline(config), None
        except (ValueError, OSError) as error:
            reason = ' '.join(str(error).split())
            self.get_logger().fatal(f'cannot start the {config.segmenter} segmenter: {reason}')
            raise StartupError(reason) from error
        if warning is not None:
            self.get_logger().warning(warning)
            self.set_parameters([Parameter('segmenter', value='euclidean')])
        return pipeline

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Check a change: every value in range, and a pipeline that builds from them."""
        result = check_parameters(parameters, (PipelineConfig, SegmentationNodeSettings))
        if not result.successful:
            return result
        # Building is the check (a model file that does not load is a reason to refuse), so
        # the pipeline built here is the one the post-set callback puts in place.
        try:
            self._pending_pipeline = Pipeline(read_settings(self, PipelineConfig, parameters))
        except (ValueError, OSError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        return result

    def _on_parameters_set(self, parameters: list[Parameter]) -> None:
        """Apply a change that passed the check: the new pipeline and node settings."""
        pipeline, self._pending_pipeline = self._pending_pipeline, None
        if pipeline is not None:
            with self._pipeline_lock:
                self._pipeline = pipeline
        self._settings = read_settings(self, SegmentationNodeSettings)
        with self._scene_lock:
            self._tracker.timeout = self._settings.track_timeout
            if not self._settings.tracking:
                self._tracker.reset()

    def _on_cloud(self, msg: PointCloud2, info: dict) -> None:
        self._stats.on_received()
        self._missed.observe(info.get('publication_sequence_number'),
                             self._subscription.get_publisher_count() == 1)
        self._slot.put(msg)

    def _work(self) -> None:
        while rclpy.ok(context=self.context):
            taken = self._slot.take(timeout=0.5)
            if taken is not None:
                self._process(*taken)

    def _process(self, msg: PointCloud2, arrived_at: float) -> None:
        """Segment one frame; bad input is counted and logged, never raised."""
        try:
            if not msg.header.frame_id:
                raise CloudDecodeError('header.frame_id is empty, so outputs could not be placed')
            cloud = decode_pointcloud2(msg, max_points=self._settings.max_input_points)
        except CloudDecodeError as error:
            self._stats.on_rejected(str(error))
            self.get_logger().warning(f'rejected a cloud: {error}',
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return
        try:
            with self._pipeline_lock:
                pipeline = self._pipeline
            result = pipeline.process(cloud)
            labels, found = self._track(msg.header, cloud, result.labels, result.instances)
            labeled = labeled_cloud_msg(msg.header, cloud, labels)
            instances = instance_array_msg(msg.header, found, self._settings.tracking)
            markers = marker_array_msg(msg.header, found, self._settings.marker_lifetime)
            self._labeled_pub.publish(labeled)
            self._instances_pub.publish(instances)
            self._markers_pub.publish(markers)
            if cloud.is_organized:
                self._mask_pub.publish(instance_mask_msg(msg.header, cloud, labels))
        except Exception as error:  # noqa: BLE001 - a bad frame must never stop the node
            if not rclpy.ok(context=self.context):
                return  # shutting down: publishers are gone, nothing to report
            self._stats.on_failed(f'{type(error).__name__}: {error}')
            self.get_logger().error(f'failed to segment a cloud: {type(error).__name__}: {error}',
                                    throttle_duration_sec=WARN_THROTTLE_S)
            return
        if result.limits_hit:
            self._stats.on_limited(result.limits_hit)
        self._stats.on_processed(arrived_at)

    def _track(self, header: Header, cloud: Cloud, labels: np.ndarray,
               instances: list[InstanceInfo]) -> tuple[np.ndarray, list[InstanceInfo]]:
        """Labels and instances under their tracked ids; keep them for point prompts."""
        stamp = stamp_seconds(header.stamp)
        with self._scene_lock:
            if self._settings.tracking:
                labels, instances = self._tracker.update(stamp, cloud.xyz, labels, instances)
            else:
                for info in instances:
                    info.first_seen, info.track_age = stamp, 0.0
            self._latest = LatestScene(header, cloud, labels, instances)
        return labels, instances

    def _select(self, point: PointStamped, scale: float) -> tuple[LatestScene, Selection]:
        """Return the latest scene and what `point` selects in it; PromptError says why not."""
        with self._scene_lock:
            scene = self._latest
        if scene is None:
            raise PromptError('no cloud has been segmented yet')
        if point.header.frame_id and point.header.frame_id != scene.header.frame_id:
            raise PromptError(f'the point is in frame {point.header.frame_id!r}, the clouds in '
                              f'{scene.header.frame_id!r}; send it in the clouds\' frame')
        xyz = np.array([point.point.x, point.point.y, point.point.z])
        return scene, select_at(xyz, scene.cloud.xyz, scene.labels, scene.instances, scale,
                                scene.cloud.rgb, self._settings.prompt_radius)

    def _selected_points(self, scene: LatestScene, selection: Selection) -> PointCloud2:
        """Encode the selected points, fields x y z [rgb] label, with the cloud's header."""
        mask = selection.mask
        rgb = None if scene.cloud.rgb is None else scene.cloud.rgb[mask]
        return pointcloud2_msg(scene.header, encode_pointcloud2(
            scene.cloud.xyz[mask], rgb,
            np.full(int(mask.sum()), selection.instance.id, np.uint32)))

    def _on_clicked_point(self, msg: PointStamped) -> None:
        """Publish the object under a point from RViz's Publish Point tool; warn if none."""
        try:
            scene, selection = self._select(msg, 0.0)
        except PromptError as error:
            self.get_logger().warning(f'clicked point selects nothing: {error}',
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return
        except Exception as error:  # noqa: BLE001 - a bad message must never stop the node
            self.get_logger().error(f'clicked point failed: {type(error).__name__}: {error}',
                                    throttle_duration_sec=WARN_THROTTLE_S)
            return
        self._selected_points_pub.publish(self._selected_points(scene, selection))
        self._selected_pub.publish(instance_msg(selection.instance))
        self.get_logger().info(f'selected instance {selection.instance.id} '
                               f'({selection.instance.label or "no label"})')

    def _on_segment_at(self, request: SegmentAt.Request,
                       response: SegmentAt.Response) -> SegmentAt.Response:
        """Answer with the object or part under the requested point; never raise."""
        try:
            scene, selection = self._select(request.point, float(request.scale))
        except PromptError as error:
            response.success, response.message = False, str(error)
            return response
        except Exception as error:  # noqa: BLE001 - a request must never take the node down
            self.get_logger().error(f'segment_at failed: {type(error).__name__}: {error}')
            response.success, response.message = False, f'internal error: {error}'
            return response
        response.success = True
        what = 'object' if request.scale <= 0 else f'part ({request.scale:.3f} m) of object'
        response.message = (f'{what} {selection.instance.id} '
                            f'({selection.instance.label or "no label"}), '
                            f'{int(selection.mask.sum())} points')
        response.header = scene.header
        response.instance = instance_msg(selection.instance)
        response.points = self._selected_points(scene, selection)
        return response

    def _silent_input(self) -> str:
        """Why no cloud arrives from a matched publisher, or '' while clouds arrive."""
        timeout = self._settings.input_timeout
        silence = self._silent.silence(self._subscription.get_publisher_count(),
                                       self._stats.last_arrival, time.monotonic())
        if timeout <= 0 or silence <= timeout:
            return ''
        return (f'a publisher is matched on {self._subscription.topic_name} but no cloud has '
                f'arrived for {silence:.0f} s; the likely cause is clouds too large for the '
                f'middleware\'s defaults (Fast DDS drops best-effort messages over its 512 KiB '
                f'shared-memory segment without a word): see {README_LARGE_CLOUDS}')

    def _publish_diagnostics(self) -> None:
        report = self._stats.report(self._slot.dropped)
        silent = self._silent_input()
        if silent:
            self.get_logger().warning(silent, throttle_duration_sec=SILENT_INPUT_THROTTLE_S)
        if report.failed:
            level, message = DiagnosticStatus.ERROR, f'{report.failed} frames failed'
        elif silent:
            level, message = DiagnosticStatus.WARN, 'no cloud arrives from a matched publisher'
        elif any(limit.split(':')[0] in OUTPUT_CAPS for limit in report.last_limits):
            level, message = DiagnosticStatus.WARN, f'over budget: {report.last_limits[-1]}'
        elif report.rejected:
            level, message = DiagnosticStatus.WARN, f'{report.rejected} frames rejected'
        else:
            level, message = DiagnosticStatus.OK, 'ok'
        values = {
            'input_rate_hz': f'{report.input_rate_hz:.2f}',
            'processed_rate_hz': f'{report.processed_rate_hz:.2f}',
            'latency_median_ms': f'{report.latency_median_ms:.1f}',
            'latency_p95_ms': f'{report.latency_p95_ms:.1f}',
            'frames_received': str(report.received),
            'frames_processed': str(report.processed),
            'frames_dropped': str(report.dropped),
            'frames_missed': str(self._missed.missed),
            'frames_rejected': str(report.rejected),
            'frames_failed': str(report.failed),
            'last_problem': report.last_problem,
            'input_silent': silent,
            'frames_limited': str(report.limited),
            'last_limits': '; '.join(report.last_limits),
            'segmenter': self._pipeline.config.segmenter,
        }
        status = DiagnosticStatus(
            level=level, name=f'{self.get_name()}: pipeline', message=message,
            hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self._diagnostics_pub.publish(DiagnosticArray(
            header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))

    def destroy_node(self) -> None:
        """Stop the worker before the node's publishers go away."""
        self._slot.close()
        self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Run the segmentation node until Ctrl-C or shutdown."""
    run(SegmentationNode, args=args)


if __name__ == '__main__':
    main()
