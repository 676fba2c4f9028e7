"""segvec3d_segmentation: PointCloud2 in; labeled cloud, instances, markers and diagnostics out."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from segvec3d_msgs.msg import InstanceArray
from segvec3d_ros.config import PipelineConfig, setting
from segvec3d_ros.frame_flow import FrameStats, LatestSlot, SequenceGaps, SilentInput
from segvec3d_ros.io.pointcloud2 import CloudDecodeError, decode_pointcloud2
from segvec3d_ros.names import (DIAGNOSTICS_TOPIC, INSTANCE_MASK_TOPIC, INSTANCES_TOPIC,
                                LABELED_POINTS_TOPIC, MARKERS_TOPIC, POINTS_TOPIC,
                                SEGMENTATION_NODE)
from segvec3d_ros.pipeline import Pipeline, pipeline_or_baseline
from segvec3d_ros.ros.conversions import (instance_array_msg, instance_mask_msg, labeled_cloud_msg,
                                          marker_array_msg)
from segvec3d_ros.ros.params import check_parameters, declare_settings, read_settings
from segvec3d_ros.ros.runner import StartupError, run

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
            f'{self._pipeline.config.segmenter} segmenter; {self._pipeline.grounding_status}')

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
            labeled = labeled_cloud_msg(msg.header, cloud, result.labels)
            instances = instance_array_msg(msg.header, result.instances)
            markers = marker_array_msg(msg.header, result.instances,
                                       self._settings.marker_lifetime)
            self._labeled_pub.publish(labeled)
            self._instances_pub.publish(instances)
            self._markers_pub.publish(markers)
            if cloud.is_organized:
                self._mask_pub.publish(instance_mask_msg(msg.header, cloud, result.labels))
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
