"""The range-image (LiDAR) segmenter on small synthetic scans, and LiDAR invalid returns."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.config import PipelineConfig
from segvec3d_ros.instances import describe_instances, describe_upright
from segvec3d_ros.pipeline import Pipeline
from segvec3d_ros.segmentation.range_image import destagger

SENSOR_HEIGHT = 1.7   # m above the ground, z up (REP 103)
ROWS, COLUMNS = 64, 512
# Two boxes on the ground: (centre x, y), size (x, y, z) in m. Taller than the sensor: a top
# face seen at a grazing angle is, by the angle criterion, a region of its own.
BOXES = (((6.0, 0.0), (2.0, 1.6, 2.0)), ((-3.0, 7.0), (1.0, 1.0, 2.0)))


def lidar_config(**changes) -> PipelineConfig:
    """The range-image segmenter with config/lidar.yaml's values."""
    values = dict(segmenter='range_image', min_range=1.0, voxel_size=0.1, cluster_tolerance=0.3,
                  plane_distance=0.2, min_instance_points=20, max_instances=120)
    return PipelineConfig(**{**values, **changes})


def scan(boxes=BOXES, stagger: int = 0) -> tuple[Cloud, np.ndarray]:
    """Organized ROWS x COLUMNS scan of `boxes` on a flat ground and the truth per point.

    Beams from -25 to +15 degrees, azimuth falling with the column as on an Ouster; rays that
    hit nothing are no-echo returns, x = y = z = 0 and range 0 as ouster-ros publishes them.
    Truth: -1 no echo, 0 ground, 1.. the box. With `stagger`, row i is published rolled by
    (i % 4) * stagger columns, as the driver's raw column order is.
    """
    elevation = np.deg2rad(np.linspace(15, -25, ROWS))[:, None]
    azimuth = -2 * np.pi * np.arange(COLUMNS)[None, :] / COLUMNS
    rays = np.stack(np.broadcast_arrays(np.cos(elevation) * np.cos(azimuth),
                                        np.cos(elevation) * np.sin(azimuth),
                                        np.sin(elevation)), axis=-1).reshape(-1, 3)
    with np.errstate(divide='ignore', invalid='ignore'):
        hit = np.where(rays[:, 2] < 0, -SENSOR_HEIGHT / rays[:, 2], np.inf)
        truth = np.where(np.isfinite(hit), 0, -1)
        for number, ((cx, cy), size) in enumerate(boxes, start=1):
            low = np.array([cx - size[0] / 2, cy - size[1] / 2, -SENSOR_HEIGHT])
            high = low + np.array(size)
            # Slab test: the ray is inside all three slabs between t_near and t_far.
            t1, t2 = low / rays, high / rays
            near = np.minimum(t1, t2).max(axis=1)
            far = np.maximum(t1, t2).min(axis=1)
            inside = (near <= far) & (near > 0) & (near < hit)
            hit = np.where(inside, near, hit)
            truth = np.where(inside, number, truth)
    xyz = np.where(np.isfinite(hit)[:, None], rays * np.where(np.isfinite(hit), hit, 0)[:, None],
                   0.0).astype(np.float32)
    millimetres = np.where(np.isfinite(hit), np.rint(1000 * np.where(np.isfinite(hit), hit, 0)),
                           0).astype(np.uint32)
    if stagger:
        shifts = (np.arange(ROWS) % 4) * stagger
        order = (np.arange(ROWS)[:, None] * COLUMNS
                 + (np.arange(COLUMNS)[None, :] + shifts[:, None]) % COLUMNS).reshape(-1)
        xyz, millimetres, truth = xyz[order], millimetres[order], truth[order]
    return Cloud(xyz, height=ROWS, width=COLUMNS, extra={'range': millimetres}), truth


