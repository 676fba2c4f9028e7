"""Training samples: scenes preprocessed exactly as the pipeline feeds the learned segmenter."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.data.scenes import SceneConfig, generate_scene
from segvec3d_ros.segmentation.geometry import voxel_downsample


@dataclass
class Sample:
    """One cloud at the network's working resolution with an instance id per point."""

    xyz: np.ndarray         # (M, 3) float32, sensor frame
    rgb: np.ndarray         # (M, 3) uint8
    instance_ids: np.ndarray  # (M,) int64, 0 = unlabelled; support surfaces have ids too


def majority_labels(inverse: np.ndarray, labels: np.ndarray, num_groups: int) -> np.ndarray:
    """Most frequent label in each group (ties: the smaller label)."""
    if len(inverse) == 0:
        return np.zeros(num_groups, dtype=np.int64)
    pairs, counts = np.unique(np.column_stack([inverse, labels]), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    out = np.zeros(num_groups, dtype=np.int64)
    out[pairs[first, 0]] = pairs[first, 1]
    return out


def working_sample(cloud: Cloud, instance_ids: np.ndarray, voxel_size: float,
                   max_points: int, rng: np.random.Generator) -> Sample:
    """Voxelise and cap like `Pipeline.process`, labelling each voxel by its points' majority."""
    valid = np.flatnonzero(cloud.valid)
    if len(valid) == 0:
        return Sample(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8),
                      np.zeros(0, np.int64))
    xyz = cloud.xyz[valid]
    appearance = cloud.appearance()
    rgb = (appearance[valid] if appearance is not None
           else np.zeros((len(valid), 3), dtype=np.uint8))
    grid = voxel_downsample(xyz, voxel_size, rgb)
    ids = majority_labels(grid.inverse, np.asarray(instance_ids)[valid], len(grid.xyz))
    keep = np.arange(len(grid.xyz))
    if len(keep) > max_points:
        keep = np.sort(rng.choice(len(keep), max_points, replace=False))
    return Sample(grid.xyz[keep], grid.rgb[keep], ids[keep])


class SceneCache:
    """Synthetic training samples on disk, generated once per (scene config, preprocessing)."""

    def __init__(self, root: str | Path, scene_config: SceneConfig, kinds: dict[str, float],
                 voxel_size: float, max_points: int) -> None:
        """Keep the samples under root/<hash of everything that shapes them>/."""
        self.scene_config = scene_config
        self.kinds = kinds
        self.voxel_size = voxel_size
        self.max_points = max_points
        recipe = json.dumps({'scene': asdict(scene_config), 'kinds': kinds,
                             'voxel_size': voxel_size, 'max_points': max_points},
                            sort_keys=True, default=str)
        self.directory = Path(root) / hashlib.sha1(recipe.encode()).hexdigest()[:12]

    def kind_of(self, seed: int) -> str:
        """Scene kind of a seed, drawn by the configured proportions."""
        names = sorted(self.kinds)
        weights = np.array([self.kinds[n] for n in names], dtype=np.float64)
        draw = np.random.default_rng([seed, 7]).random()
        return names[int(np.searchsorted(np.cumsum(weights) / weights.sum(), draw))]

    def get(self, seed: int) -> Sample:
        """Sample of scene `seed`, generated and stored on first use."""
        path = self.directory / f'{seed:07d}.npz'
        if path.is_file():
            with np.load(path) as stored:
                return Sample(stored['xyz'], stored['rgb'], stored['instance_ids'])
        scene = generate_scene(seed, self.kind_of(seed), self.scene_config)
        sample = working_sample(scene.cloud, scene.instance_ids, self.voxel_size,
                                self.max_points, np.random.default_rng(seed))
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix('.tmp.npz')
        np.savez_compressed(partial, xyz=sample.xyz, rgb=sample.rgb,
                            instance_ids=sample.instance_ids)
        partial.replace(path)
        return sample
