"""Procedural scenes and the virtual depth sensor."""
from dataclasses import replace

import numpy as np
import open3d as o3d
import pytest

from segvec3d_ros.data import meshes
from segvec3d_ros.data.scenes import SceneConfig, generate_scene
from segvec3d_ros.data.sensor import SENSORS, render_depth

SMALL = SceneConfig(image_scale=0.25, sensors=('kinect_v1',))     # 160 x 120 frames
CLEAN = replace(SMALL, noise=False, dropout=False)


def _world(scene, mask):
    """World-frame points of `scene` selected by mask."""
    pose = scene.camera_pose
    return scene.cloud.xyz[mask] @ pose[:3, :3].T + pose[:3, 3]


def _raycaster(*boxes: tuple[float, float, float, float, float, float], tilt: float = 0.0):
    """A scene of boxes given as (width, depth, height, x, y, z of the bottom centre).

    tilt (rad) turns them about the camera's x axis through their bottom centre.
    """
    scene = o3d.t.geometry.RaycastingScene()
    for w, d, h, x, y, z in boxes:
        m = meshes.box(w, d, h, x, y, z)
        m.rotate(m.get_rotation_matrix_from_xyz((tilt, 0.0, 0.0)), center=(x, y, z))
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m))
    return scene


def describe(o) -> tuple:
    """What the generator decided about an object, to compare two scenes by."""
    return o.category, o.color_name, o.size_word, o.on_top_of, o.is_support


def test_same_seed_same_scene_other_seed_other_scene():
    a, b, c = (generate_scene(s, config=SMALL) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.cloud.xyz, b.cloud.xyz)
    np.testing.assert_array_equal(a.cloud.rgb, b.cloud.rgb)
    np.testing.assert_array_equal(a.instance_ids, b.instance_ids)
    np.testing.assert_array_equal(a.camera_pose, b.camera_pose)
    assert [describe(o) for o in a.objects] == [describe(o) for o in b.objects]
    assert not np.array_equal(a.cloud.xyz, c.cloud.xyz, equal_nan=True)
    assert not np.array_equal(a.camera_pose, c.camera_pose)


