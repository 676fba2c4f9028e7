"""Stable instance ids across frames: each frame's instances matched to the objects tracked.

ROS-free; the segmentation node keeps one Tracker. A frame's instances are numbered by size,
which changes whenever an object is hidden, split or merged; a grasp planner that asked for
instance 7 needs the same object under id 7 a frame later. Each instance is matched to a
tracked object by how much of space they share (occupied cells), how far their centroids lie
apart, how alike their boxes are and, with a grounding head, their embeddings; Hungarian
assignment on that score, with a gate. A matched object keeps its id; a new one gets the next
id, never one used before in the run; an object not seen for `timeout` seconds is forgotten.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from segvec3d_ros.instances import InstanceInfo

# m: side of the cells whose overlap compares an instance with a tracked object. Coarser than
# sensor noise and a frame's motion (2 mm and 5 mm per frame keep most cells), finer than the
# gap between objects side by side.
CELL = 0.02
# Weights of the parts of the match score, and the least score that is a match.
_OVERLAP_WEIGHT = 1.0
_CENTROID_WEIGHT = 0.5
_SIZE_WEIGHT = 0.25
_EMBEDDING_WEIGHT = 0.5
_MIN_SCORE = 0.45
# m: the centroid term falls to 1/e at this distance; beyond _GATE no match is made, however
# alike the rest is.
_CENTROID_SCALE = 0.03
_GATE = 0.25


@dataclass
class TrackedObject:
    """One object followed across frames."""

    track_id: int
    first_seen: float               # s, stamp of the frame it was first seen in
    last_seen: float                # s, stamp of the frame it was last seen in
    cells: np.ndarray               # sorted int64 keys of the CELL cubes its points occupy
    instance: InstanceInfo          # its latest description, id = track_id


def cell_keys(xyz: np.ndarray) -> np.ndarray:
    """Sorted unique int64 keys of the CELL cubes that (N, 3) points occupy."""
    return np.unique(_point_cells(xyz))


def _point_cells(xyz: np.ndarray) -> np.ndarray:
    """(N,) int64 key of the CELL cube each of the (N, 3) points lies in."""
    pts = np.asarray(xyz).reshape(-1, 3)
    # A column at a time (floor and casts run several times faster on contiguous columns);
    # 21 bits per axis: +-20 km at 2 cm, far beyond any sensor's range.
    i, j, k = ((np.floor(pts[:, axis].astype(np.float64) / CELL).astype(np.int64) + (1 << 20))
               & ((1 << 21) - 1) for axis in range(3))
    return (i << 42) | (j << 21) | k


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two sorted key sets."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


def match_score(instance: InstanceInfo, cells: np.ndarray, tracked: TrackedObject) -> float:
    """How alike a frame's instance and a tracked object are; -inf beyond the gate."""
    old = tracked.instance
    distance = float(np.linalg.norm(instance.centroid - old.centroid))
    if distance > _GATE:
        return -np.inf
    sizes = np.sort(instance.bbox_size), np.sort(old.bbox_size)
    size = float(np.exp(-np.abs(np.log(np.maximum(sizes[0], 1e-3)
                                       / np.maximum(sizes[1], 1e-3))).sum()))
    score = (_OVERLAP_WEIGHT * _overlap(cells, tracked.cells)
             + _CENTROID_WEIGHT * np.exp(-distance / _CENTROID_SCALE) + _SIZE_WEIGHT * size)
    if len(instance.embedding) and len(instance.embedding) == len(old.embedding):
        score += _EMBEDDING_WEIGHT * max(float(instance.embedding @ old.embedding), 0.0)
    return score


class Tracker:
    """Gives each frame's instances the ids of the objects they were in earlier frames."""

    def __init__(self, timeout: float) -> None:
        """Forget an object `timeout` seconds after the frame it was last seen in."""
        self.timeout = timeout
        self.objects: dict[int, TrackedObject] = {}
        self._next_id = 1
        self._last_stamp: float | None = None

    def reset(self) -> None:
        """Forget every object; ids still never repeat."""
        self.objects.clear()
        self._last_stamp = None

    def update(self, stamp: float, xyz: np.ndarray, labels: np.ndarray,
               instances: list[InstanceInfo]) -> tuple[np.ndarray, list[InstanceInfo]]:
        """Track one frame: labels and instances renumbered by object id.

        `labels` (N,) are the frame's instance ids per point of `xyz` (0 = none), `instances`
        their descriptions. A stamp earlier than the last (a bag played again) starts afresh.
        Returns the labels with each instance id replaced by its object's id, and the
        instances with those ids, in the same order.
        """
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.reset()
        self._last_stamp = stamp
        self.objects = {k: o for k, o in self.objects.items()
                        if stamp - o.last_seen <= self.timeout}
        labels = np.asarray(labels)
        cells = _instance_cells(xyz, labels, [i.id for i in instances])
        tracked = list(self.objects.values())
        # Only pairs within the gate are scored: a LiDAR frame has a hundred instances.
        new = np.array([i.centroid for i in instances], dtype=np.float64).reshape(-1, 3)
        old = np.array([t.instance.centroid for t in tracked], dtype=np.float64).reshape(-1, 3)
        near = np.linalg.norm(new[:, None] - old[None], axis=2) <= _GATE
        scores = np.full(near.shape, -np.inf)
        for r, c in zip(*np.nonzero(near)):
            scores[r, c] = match_score(instances[r], cells[r], tracked[c])
        assigned = np.zeros(len(instances), dtype=np.int64)
        if scores.size:
            rows, cols = linear_sum_assignment(-np.where(np.isfinite(scores), scores, -1e9))
            for r, c in zip(rows, cols):
                if scores[r, c] >= _MIN_SCORE:
                    assigned[r] = tracked[c].track_id
        renamed = []
        for index, (instance, keys) in enumerate(zip(instances, cells)):
            if assigned[index] == 0:
                assigned[index] = self._next_id
                self._next_id += 1
                first = stamp
            else:
                first = self.objects[int(assigned[index])].first_seen
            track_id = int(assigned[index])
            info = replace(instance, id=track_id, first_seen=first, track_age=stamp - first)
            self.objects[track_id] = TrackedObject(track_id, first, stamp, keys, info)
            renamed.append(info)
        lookup = np.zeros(int(max((i.id for i in instances), default=0)) + 1, dtype=np.int64)
        lookup[[i.id for i in instances]] = assigned
        new_labels = np.where(labels > 0, lookup[np.minimum(labels, len(lookup) - 1)], 0)
        return new_labels.astype(labels.dtype), renamed


def _instance_cells(xyz: np.ndarray, labels: np.ndarray, ids: list[int]) -> list[np.ndarray]:
    """Cell keys of the points of each id, every instance's from one sort."""
    labels = np.asarray(labels)
    members = np.flatnonzero(labels > 0)
    keys = _point_cells(np.take(np.asarray(xyz).reshape(-1, 3), members, axis=0))
    owners = labels[members]
    order = np.lexsort((keys, owners))
    keys, owners = keys[order], owners[order]
    distinct = np.ones(len(keys), dtype=bool)
    distinct[1:] = (keys[1:] != keys[:-1]) | (owners[1:] != owners[:-1])
    keys, owners = keys[distinct], owners[distinct]
    bounds = np.searchsorted(owners, np.column_stack([ids, np.add(ids, 1)]).reshape(-1))
    return [keys[lo:hi] for lo, hi in bounds.reshape(-1, 2)]
