"""Synthetic scenes through the inference Pipeline, with each instance's ground-truth words.

One pass of the frozen backbone per scene gives two views of its objects: the instances the
pipeline predicts (matched to ground truth by IoU > 0.5), and the ground-truth masks pooled
over the same point features and described by the same code. Training uses both (clean pairs
and the inference distribution); evaluation queries the predicted ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from segvec3d_ros.data.scenes import CATEGORIES, OBJECT_COLOURS, Scene, SceneObject
from segvec3d_ros.evaluation.datasets import synthetic_ground_truth
from segvec3d_ros.evaluation.metrics import scene_overlaps
from segvec3d_ros.grounding.grounder import grounding_inputs
from segvec3d_ros.instances import InstanceInfo, describe_instances
from segvec3d_ros.pipeline import Pipeline
from segvec3d_ros.segmentation.base import Segmentation, Segmenter
from segvec3d_ros.training.captions import SIZE_WORDS

MATCH_IOU = 0.5


class RecordingSegmenter:
    """Passes frames to a segmenter and keeps the last one's working points and result."""

    def __init__(self, inner: Segmenter) -> None:
        """Wrap `inner`, whose `name` and `sees_colour` it takes."""
        self.inner = inner
        self.name = inner.name
        self.sees_colour = inner.sees_colour
        self.last: tuple[np.ndarray, Segmentation] | None = None

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None) -> Segmentation:
        """Inner segmentation, remembered with its points."""
        result = self.inner.segment(xyz, rgb)
        self.last = (np.asarray(xyz), result)
        return result


@dataclass
class InstanceSet:
    """Described instances, their points' grounding inputs and their ground-truth objects."""

    instances: list[InstanceInfo]
    point_inputs: np.ndarray    # (P, C + GEOMETRY_CHANNELS) per working point: F_i, geometry
    point_index: np.ndarray     # (P,) index into `instances` of each row of point_inputs
    objects: np.ndarray         # (K,) index into GroundedScene.objects, -1 = no object


@dataclass
class GroundedScene:
    """A generated scene seen through the pipeline, and its truth in the camera frame."""

    scene: Scene
    predicted: InstanceSet          # the pipeline's instances, matched to objects
    ground_truth: InstanceSet       # the visible objects' own masks
    objects: list[SceneObject]      # the non-support objects, in instance-id order
    centers: np.ndarray             # (G, 3) box centres of `objects` in the camera frame
    up: np.ndarray                  # (3,) world up in the camera frame


def scene_truth(scene: Scene) -> tuple[list[SceneObject], np.ndarray, np.ndarray]:
    """Non-support objects, their box centres and the world's up, in the camera frame."""
    pose = scene.camera_pose
    objects = [o for o in scene.objects if not o.is_support]
    world = np.array([o.center for o in objects], dtype=np.float64).reshape(-1, 3)
    return objects, (world - pose[:3, 3]) @ pose[:3, :3], pose[2, :3].copy()


def _instance_set(instances: list[InstanceInfo], xyz: np.ndarray, features: np.ndarray,
                  ids: np.ndarray, objects: np.ndarray) -> InstanceSet:
    return InstanceSet(instances, *grounding_inputs(xyz, features, ids, instances), objects)


def ground_scene(pipeline: Pipeline, scene: Scene) -> GroundedScene:
    """Run `pipeline` (its segmenter a RecordingSegmenter) on `scene`; match and describe."""
    if not isinstance(pipeline.segmenter, RecordingSegmenter):
        raise TypeError('ground_scene needs a pipeline whose segmenter is a RecordingSegmenter')
    result = pipeline.process(scene.cloud)
    xyz, segmentation = pipeline.segmenter.last
    if segmentation.features is None:
        raise ValueError(f'the {pipeline.segmenter.name} segmenter gives no point features')
    gt, support = synthetic_ground_truth(scene)
    valid = scene.cloud.valid
    objects, centers, up = scene_truth(scene)
    object_index = np.full(len(scene.objects) + 1, -1, dtype=np.int64)
    object_index[[o.instance_id for o in objects]] = np.arange(len(objects))

    overlaps = scene_overlaps(result.labels, gt, valid, support)
    pred_ids, gt_ids = np.unique(result.labels[result.labels > 0]), np.unique(gt[gt > 0])
    match = np.full(len(result.instances), -1, dtype=np.int64)
    if overlaps.iou.size:
        best = overlaps.iou.argmax(axis=1)
        hit = overlaps.iou[np.arange(len(best)), best] > MATCH_IOU
        match[pred_ids[hit] - 1] = object_index[gt_ids[best[hit]]]

    # Working points (voxel centroids) take the ids of their nearest valid input point.
    _, nearest = cKDTree(scene.cloud.xyz[valid]).query(xyz)
    predicted = _instance_set(result.instances, xyz, segmentation.features,
                              result.labels[valid][nearest].astype(np.int64), match)
    working_gt = gt[valid][nearest]
    present = np.intersect1d(gt_ids, np.unique(working_gt))
    described = describe_instances(scene.cloud.xyz[valid],
                                   None if scene.cloud.rgb is None else scene.cloud.rgb[valid],
                                   np.where(np.isin(gt[valid], present), gt[valid], 0), up)
    ground_truth = _instance_set(described, xyz, segmentation.features, working_gt,
                                 object_index[present])
    return GroundedScene(scene, predicted, ground_truth, objects, centers, up)


def attribute_indices(objects: list[SceneObject], index: np.ndarray) -> np.ndarray:
    """(K, 3) int64 category, colour and size-word indices of objects[index] (index >= 0)."""
    return np.array([[CATEGORIES.index(objects[i].category),
                      OBJECT_COLOURS.index(objects[i].color_name),
                      SIZE_WORDS.index(objects[i].size_word)] for i in index],
                    dtype=np.int64).reshape(-1, 3)
