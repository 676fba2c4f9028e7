"""Labelled evaluation scenes: real frames and held-out splits of synthetic scenes.

The real frames are mOSD's (Kinect) and those of other cameras; the synthetic tabletops form
one subset per simulated camera, the simulated LiDAR scans one per LiDAR model.

Ground truth per scene: object ids > 0, a support mask (table, floor, walls) and 0 elsewhere.
Objects with fewer than MIN_GT_POINTS valid points become unlabelled (ignored), as ScanNet
ignores ground-truth instances under 100 vertices: too few points to be an instance of the
pipeline, whose default drops instances under 50 points.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.data.lidar import LIDARS
from segvec3d_ros.data.scenes import KINDS, Scene, SceneConfig, generate_scene
from segvec3d_ros.data.splits import TEST_FIRST_SEED
from segvec3d_ros.io.files import read_cloud

CAMERA_DATASETS = ('mosd', 'synthetic', 'realsense')
DATASETS = (*CAMERA_DATASETS, 'lidar')
# mOSD learn frame numbers of each subset, from the dataset's description
MOSD_SUBSETS: dict[str, range] = {'boxes': range(0, 17), 'stacked': range(17, 25),
                                  'occluded': range(25, 33), 'cylinders': range(33, 45)}
DEFAULT_MOSD_DIR = Path('../shared/data/mosd/learn')
# Labelled frames of cameras other than a Kinect v1: a `label` field, 0 = no object.
DEFAULT_REALSENSE_DIR = Path('../shared/data/realsense')
MIN_GT_POINTS = 100
# A LiDAR sees a tabletop object with a few dozen returns: the LiDAR preset keeps instances of
# 20 returns (min_instance_points), and so many make an object of the ground truth.
MIN_LIDAR_GT_POINTS = 20
# Held-out LiDAR scans: every simulated LiDAR, tabletops and rooms in turn, always a floor
# (a spinning sensor sees all around the table).
LIDAR_SCENES = SceneConfig(sensors=tuple(LIDARS), floor_prob=1.0)


class EvalScene(NamedTuple):
    """One labelled frame."""

    name: str
    subset: str
    cloud: Cloud
    gt: np.ndarray          # (N,) int64 object id per point, 0 = support, unlabelled, invalid
    support: np.ndarray     # (N,) bool support-surface points
    parts: np.ndarray | None = None  # (N,) int64 part of its object (0 = body), where known


def ignore_small(gt: np.ndarray, min_points: int = MIN_GT_POINTS) -> np.ndarray:
    """`gt` with objects of fewer than `min_points` points set to 0 (unlabelled)."""
    counts = np.bincount(gt)
    return np.where(counts[gt] < min_points, 0, gt)


def mosd_ground_truth(label: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-object ids and support mask from mOSD's per-point `label` field.

    Labels 1-9 are the table, 20-29 object 1, 30-39 object 2 and so on (one decade per object,
    its parts within it); a few frames label points that have no valid coordinates.
    """
    label = np.asarray(label, dtype=np.int64)
    valid = np.asarray(valid, bool)
    gt = np.where(valid & (label >= 20), label // 10 - 1, 0)
    return ignore_small(gt), valid & (label >= 1) & (label <= 9)


def mosd_frames(directory: str | Path = DEFAULT_MOSD_DIR) -> list[tuple[str, Path]]:
    """(subset, path) of every mOSD learn frame; raises FileNotFoundError naming missing ones."""
    directory = Path(directory)
    frames = [(subset, directory / f'learn{n}.pcd')
              for subset, numbers in MOSD_SUBSETS.items() for n in numbers]
    missing = [path.name for _, path in frames if not path.is_file()]
    if missing:
        raise FileNotFoundError(f'{directory}: mOSD frames missing: {", ".join(missing[:5])}'
                                f'{" ..." if len(missing) > 5 else ""}')
    return frames


def mosd_scene(subset: str, path: str | Path) -> EvalScene:
    """One mOSD frame with its ground truth."""
    cloud = read_cloud(path)
    return EvalScene(Path(path).stem, subset, cloud,
                     *mosd_ground_truth(cloud.extra['label'], cloud.valid))


def iter_mosd(directory: str | Path = DEFAULT_MOSD_DIR) -> Iterator[EvalScene]:
    """Read the 45 mOSD learn frames one at a time, in subset order.

    Raises FileNotFoundError at once, not on the first frame, when frames are missing.
    """
    return (mosd_scene(subset, path) for subset, path in mosd_frames(directory))


def synthetic_ground_truth(scene: Scene, min_points: int = MIN_GT_POINTS
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Object ids and support mask of a generated scene: its support instances are support."""
    is_support = np.array([False] + [o.is_support for o in scene.objects])
    valid = scene.cloud.valid
    support = valid & is_support[scene.instance_ids]
    gt = np.where(valid & ~support, scene.instance_ids, 0)
    return ignore_small(gt, min_points), support


def iter_synthetic(count: int, first_seed: int = TEST_FIRST_SEED) -> Iterator[EvalScene]:
    """`count` held-out tabletop scenes, seeds first_seed, first_seed + 1, ...

    Each scene's subset is the sensor model it was rendered with.
    """
    for seed in range(first_seed, first_seed + count):
        scene = generate_scene(seed, 'tabletop')
        yield EvalScene(f'seed{seed}', scene.sensor, scene.cloud, *synthetic_ground_truth(scene),
                        scene.part_ids)


def iter_lidar(count: int, first_seed: int = TEST_FIRST_SEED) -> Iterator[EvalScene]:
    """`count` held-out simulated LiDAR scans, seeds first_seed on, tabletop and room in turn.

    Each scene's subset is the LiDAR model it was scanned with.
    """
    for seed in range(first_seed, first_seed + count):
        kind = KINDS[seed % len(KINDS)]
        scene = generate_scene(seed, kind, LIDAR_SCENES)
        yield EvalScene(f'seed{seed}-{kind}', scene.sensor, scene.cloud,
                        *synthetic_ground_truth(scene, MIN_LIDAR_GT_POINTS), scene.part_ids)


def labelled_frames(directory: str | Path = DEFAULT_REALSENSE_DIR) -> list[Path]:
    """List the .pcd files of `directory`; raise FileNotFoundError when there are none."""
    frames = sorted(Path(directory).glob('*.pcd'))
    if not frames:
        raise FileNotFoundError(f'{directory}: no labelled .pcd frames')
    return frames


def labelled_scene(path: str | Path) -> EvalScene:
    """Read a real frame whose `label` field numbers the objects (0: support, clutter, none).

    Nothing there is labelled support, so a prediction on the bin or table is ignored only
    when more than half of it lies on unlabelled points.
    """
    cloud = read_cloud(path)
    if 'label' not in cloud.extra:
        raise ValueError(f'{path}: no label field')
    label = np.asarray(cloud.extra['label'], dtype=np.int64)
    gt = np.where(cloud.valid & (label > 0), label, 0)
    return EvalScene(Path(path).stem, 'real', cloud, ignore_small(gt),
                     np.zeros(len(gt), dtype=bool))


def iter_labelled(directory: str | Path = DEFAULT_REALSENSE_DIR) -> Iterator[EvalScene]:
    """Read the labelled frames of `directory` one at a time."""
    return (labelled_scene(path) for path in labelled_frames(directory))


def iter_scenes(dataset: str, mosd_dir: str | Path = DEFAULT_MOSD_DIR,
                synthetic_scenes: int = 30, synthetic_first_seed: int = TEST_FIRST_SEED,
                realsense_dir: str | Path = DEFAULT_REALSENSE_DIR) -> Iterator[EvalScene]:
    """Scenes of `dataset`, one of DATASETS."""
    if dataset == 'mosd':
        return iter_mosd(mosd_dir)
    if dataset == 'synthetic':
        return iter_synthetic(synthetic_scenes, synthetic_first_seed)
    if dataset == 'realsense':
        return iter_labelled(realsense_dir)
    if dataset == 'lidar':
        return iter_lidar(synthetic_scenes, synthetic_first_seed)
    raise ValueError(f'unknown dataset {dataset!r}, expected one of {DATASETS}')
