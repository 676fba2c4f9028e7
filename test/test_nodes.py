"""The real nodes over real DDS: segvec3d-up as a process, a test client publishing clouds."""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from ros_harness import (cloud_msg, diagnostics_count, make_header, publish_until_answered,
                         separate_system, start_executable, stop_process, wait_for)
from scenes import tabletop_points
from segvec3d_ros.ros.dds import isolate_dds

isolate_dds()

from rcl_interfaces.msg import (Parameter as ParameterMsg, ParameterType,  # noqa: E402
                                ParameterValue)
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from segvec3d_ros.io.files import read_cloud  # noqa: E402
from segvec3d_ros.io.pointcloud2 import decode_pointcloud2, encode_pointcloud2  # noqa: E402
from segvec3d_ros.ros.conversions import pointcloud2_msg  # noqa: E402

pytestmark = pytest.mark.ros


def test_query_before_any_scene_fails_clearly(system):
    response = system.ask('the red box')
    assert not response.success
    assert 'no scene' in response.message


def test_cloud_in_all_outputs_out_with_the_same_header(system):
    xyz, rgb, truth = tabletop_points(seed=1)
    header = make_header()
    found = publish_until_answered(system, xyz, rgb, header)
    assert found, 'no complete set of outputs for the published cloud'

    labeled = decode_pointcloud2(found['segvec3d/labeled_points'])
    assert len(labeled) == len(xyz)
    np.testing.assert_allclose(labeled.xyz, xyz)
    labels = labeled.extra['label']
    instances = found['segvec3d/instances'].instances
    assert len(instances) == 3
    assert sorted(int(i.id) for i in instances) == [1, 2, 3]
    for instance in instances:
        members = labels == instance.id
        assert instance.num_points == int(members.sum())
        # every instance is one true box, and covers most of it
        true_ids, counts = np.unique(truth[members], return_counts=True)
        assert len(true_ids) == 1 and true_ids[0] > 0
        assert counts[0] > 0.8 * (truth == true_ids[0]).sum()

    markers = found['segvec3d/markers'].markers
    assert markers[0].action == Marker.DELETEALL
    boxes = [m for m in markers if m.type == Marker.CUBE]
    texts = [m for m in markers if m.type == Marker.TEXT_VIEW_FACING]
    assert len(boxes) == len(texts) == 3
    assert all(m.header == header for m in markers)


def test_query_answers_from_the_latest_scene(system):
    xyz, rgb, truth = tabletop_points(seed=2)
    header = make_header()
    assert publish_until_answered(system, xyz, rgb, header)
    response = system.ask('the blue object', top_k=10)
    assert response.success, response.message
    assert response.header == header
    assert len(response.matches) == len(response.scores) == 3
    assert list(response.scores) == sorted(response.scores, reverse=True)
    best = decode_pointcloud2(response.points)
    assert len(best) == response.matches[0].num_points
    assert (best.extra['label'] == response.matches[0].id).all()
    # tabletop_points colours object 2 blue
    blue = np.median(best.rgb, axis=0)
    assert blue[2] > 150 and blue[0] < 100, blue


@pytest.mark.parametrize('text', ['', '   \t\n', 'x' * 10_000])
def test_unusable_query_text_fails_with_a_reason(system, text):
    response = system.ask(text)
    assert not response.success
    assert response.message


def test_unusual_unicode_and_top_k_extremes_are_answered(system):
    assert system.ask('赤いマグカップ 🤖\u200d\u202e', top_k=0).success
    response = system.ask('box', top_k=4_000_000_000)
    assert response.success and len(response.matches) == 3


def test_organized_cloud_with_holes_keeps_its_shape(system):
    xyz, rgb, _ = tabletop_points(seed=3)
    xyz = xyz[:29000].copy()
    rgb = rgb[:29000]
    xyz[::7] = np.nan
    header = make_header()
    found = publish_until_answered(system, xyz, rgb, header, height=100)
    assert found
    labeled = found['segvec3d/labeled_points']
    assert (labeled.height, labeled.width) == (100, 290)
    labels = decode_pointcloud2(labeled).extra['label']
    assert (labels[::7] == 0).all()


def test_bad_clouds_are_rejected_and_counted_and_the_next_good_one_is_processed(system):
    bad = pointcloud2_msg(make_header(), encode_pointcloud2(np.zeros((10, 3), np.float32)))
    bad.data = bytes(bad.data)[:-7]  # truncated
    for _ in range(5):
        system.points_pub.publish(bad)
        time.sleep(0.05)
    no_frame = make_header(frame_id='')
    system.points_pub.publish(pointcloud2_msg(no_frame, encode_pointcloud2(
        np.zeros((10, 3), np.float32))))
    assert wait_for(lambda: diagnostics_count(system, 'frames_rejected') >= 1, timeout=10.0)

    xyz, rgb, _ = tabletop_points(seed=4)
    assert publish_until_answered(system, xyz, rgb, make_header())


def test_invalid_parameters_are_rejected_with_a_reason_and_the_old_value_kept(system):
    set_client = system.node.create_client(SetParameters,
                                           'segvec3d_segmentation/set_parameters')
    get_client = system.node.create_client(GetParameters,
                                           'segvec3d_segmentation/get_parameters')

    def set_param(name: str, value: ParameterValue):
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])
        return system.call(set_client, request).results[0]

    negative = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=-1.0)
    result = set_param('voxel_size', negative)
    assert not result.successful and result.reason
    unknown = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value='magic')
    result = set_param('segmenter', unknown)
    assert not result.successful and 'segmenter' in result.reason
    wrong_type = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value='big')
    assert not set_param('max_points', wrong_type).successful
    good = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=40)
    assert set_param('min_instance_points', good).successful

    values = system.call(get_client, GetParameters.Request(
        names=['voxel_size', 'segmenter', 'min_instance_points'])).values
    assert values[0].double_value == pytest.approx(0.01)
    assert values[1].string_value == 'segvec3d'  # config/segvec3d.yaml's, unchanged
    assert values[2].integer_value == 40


def test_diagnostics_report_rates_and_latency(system):
    values = wait_for(lambda: system.pipeline_status(), timeout=10.0)
    assert values
    for key in ('input_rate_hz', 'latency_median_ms', 'latency_p95_ms', 'frames_dropped',
                'frames_processed'):
        assert key in values
    assert int(values['frames_processed']) >= 1


@pytest.mark.shared
def test_real_scan_through_the_node(shared_dir):
    cloud = read_cloud(shared_dir / 'data' / 'real_scans' / 'table_scene_mug_stereo_textured.pcd')
    with separate_system('-p', 'max_scene_age:=0.0') as up:
        msg = cloud_msg(make_header(), cloud.xyz, cloud.rgb, height=cloud.height)
        found = up.publish_until_answered(msg, timeout=120.0)
        assert found, up.output_text[-3000:]
    instances = found['segvec3d/instances'].instances
    assert len(instances) >= 1
    labels = decode_pointcloud2(found['segvec3d/labeled_points']).extra['label']
    assert len(labels) == len(cloud)
    assert (labels[~cloud.valid] == 0).all()


@pytest.mark.parametrize('executable', ['segmentation_node', 'query_node'])
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_nodes_stop_cleanly_on_signals(executable, sig):
    process = start_executable(executable)
    time.sleep(8.0 if executable == 'query_node' else 3.0)
    assert process.poll() is None, process.communicate()
    code, out, err = stop_process(process, sig)
    assert 'Traceback' not in err and 'Traceback' not in out, err
    assert code in (0, -sig, 128 + sig), (code, err)
