"""The query service as a grasp planner calls it: segvec3d-up over DDS, learned segmenter and
grounding head, a held-out synthetic scene, queries whose answer the ground truth knows, and a
query about what the scene lacks, which min_score turns into "not found"."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from scipy.spatial import cKDTree

from ros_harness import separate_system, wait_for
from segvec3d_ros.ros.dds import isolate_dds

isolate_dds()

from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from segvec3d_msgs.srv import QueryInstance  # noqa: E402
from segvec3d_ros.data.scenes import generate_scene  # noqa: E402
from segvec3d_ros.data.splits import TEST_FIRST_SEED
from segvec3d_ros.evaluation.datasets import synthetic_ground_truth  # noqa: E402
from segvec3d_ros.evaluation.grounding import generate_queries  # noqa: E402
from segvec3d_ros.io.pointcloud2 import decode_pointcloud2, encode_pointcloud2  # noqa: E402
from segvec3d_ros.ros.conversions import pointcloud2_msg  # noqa: E402
from segvec3d_ros.training.grounding_dataset import scene_truth  # noqa: E402

pytestmark = pytest.mark.ros
MODELS = Path(__file__).resolve().parents[1] / 'models'
# A held-out scene whose first category and relation queries ('the bowl', 'the can left of
# the bowl') the product answers: this checks the service end to end over DDS; accuracy over
# many scenes is what `segvec3d evaluate --grounding` measures.
SEED = TEST_FIRST_SEED + 24
FRAME = 'camera_color_optical_frame'


@pytest.fixture(scope='module')
def planner():
    """segvec3d-up with the bundled learned segmenter and grounding head, and its client.

    The scene is a 640 x 480 camera cloud (~5 MB), which the harness's large-cloud Fast DDS
    profile carries.
    """
    if not ((MODELS / 'segvec3d.onnx').is_file() and (MODELS / 'grounding.pt').is_file()):
        pytest.skip('models/segvec3d.onnx and models/grounding.pt are not both there')
    with separate_system('-p', 'segmenter:=segvec3d', '-p', 'fallback_to_euclidean:=false',
                         '-p', 'max_scene_age:=0.0') as client:
        yield client


def _iou(response_points: PointCloud2, target: np.ndarray) -> float:
    """Overlap of the answer's points with the target object's points (same coordinates)."""
    answer = decode_pointcloud2(response_points).xyz
    if len(answer) == 0:
        return 0.0
    gap, _ = cKDTree(target).query(answer, distance_upper_bound=1e-6)
    shared = int(np.isfinite(gap).sum())
    return shared / (len(answer) + len(target) - shared)


@pytest.fixture(scope='module')
def segmented(planner):
    """The held-out scene, published until the planner's system has segmented it; its header."""
    scene = generate_scene(SEED, 'tabletop')
    header = Header(frame_id=FRAME)
    header.stamp.sec = int(time.time())
    msg = pointcloud2_msg(header, encode_pointcloud2(scene.cloud.xyz, scene.cloud.rgb,
                                                     height=scene.cloud.height,
                                                     width=scene.cloud.width))

    def seen() -> bool:
        planner.points_pub.publish(msg)
        return any(m.header == header for m in planner.received['segvec3d/instances'])
    assert wait_for(seen, timeout=120.0, interval=2.0), 'the scene was not segmented'
    instances = next(m for m in planner.received['segvec3d/instances'] if m.header == header)
    time.sleep(1.0)     # the labeled points, which the answer carries, follow the instances
    assert all(i.label and len(i.embedding) for i in instances.instances)
    return scene, header


def test_category_and_relation_queries_return_the_right_instance(planner, segmented):
    scene, header = segmented
    objects, centers, up = scene_truth(scene)
    gt, _ = synthetic_ground_truth(scene)
    visible = [k for k, o in enumerate(objects) if (gt == o.instance_id).any()]
    queries = generate_queries(objects, visible, centers, up)
    chosen = [next(q for q in queries if q.kind == kind) for kind in ('category', 'relation')]
    min_score = planner.get_parameter('segvec3d_query', 'min_score')

    for query in chosen:
        response = planner.call(planner.query_client,
                                QueryInstance.Request(text=query.text, top_k=3))
        assert response.success, response.message
        assert response.header == header
        assert len(response.fit_scores) == len(response.matches) == 3
        assert response.fit_scores[0] >= min_score, response.message
        target = scene.cloud.xyz[gt == objects[query.target].instance_id]
        assert _iou(response.points, target) > 0.5, (query.text, response.message)


def test_an_object_the_scene_lacks_is_not_found_under_min_score(planner, segmented):
    _, header = segmented
    request = QueryInstance.Request(text='the elephant', top_k=3)
    min_score = planner.get_parameter('segvec3d_query', 'min_score')
    assert min_score > 0.0      # the shipped params file's
    response = planner.call(planner.query_client, request)
    assert not response.success and response.message.startswith('not found'), response.message
    assert response.header == header
    # The candidates stay inspectable; no points, which a planner could mistake for an answer.
    assert len(response.matches) == len(response.scores) == len(response.fit_scores) == 3
    assert response.fit_scores[0] < min_score
    assert f'instance {response.matches[0].id}' in response.message
    assert response.points.width == 0
    assert not planner.set_parameter('segvec3d_query', 'min_score', 1.5).successful
    assert planner.set_parameter('segvec3d_query', 'min_score', 0.0).successful
    try:
        answered = planner.call(planner.query_client, request)
        assert answered.success and answered.points.width > 0, answered.message
        assert [m.id for m in answered.matches] == [m.id for m in response.matches]
    finally:
        assert planner.set_parameter('segvec3d_query', 'min_score', min_score).successful