def assert_one_instance_per_box(result, cloud: Cloud, truth: np.ndarray, boxes=BOXES) -> None:
    """Each box is one instance of its own, the ground and the no-echo returns are none.

    A box's returns within the ground band (0.2 m) of the ground are ground, by design.
    """
    labels = result.labels
    above = cloud.xyz[:, 2] > -SENSOR_HEIGHT + 0.3
    ids = []
    for number in range(1, len(boxes) + 1):
        on_box = labels[(truth == number) & above]
        common = np.bincount(on_box).argmax()
        assert common > 0, f'box {number} is in no instance'
        assert (on_box == common).mean() > 0.95, f'box {number} is split'
        ids.append(common)
    assert len(set(ids)) == len(boxes), 'two boxes share one instance'
    assert not labels[truth == -1].any(), 'a no-echo return is labelled'
    assert (labels[truth == 0] == 0).mean() > 0.99, 'the ground is labelled'


@pytest.mark.parametrize('stagger', [0, 7])
def test_two_boxes_on_the_ground_are_two_instances(stagger):
    cloud, truth = scan(stagger=stagger)
    result = Pipeline(lidar_config()).process(cloud)
    assert len(result.instances) == 2
    assert_one_instance_per_box(result, cloud, truth)
    assert result.support_mask[truth == 0].mean() > 0.99
    assert result.num_working == result.num_valid == int((truth >= 0).sum())
    # Organized output: labels stay in the input's pixel order, one per point.
    assert result.labels.shape == (ROWS * COLUMNS,)


def ids_on(result, cloud: Cloud, truth: np.ndarray, number: int) -> np.ndarray:
    """Instance ids on the returns of object `number` above the ground band."""
    return result.labels[(truth == number) & (cloud.xyz[:, 2] > -SENSOR_HEIGHT + 0.3)]


def assert_in_front_apart(result, cloud: Cloud, truth: np.ndarray) -> None:
    """Object 1 is one instance, and none of it is on object 2 behind it.

    Object 2 may be two instances, one each side of object 1: the range image does not join
    pieces across an occluder (the learned segmenter's occlusion step does).
    """
    front, back = ids_on(result, cloud, truth, 1), ids_on(result, cloud, truth, 2)
    common = np.bincount(front).argmax()
    assert common > 0 and (front == common).mean() > 0.95
    assert (back > 0).mean() > 0.95 and not (back == common).any()


def test_a_box_behind_a_box_is_an_instance_of_its_own():
    # Both in one azimuth range: their returns are neighbours in the image, 4 m apart in depth.
    boxes = (((5.0, 0.0), (1.0, 1.0, 2.5)), ((9.0, 0.0), (1.0, 3.0, 3.0)))
    cloud, truth = scan(boxes)
    assert_in_front_apart(Pipeline(lidar_config()).process(cloud), cloud, truth)


def test_the_angle_criterion_separates_what_distance_alone_joins():
    # A board 0.25 m in front of a wall 2.75 m away: neighbours across the step are closer than
    # cluster_tolerance (0.3 m), but the step runs along the beams (beta about 7 degrees).
    boxes = (((2.625, 0.0), (0.25, 1.0, 2.5)), ((2.875, 0.0), (0.25, 6.0, 3.0)))
    cloud, truth = scan(boxes)
    assert_in_front_apart(Pipeline(lidar_config(wall_extent=0.0)).process(cloud), cloud, truth)
    joined = Pipeline(lidar_config(wall_extent=0.0, angle_threshold=0.5)).process(cloud)
    board = np.bincount(ids_on(joined, cloud, truth, 1)).argmax()
    assert (ids_on(joined, cloud, truth, 2) == board).mean() > 0.3


def test_a_long_upright_plane_is_support():
    boxes = BOXES + (((0.0, -12.0), (30.0, 0.5, 6.0)),)
    cloud, truth = scan(boxes)
    result = Pipeline(lidar_config()).process(cloud)
    assert len(result.instances) == 2
    assert result.support_mask[truth == 3].mean() > 0.95
    assert_one_instance_per_box(result, cloud, truth)


def test_destagger_lines_the_rows_up():
    cloud, _ = scan(stagger=7)
    aligned, _ = scan()
    image = destagger(cloud.xyz, cloud.valid, ROWS, COLUMNS)
    # Rows with too few returns to measure (under 8) keep their order; rows 19-23 meet only
    # the narrow box, and are measured on every column.
    lit = aligned.valid.reshape(ROWS, COLUMNS)
    lit[lit.sum(axis=1) < 8] = False
    assert lit[19:24].any(axis=1).all()
    np.testing.assert_array_equal(cloud.xyz[image][lit],
                                  aligned.xyz.reshape(ROWS, COLUMNS, 3)[lit])


