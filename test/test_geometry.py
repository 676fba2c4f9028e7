"""Voxel grid, RANSAC plane, Euclidean clusters and label up-projection."""
import numpy as np
import pytest

from segvec3d_ros.config import PipelineConfig
from segvec3d_ros.segmentation.base import peel_support
from segvec3d_ros.segmentation.geometry import (column_max, column_min, euclidean_clusters,
                                                fit_support_plane, longest_span, nearest_labels,
                                                plane_patches, rank_labels, support_surfaces,
                                                voxel_downsample)


def box_surface(size, center, spacing=0.005):
    """Points on the six faces of an axis-aligned box, on a regular grid."""
    size, center = np.asarray(size, float), np.asarray(center, float)
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        gu, gv = np.meshgrid(np.arange(0, size[u] + 1e-9, spacing),
                             np.arange(0, size[v] + 1e-9, spacing))
        for side in (0.0, size[axis]):
            face = np.zeros((gu.size, 3))
            face[:, u], face[:, v], face[:, axis] = gu.ravel(), gv.ravel(), side
            faces.append(face)
    return np.concatenate(faces) - size / 2 + center


def test_voxel_grid_by_hand():
    xyz = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.2, 0.0, 0.0], [0.1, 0.2, 0.3]])
    rgb = np.array([[0, 0, 0], [30, 60, 90], [255, 255, 255], [0, 0, 3]], dtype=np.uint8)
    grid = voxel_downsample(xyz, 1.0, rgb)
    assert len(grid.xyz) == 2
    inv = grid.inverse
    assert inv[0] == inv[1] == inv[3] != inv[2]
    np.testing.assert_allclose(grid.xyz[inv[0]], [0.2, 0.7 / 3, 0.8 / 3], atol=1e-6)
    np.testing.assert_allclose(grid.xyz[inv[2]], [1.2, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(grid.rgb[inv[0]], [10, 20, 31])
    np.testing.assert_array_equal(grid.rgb[inv[2]], [255, 255, 255])
    assert voxel_downsample(xyz, 1.0).rgb is None


@pytest.mark.parametrize('voxel', [0.01, 1e-12])
def test_voxel_grid_far_and_fine_does_not_overflow(voxel):
    # 1e9 m extents at 1 cm (or 1 pm) voxels have far more cells than one int64 key can pack.
    xyz = np.array([[0.0, 0.0, 0.0], [1e9, 1e9, 1e9], [0.0, 0.0, 0.0], [1e9, 0.0, 1e9],
                    [1e9, 1e9, 1e9]])
    grid = voxel_downsample(xyz, voxel)
    assert len(grid.xyz) == 3
    inv = grid.inverse
    assert inv[0] == inv[2] and inv[1] == inv[4] and len({inv[0], inv[1], inv[3]}) == 3
    np.testing.assert_allclose(grid.xyz[inv], xyz, rtol=1e-6)


# 10 cells per axis: fewer cells than 8 per point, numbered from an occupancy table; 50: sorted.
@pytest.mark.parametrize('cells_per_axis', [10, 50])
def test_voxel_grid_packed_keys_separate_every_cell(cells_per_axis):
    rng = np.random.default_rng(1)
    # The grid starts at the cloud's minimum, here the origin; the other points sit mid-cell.
    cells = np.concatenate([[[0, 0, 0]], rng.integers(0, cells_per_axis, size=(2000, 3))])
    xyz = np.concatenate([[[0.0, 0.0, 0.0]], (cells[1:] + 0.5) * 0.02])
    grid = voxel_downsample(xyz, 0.02)
    distinct, numbers = np.unique(cells, axis=0, return_inverse=True)
    assert len(grid.xyz) == len(distinct)
    # Voxels are numbered in the cells' lexicographic order, whichever way they were found.
    np.testing.assert_array_equal(grid.inverse, numbers.reshape(-1))
    np.testing.assert_allclose(grid.xyz[grid.inverse], xyz, atol=1e-6)


def test_voxel_grid_rejects_bad_size_and_accepts_empty():
    with pytest.raises(ValueError, match='voxel_size'):
        voxel_downsample(np.zeros((3, 3)), 0.0)
    grid = voxel_downsample(np.zeros((0, 3)), 0.01, np.zeros((0, 3), np.uint8))
    assert grid.xyz.shape == (0, 3) and grid.rgb.shape == (0, 3) and grid.inverse.shape == (0,)


def test_ransac_finds_noisy_plane_among_outliers():
    rng = np.random.default_rng(0)
    normal = np.array([0.1, -0.2, -1.0]) / np.linalg.norm([0.1, -0.2, -1.0])
    uv = rng.uniform(-0.5, 0.5, size=(3000, 2))
    plane_pts = np.column_stack([uv, 0.1 * uv[:, 0] - 0.2 * uv[:, 1] + 0.8])
    plane_pts += rng.normal(0, 0.002, size=plane_pts.shape) * normal
    outliers = rng.uniform(-0.5, 0.5, size=(1500, 3)) + [0, 0, 0.8]
    plane, inliers = fit_support_plane(np.concatenate([plane_pts, outliers]), 0.01, 200, rng)
    # Oriented towards the origin (the sensor): the origin is on the positive side.
    assert plane[3] > 0
    assert abs(plane[:3] @ normal) > np.cos(np.deg2rad(1.0))
    np.testing.assert_allclose(plane[3], 0.8 * abs(normal[2]), atol=0.003)
    assert inliers[:3000].mean() > 0.99
    assert inliers[3000:].mean() < 0.05


def test_ransac_up_prior_prefers_the_horizontal_plane():
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.uniform(-0.3, 0.3, (1000, 2)), np.zeros(1000)])
    wall = np.column_stack([rng.uniform(-1, 1, 3000), np.full(3000, 0.5),
                            rng.uniform(0.05, 1, 3000)])
    xyz = np.concatenate([table, wall])
    plane, _ = fit_support_plane(xyz, 0.01, 200, rng)
    assert abs(plane[1]) > 0.99
    plane, inliers = fit_support_plane(xyz, 0.01, 200, rng, up=np.array([0, 0, 1.0]))
    assert plane[2] > 0.99 and inliers[:1000].all() and not inliers[1000:].any()


