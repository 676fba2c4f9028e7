"""Stable ids and point prompts, measured.

Ids kept across perturbed frames, and objects and parts selected by a point:

- **Id persistence**: a frame is sent again and again, each time with 2 mm of noise, 10 % of its
  points dropped and one object moved 5 mm further (issue 21's perturbations); an object-frame
  counts when the object's majority id is the one it had in the first frame.
- **Object prompts**: a point on each object (its point nearest its centroid) selects an
  instance (`prompts.select_at`, scale 0); a hit when that instance's IoU with the object is at
  least 0.5.
- **Part prompts** (generated scenes, which label parts): a point on each part other than the
  body (a cap, a lid, a label band, a toy's piece) with the part's largest extent as the scale;
  the IoU of the selected points with the part.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.evaluation.datasets import MIN_GT_POINTS, EvalScene
from segvec3d_ros.pipeline import Pipeline
from segvec3d_ros.prompts import PromptError, select_at
from segvec3d_ros.tracking import Tracker

FRAMES = 10
NOISE = 0.002           # m
DROP = 0.1              # share of the points
STEP = 0.005            # m per frame, one object
FRAME_PERIOD = 0.1      # s between the frames' stamps
MIN_PART_POINTS = 30
IOU = 0.5


@dataclass
class InteractionFigures:
    """Counts over the scenes of one dataset."""

    kept: int = 0                   # object-frames that kept their first id
    object_frames: int = 0
    prompt_hits: int = 0            # objects a point on them selected (IoU >= 0.5)
    prompts: int = 0
    part_ious: list[float] = field(default_factory=list)

    def add(self, other: InteractionFigures) -> None:
        """Add another scene's counts."""
        self.kept += other.kept
        self.object_frames += other.object_frames
        self.prompt_hits += other.prompt_hits
        self.prompts += other.prompts
        self.part_ious += other.part_ious


def objects_of(gt: np.ndarray) -> list[int]:
    """Object ids with at least MIN_GT_POINTS points."""
    counts = np.bincount(gt)
    return [k for k in range(1, len(counts)) if counts[k] >= MIN_GT_POINTS]


def perturbed(cloud: Cloud, moving: np.ndarray, frame: int, rng: np.random.Generator) -> Cloud:
    """`cloud` with noise, dropped points and the `moving` points shifted for frame `frame`."""
    xyz = cloud.xyz + rng.normal(0.0, NOISE, cloud.xyz.shape).astype(np.float32)
    xyz[moving] += np.float32(STEP * frame)
    xyz[rng.random(len(xyz)) < DROP] = np.nan
    return Cloud(xyz=xyz, rgb=cloud.rgb, height=cloud.height, width=cloud.width)


def _majority(labels: np.ndarray, members: np.ndarray) -> int:
    """Most frequent label > 0 among `members`, 0 when none."""
    found = labels[members & (labels > 0)]
    return int(np.bincount(found).argmax()) if len(found) else 0


def id_persistence(pipeline: Pipeline, scene: EvalScene, seed: int = 0) -> tuple[int, int]:
    """(object-frames that kept their first id, object-frames) over FRAMES perturbed frames."""
    objects = objects_of(scene.gt)
    if not objects:
        return 0, 0
    rng = np.random.default_rng(seed)
    tracker = Tracker(timeout=2.0)
    moving = scene.gt == objects[0]
    first: dict[int, int] = {}
    kept = 0
    for frame in range(FRAMES):
        cloud = perturbed(scene.cloud, moving, frame, rng)
        result = pipeline.process(cloud)
        labels, _ = tracker.update(frame * FRAME_PERIOD, cloud.xyz, result.labels,
                                   result.instances)
        for k in objects:
            found = _majority(labels, scene.gt == k)
            if frame == 0:
                first[k] = found
            else:
                kept += found > 0 and found == first[k]
    return kept, (FRAMES - 1) * len(objects)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _central_point(xyz: np.ndarray, members: np.ndarray) -> np.ndarray:
    points = xyz[members]
    return points[np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1))]


def prompt_figures(pipeline: Pipeline, scene: EvalScene) -> InteractionFigures:
    """Object prompts on every object, part prompts on every labelled part (see module)."""
    result = pipeline.process(scene.cloud)
    part_ids = scene.parts
    figures = InteractionFigures()
    xyz, rgb = scene.cloud.xyz, scene.cloud.rgb
    for k in objects_of(scene.gt):
        members = scene.gt == k
        figures.prompts += 1
        try:
            selection = select_at(_central_point(xyz, members), xyz, result.labels,
                                  result.instances, rgb=rgb)
        except PromptError:
            selection = None
        figures.prompt_hits += selection is not None and _iou(selection.mask, members) >= IOU
        if part_ids is None:
            continue
        for part in np.unique(part_ids[members]):
            region = members & (part_ids == part)
            if part == 0 or region.sum() < MIN_PART_POINTS:
                continue
            scale = float(np.ptp(xyz[region], axis=0).max())
            try:
                selection = select_at(_central_point(xyz, region), xyz, result.labels,
                                      result.instances, scale, rgb)
                figures.part_ious.append(_iou(selection.mask, region))
            except PromptError:
                figures.part_ious.append(0.0)
    return figures


def evaluate_interaction(pipeline: Pipeline, scenes: Iterable[EvalScene],
                         log: Callable[[str], None] = print) -> InteractionFigures:
    """Id persistence and prompts over `scenes`."""
    total = InteractionFigures()
    for index, scene in enumerate(scenes):
        figures = prompt_figures(pipeline, scene)
        figures.kept, figures.object_frames = id_persistence(pipeline, scene, seed=index)
        total.add(figures)
        log(f'{scene.name}: ids kept {figures.kept}/{figures.object_frames}, objects selected '
            f'{figures.prompt_hits}/{figures.prompts}, parts {len(figures.part_ious)} '
            f'(mean IoU {np.mean(figures.part_ious) if figures.part_ious else float("nan"):.2f})')
    return total
