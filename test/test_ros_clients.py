"""What real ROS 2 clients hit: defaults without a params file, a silent matched publisher,
the instance image, a late-joining query node, and signals during shutdown (real DDS)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_harness import (cloud_msg, columns_msg, make_header, read_until, separate_domain_env,
                         separate_system, start_executable, stop_process, wait_and_read)
from scenes import tabletop_points
from segvec3d_msgs.srv import QueryInstance
from segvec3d_ros.io.pointcloud2 import FLOAT32, POINT_FIELD_TYPES, decode_pointcloud2
from segvec3d_ros.ros.client import wait_for
from segvec3d_ros.ros.dds import isolate_dds

isolate_dds()

pytestmark = pytest.mark.ros


def pipeline_status(up, since: int = 0) -> DiagnosticStatus | None:
    """The newest pipeline status among the /diagnostics messages from index `since` on."""
    for array in reversed(up.received['/diagnostics'][since:]):
        for status in array.status:
            if status.name.endswith('pipeline'):
                return status
    return None


def values_of(status: DiagnosticStatus) -> dict[str, str]:
    """A status's key values."""
    return {kv.key: kv.value for kv in status.values}


def test_defaults_silent_input_instance_mask_and_a_late_query_node():
    # No params file: the product's own segmenter, with grounding, must be what runs.
    with separate_system('-p', 'input_timeout:=2.0', params_file=None) as up:
        masks = up.record(Image, 'segvec3d/instance_mask')
        # The client's cloud publisher is matched and sends nothing: as lost large clouds look.
        silent = wait_for(lambda: (status := pipeline_status(up)) is not None
                          and values_of(status)['input_silent'] and status, 30.0)
        assert silent, up.output_text[-3000:]
        assert values_of(silent)['segmenter'] == 'segvec3d'
        assert silent.level == DiagnosticStatus.WARN
        assert 'Large clouds over DDS' in values_of(silent)['input_silent']
        assert wait_for(lambda: 'no cloud has arrived' in up.output_text, 5.0)

        xyz, rgb, _ = tabletop_points(seed=1)
        msg = cloud_msg(make_header(), xyz, rgb, height=100)
        seen_before = len(up.received['/diagnostics'])
        found = up.publish_until_answered(msg, timeout=90.0)
        assert found, up.output_text[-3000:]
        instances = found['segvec3d/instances'].instances
        assert instances and all(i.label for i in instances)  # labelled by the grounding head

        mask = wait_for(lambda: next((m for m in masks if m.header == msg.header), None), 10.0)
        assert mask is not None
        assert (mask.height, mask.width, mask.encoding, mask.step) == (100, 290, '32SC1', 1160)
        ids = np.frombuffer(bytes(mask.data), '<i4')
        labels = decode_pointcloud2(found['segvec3d/labeled_points']).extra['label']
        np.testing.assert_array_equal(ids, labels.astype(np.int32))
        heard = wait_for(lambda: (status := pipeline_status(up, seen_before)) is not None
                         and int(values_of(status)['frames_processed']) > 0 and status, 10.0)
        assert heard and values_of(heard)['input_silent'] == ''

        # A query node started after the scene was published still answers from it.
        # min_score 0: the synthetic boxes fit no label well, and an answer is what is tested.
        late = start_executable('query_node', '-r', 'segvec3d/query:=late_query',
                                '-p', 'min_score:=0.0', env=separate_domain_env())
        try:
            client = up.node.create_client(QueryInstance, 'late_query')
            response = up.call(client, QueryInstance.Request(text='the box', top_k=1),
                               timeout=90.0)
        finally:
            code, out, err = stop_process(late)
        assert response.success, response.message
        assert response.header == msg.header
        assert 'Traceback' not in err and code == 0, err

        # A frame whose output a cap cut is reported, not silently truncated.
        for name, value in (('input_timeout', 0.0), ('max_instances', 1)):
            assert up.set_parameter('segvec3d_segmentation', name, value).successful
        capped = up.publish_until_answered(cloud_msg(make_header(), xyz, rgb), 60.0)
        assert capped and len(capped['segvec3d/instances'].instances) == 1
        over = wait_for(lambda: (status := pipeline_status(up)) is not None
                        and status.message.startswith('over budget') and status, 10.0)
        assert over and over.level == DiagnosticStatus.WARN
        assert values_of(over)['last_limits'].startswith('max_instances: ')
        assert int(values_of(over)['frames_limited']) >= 1