@pytest.mark.parametrize('xyz', [np.zeros((0, 3)), np.ones((2, 3)), np.ones((50, 3)),
                                 np.column_stack([np.arange(20.0)] * 3)])
def test_ransac_without_a_plane(xyz):
    plane, inliers = fit_support_plane(xyz, 0.01, 50, np.random.default_rng(0))
    assert plane is None and inliers.shape == (len(xyz),) and not inliers.any()


def test_support_surfaces_peel_table_and_wall_and_drop_what_is_beyond():
    # Sensor at the origin looking down at a table (z = -0.7) in front of a wall (y = 0.5).
    rng = np.random.default_rng(2)
    table = np.column_stack([rng.uniform(-0.5, 0.5, (4000, 2)) * [1, 0.9], np.full(4000, -0.7)])
    wall = np.column_stack([rng.uniform(-0.5, 0.5, 2500), np.full(2500, 0.5),
                            rng.uniform(-0.68, 0.0, 2500)])
    on_top = rng.normal([0, 0, -0.65], 0.01, (300, 3))
    below = rng.normal([0.1, 0.1, -0.9], 0.01, (200, 3))
    xyz = np.concatenate([table, wall, on_top, below])
    part = np.repeat([0, 1, 2, 3], [4000, 2500, 300, 200])
    support, rest = support_surfaces(xyz, 0.01, 100, 0.1, True, rng, tolerance=0.03)
    np.testing.assert_array_equal(support, part <= 1)
    np.testing.assert_array_equal(rest, part == 2)
    support, rest = support_surfaces(xyz, 0.01, 100, 0.1, False, rng, tolerance=0.03)
    np.testing.assert_array_equal(rest, part >= 2)
    support, rest = support_surfaces(xyz, 0.01, 100, 0.6, True, rng, tolerance=0.03)
    assert not support.any() and rest.all()


def _square(corner, size, z=-0.7, spacing=0.01):
    """Grid points of a horizontal square of side `size` from `corner` (x, y) at height z."""
    gx, gy = np.meshgrid(np.arange(0, size, spacing), np.arange(0, size, spacing))
    return np.column_stack([gx.ravel() + corner[0], gy.ravel() + corner[1], np.full(gx.size, z)])


def test_plane_patches_join_touching_points_in_any_tilted_plane():
    parts = [_square((0, 0), 0.2), _square((0.3, 0), 0.1), _square((0.1, 0.2), 0.1)]
    xyz = np.concatenate(parts)
    tilt = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    patches = plane_patches(xyz @ tilt.T, tilt @ [0, 0, 1.0], 0.02)
    first, second, third = np.split(patches, np.cumsum([len(p) for p in parts])[:-1])
    assert len(set(first)) == len(set(second)) == 1 and first[0] != second[0]
    assert set(third) == set(first)      # touches the first square along y = 0.2
    assert plane_patches(np.zeros((0, 3)), np.array([0, 0, 1.0]), 0.02).shape == (0,)


