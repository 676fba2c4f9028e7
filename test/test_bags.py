"""rosbag2 files of clouds: reading and writing, segvec3d-bag, and segvec3d-play over real DDS."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
import rclpy.context  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from ros_harness import stop_process, wait_for  # noqa: E402
from scenes import PARAMS_FILE, tabletop_points  # noqa: E402
from segvec3d_msgs.msg import InstanceArray  # noqa: E402
from segvec3d_ros.cloud import Cloud  # noqa: E402
from segvec3d_ros.io.bags import (POINTCLOUD2, BagError, BagWriter, iter_bag_clouds,  # noqa: E402
                                  typestore)
from segvec3d_ros.io.pointcloud2 import decode_pointcloud2, encode_pointcloud2  # noqa: E402
from segvec3d_ros.pipeline import Pipeline, PipelineConfig  # noqa: E402
from segvec3d_ros.ros import bag as bag_tool, play as play_tool  # noqa: E402
from segvec3d_ros.ros.client import Segvec3dClient as Client  # noqa: E402
from segvec3d_ros.ros.conversions import instance_array_msg, pointcloud2_msg  # noqa: E402
from segvec3d_ros.ros.dds import isolate_dds  # noqa: E402

isolate_dds()

T0 = 1_700_000_000_123_456_789
PERIOD = 500_000_000
FRAME = 'camera_depth_optical_frame'
OUTPUT_TOPICS = {bag_tool.LABELED_TOPIC, bag_tool.INSTANCES_TOPIC, bag_tool.MARKERS_TOPIC}


def scene_cloud(seed: int, organized: bool = False, colour: bool = True) -> Cloud:
    """A tabletop with three boxes; organized ones get NaN holes."""
    xyz, rgb, _ = tabletop_points(seed)
    if organized:
        xyz, rgb = xyz[:29000].copy(), rgb[:29000]
        xyz[::7] = np.nan
    return Cloud(xyz, rgb if colour else None, height=100 if organized else 1)


def cloud_cdr(stamp_ns: int, cloud: Cloud, frame_id: str = FRAME) -> bytes:
    """A PointCloud2 of `cloud`, serialized as rclpy does."""
    return serialize_message(pointcloud2_msg(
        bag_tool.stamp_header(stamp_ns, frame_id),
        encode_pointcloud2(cloud.xyz, cloud.rgb, height=cloud.height, width=cloud.width)))


def read_all(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """topic -> [(timestamp, raw)] of a bag, in time order."""
    found: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            found.setdefault(connection.topic, []).append((timestamp, bytes(raw)))
    return found


@pytest.fixture(scope='module')
def input_bag(tmp_path_factory) -> tuple[Path, list[Cloud]]:
    """A sqlite3 bag of three clouds on /camera/points, 0.5 s apart."""
    clouds = [scene_cloud(1), scene_cloud(2, organized=True), scene_cloud(3, colour=False)]
    path = tmp_path_factory.mktemp('bags') / 'input'
    bag_tool.write_cloud_bag(path, [(T0 + i * PERIOD, c) for i, c in enumerate(clouds)],
                             '/camera/points', FRAME)
    return path, clouds


@pytest.mark.parametrize('storage, suffix', [('sqlite3', '.db3'), ('mcap', '.mcap')])
def test_clouds_round_trip_through_a_bag(tmp_path, storage, suffix):
    clouds = [scene_cloud(1, organized=True), scene_cloud(2, colour=False)]
    path = tmp_path / 'bag'
    bag_tool.write_cloud_bag(path, [(T0 + i * PERIOD, c) for i, c in enumerate(clouds)],
                             '/camera/points', FRAME, storage=storage)
    assert [f.name for f in path.iterdir() if f.suffix == suffix] == [f'bag{suffix}']

    # The folder and the storage file alone both read back.
    for source in (path, path / f'bag{suffix}'):
        messages = list(iter_bag_clouds(source))
        assert [m.topic for m in messages] == ['/camera/points'] * 2
        assert [m.timestamp for m in messages] == [T0, T0 + PERIOD]
        for message, original in zip(messages, clouds):
            cloud = message.cloud()
            assert (cloud.height, cloud.width) == (original.height, original.width)
            np.testing.assert_array_equal(cloud.xyz, original.xyz)  # NaN holes included
            if original.rgb is None:
                assert cloud.rgb is None
            else:
                np.testing.assert_array_equal(cloud.rgb, original.rgb)
            header = deserialize_message(message.raw, PointCloud2).header
            assert header.frame_id == FRAME
            assert header.stamp.sec * 10**9 + header.stamp.nanosec == message.timestamp


def test_connections_carry_the_jazzy_definition_and_hash_of_segvec3d_msgs(tmp_path):
    infos = Pipeline(PipelineConfig()).process(scene_cloud(4)).instances
    msg = instance_array_msg(bag_tool.stamp_header(T0, FRAME), infos)
    with BagWriter(tmp_path / 'bag', 'mcap') as writer:
        writer.write('/segvec3d/instances', bag_tool.INSTANCE_ARRAY, T0, serialize_message(msg))
    with Reader(tmp_path / 'bag') as reader:
        (connection,) = reader.connections
        raw = bytes(next(reader.messages())[2])
    assert 'MSG: segvec3d_msgs/Instance' in connection.msgdef.data
    share = Path(get_package_share_directory('segvec3d_msgs'))
    described = json.loads((share / 'msg' / 'InstanceArray.json').read_text())
    hashes = {h['type_name']: h['hash_string'] for h in described['type_hashes']}
    assert connection.digest == hashes['segvec3d_msgs/msg/InstanceArray']
    # rosbags' idea of the wire format agrees with rclpy's serialization
    decoded = typestore().deserialize_cdr(raw, bag_tool.INSTANCE_ARRAY)
    assert [i.id for i in decoded.instances] == [i.id for i in infos]
    assert [i.num_points for i in decoded.instances] == [i.num_points for i in infos]


def test_topic_choice_errors_name_the_bag_and_list_the_cloud_topics(tmp_path):
    path = tmp_path / 'two'
    with BagWriter(path) as writer:
        for topic in ('/left/points', '/right/points'):
            writer.write(topic, POINTCLOUD2, T0, cloud_cdr(T0, scene_cloud(1)))
    with pytest.raises(BagError, match=r"two: 2 PointCloud2 topics \['/left/points', "
                                       r"'/right/points'\]"):
        list(iter_bag_clouds(path))
    with pytest.raises(BagError, match=r"no PointCloud2 topic '/nope'.*'/left/points'"):
        list(iter_bag_clouds(path, '/nope'))
    assert len(list(iter_bag_clouds(path, '/right/points'))) == 1
    with pytest.raises(BagError, match='missing'):
        list(iter_bag_clouds(tmp_path / 'missing'))


def test_segvec3d_bag_records_the_three_outputs_with_the_input_headers(tmp_path, input_bag,
                                                                       capsys):
    bag_in, clouds = input_bag
    bag_out = tmp_path / 'out'
    code = bag_tool.main([str(bag_in), str(bag_out), '--params-file', str(PARAMS_FILE),
                          '--storage', 'mcap'])
    assert code == 0
    assert '3 clouds segmented, 0 skipped' in capsys.readouterr().out
    found = read_all(bag_out)
    assert set(found) == OUTPUT_TOPICS
    inputs = list(iter_bag_clouds(bag_in))
    for topic in OUTPUT_TOPICS:
        assert [t for t, _ in found[topic]] == [m.timestamp for m in inputs]
    for i, (message, cloud) in enumerate(zip(inputs, clouds)):
        header = deserialize_message(message.raw, PointCloud2).header
        labeled = deserialize_message(found[bag_tool.LABELED_TOPIC][i][1], PointCloud2)
        instances = deserialize_message(found[bag_tool.INSTANCES_TOPIC][i][1], InstanceArray)
        markers = deserialize_message(found[bag_tool.MARKERS_TOPIC][i][1], MarkerArray)
        assert labeled.header == instances.header == header
        assert all(m.header == header for m in markers.markers)
        assert (labeled.height, labeled.width) == (cloud.height, cloud.width)
        labels = decode_pointcloud2(labeled).extra['label']
        # The three boxes are the three largest instances; on the colourless solid boxes of the
        # third cloud the learned segmenter also splits off an 84-point slab at one box's foot.
        sizes = sorted((i.num_points for i in instances.instances), reverse=True)
        assert len(sizes) >= 3 and min(sizes[:3]) > 2000 and sum(sizes[3:]) < 200
        assert sorted(np.unique(labels[labels > 0])) == sorted(i.id for i in instances.instances)
        assert (labels[~cloud.valid] == 0).all()
        assert markers.markers[0].action == Marker.DELETEALL
        assert len(markers.markers) == 1 + 2 * len(instances.instances)


def test_segvec3d_bag_skips_and_counts_bad_clouds(tmp_path, capsys):
    good = scene_cloud(5)
    truncated = pointcloud2_msg(bag_tool.stamp_header(T0 + 1, FRAME),
                                encode_pointcloud2(good.xyz[:10]))
    truncated.data = bytes(truncated.data)[:-7]
    bag_in = tmp_path / 'in'
    with BagWriter(bag_in) as writer:
        for stamp, raw in ((T0, cloud_cdr(T0, good)), (T0 + 1, serialize_message(truncated)),
                           (T0 + 2, b'\x00\x01\x00\x00' + b'\xff' * 40),  # not even CDR
                           (T0 + 3, cloud_cdr(T0 + 3, good))):
            writer.write('/points', POINTCLOUD2, stamp, raw)
    code = bag_tool.main([str(bag_in), str(tmp_path / 'out')])
    out, err = capsys.readouterr()
    assert code == 0
    assert '2 clouds segmented, 2 skipped' in out
    assert 'skipped cloud 1' in err and 'truncated' in err and 'skipped cloud 2' in err
    found = read_all(tmp_path / 'out')
    assert {topic: [t for t, _ in messages] for topic, messages in found.items()} == \
        {topic: [T0, T0 + 3] for topic in OUTPUT_TOPICS}


def test_segvec3d_bag_refuses_bad_arguments_with_exit_code_2(tmp_path, input_bag, capsys):
    bag_in, _ = input_bag
    assert bag_tool.main([str(tmp_path / 'missing'), str(tmp_path / 'a')]) == 2
    assert 'missing' in capsys.readouterr().err
    assert bag_tool.main([str(bag_in), str(bag_in)]) == 2  # OUT exists
    assert 'exists' in capsys.readouterr().err
    bad_params = tmp_path / 'bad.yaml'
    bad_params.write_text('/**/segvec3d_segmentation:\n  ros__parameters:\n'
                          '    voxel_size: -1.0\n')
    assert bag_tool.main([str(bag_in), str(tmp_path / 'b'), '--params-file',
                          str(bad_params)]) == 2
    assert 'bad.yaml' in capsys.readouterr().err


def start_play(*args: str) -> subprocess.Popen:
    """segvec3d-play as the installed executable."""
    return subprocess.Popen(['segvec3d-play', *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.ros
def test_segvec3d_play_publishes_the_recorded_messages_at_the_scaled_rate(input_bag):
    bag_in, _ = input_bag
    recorded = {m.timestamp: m.raw for m in iter_bag_clouds(bag_in)}
    client = Client('segvec3d_play_test')
    arrivals: list[tuple[float, PointCloud2]] = []
    client.node.create_subscription(
        PointCloud2, '/test/points', lambda m: arrivals.append((time.monotonic(), m)),
        QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))
    player = start_play(str(bag_in), '--loop', '--rate', '2.0', '--remap', '/test/points')
    try:
        delivered = wait_for(lambda: len(arrivals) >= 7, timeout=30.0)
    finally:
        client.close()
        code, _, err = stop_process(player)
    assert delivered, err
    assert code == 0 and 'Traceback' not in err, err
    stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in arrivals])
    for stamp, (_, msg) in zip(stamps, arrivals):
        assert msg == deserialize_message(recorded[stamp], PointCloud2)  # nothing converted
    assert len(set(stamps)) == 3
    # 0.5 s apart in the bag, so about 0.25 s apart at rate 2 (a loop restarts at once);
    # arrival times jitter on a loaded machine, so only the mean gap is held to the rate, and
    # unpaced publishing (gaps near 0) still fails.
    gaps = np.diff([t for t, _ in arrivals])[np.diff(stamps) > 0]
    assert 0.18 < gaps.mean() < 0.5, gaps


@pytest.mark.ros
def test_segvec3d_play_restamps_on_the_recorded_topic_reliably(input_bag):
    bag_in, _ = input_bag
    client = Client('segvec3d_play_restamp_test')
    messages = client.record(PointCloud2, '/camera/points', reliable=True)
    player = start_play(str(bag_in), '--loop', '--rate', '5.0', '--restamp', '--reliable')
    try:
        delivered = wait_for(lambda: len(messages) >= 2, timeout=30.0)
    finally:
        client.close()
        code, _, err = stop_process(player)
    assert delivered, err
    assert code == 0 and 'Traceback' not in err, err
    now = time.time()
    for msg in messages:
        assert abs(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 - now) < 60.0
        assert msg.header.frame_id == FRAME


@pytest.mark.ros
@pytest.mark.parametrize('stopper', ['context shutdown', 'stop flag'])
def test_segvec3d_play_stops_quietly_between_two_clouds(input_bag, stopper):
    # rclpy's signal handlers shut the context down, and the SIGINT handler then sets the
    # flag: either one landing while the player waits for the next cloud ends the playing.
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = Node('segvec3d_play_shutdown_test', context=context)
    args = play_tool.build_parser().parse_args(
        [str(input_bag[0]), '--loop', '--rate', '0.5', '--remap', '/play_shutdown_test'])
    stop = threading.Event()
    # The bag's clouds are 0.5 s apart: 1 s at rate 0.5, and the stop lands in between.
    threading.Timer(0.3, stop.set if stopper == 'stop flag'
                    else lambda: rclpy.shutdown(context=context)).start()
    try:
        assert play_tool.play(node, args, stop) == 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_segvec3d_play_reports_a_bad_bag_without_a_traceback(tmp_path):
    player = start_play(str(tmp_path / 'missing'))
    _, err = player.communicate(timeout=60)
    assert player.returncode == 2
    assert 'missing' in err and 'Traceback' not in err


def test_segvec3d_play_refuses_a_non_positive_rate(tmp_path):
    result = subprocess.run([sys.executable, '-m', 'segvec3d_ros.ros.play', str(tmp_path),
                             '--rate', '0'], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and '--rate must be > 0' in result.stderr