@pytest.mark.parametrize('how', ['twice', 'process group'])
def test_sigints_during_shutdown_exit_cleanly(how):
    process = start_executable('segvec3d-up', env=separate_domain_env(), new_session=True)
    seen = read_until(process, 'answering queries')
    time.sleep(1.0)  # spinning now
    for _ in range(2 if how == 'twice' else 3):
        # systemd's KillSignal=SIGINT reaches every process of the group, as Ctrl-C does.
        if how == 'twice':
            process.send_signal(signal.SIGINT)
        else:
            os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.01)
    code, output = wait_and_read(process, seen)
    assert any('answering queries' in line for line in seen), output
    assert 'Traceback' not in output, output
    assert code == 0, (code, output)


@pytest.mark.shared
def test_a_real_ouster_scan_through_the_node_with_the_lidar_preset(shared_dir):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from segvec3d_ros.io.bags import iter_bag_clouds
    from test_lidar_scans import LIDAR_PARAMS, check_scan_labels, no_echo

    bag = shared_dir / 'data' / 'lidar' / 'OS-0-128-U1_v2.3.0_1024x10'
    msg = deserialize_message(next(iter(iter_bag_clouds(bag))).raw, PointCloud2)
    msg.header = make_header(frame_id=msg.header.frame_id)   # unique, to match the outputs
    with separate_system(params_file=LIDAR_PARAMS) as up:
        found = up.publish_until_answered(msg, timeout=90.0)
        assert found, up.output_text[-3000:]
        labels = decode_pointcloud2(found['segvec3d/labeled_points']).extra['label']
        instances = check_scan_labels(labels, no_echo(bag), rows=128)
        assert len(found['segvec3d/instances'].instances) == instances
        status = wait_for(lambda: pipeline_status(up), 10.0)
        assert status and values_of(status)['segmenter'] == 'range_image'


def test_a_simulated_indoor_lidar_scan_through_the_node_with_the_indoor_preset():
    from segvec3d_ros.evaluation.datasets import iter_lidar

    (scene,) = iter_lidar(1)        # an OS1-64 over a table of 15 objects
    params = Path(__file__).resolve().parents[1] / 'config' / 'lidar_indoor.yaml'
    with separate_system(params_file=params) as up:
        # the driver's fields as ouster-ros lays them out, after x y z
        datatype = {dtype: code for code, dtype in POINT_FIELD_TYPES.items()}
        columns = {axis: (FLOAT32, scene.cloud.xyz[:, i]) for i, axis in enumerate('xyz')}
        columns.update((name, (datatype[values.dtype], values))
                       for name, values in scene.cloud.extra.items())
        msg = columns_msg(make_header('os_lidar'), columns, height=scene.cloud.height)
        found = up.publish_until_answered(msg, timeout=90.0)
        assert found, up.output_text[-3000:]
        labels = decode_pointcloud2(found['segvec3d/labeled_points']).extra['label']
        assert len(labels) == len(scene.cloud) and not labels[~scene.cloud.valid].any()
        objects = np.unique(scene.gt[scene.gt > 0])
        assert len(found['segvec3d/instances'].instances) >= len(objects)
        status = wait_for(lambda: pipeline_status(up), 10.0)
        assert status and values_of(status)['segmenter'] == 'segvec3d'
        assert 'segvec3d_lidar' in up.output_text and 'no grounding' in up.output_text


def test_marker_text_grows_with_distance_beyond_a_camera_s_range():
    from visualization_msgs.msg import Marker

    from segvec3d_ros.instances import InstanceInfo
    from segvec3d_ros.ros.conversions import TEXT_HEIGHT, marker_array_msg

    def at(number: int, centre: list[float]) -> InstanceInfo:
        return InstanceInfo(id=number, num_points=100, centroid=np.array(centre),
                            bbox_center=np.array(centre), bbox_quaternion=np.array([0, 0, 0, 1.0]),
                            bbox_size=np.ones(3), mean_color=np.zeros(4))

    infos = [at(1, [0.0, 0.1, 1.2]), at(2, [0.3, -0.2, 3.0]), at(3, [20.0, 0.0, 0.0]),
             at(4, [0.0, 30.0, -1.7])]
    heights = [m.scale.z for m in marker_array_msg(make_header(), infos).markers
               if m.type == Marker.TEXT_VIEW_FACING]
    assert heights[:2] == [TEXT_HEIGHT, TEXT_HEIGHT]   # a camera's objects: as before
    assert heights[2] == pytest.approx(0.24) and heights[3] > 0.35