def test_an_unorganized_scan_falls_back_to_range_adaptive_clusters():
    cloud, truth = scan()
    flat = dataclasses.replace(cloud, height=1, width=len(cloud))
    result = Pipeline(lidar_config()).process(flat)
    assert len(result.instances) == 2
    assert_one_instance_per_box(result, cloud, truth)


def test_no_echo_returns_are_invalid_in_every_convention():
    xyz = np.array([[1, 2, 3], [0, 0, 0], [np.nan, 1, 1], [4, 5, np.inf], [1, 1, 1], [2, 0, 0]])
    assert Cloud(xyz).valid.tolist() == [True, False, False, False, True, True]
    ranges = {'range': np.array([3, 0, 0, 0, 0, 2], np.uint32)}
    assert Cloud(xyz, extra=ranges).valid.tolist() == [True, False, False, False, False, True]


def test_min_range_drops_the_vehicle_itself():
    cloud, truth = scan()
    near = np.array([[0.3, 0.1, -0.2]] * 30, np.float32)   # the roof under the sensor
    xyz = cloud.xyz.copy()
    xyz[:30] = near
    cloud = Cloud(xyz, height=ROWS, width=COLUMNS)
    result = Pipeline(lidar_config()).process(cloud)
    assert not result.labels[:30].any() and not result.support_mask[:30].any()
    with pytest.raises(ValueError, match='min_range'):
        lidar_config(max_range=1.0).validate()


@pytest.mark.parametrize('cloud', [Cloud(np.zeros((0, 3))), Cloud(np.zeros((8, 3)), height=2),
                                   Cloud(np.ones((6, 3)), height=3),
                                   Cloud(np.random.default_rng(0).normal(size=(40, 3)), height=1)])
def test_degenerate_scans_do_not_raise(cloud):
    result = Pipeline(lidar_config()).process(cloud)
    assert len(result.labels) == len(cloud)


def test_upright_boxes_hold_their_points_and_stand_on_the_plane():
    rng = np.random.default_rng(5)
    up = np.array([0.1, -0.2, 1.0]) / np.linalg.norm([0.1, -0.2, 1.0])
    tilt = Rotation.align_vectors([up], [[0, 0, 1.0]])[0]
    parts = [tilt.apply(Rotation.from_euler('z', rng.uniform(0, np.pi)).apply(
        rng.uniform(-0.5, 0.5, (400, 3)) * rng.uniform(0.2, 4, 3)) + rng.uniform(-20, 20, 3))
        for _ in range(12)]
    xyz = np.concatenate(parts)
    ids = np.repeat(np.arange(1, 13), 400)
    ids[::5] = 0
    rgb = rng.integers(0, 256, (len(xyz), 3)).astype(np.uint8)
    upright = describe_upright(xyz, rgb, ids, up)
    hull = describe_instances(xyz, rgb, ids, up)
    assert [i.id for i in upright] == [i.id for i in hull] == list(range(1, 13))
    for box, reference in zip(upright, hull):
        assert box.num_points == reference.num_points == 320
        np.testing.assert_allclose(box.centroid, reference.centroid, atol=1e-9)
        np.testing.assert_allclose(box.mean_color, reference.mean_color, atol=1e-12)
        axes = Rotation.from_quat(box.bbox_quaternion).as_matrix()
        assert abs(np.linalg.det(axes) - 1) < 1e-9
        np.testing.assert_allclose(axes[:, 2], up, atol=1e-9)
        local = (xyz[ids == box.id] - box.bbox_center) @ axes
        assert (np.abs(local) <= box.bbox_size / 2 + 1e-9).all()
        # A box's faces touch its points on every side: it is the tightest at its yaw.
        np.testing.assert_allclose(np.abs(local).max(axis=0), box.bbox_size / 2, atol=1e-9)
    assert describe_upright(xyz, None, np.zeros(len(xyz), int), up) == []
