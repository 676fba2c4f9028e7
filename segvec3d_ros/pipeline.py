"""The ROS-free frame processor that nodes, CLI, bag tools and tests call.

filter -> voxelise -> cap -> segment -> up-project to input points -> drop small -> describe.
An organized cloud for the range-image segmenter skips voxelise and cap: its scan's pixels are
the working points.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree
from threadpoolctl import ThreadpoolController

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.config import PipelineConfig
from segvec3d_ros.instances import InstanceInfo, describe_instances, describe_upright
from segvec3d_ros.segmentation.base import Segmenter
from segvec3d_ros.segmentation.euclidean import EuclideanSegmenter
from segvec3d_ros.segmentation.geometry import (VoxelGrid, column_max, column_min,
                                                fit_support_plane, group_means, inside_box,
                                                nearest_labels, rank_labels, voxel_downsample)
from segvec3d_ros.segmentation.range_image import RangeImageSegmenter
from segvec3d_ros.segmentation.split import part_candidates
from segvec3d_ros.segmentation.veil import veil_points

if TYPE_CHECKING:
    from segvec3d_ros.grounding.grounder import Grounder

# m: support points this close to an instance belong to the surface it stands on.
_BASE_RADIUS = 0.05
# Instances of fewer working points (voxels) are dropped too, whatever their input points: a
# 1 cm voxel near a 1280 x 720 camera holds a hundred pixels, so min_instance_points alone
# would keep single voxels of noise, while at 640 x 480 and beyond a metre it does not.
MIN_INSTANCE_VOXELS = 10


def make_segmenter(config: PipelineConfig) -> Segmenter:
    """Make the segmenter that `config.segmenter` names."""
    if config.segmenter == 'euclidean':
        return EuclideanSegmenter(config.euclidean())
    if config.segmenter == 'range_image':
        return RangeImageSegmenter(config.range_image())
    # Imported here so that euclidean-only users never load torch and onnxruntime.
    from segvec3d_ros.segmentation.learned import LearnedSegmenter
    return LearnedSegmenter(config.learned())


def pipeline_or_baseline(config: PipelineConfig) -> tuple[Pipeline, str | None]:
    """Pipeline `config` describes or, when its model cannot be loaded, the euclidean one.

    Returns the pipeline and, after a fallback, the warning to give, naming the reason in one
    line (torch's unpickling errors span several, and logs must stay greppable). Invalid
    settings still raise.
    """
    try:
        return Pipeline(config), None
    except (ValueError, OSError) as error:
        if config.segmenter == 'euclidean':
            raise
        config.validate()  # a settings problem is the user's to fix, not a reason to fall back
        reason = ' '.join(str(error).split())
        warning = (f'cannot start the {config.segmenter} segmenter ({reason}); falling back to '
                   'the euclidean segmenter')
        return Pipeline(dataclasses.replace(config, segmenter='euclidean')), warning


@dataclass
class SceneResult:
    """Everything one frame produced, per input point and per instance.

    `limits_hit` has a line per cap that changed this frame's result, the parameter's or the
    step's name first: 'max_points: 2307079 voxels subsampled to 50000', the segmenter's own
    (`Segmentation.limits_hit`: 'occlusion: 50294 pairs of pieces, the 5000 of the largest
    examined'), 'max_instances: 28674 instances, kept the 1000 largest'. A node reports these
    as a frame over budget. Full camera frames hit max_points as well (their working points
    are subsampled, their labels stay dense).
    """

    labels: np.ndarray                 # (N,) uint32 per input point; 0 = invalid/support/none
    instances: list[InstanceInfo]      # ids 1..K == label values, largest first
    support_mask: np.ndarray           # (N,) bool per input point
    instance_features: np.ndarray | None  # (K, C) mean point feature per instance, or None
    timings: dict[str, float]          # seconds per stage, and 'total'
    num_input: int
    num_valid: int
    num_working: int
    limits_hit: list[str] = field(default_factory=list)  # caps that bit, see above


class Pipeline:
    """Segments and describes one cloud per `process` call."""

    def __init__(self, config: PipelineConfig, segmenter: Segmenter | None = None) -> None:
        """Validate `config`; use `segmenter`, or the one the config names."""
        config.validate()
        self.config = config
        self.segmenter = make_segmenter(config) if segmenter is None else segmenter
        self._blas = ThreadpoolController()
        self.grounder: Grounder | None = None
        self.grounding_status = f'no grounding: the {config.segmenter} segmenter has no features'
        if config.segmenter == 'segvec3d':
            # Imported here: grounding needs torch, which euclidean-only users never load.
            from segvec3d_ros.grounding.grounder import load_grounder
            self.grounder, self.grounding_status = load_grounder(config, self.segmenter)

    @property
    def segmenter_status(self) -> str:
        """Name the segmenter that runs and, for the learned one, its model file."""
        model = getattr(self.segmenter, 'model_file', None)
        return f'{self.config.segmenter} segmenter' + (f' ({model})' if model else '')

    def process(self, cloud: Cloud) -> SceneResult:
        """Segment `cloud`; never raises on NaN, empty or degenerate content."""
        # A frame's many small matrix problems (plane fits, box axes, split eigenvectors) gain
        # nothing from OpenBLAS threads, which then spin against torch's and ONNX Runtime's
        # own threads: on 2 cores, frames took longer and their times spiked.
        with self._blas.limit(limits=1, user_api='blas'):
            return self._process(cloud)

    def _process(self, cloud: Cloud) -> SceneResult:
        cfg = self.config
        timings: dict[str, float] = {}
        limits_hit: list[str] = []
        start = tick = perf_counter()

        def lap(stage: str) -> None:
            nonlocal tick
            now = perf_counter()
            timings[stage] = now - tick
            tick = now

        valid = cloud.valid
        # The range-image segmenter judges neighbouring returns by the same angle itself.
        scan = isinstance(self.segmenter, RangeImageSegmenter) and cloud.is_organized
        veil = np.zeros(0, dtype=np.int64)
        if cfg.veil_angle > 0 and cloud.is_organized and not scan:
            flagged = veil_points(cloud.xyz, cloud.height, cloud.width, cfg.veil_angle)
            veil = self._within_range(cloud, np.flatnonzero(valid & flagged))
            valid &= ~flagged
        index = self._within_range(cloud, np.flatnonzero(valid))
        num_valid = len(index) + len(veil)
        # np.take gathers rows of an (N, 3) array four times faster than indexing does.
        xyz = np.take(cloud.xyz, index, axis=0)
        rgb = None if cloud.rgb is None else np.take(cloud.rgb, index, axis=0)
        # what the segmenter sees: colour, or a LiDAR's return strength as grey
        shade = rgb
        if rgb is None and self.segmenter.sees_colour:
            appearance = cloud.appearance()
            shade = None if appearance is None else np.take(appearance, index, axis=0)
        lap('filter')

        # The range-image segmenter works on the scan's own grid: every return is a working
        # point and keeps its pixel. Unorganized clouds take the usual voxels.
        grid = (voxel_downsample(xyz, cfg.voxel_size, shade) if cfg.voxel_size > 0 and not scan
                else VoxelGrid(xyz, shade, np.arange(len(xyz))))
        working = np.arange(len(grid.xyz))
        if len(working) > cfg.max_points and not scan:
            unit = 'voxels' if cfg.voxel_size > 0 else 'points'
            limits_hit.append(f'max_points: {len(working)} {unit} subsampled to {cfg.max_points}')
            working = np.sort(np.random.default_rng(0).choice(len(working), cfg.max_points,
                                                              replace=False))
        lap('downsample')

        organized = {'pixels': index, 'shape': (cloud.height, cloud.width)} if scan else {}
        working_xyz = grid.xyz[working]
        seg = self.segmenter.segment(working_xyz,
                                     None if grid.rgb is None else grid.rgb[working], **organized)
        timings.update(seg.timings or {})
        limits_hit += seg.limits_hit
        tick = perf_counter()
        normals: list[tuple[np.ndarray, np.ndarray | None]] = []

        def support_normal(on_instance: np.ndarray) -> np.ndarray | None:
            # Splits and joins leave the same points on instances, and dropping the small
            # ones mostly none: the plane is fitted once per distinct set of instance points.
            for mask, normal in normals:
                if np.array_equal(mask, on_instance):
                    return normal
            normals.append((on_instance, self._support_normal(working_xyz, seg.support_mask,
                                                              on_instance)))
            return normals[-1][1]

        point_normals = None
        if self.grounder is not None and seg.features is not None:
            point_normals = self.grounder.point_normals(working_xyz, seg.instance_ids)
            lap('instance normals')
            working_rgb = None if grid.rgb is None else grid.rgb[working]
            # Most frames need neither a split nor a join, so neither the plane.
            if seg.split_proposals is not None and seg.split_proposals.any():
                seg.instance_ids = self.grounder.resolve_splits(
                    working_xyz, working_rgb, seg.features, seg.instance_ids,
                    seg.split_proposals, support_normal(seg.instance_ids > 0), point_normals)
                lap('resolve splits')
            if cfg.join_parts:
                pairs = part_candidates(working_xyz, seg.instance_ids, cfg.cluster_tolerance,
                                        MIN_INSTANCE_VOXELS)
                if pairs:
                    seg.instance_ids = self.grounder.join_parts(
                        working_xyz, working_rgb, seg.features, seg.instance_ids, pairs,
                        support_normal(seg.instance_ids > 0), point_normals)
                lap('join parts')

        # Voxels outside the working subset take the labels of their nearest working voxel.
        voxel_labels = np.column_stack([seg.instance_ids, seg.support_mask]).astype(np.int64)
        if len(working) < len(grid.xyz):
            # Distinct voxels have distinct centroids, so a working voxel is its own nearest
            # one: only the others are looked up, which halves the search.
            others = np.ones(len(grid.xyz), dtype=bool)
            others[working] = False
            all_labels = np.empty((len(grid.xyz), 2), dtype=np.int64)
            all_labels[working] = voxel_labels
            all_labels[others] = nearest_labels(working_xyz, voxel_labels, grid.xyz[others])
            voxel_labels = all_labels
        voxel_ids = voxel_labels[:, 0]
        if cfg.voxel_size > 0 and not scan:
            voxels = np.bincount(voxel_ids)
            voxel_ids = np.where(voxels[voxel_ids] >= MIN_INSTANCE_VOXELS, voxel_ids, 0)
        point_ids, support = voxel_ids[grid.inverse], voxel_labels[:, 1][grid.inverse]
        if len(veil):
            # Veil points took no part; each takes the labels of the voxel nearest to it within
            # cluster_tolerance (an object's edge, the surface behind), else none, and is an
            # ordinary point from here on: counted and described with its instance.
            veil_labels = nearest_labels(
                grid.xyz, np.column_stack([voxel_ids, voxel_labels[:, 1]]), cloud.xyz[veil],
                cfg.cluster_tolerance)
            index = np.concatenate([index, veil])
            xyz = np.concatenate([xyz, cloud.xyz[veil]])
            rgb = None if rgb is None else np.concatenate([rgb, cloud.rgb[veil]])
            point_ids = np.concatenate([point_ids, veil_labels[:, 0]])
            support = np.concatenate([support, veil_labels[:, 1]])
        ids, new_id = rank_labels(point_ids, cfg.min_instance_points)
        # every segmenter id keeps an entry, also those of dropped instances above the rest
        new_id = np.pad(new_id, (0, int(voxel_labels[:, 0].max(initial=0)) + 1 - len(new_id)))
        num_instances = int(new_id.max(initial=0))
        if num_instances > cfg.max_instances:
            # Ids are by decreasing size, so the largest keep theirs; describing and grounding
            # every speck of a scattered cloud cost more than the rest of the frame.
            limits_hit.append(f'max_instances: {num_instances} instances, kept the '
                              f'{cfg.max_instances} largest')
            new_id[new_id > cfg.max_instances] = 0
            ids[ids > cfg.max_instances] = 0
            num_instances = cfg.max_instances
        labels = np.zeros(len(cloud), dtype=np.uint32)
        labels[index] = ids
        support_mask = np.zeros(len(cloud), dtype=bool)
        support_mask[index] = support.astype(bool)
        features = None
        if seg.features is not None:
            # Averaging only instance points: most working points are support or dropped.
            working_ids = new_id[seg.instance_ids]
            kept = working_ids > 0
            features = group_means(working_ids[kept], seg.features[kept],
                                   num_instances + 1)[1:].astype(np.float32)
        lap('upsample')

        up = seg.support_normal
        if up is None:
            up = support_normal(new_id[seg.instance_ids] > 0)
        if isinstance(self.segmenter, RangeImageSegmenter) and up is not None:
            # A LiDAR frame's ~100 instances: one smallest rectangle per hull took ~25 ms.
            instances = describe_upright(xyz, rgb, ids, up)
        else:
            instances = describe_instances(xyz, rgb, ids, up)
        lap('describe')
        if self.grounder is not None and seg.features is not None:
            self.grounder.ground(instances, working_xyz, seg.features,
                                 new_id[seg.instance_ids], point_normals)
            lap('ground')
        timings['total'] = perf_counter() - start
        return SceneResult(labels, instances, support_mask, features, timings,
                           num_input=len(cloud), num_valid=num_valid, num_working=len(working),
                           limits_hit=limits_hit)

    def _within_range(self, cloud: Cloud, index: np.ndarray) -> np.ndarray:
        """Those of the points `index` between min_range and max_range from the sensor."""
        cfg = self.config
        if cfg.max_range == 0 and cfg.min_range == 0:
            return index
        with np.errstate(over='ignore'):  # a norm beyond float32 is out of range anyway
            distance = np.linalg.norm(cloud.xyz[index], axis=1)
        return index[(distance >= cfg.min_range)
                     & ((distance <= cfg.max_range) | (cfg.max_range == 0))]

    def _support_normal(self, xyz: np.ndarray, support: np.ndarray,
                        on_instance: np.ndarray) -> np.ndarray | None:
        """Return the normal of the support surface the instances stand on, or None.

        Segmenters report support points, not planes, and the largest support plane may be a
        wall behind the objects, so the plane is fitted to the support points near instances.
        """
        if not (support.any() and on_instance.any()):
            return None
        objects, candidates = xyz[on_instance], xyz[support]
        # Only support points in the instances' box grown by the radius can be that close; the
        # box test is far cheaper than the search it spares (floor and walls, mostly).
        in_box = inside_box(candidates, column_min(objects) - _BASE_RADIUS,
                            column_max(objects) + _BASE_RADIUS)
        candidates = candidates[in_box]
        gap, _ = cKDTree(objects).query(candidates, distance_upper_bound=_BASE_RADIUS)
        plane, _ = fit_support_plane(candidates[np.isfinite(gap)], self.config.plane_distance,
                                     self.config.plane_iterations, np.random.default_rng(0))
        return None if plane is None else plane[:3]
