"""Stable ids across frames (tracking.py) and the object or part under a point (prompts.py)."""
from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from segvec3d_ros.data import meshes
from segvec3d_ros.instances import describe_instances
from segvec3d_ros.prompts import PromptError, part_around, select_at
from segvec3d_ros.tracking import Tracker


def _boxes(offsets: dict[int, tuple[float, float, float]], rng: np.random.Generator,
           drop: float = 0.0, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Points on 8 cm cubes (one per key, at its offset) and their keys as labels."""
    xyz, labels = [], []
    for key, offset in offsets.items():
        cube = rng.uniform(-0.04, 0.04, (600, 3))
        face = rng.integers(0, 3, 600)
        cube[np.arange(600), face] = np.sign(cube[np.arange(600), face]) * 0.04
        keep = rng.random(600) >= drop
        xyz.append(cube[keep] + offset + rng.normal(0, noise, (int(keep.sum()), 3)))
        labels.append(np.full(int(keep.sum()), key))
    return np.concatenate(xyz), np.concatenate(labels)


def _frame(tracker: Tracker, stamp: float, offsets: dict, rng: np.random.Generator,
           **perturbation) -> dict[int, int]:
    """Track one frame whose instance ids are ranks in a random order; truth key -> track id."""
    xyz, truth = _boxes(offsets, rng, **perturbation)
    keys = list(offsets)
    rank = dict(zip(keys, rng.permutation(len(keys)) + 1))
    labels = np.array([rank[k] for k in truth])
    labels, instances = tracker.update(stamp, xyz, labels, describe_instances(xyz, None, labels))
    assert {int(i.id) for i in instances} == set(np.unique(labels[labels > 0]).tolist())
    return {k: int(np.bincount(labels[truth == k]).argmax()) for k in keys}


def test_ids_persist_under_noise_dropout_motion_and_random_ranks():
    rng = np.random.default_rng(0)
    offsets = {k: (0.15 * (k % 4), 0.15 * (k // 4), 1.0) for k in range(8)}
    tracker = Tracker(timeout=2.0)
    first = _frame(tracker, 0.0, offsets, rng)
    kept = 0
    for frame in range(1, 10):
        offsets[3] = (0.45 + 0.005 * frame, 0.0, 1.0)      # one object moves 5 mm a frame
        ids = _frame(tracker, 0.1 * frame, offsets, rng, drop=0.1, noise=0.002)
        kept += sum(ids[k] == first[k] for k in offsets)
    assert kept == 9 * len(offsets)


def test_an_object_keeps_its_id_while_away_for_less_than_the_timeout_only():
    rng = np.random.default_rng(1)
    both = {0: (0.0, 0.0, 1.0), 1: (0.3, 0.0, 1.0)}
    tracker = Tracker(timeout=1.0)
    first = _frame(tracker, 0.0, both, rng)
    _frame(tracker, 0.5, {0: both[0]}, rng)                # object 1 out of view
    back = _frame(tracker, 1.2, both, rng)                  # 1.2 s after it was last seen
    assert back[0] == first[0] and back[1] != first[1]
    again = _frame(tracker, 1.5, both, rng)
    assert again == back
    new = _frame(tracker, 1.6, {**both, 2: (0.6, 0.0, 1.0)}, rng)
    assert new[2] > max(first.values()) and new[2] not in (first[1], back[1])


def test_a_bag_played_again_starts_afresh_with_new_ids():
    rng = np.random.default_rng(2)
    offsets = {0: (0.0, 0.0, 1.0)}
    tracker = Tracker(timeout=10.0)
    first = _frame(tracker, 5.0, offsets, rng)
    replay = _frame(tracker, 1.0, offsets, rng)
    assert replay[0] != first[0]


def test_tracked_labels_keep_unlabelled_points_and_ages():
    rng = np.random.default_rng(3)
    xyz, labels = _boxes({1: (0.0, 0.0, 1.0)}, rng)
    labels[:10] = 0
    tracker = Tracker(timeout=1.0)
    tracker.update(2.0, xyz, labels, describe_instances(xyz, None, labels))
    out, instances = tracker.update(2.5, xyz, labels, describe_instances(xyz, None, labels))
    assert (out[:10] == 0).all() and (out[10:] == instances[0].id).all()
    assert instances[0].first_seen == 2.0 and instances[0].track_age == pytest.approx(0.5)
    assert [i.instance.id for i in tracker.objects.values()] == [instances[0].id]


# --------------------------------------------------------------------------- prompts


def _two_boxes() -> tuple[np.ndarray, np.ndarray, list]:
    rng = np.random.default_rng(4)
    xyz, labels = _boxes({1: (0.0, 0.0, 1.0), 2: (0.3, 0.0, 1.0)}, rng)
    table = np.column_stack([rng.uniform(-0.2, 0.5, 500), np.full(500, 0.05),
                             rng.uniform(0.9, 1.1, 500)])
    xyz = np.concatenate([xyz, table, np.full((5, 3), np.nan)])
    labels = np.concatenate([labels, np.zeros(505, dtype=np.int64)])
    return xyz, labels, describe_instances(xyz[:-5], None, labels[:-5])


def test_a_point_on_an_object_selects_all_of_it():
    xyz, labels, instances = _two_boxes()
    selection = select_at((0.3, 0.0, 0.96), xyz, labels, instances)
    assert selection.instance.id == 2
    np.testing.assert_array_equal(selection.mask, labels == 2)


@pytest.mark.parametrize('point, scale, reason', [
    ((0.3, 0.0, 0.5), 0.0, 'no point of the latest cloud lies within'),
    ((0.1, 0.05, 1.0), 0.0, 'lies on no object'),
    ((np.nan, 0.0, 1.0), 0.0, 'not finite'),
    ((0.3, 0.0, 0.96), -0.1, 'scale must be'),
])
def test_a_point_that_selects_nothing_says_why(point, scale, reason):
    xyz, labels, instances = _two_boxes()
    with pytest.raises(PromptError, match=reason):
        select_at(point, xyz, labels, instances, scale)


def _bottle_seen_from_the_front(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Front half of a capped bottle 0.8 m ahead (optical frame), points and part per point."""
    parts = meshes.capped_bottle(0.035, 0.25, label=False)
    xyz, part = [], []
    o3d.utility.random.seed(0)
    for index, mesh in enumerate(parts):
        sample = np.asarray(mesh.sample_points_uniformly(5000 if index == 0 else 1000).points)
        xyz.append(sample)
        part.append(np.full(len(sample), index))
    xyz = np.concatenate(xyz)[:, [0, 2, 1]] * [1, -1, 1] + [0.0, 0.2, 0.8]
    part = np.concatenate(part)
    front = xyz[:, 2] < 0.805
    return xyz[front] + rng.normal(0, 0.0005, (int(front.sum()), 3)), part[front]


def test_a_bottle_cap_is_its_part_by_colour_and_by_shape_alone():
    rng = np.random.default_rng(5)
    xyz, part = _bottle_seen_from_the_front(rng)
    cap = part == 1
    seed = int(np.flatnonzero(cap)[np.argmin(np.abs(xyz[cap, 1] - xyz[cap, 1].mean()))])
    rgb = np.where(cap[:, None], [200, 30, 30], [30, 30, 200])

    def iou(mask: np.ndarray) -> float:
        return (mask & cap).sum() / (mask | cap).sum()

    assert iou(part_around(xyz, rgb, seed, 0.06)) > 0.9
    assert iou(part_around(xyz, None, seed, 0.06)) > 0.5
    # the whole bottle is reached where no crease or colour change stops the growth
    body_seed = int(np.flatnonzero(~cap)[0])
    assert part_around(xyz, None, body_seed, 1.0)[~cap].mean() > 0.9