@pytest.mark.parametrize('kind', ['tabletop', 'room'])
def test_organized_frame_with_nan_exactly_where_unlabelled(kind):
    s = generate_scene(5, kind, SMALL)
    assert (s.cloud.height, s.cloud.width) == (120, 160)
    assert s.cloud.xyz.shape == (120 * 160, 3) and s.cloud.rgb.shape == (120 * 160, 3)
    assert s.instance_ids.shape == (120 * 160,) and s.instance_ids.dtype == np.int64
    np.testing.assert_array_equal(s.instance_ids == 0, ~s.cloud.valid)
    assert np.isnan(s.cloud.xyz[s.instance_ids == 0]).all()
    assert 0.3 < s.cloud.valid.mean() < 1.0
    counts = np.bincount(s.instance_ids, minlength=len(s.objects) + 1)
    assert [o.num_points for o in s.objects] == counts[1:].tolist()
    assert [o.instance_id for o in s.objects] == list(range(1, len(s.objects) + 1))
    rot = s.camera_pose[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_points_in_optical_frame_and_table_top_at_its_height():
    s = generate_scene(2, config=SMALL)
    xyz = s.cloud.xyz[s.cloud.valid]
    assert (xyz[:, 2] > 0).all()
    # each point projects back onto its own pixel
    uv = xyz @ s.intrinsics.T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    rows, cols = np.divmod(np.flatnonzero(s.cloud.valid), s.cloud.width)
    np.testing.assert_allclose(u, cols, atol=1e-3)
    np.testing.assert_allclose(v, rows, atol=1e-3)
    table = s.objects[0]
    assert table.category == 'table' and table.is_support
    top = table.center[2] + table.size[2] / 2
    assert np.median(_world(s, s.instance_ids == 1)[:, 2]) == pytest.approx(top, abs=0.01)
    assert s.camera_pose[2, 3] > top          # looking down at the table


def test_sensor_artefacts_keep_nearly_every_visible_object():
    # A near object's projector shadow may hide a small one behind it, as on a real Kinect.
    checked, lost = 0, []
    for seed in range(4):
        clean, real = generate_scene(seed, config=CLEAN), generate_scene(seed, config=SMALL)
        assert [describe(o) for o in clean.objects] == [describe(o) for o in real.objects]
        assert real.cloud.valid.sum() < clean.cloud.valid.sum()
        for a, b in zip(clean.objects, real.objects):
            if not a.is_support and a.num_points >= 20:
                checked += 1
                if b.num_points == 0:
                    lost.append(describe(b))
    assert checked >= 8
    assert len(lost) <= checked // 10, lost


def test_noise_grows_with_depth_and_vanishes_when_off():
    sensor = replace(SENSORS['kinect_v1'].scaled(0.25), random_dropout=0.0, blob_dropout=0.0)
    rng = np.random.default_rng(0)
    sigma = {}
    for z in (0.8, 2.0):
        # a wall across the view (camera pose = identity), tilted as a table would be
        wall = _raycaster((20.0, 20.0, 0.01, 0.0, 0.0, z), tilt=np.radians(40))
        for noise in (True, False):
            frame = render_depth(wall, sensor, np.eye(4), rng, noise=noise)
            xyz = frame.xyz[frame.valid].astype(float)
            assert frame.valid.mean() > 0.8
            design = np.c_[xyz[:, :2], np.ones(len(xyz))]
            plane, *_ = np.linalg.lstsq(design, xyz[:, 2], rcond=None)
            assert plane[2] == pytest.approx(z, abs=0.005)
            residual = (xyz[:, 2] - design @ plane).std()
            if noise:
                sigma[z] = residual
            else:
                assert residual < 1e-5
    assert 0.5e-3 < sigma[0.8] < 2.5e-3
    assert sigma[2.0] > 3 * sigma[0.8]


def test_projector_shadow_falls_left_of_an_object():
    sensor = replace(SENSORS['kinect_v1'].scaled(0.25), random_dropout=0.0, blob_dropout=0.0,
                     edge_dropout=0.0, border=(0, 0, 0, 0))
    # a 20 cm box 0.8 m away in front of a wall at 1.5 m, straight ahead of the camera
    scene = _raycaster((20.0, 20.0, 0.01, 0.0, 0.0, 1.5), (0.2, 0.2, 0.2, 0.0, 0.0, 0.8))
    rng = np.random.default_rng(0)
    for baseline, shadow_expected in ((sensor.baseline, True), (0.0, False)):
        frame = render_depth(scene, replace(sensor, baseline=baseline), np.eye(4), rng,
                             noise=False)
        row = frame.valid.reshape(sensor.height, sensor.width)[sensor.height // 2]
        box_cols = np.flatnonzero(frame.geometry_ids.reshape(sensor.height, sensor.width)
                                  [sensor.height // 2] == 1)
        left, right = box_cols.min(), box_cols.max()
        assert row[right + 1:right + 5].all()
        assert (~row[left - 5:left]).any() == shadow_expected


def test_stacked_boxes_rest_on_the_lower_box():
    config = replace(SMALL, categories=('box',), stack_prob=1.0, num_objects=(6, 6))
    s = generate_scene(0, config=config)
    stacked = [(o, s.objects[o.on_top_of - 1]) for o in s.objects
               if o.on_top_of is not None and not s.objects[o.on_top_of - 1].is_support]
    assert stacked
    for upper, lower in stacked:
        assert lower.category == 'box'
        assert upper.center[2] - upper.size[2] / 2 == pytest.approx(
            lower.center[2] + lower.size[2] / 2, abs=1e-6)
        if upper.num_points and lower.num_points:
            z_up = _world(s, s.instance_ids == upper.instance_id)[:, 2]
            z_low = _world(s, s.instance_ids == lower.instance_id)[:, 2]
            assert np.median(z_up) > np.median(z_low)


def test_room_has_floor_walls_furniture_and_objects_on_tables():
    s = generate_scene(1, 'room', SMALL)
    by_category: dict[str, list] = {}
    for o in s.objects:
        by_category.setdefault(o.category, []).append(o)
    assert len(by_category['floor']) == 1 and len(by_category['wall']) == 4
    assert all(o.is_support for c in ('floor', 'wall', 'table') for o in by_category[c])
    assert {'chair', 'cabinet', 'shelf'} & set(by_category)
    tables = {o.instance_id for o in by_category['table']}
    assert any(o.on_top_of in tables and not o.is_support for o in s.objects)
    walls_and_floor = [o.num_points for c in ('floor', 'wall') for o in by_category[c]]
    assert sum(walls_and_floor) > 0


def test_objects_carry_a_size_word_colour_and_category():
    for kind in ('tabletop', 'room'):
        for o in generate_scene(6, kind, SMALL).objects:
            assert o.color_name and o.category
            assert o.size_word in ('', 'small', 'large')
            assert o.size.shape == (3,) and (o.size > 0).all()


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        generate_scene(0, 'kitchen')
