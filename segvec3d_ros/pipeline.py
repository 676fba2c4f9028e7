"""The ROS-free frame processor that nodes, CLI, bag tools and tests call.

filter -> voxelise -> cap -> segment -> up-project to input points -> drop small -> describe.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree
from threadpoolctl import ThreadpoolController

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.grounding.vocabulary import DEFAULT_VOCABULARY
from segvec3d_ros.instances import InstanceInfo, describe_instances
from segvec3d_ros.segmentation.base import Segmenter
from segvec3d_ros.segmentation.euclidean import EuclideanSegmenter
from segvec3d_ros.segmentation.geometry import (VoxelGrid, fit_support_plane, group_means,
                                                nearest_labels, rank_labels, voxel_downsample)
from segvec3d_ros import settings
from segvec3d_ros.settings import setting

if TYPE_CHECKING:
    from segvec3d_ros.grounding.step import Grounder

# m: support points this close to an instance belong to the surface it stands on.
_BASE_RADIUS = 0.05


@dataclass
class PipelineConfig:
    """Plain-data pipeline settings; every field is also a ROS parameter of the same name."""

    segmenter: str = setting('segvec3d', 'segmenter: segvec3d (learned model) or euclidean '
                             '(geometric baseline)', choices=('segvec3d', 'euclidean'))
    device: str = setting('auto', 'torch device of the learned segmenter',
                          choices=('auto', 'cpu', 'cuda'))
    model_path: str = setting('', 'weights of the learned segmenter (.pt or .onnx); '
                                         'empty = the bundled models/segvec3d.onnx')
    voxel_size: float = setting(0.01, 'working resolution in m; 0 = no voxel downsampling',
                                range=(0.0, 0.5))
    max_points: int = setting(50000, 'cap on working points after voxelisation (seeded random '
                              'subset; the others take their nearest working label)',
                              range=(100, 5_000_000))
    min_instance_points: int = setting(50, 'instances with fewer input points are dropped',
                                       range=(1, 1_000_000))
    max_instances: int = setting(1000, 'only this many instances, the largest, are kept (each '
                                 'costs a box, a grounding pass and two markers; synthetic rooms '
                                 'have up to ~500, a scattered broken cloud tens of thousands)',
                                 range=(1, 100_000))
    cluster_tolerance: float = setting(0.02, 'Euclidean clustering radius in m',
                                       range=(0.001, 1.0))
    embedding_radius: float = setting(0.3, 'learned segmenter: k-NN neighbours closer than '
                                      'this in embedding space join one instance',
                                      range=(0.01, 2.0))
    occlusion_gap: float = setting(0.2, 'learned segmenter: join instances up to this far apart '
                                   'in m when the gap between them is hidden behind a nearer '
                                   'object, seen from the cloud origin (the sensor); 0 = off',
                                   range=(0.0, 1.0))
    claim_openings: bool = setting(True, 'learned segmenter: support points seen through an '
                                   'instance\'s opening (the floor inside a mug or bowl), ringed '
                                   'by it in the view from the cloud origin (the sensor), join it')
    split_touching: bool = setting(True, 'learned segmenter with a grounding head: split an '
                                   'instance where a weak cut of its embeddings meets in a '
                                   'concave junction and the grounding head labels the two '
                                   'parts differently (touching or stacked objects)')
    plane_distance: float = setting(0.01, 'RANSAC inlier distance of the support surface in m',
                                    range=(0.001, 0.5))
    plane_iterations: int = setting(200, 'RANSAC hypotheses per support surface',
                                    range=(1, 10_000))
    min_support_fraction: float = setting(0.05, 'a plane with fewer inliers (fraction of '
                                          'working points) is not a support surface',
                                          range=(0.01, 1.0))
    min_support_extent: float = setting(0.5, 'a plane whose largest patch spans less than this '
                                        'in m (a book\'s or a box\'s top close to the sensor) '
                                        'is not a support surface', range=(0.0, 100.0))
    drop_below_support: bool = setting(True, 'ignore points on the far side of a support '
                                       'surface from the sensor (cloud in the sensor frame)')
    max_range: float = setting(0.0, 'drop points farther than this from the sensor in m '
                               '(0 = keep all)', range=(0.0, 1000.0))
    grounding_model_path: str = setting('', 'grounding head of the learned segmenter (.pt); '
                                        'empty = the bundled models/grounding.pt')
    label_vocabulary: list[str] = setting(DEFAULT_VOCABULARY, 'zero-shot instance labels '
                                          '(learned segmenter with a grounding head)')
    label_threshold: float = setting(0.1, 'an instance whose best label scores below this '
                                     'cosine is labelled other', range=(-1.0, 1.0))

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field and why."""
        settings.validate(self)
        if self.voxel_size > 0 and self.cluster_tolerance <= self.voxel_size:
            raise ValueError(f'cluster_tolerance={self.cluster_tolerance} must exceed '
                             f'voxel_size={self.voxel_size}, or every voxel is its own cluster')