def test_support_needs_one_large_connected_patch():
    # A close-up of clutter without a table: ten box tops at one height, each 2.5 % of the
    # points, line up into the best plane; none is a surface, and nothing is dropped.
    tops = [_square((0.2 * (k % 5), 0.2 * (k // 5)), 0.1) for k in range(10)]
    sides = [_square((0.2 * (k % 5), 0.2 * (k // 5)), 0.1, z=-0.6 - 0.05 * (k % 3))
             for k in range(30)]
    xyz = np.concatenate(tops + sides)
    support, rest = support_surfaces(xyz, 0.01, 200, 0.1, True, np.random.default_rng(0),
                                     tolerance=0.02)
    assert not support.any() and rest.all()


def test_longest_span_is_a_patch_long_side_at_any_yaw_and_tilt():
    strip = _square((0, 0), 0.1)[:, :2] * [4.0, 1.0]      # 0.36 x 0.09 m
    yaw = np.deg2rad(30)
    strip = strip @ np.array([[np.cos(yaw), np.sin(yaw)], [-np.sin(yaw), np.cos(yaw)]])
    tilt = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    xyz = np.column_stack([strip, np.full(len(strip), -0.7)]) @ tilt.T
    assert longest_span(xyz, tilt @ [0, 0, 1.0]) == pytest.approx(0.36, abs=0.005)
    assert longest_span(xyz[:1], tilt @ [0, 0, 1.0]) == 0.0


def test_an_object_top_near_the_sensor_is_no_support_surface():
    # A box's top (0.25 x 0.2 m, 4 cm above a 1 x 0.8 m table) seen from close holds more
    # points than the table; with min_extent it stays to be segmented, the table does not.
    table = _square((-0.5, -0.4), 1.0, spacing=0.02)
    table = table[(table[:, 1] < 0.4)
                  & ~((np.abs(table[:, 0]) < 0.13) & (np.abs(table[:, 1]) < 0.11))]
    top = _square((-0.125, -0.1), 0.2, z=-0.66, spacing=0.004)
    top = top[np.abs(top[:, 0]) < 0.125]
    xyz = np.concatenate([table, top])
    is_top = np.repeat([False, True], [len(table), len(top)])
    assert is_top.sum() > len(table)
    support, rest = support_surfaces(xyz, 0.01, 200, 0.1, True, np.random.default_rng(0),
                                     tolerance=0.03, min_extent=0.5)
    np.testing.assert_array_equal(support, ~is_top)
    np.testing.assert_array_equal(rest, is_top)
    support, _ = support_surfaces(xyz, 0.01, 200, 0.1, True, np.random.default_rng(0),
                                  tolerance=0.03)
    assert support[is_top].mean() > 0.5


def test_object_tops_level_above_the_table_are_no_support_but_a_shelf_is():
    # Two books lying flat side by side (one 0.6 m patch 2.5 cm above the table) pass the size
    # and span tests; lying on the table, they are objects. A shelf 0.4 m up is a surface.
    def rectangle(corner, size, z, spacing):
        points = _square(corner, max(size), z=z, spacing=spacing)
        return points[(points[:, 0] < corner[0] + size[0]) & (points[:, 1] < corner[1] + size[1])]
    books = rectangle((-0.3, -0.125), (0.6, 0.25), -0.675, 0.015)
    table = rectangle((-0.5, -0.4), (1.0, 0.8), -0.7, 0.02)
    table = table[~((np.abs(table[:, 0]) < 0.3) & (np.abs(table[:, 1]) < 0.125))]
    shelf = rectangle((-0.4, -0.4), (0.8, 0.3), -0.3, 0.02)
    xyz = np.concatenate([table, books, shelf])
    part = np.repeat([0, 1, 2], [len(table), len(books), len(shelf)])
    assert len(books) > max(len(shelf), 0.05 * len(xyz))
    support, rest = support_surfaces(xyz, 0.01, 200, 0.05, False, np.random.default_rng(0),
                                     tolerance=0.03, min_extent=0.5)
    np.testing.assert_array_equal(support, part != 1)
    np.testing.assert_array_equal(rest, part == 1)


def test_a_table_smaller_than_the_floor_and_wall_around_it_is_support_by_default():
    # A room view: the floor (z = -1.5) and a wall (x = 1) hold most points, the table
    # (z = -0.8) under a tenth. Were it left, the whole table would become an instance.
    floor = _square((-1.0, -1.0), 2.0, z=-1.5, spacing=0.015)
    gy, gz = np.meshgrid(np.arange(-1.0, 1.0, 0.015), np.arange(-1.5, -0.5, 0.015))
    wall = np.column_stack([np.full(gy.size, 1.0), gy.ravel(), gz.ravel()])
    table = _square((-0.4, -0.3), 0.6, z=-0.8, spacing=0.015)
    xyz = np.concatenate([floor, wall, table]).astype(np.float32)
    is_table = np.repeat([False, True], [len(floor) + len(wall), len(table)])
    assert 0.05 < is_table.mean() < 0.1
    support, rest = peel_support(xyz, PipelineConfig().support())
    assert support.all() and not rest.any()
    # A level above a surface found before needs that share of the points left, not of all.
    support, _ = peel_support(xyz, PipelineConfig(min_support_fraction=0.1).support())
    assert support[is_table].all()
    support, _ = peel_support(xyz, PipelineConfig(min_support_fraction=0.8).support())
    assert not support[is_table].any()


def test_a_table_whose_noise_grows_with_range_is_support_to_its_far_edge():
    # Stereo depth noise grows with the square of the range: sigma 1.5 mm at 1 m, 9 mm at
    # 2.5 m, where a fixed 1 cm band would leave a third of the table in specks. A box
    # standing on it near the sensor stays an object.
    rng = np.random.default_rng(0)
    gx, gz = np.meshgrid(np.arange(-0.5, 0.5, 0.01), np.arange(0.5, 2.5, 0.01))
    table = np.column_stack([gx.ravel(), np.full(gx.size, 0.5), gz.ravel()])
    table[:, 1] += rng.normal(size=len(table)) * 0.0015 * table[:, 2] ** 2
    box = box_surface([0.1, 0.1, 0.1], [0.0, 0.45, 0.8])
    box = box[box[:, 1] < 0.495]
    xyz = np.concatenate([table, box]).astype(np.float32)
    support, rest = peel_support(xyz, PipelineConfig().support())
    far = np.flatnonzero(table[:, 2] > 2.0)
    assert support[far].mean() > 0.95
    assert rest[len(table):].mean() > 0.9
    fixed = np.abs(table[far, 1] - 0.5) <= 0.01
    assert fixed.mean() < 0.9       # what a fixed band would have kept


def test_clusters_split_a_gap_and_merge_touching_boxes():
    big = box_surface([0.1, 0.1, 0.1], [0, 0, 0])
    small = box_surface([0.05, 0.05, 0.05], [0.125, 0, 0])        # 5 cm gap
    touching = box_surface([0.05, 0.05, 0.05], [0, 0.075, 0])     # shares the y = 0.05 face
    labels = euclidean_clusters(np.concatenate([big, small]), 0.02)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat([1, 2], [len(big), len(small)]))
    labels = euclidean_clusters(np.concatenate([big, touching]), 0.02)
    assert set(labels) == {1}


def test_clusters_size_limits_and_empty_input():
    dense = box_surface([0.05, 0.05, 0.05], [0, 0, 0])
    stray = np.array([[1.0, 1, 1], [1.005, 1, 1], [1.01, 1, 1]])
    labels = euclidean_clusters(np.concatenate([stray, dense]), 0.02, min_points=5)
    np.testing.assert_array_equal(labels, np.repeat([0, 1], [3, len(dense)]))
    labels = euclidean_clusters(np.concatenate([stray, dense]), 0.02, max_points=10)
    np.testing.assert_array_equal(labels, np.repeat([1, 0], [3, len(dense)]))
    assert euclidean_clusters(np.zeros((0, 3)), 0.02).shape == (0,)


def test_rank_labels_orders_by_size_and_drops_small():
    ranked, mapping = rank_labels(np.array([3, 3, 0, 5, 5, 5, 7]), min_size=2)
    np.testing.assert_array_equal(ranked, [2, 2, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(mapping, [0, 0, 0, 2, 0, 1, 0, 0])


def test_nearest_labels():
    src = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    dst = np.array([[0.9, 0.1, 0], [0.1, 0.2, 0], [-1, 2, 0]])
    np.testing.assert_array_equal(nearest_labels(src, np.array([4, 5, 6]), dst), [5, 4, 6])
    rows = nearest_labels(src, np.array([[4, 1], [5, 0], [6, 1]]), dst)
    np.testing.assert_array_equal(rows, [[5, 0], [4, 1], [6, 1]])
    assert nearest_labels(src[:0], np.zeros(0, np.int64), dst).tolist() == [0, 0, 0]
    # beyond max_distance (the third destination is 1.41 m from its nearest source): zeros
    bounded = nearest_labels(src, np.array([[4, 1], [5, 0], [6, 1]]), dst, max_distance=0.5)
    np.testing.assert_array_equal(bounded, [[5, 0], [4, 1], [0, 0]])


def test_a_thin_object_lying_on_the_table_is_no_support():
    # A book 8 mm thick: with 2 mm of depth noise most of its top lies inside the table's 1 cm
    # inlier band, but as a whole patch high in it; the table's own noise is left as support.
    rng = np.random.default_rng(3)
    table = _square((-0.5, -0.4), 1.0, z=-0.7, spacing=0.01)
    table = table[table[:, 1] < 0.4]
    under = (np.abs(table[:, 0]) < 0.125) & (np.abs(table[:, 1]) < 0.09)
    book = table[under] + [0.0, 0.0, 0.008]
    xyz = np.concatenate([table[~under], book])
    xyz[:, 2] += rng.normal(0.0, 0.002, len(xyz))
    is_book = np.repeat([False, True], [(~under).sum(), len(book)])
    assert (np.abs(xyz[is_book, 2] + 0.7) <= 0.01).mean() > 0.8
    support, rest = support_surfaces(xyz, 0.01, 200, 0.1, True, np.random.default_rng(0),
                                     tolerance=0.03, min_extent=0.5)
    assert rest[is_book].mean() > 0.9
    assert support[~is_book].mean() > 0.99


def test_a_table_warped_by_the_sensor_stays_support_under_a_thin_object():
    # A 1.6 m table with the same book, and its left 10 cm bent 9 mm towards the sensor, as a
    # real depth camera's calibration bends a table or a floor: that strip is as high in the
    # band as the book's top, but it spans the table's 0.8 m depth, more than a thin object.
    rng = np.random.default_rng(3)
    table = _square((-0.8, -0.4), 1.6, z=-0.7, spacing=0.01)
    table = table[table[:, 1] < 0.4]
    table[:, 2] += 0.009 * np.clip((-0.6 - table[:, 0]) / 0.05, 0.0, 1.0)
    under = (np.abs(table[:, 0] - 0.2) < 0.125) & (np.abs(table[:, 1]) < 0.09)
    book = table[under] + [0.0, 0.0, 0.008]
    xyz = np.concatenate([table[~under], book])
    xyz[:, 2] += rng.normal(0.0, 0.002, len(xyz))
    is_book = np.repeat([False, True], [(~under).sum(), len(book)])
    warped = ~is_book & (xyz[:, 0] < -0.65)
    kept = {}
    for min_extent in (0.5, 0.0):   # 0: no extent judged, and the warp passes for an object
        support, rest = support_surfaces(xyz, 0.01, 200, 0.1, True, np.random.default_rng(0),
                                         tolerance=0.03, min_extent=min_extent)
        assert rest[is_book].mean() > 0.85
        kept[min_extent] = support[warped].mean()
    assert kept[0.5] > 0.99 and kept[0.0] < 0.7


@pytest.mark.parametrize('dtype', [np.float32, np.float64, np.int64])
def test_column_bounds_are_numpy_s_axis_0_reductions(dtype):
    values = (np.random.default_rng(0).normal(size=(1000, 3)) * 100).astype(dtype)
    for mine, numpys in ((column_min, np.min), (column_max, np.max)):
        np.testing.assert_array_equal(mine(values), numpys(values, axis=0))
        assert mine(values).dtype == values.dtype
    empty = np.zeros((0, 2), dtype)
    np.testing.assert_array_equal(column_min(empty, initial=7), [7, 7])
    np.testing.assert_array_equal(column_max(empty, initial=0), [0, 0])
    if dtype != np.int64:
        values[5, 1] = np.nan     # NaN propagates, as in numpy's reductions
        assert np.isnan(column_min(values)[1]) and not np.isnan(column_min(values)[0])
