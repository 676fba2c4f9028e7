"""Support points seen through an instance's opening join it; the table around never does."""
import numpy as np

from segvec3d_ros.segmentation.openings import claim_seen_through

VOXEL = 0.01


def _disc_grid(radius_from: float, radius_to: float, z: float,
               gap_from_angle: float | None = None) -> np.ndarray:
    """Points one voxel apart on the annulus radius_from <= r < radius_to at depth z, seen
    from the origin along +z; with `gap_from_angle`, without the sector beyond that angle."""
    xs = np.arange(-radius_to, radius_to + 1e-9, VOXEL)
    gx, gy = np.meshgrid(xs, xs)
    r = np.hypot(gx, gy)
    keep = (r >= radius_from) & (r < radius_to)
    if gap_from_angle is not None:
        keep &= np.abs(np.arctan2(gy, gx)) < gap_from_angle
    return np.column_stack([gx[keep], gy[keep], np.full(keep.sum(), z)])


def _mug_from_above(open_ring: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rim (instance 1) at 0.9 m around a floor at 1 m, in a table at 1 m (both support)."""
    rim = _disc_grid(0.05, 0.07, 0.9, np.pi * 0.8 if open_ring else None)
    floor = _disc_grid(0.0, 0.05, 1.0)
    table = _disc_grid(0.08, 0.25, 1.0)
    xyz = np.concatenate([rim, floor, table])
    ids = np.concatenate([np.ones(len(rim), int), np.zeros(len(floor) + len(table), int)])
    support = ids == 0
    return xyz, ids, support


def test_the_floor_inside_a_rim_joins_the_rim_and_the_table_stays_support() -> None:
    xyz, ids, support = _mug_from_above()
    new_ids, new_support = claim_seen_through(xyz, ids, support, VOXEL)
    radius = np.hypot(xyz[:, 0], xyz[:, 1])
    floor, table = support & (radius < 0.05), support & (radius >= 0.08)
    assert (new_ids[floor] == 1).mean() > 0.9 and not new_support[floor & (new_ids == 1)].any()
    assert (new_ids[table] == 0).all() and new_support[table].all()
    assert (new_ids[ids == 1] == 1).all()
    # The inputs are left alone.
    assert (ids[support] == 0).all() and support[floor].all()


def test_support_in_line_with_an_opening_of_the_rim_stays_support() -> None:
    xyz, ids, support = _mug_from_above(open_ring=True)
    new_ids, new_support = claim_seen_through(xyz, ids, support, VOXEL)
    radius = np.hypot(xyz[:, 0], xyz[:, 1])
    # The rim is open on its left: looking left from these floor points, the table shows.
    facing_gap = support & (radius < 0.05) & (xyz[:, 0] < 0) & (np.abs(xyz[:, 1]) < 0.01)
    assert facing_gap.any() and new_support[facing_gap].all() and not new_ids[facing_gap].any()
    assert new_support[support & (radius >= 0.08)].all()


def test_support_between_two_instances_stays_support() -> None:
    xyz, ids, support = _mug_from_above()
    # The rim's right half is another object: no single instance rings the floor.
    ids = np.where((ids == 1) & (xyz[:, 0] > 0), 2, ids)
    new_ids, new_support = claim_seen_through(xyz, ids, support, VOXEL)
    assert np.array_equal(new_ids, ids) and np.array_equal(new_support, support)


def test_nothing_to_claim_without_instances_or_support() -> None:
    xyz, ids, support = _mug_from_above()
    for case_ids, case_support in ((np.zeros_like(ids), support), (ids, np.zeros_like(support))):
        new_ids, new_support = claim_seen_through(xyz, case_ids, case_support, VOXEL)
        assert np.array_equal(new_ids, case_ids) and np.array_equal(new_support, case_support)
    empty = claim_seen_through(np.zeros((0, 3)), np.zeros(0, int), np.zeros(0, bool), VOXEL)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_the_image_stays_small_when_voxels_are_tiny_against_the_range() -> None:
    xyz, ids, support = _mug_from_above()
    # 1 km away with 1 cm voxels, voxel-sized pixels would make a 10^5-pixel-wide image.
    new_ids, new_support = claim_seen_through(xyz * 1000.0, ids, support, VOXEL)
    table = support & (np.hypot(xyz[:, 0], xyz[:, 1]) >= 0.08)
    assert new_ids.shape == ids.shape and new_support[table].all()
    # Scaled with the voxels, the same scene gives the same claims as at 1 m.
    assert np.array_equal(claim_seen_through(xyz * 1000.0, ids, support, VOXEL * 1000.0)[0],
                          claim_seen_through(xyz, ids, support, VOXEL)[0])