def validate_field(name: str, value: Any) -> str | None:
    """Why `value` is invalid for PipelineConfig field `name`, or None when it is valid."""
    return settings.field_problem(PipelineConfig, name, value)


def make_segmenter(config: PipelineConfig) -> Segmenter:
    """The segmenter that `config.segmenter` names."""
    if config.segmenter == 'euclidean':
        return EuclideanSegmenter(config)
    # Imported here so that euclidean-only users never load torch and onnxruntime.
    from segvec3d_ros.model.segmenter import LearnedSegmenter
    return LearnedSegmenter(config)


def pipeline_or_baseline(config: PipelineConfig) -> tuple[Pipeline, str | None]:
    """The pipeline `config` describes or, when its model cannot be loaded, the euclidean one.

    Returns the pipeline and, after a fallback, the reason in one line (torch's unpickling
    errors span several, and logs must stay greppable). Invalid settings still raise.
    """
    try:
        return Pipeline(config), None
    except (ValueError, OSError) as error:
        if config.segmenter == 'euclidean':
            raise
        config.validate()  # a settings problem is the user's to fix, not a reason to fall back
        reason = ' '.join(str(error).split())
        return Pipeline(dataclasses.replace(config, segmenter='euclidean')), reason


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
            from segvec3d_ros.grounding.step import load_grounder
            self.grounder, self.grounding_status = load_grounder(config, self.segmenter)

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

        index = np.flatnonzero(cloud.valid)
        if cfg.max_range > 0:
            with np.errstate(over='ignore'):  # a norm beyond float32 is out of range anyway
                index = index[np.linalg.norm(cloud.xyz[index], axis=1) <= cfg.max_range]
        xyz = cloud.xyz[index]
        rgb = None if cloud.rgb is None else cloud.rgb[index]
        lap('filter')

        grid = (voxel_downsample(xyz, cfg.voxel_size, rgb) if cfg.voxel_size > 0
                else VoxelGrid(xyz, rgb, np.arange(len(xyz))))
        working = np.arange(len(grid.xyz))
        if len(working) > cfg.max_points:
            unit = 'voxels' if cfg.voxel_size > 0 else 'points'
            limits_hit.append(f'max_points: {len(working)} {unit} subsampled to {cfg.max_points}')
            working = np.sort(np.random.default_rng(0).choice(len(working), cfg.max_points,
                                                               replace=False))
        lap('downsample')

        seg = self.segmenter.segment(grid.xyz[working],
                                     None if grid.rgb is None else grid.rgb[working])
        timings.update(seg.timings or {})
        limits_hit += seg.limits_hit
        tick = perf_counter()
        if (self.grounder is not None and seg.features is not None
                and seg.split_proposals is not None and seg.split_proposals.any()):
            up = self._support_normal(grid.xyz[working], seg.support_mask,
                                      seg.instance_ids > 0)
            seg.instance_ids = self.grounder.resolve_splits(
                grid.xyz[working], None if grid.rgb is None else grid.rgb[working],
                seg.features, seg.instance_ids, seg.split_proposals, up)
            lap('resolve splits')

        # Voxels outside the working subset take the labels of their nearest working voxel.
        voxel_labels = np.column_stack([seg.instance_ids, seg.support_mask]).astype(np.int64)
        if len(working) < len(grid.xyz):
            # Distinct voxels have distinct centroids, so a working voxel is its own nearest
            # one: only the others are looked up, which halves the search.
            others = np.ones(len(grid.xyz), dtype=bool)
            others[working] = False
            all_labels = np.empty((len(grid.xyz), 2), dtype=np.int64)
            all_labels[working] = voxel_labels
            all_labels[others] = nearest_labels(grid.xyz[working], voxel_labels, grid.xyz[others])
            voxel_labels = all_labels
        ids, new_id = rank_labels(voxel_labels[grid.inverse, 0], cfg.min_instance_points)
        num_instances = int(new_id.max(initial=0))
        if num_instances > cfg.max_instances:
            # Ids are by decreasing size, so the largest keep theirs; describing and grounding
            # every speck of a scattered cloud cost more than the rest of the frame.
            limits_hit.append(f'max_instances: {num_instances} instances, kept the '
                              f'{cfg.max_instances} largest')
            new_id[new_id > cfg.max_instances] = 0
            ids[ids > cfg.max_instances] = 0
            num_instances = cfg.max_instances
        support = voxel_labels[grid.inverse, 1].astype(bool)
        labels = np.zeros(len(cloud), dtype=np.uint32)
        labels[index] = ids
        support_mask = np.zeros(len(cloud), dtype=bool)
        support_mask[index] = support
        features = None
        if seg.features is not None:
            # Averaging only instance points: most working points are support or dropped.
            working_ids = new_id[seg.instance_ids]
            kept = working_ids > 0
            features = group_means(working_ids[kept], seg.features[kept],
                                   num_instances + 1)[1:].astype(np.float32)
        lap('upsample')

        up = self._support_normal(grid.xyz[working], seg.support_mask,
                                  new_id[seg.instance_ids] > 0)
        instances = describe_instances(xyz, rgb, ids, up)
        lap('describe')
        if self.grounder is not None and seg.features is not None:
            self.grounder.ground(instances, grid.xyz[working], seg.features,
                                 new_id[seg.instance_ids])
            lap('ground')
        timings['total'] = perf_counter() - start
        return SceneResult(labels, instances, support_mask, features, timings,
                           num_input=len(cloud), num_valid=len(index), num_working=len(working),
                           limits_hit=limits_hit)

    def _support_normal(self, xyz: np.ndarray, support: np.ndarray,
                        on_instance: np.ndarray) -> np.ndarray | None:
        """Normal of the support surface the instances stand on, or None.

        Segmenters report support points, not planes, and the largest support plane may be a
        wall behind the objects, so the plane is fitted to the support points near instances.
        """
        if not (support.any() and on_instance.any()):
            return None
        objects, candidates = xyz[on_instance], xyz[support]
        # Only support points in the instances' box grown by the radius can be that close; the
        # box test is far cheaper than the search it spares (floor and walls, mostly).
        in_box = ((candidates >= objects.min(axis=0) - _BASE_RADIUS)
                  & (candidates <= objects.max(axis=0) + _BASE_RADIUS)).all(axis=1)
        candidates = candidates[in_box]
        gap, _ = cKDTree(objects).query(candidates, distance_upper_bound=_BASE_RADIUS)
        plane, _ = fit_support_plane(candidates[np.isfinite(gap)], self.config.plane_distance,
                                     self.config.plane_iterations, np.random.default_rng(0))
        return None if plane is None else plane[:3]
