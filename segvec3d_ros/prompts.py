"""Segment what a point shows: the object under a clicked point, or a part of that object.

ROS-free; the segmentation node answers RViz's Publish Point and the segment_at service with
it. At scale 0 the answer is the instance the point lies on. At a scale s > 0 it is the part of
that instance around the point: the points reached from it over short k-NN edges that cross
no concave crease (locally convex connectivity, as in Stein et al., "Object partitioning using
local convexity", CVPR 2014) and no change of colour, no farther than s from it: a mug's
handle, a bottle's cap, a toy's wheel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order
from scipy.spatial import cKDTree

from segvec3d_ros.instances import InstanceInfo
from segvec3d_ros.model.features import estimate_normals

# m: default distance within which a prompt must lie from a point of the cloud
PROMPT_RADIUS = 0.03
# A part is grown on at most this many of the object's points (a random subset); the others
# take the answer of their nearest one.
_PART_POINTS = 12_000
_PART_NEIGHBOURS = 8
_NORMAL_NEIGHBOURS = 16
_NORMAL_RADIUS = 0.015      # m
# Normals this close in direction join whatever the crease (a smooth surface's noise).
_SMOOTH_COS = float(np.cos(np.deg2rad(20.0)))
# An edge longer than this many times the median neighbour spacing bridges a gap.
_GAP_FACTOR = 3.0
# RGB distance (0-255 per channel) across which a part ends: a cap on a bottle of another
# colour. Shading on one surface changes colour far less between neighbours.
_COLOUR_STEP = 60.0


class PromptError(ValueError):
    """Why a point selects nothing, in words for the user."""


@dataclass
class Selection:
    """What a point selected."""

    instance: InstanceInfo          # the object under the point
    mask: np.ndarray                # (N,) bool over the cloud's points: the selected ones


def select_at(point: np.ndarray, xyz: np.ndarray, labels: np.ndarray,
              instances: list[InstanceInfo], scale: float = 0.0,
              rgb: np.ndarray | None = None, radius: float = PROMPT_RADIUS) -> Selection:
    """Select the object (scale 0) or the part of it (scale > 0, m) under `point`.

    `xyz` (N, 3) are a frame's points (NaN where none), `labels` (N,) their instance ids and
    `instances` those instances. Raises PromptError when no point lies within `radius` of
    `point` or the nearest one belongs to no instance.
    """
    point = np.asarray(point, dtype=np.float64).reshape(3)
    if not np.isfinite(point).all():
        raise PromptError(f'the point {point.tolist()} is not finite')
    if not scale >= 0 or not np.isfinite(scale):
        raise PromptError(f'scale must be 0 (the whole object) or a size in m, got {scale}')
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    with np.errstate(invalid='ignore'):
        distance = np.sqrt(((pts - point) ** 2).sum(axis=1))
    finite = np.isfinite(distance)
    if not finite.any():
        raise PromptError('the latest cloud has no valid point')
    nearest = int(np.flatnonzero(finite)[np.argmin(distance[finite])])
    where = '({:.3f}, {:.3f}, {:.3f})'.format(*point)
    if distance[nearest] > radius:
        raise PromptError(f'no point of the latest cloud lies within {radius:.3f} m of {where}; '
                          f'the nearest is {distance[nearest]:.3f} m away')
    label = int(labels[nearest])
    by_id = {int(i.id): i for i in instances}
    if label == 0 or label not in by_id:
        raise PromptError(f'the point {where} lies on no object (a support surface or '
                          'unsegmented points)')
    mask = np.asarray(labels) == label
    if scale > 0:
        members = np.flatnonzero(mask)
        colours = None if rgb is None else np.asarray(rgb)[members]
        part = part_around(pts[members], colours, int(np.searchsorted(members, nearest)), scale)
        mask = np.zeros(len(pts), dtype=bool)
        mask[members[part]] = True
    return Selection(by_id[label], mask)


def part_around(xyz: np.ndarray, rgb: np.ndarray | None, seed: int, scale: float) -> np.ndarray:
    """(M,) mask of the part of one object's points `xyz` around point `seed`, `scale` m across.

    Region growing over the k-NN graph from the seed: an edge is crossed when its points lie
    close, their surface is smooth or convex between them, and their colours are alike; no
    point farther than `scale` from the seed is reached.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    within = np.flatnonzero(np.linalg.norm(pts - pts[seed], axis=1) <= scale)
    if len(within) > _PART_POINTS:
        rng = np.random.default_rng(0)
        within = np.union1d(rng.choice(within, _PART_POINTS, replace=False), [seed])
    local = pts[within]
    start = int(np.searchsorted(within, seed))
    part = np.zeros(len(pts), dtype=bool)
    if len(local) < 4:
        part[within] = True
        return part
    normals = estimate_normals(local, _NORMAL_RADIUS, _NORMAL_NEIGHBOURS)   # facing the sensor
    k = min(_PART_NEIGHBOURS + 1, len(local))
    gaps, neighbours = cKDTree(local).query(local, k=k)
    rows = np.repeat(np.arange(len(local)), k - 1)
    cols, gaps = neighbours[:, 1:].ravel(), gaps[:, 1:].ravel()
    offset = local[rows] - local[cols]
    smooth = (normals[rows] * normals[cols]).sum(axis=1) >= _SMOOTH_COS
    convex = ((normals[rows] - normals[cols]) * offset).sum(axis=1) > 0
    keep = (gaps <= _GAP_FACTOR * np.median(gaps)) & (smooth | convex)
    if rgb is not None:
        colours = np.asarray(rgb, dtype=np.float64)[within]
        keep &= np.linalg.norm(colours[rows] - colours[cols], axis=1) <= _COLOUR_STEP
    graph = coo_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])),
                       shape=(len(local), len(local))).tocsr()
    reached = breadth_first_order(graph, start, directed=False, return_predecessors=False)
    grown = np.zeros(len(local), dtype=bool)
    grown[reached] = True
    # Points of the ball left out of the subset take their nearest subset point's answer.
    ball = np.flatnonzero(np.linalg.norm(pts - pts[seed], axis=1) <= scale)
    _, nearest = cKDTree(local).query(pts[ball])
    part[ball] = grown[nearest]
    return part
