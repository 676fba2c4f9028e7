"""Occlusion reasoning: rejoin an object that a nearer object splits into separate pieces.

An object partly hidden behind another shows up as pieces with a gap between them, and no
clustering of the visible points can tell that gap from one between two objects. The view
ray can: where every ray into the gap ends on something nearer than the gap, the gap is
hidden, not seen empty, and the pieces on both sides are joined. A gap through which the
sensor sees the table or anything behind it keeps the pieces apart.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from segvec3d_ros.segmentation.geometry import (column_max, column_mean, column_min,
                                                edge_components, inside_box, rank_labels)

# A view ray hits a working point when it passes within this many voxel sizes of it: the
# voxel centroids of a surface are about one voxel apart, so a ray between them still hits.
_RAY_WIDTH_VOXELS = 1.5
# Something counts as in front of the gap only when this many voxels nearer: less is noise.
_IN_FRONT_VOXELS = 2.0
# Smaller pieces are left alone: too few points for a tangent plane, and the pipeline's
# minimum instance size drops most of them anyway.
_MIN_PIECE_POINTS = 10
# The pieces must continue one surface: the points of each piece within this radius of the gap
# define its tangent plane, and the other piece's must lie within _ON_SURFACE_VOXELS of it.
_SURFACE_RADIUS = 0.04
_ON_SURFACE_VOXELS = 2.0
# At most this many pairs of pieces are examined, those of the largest pieces: a pair costs
# 0.2-1 ms, and 2700 separate specks (a broken driver) made 50,759 pairs and 9 s. The 155
# mOSD and synthetic frames of docs/RELIABILITY.md have at most 3168.
MAX_PIECE_PAIRS = 5000
# Pieces whose bounding-box gaps to all the others are computed at once.
_BOX_BLOCK = 256


def join_occluded(xyz: np.ndarray, ids: np.ndarray, voxel_size: float, min_gap: float,
                  max_gap: float, viewpoint: np.ndarray | None = None,
                  limits: list[str] | None = None) -> np.ndarray:
    """Instance ids with the pieces of occluded objects joined, renumbered 1..K by size.

    xyz (M, 3) are the working points in the sensor's frame (the viewpoint, default its
    origin), ids (M,) their instances (0 = none). Two instances are joined when the shortest
    segment between them is longer than `min_gap` (shorter gaps are the clustering's to judge)
    and at most `max_gap`, and at least half of the view rays to points along it end on a point
    of neither instance that is nearer than the segment and both its ends, and none ends on a
    point as far or farther (the gap seen empty, or an end piece itself in front). Rays with no
    return are no evidence either way. The two pieces must also continue one surface across
    the gap (see `_one_surface`). Of more than MAX_PIECE_PAIRS pairs of pieces close enough,
    those whose smaller piece is largest are examined, and a line saying so is appended to
    `limits` when given.
    """
    ids = np.asarray(ids)
    num = int(ids.max(initial=0))
    if num < 2 or max_gap <= min_gap:
        return ids
    pts = np.asarray(xyz, dtype=np.float64)
    rel = pts - (np.zeros(3) if viewpoint is None else np.asarray(viewpoint, dtype=np.float64))
    ranges = np.linalg.norm(rel, axis=1)
    sizes = np.bincount(ids, minlength=num + 1)
    groups = np.split(np.argsort(ids, kind='stable'), np.cumsum(sizes)[:-1])
    pieces = np.flatnonzero(sizes >= _MIN_PIECE_POINTS)
    pieces = pieces[pieces > 0]
    members = {k: groups[k] for k in pieces}
    lows = np.array([column_min(pts[members[k]]) for k in pieces]).reshape(-1, 3)
    highs = np.array([column_max(pts[members[k]]) for k in pieces]).reshape(-1, 3)
    first, second = _near_boxes(lows, highs, max_gap)
    if len(first) > MAX_PIECE_PAIRS:
        # An occluded object's pieces are large; the gaps between specks are noise.
        smaller = np.minimum(sizes[pieces[first]], sizes[pieces[second]])
        kept = np.sort(np.argsort(-smaller, kind='stable')[:MAX_PIECE_PAIRS])
        if limits is not None:
            limits.append(f'occlusion: {len(first)} pairs of pieces, the {MAX_PIECE_PAIRS} '
                          f'of the largest examined')
        first, second = first[kept], second[kept]
    trees: dict[int, cKDTree] = {}
    gaps = []
    for a, b in zip(pieces[first], pieces[second]):
        # The smaller piece is looked up in the larger one's tree.
        small, large = (a, b) if len(members[a]) <= len(members[b]) else (b, a)
        if large not in trees:
            trees[large] = cKDTree(pts[members[large]])
        distance, nearest = trees[large].query(pts[members[small]], distance_upper_bound=max_gap)
        closest = int(np.argmin(distance))
        if min_gap < distance[closest] <= max_gap:
            ends = members[small][closest], members[large][nearest[closest]]
            gaps.append((a, b, small, large, ends, _gap_samples(rel[list(ends)], voxel_size)))
    if not gaps:
        return ids
    hidden = _hidden_gaps([rel[list(g[4])] for g in gaps], [g[5] for g in gaps], ranges, ids,
                          np.array([g[:2] for g in gaps]), rel, voxel_size)
    joined = [(a, b) for (a, b, small, large, ends, _), gap_hidden in zip(gaps, hidden)
              if gap_hidden
              and _one_surface(pts, members[small], members[large], ends, voxel_size)]
    if not joined:
        return ids
    pairs = np.array(joined)
    component = edge_components(pairs[:, 0], pairs[:, 1], num + 1)
    # Component numbers start at 0 for id 0, which stays "no instance".
    return rank_labels(np.where(ids > 0, component[ids] + 1, 0))[0]


def _near_boxes(lows: np.ndarray, highs: np.ndarray,
                max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs i < j, in row order, of the boxes (lows, highs) at most `max_gap` apart.

    Boxes farther apart cannot hold points that close.
    """
    first, second = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    # _BOX_BLOCK boxes at a time: the gaps of all pairs at once are 384 MB at 4000 pieces.
    for start in range(0, len(lows), _BOX_BLOCK):
        block = slice(start, start + _BOX_BLOCK)
        gaps = np.maximum(np.maximum(lows[block, None] - highs[None],
                                     lows[None] - highs[block, None]), 0)
        rows = np.arange(start, start + len(gaps))
        near = (np.linalg.norm(gaps, axis=2) <= max_gap) & (np.arange(len(lows)) > rows[:, None])
        row, col = np.nonzero(near)
        first.append(rows[row])
        second.append(col)
    return np.concatenate(first), np.concatenate(second)


def _one_surface(pts: np.ndarray, piece_a: np.ndarray, piece_b: np.ndarray,
                 ends: tuple[int, int], voxel_size: float) -> bool:
    """Whether the two pieces near their `ends` lie on one smooth surface across the gap.

    Each piece's points within _SURFACE_RADIUS of its end give a tangent plane (least squares);
    the centre of the other piece's such points must lie on it, both ways. Two objects that
    happen to be hidden behind the same occluder rarely continue each other's surface.
    """
    centres, normals = [], []
    for piece, end in zip((piece_a, piece_b), ends):
        near = pts[piece[np.linalg.norm(pts[piece] - pts[end], axis=1) <= _SURFACE_RADIUS]]
        if len(near) < 3:
            return False
        centre = column_mean(near)
        centres.append(centre)
        normals.append(np.linalg.svd(near - centre, full_matrices=False)[2][2])
    offset = centres[1] - centres[0]
    return (max(abs(offset @ normals[0]), abs(offset @ normals[1]))
            <= _ON_SURFACE_VOXELS * voxel_size)


class _ViewRays:
    """View directions of the points that a ray towards any of some sample points can pass near.

    Only those within _RAY_WIDTH_VOXELS of such a ray: a k-d tree of all directions costs more
    than the rest of the occlusion step, and most points (the table, the background) are far
    from any gap.
    """

    def __init__(self, rel: np.ndarray, ranges: np.ndarray, samples: np.ndarray,
                 voxel_size: float) -> None:
        directions = rel / np.maximum(ranges, 1e-9)[:, None]
        sample_ranges = np.linalg.norm(samples, axis=1)
        sample_directions = samples / sample_ranges[:, None]
        reach = _RAY_WIDTH_VOXELS * voxel_size / sample_ranges.min()
        low = column_min(sample_directions) - reach
        high = column_max(sample_directions) + reach
        self.index = np.flatnonzero(inside_box(directions, low, high))
        self.tree = cKDTree(directions[self.index])

    def hits(self, samples: np.ndarray, voxel_size: float) -> list[np.ndarray]:
        """Per sample (viewpoint-relative), the points its view ray passes near."""
        sample_ranges = np.linalg.norm(samples, axis=1)
        found = self.tree.query_ball_point(samples / sample_ranges[:, None],
                                           _RAY_WIDTH_VOXELS * voxel_size / sample_ranges)
        return [self.index[np.asarray(hit, dtype=np.int64)] for hit in found]


def _gap_samples(ends: np.ndarray, voxel_size: float) -> np.ndarray:
    """Points about a voxel apart strictly between the two (viewpoint-relative) `ends`."""
    steps = max(int(np.ceil(np.linalg.norm(ends[1] - ends[0]) / voxel_size)), 2)
    return ends[0] + (ends[1] - ends[0]) * (np.arange(1, steps) / steps)[:, None]


def _hidden_gaps(ends: list[np.ndarray], samples: list[np.ndarray], ranges: np.ndarray,
                 ids: np.ndarray, pairs: np.ndarray, rel: np.ndarray,
                 voxel_size: float) -> np.ndarray:
    """(G,) whether each gap, the segment between its two `ends` at its `samples`, is hidden.

    `ends` (2, 3) and `samples` (S_g, 3) are viewpoint-relative, `pairs` (G, 2) the two
    instances each gap lies between. A sample is hidden when its view ray passes near a point
    of neither instance nearer than it and both ends (by _IN_FRONT_VOXELS); a gap when none of
    its samples whose ray passes near anything sees past, and at least half are hidden. Every
    gap's rays are looked up at once.
    """
    counts = np.array([len(s) for s in samples])
    gap = np.repeat(np.arange(len(samples)), counts)
    points = np.concatenate(samples)
    nearest_end = np.array([np.linalg.norm(e, axis=1).min() for e in ends])
    front = (np.minimum(np.linalg.norm(points, axis=1), nearest_end[gap])
             - _IN_FRONT_VOXELS * voxel_size)
    hits = _ViewRays(rel, ranges, points, voxel_size).hits(points, voxel_size)
    lengths = np.array([len(hit) for hit in hits])
    sample = np.repeat(np.arange(len(points)), lengths)
    hit = np.concatenate(hits) if len(hits) else np.zeros(0, dtype=np.int64)
    other = (ids[hit] != pairs[gap[sample], 0]) & (ids[hit] != pairs[gap[sample], 1])
    nearest_other = np.full(len(points), np.inf)
    np.minimum.at(nearest_other, sample[other], ranges[hit[other]])
    blocked = nearest_other < front
    seen_past = (lengths > 0) & ~blocked
    num_hidden = np.bincount(gap, weights=blocked, minlength=len(samples))
    return ((np.bincount(gap, weights=seen_past, minlength=len(samples)) == 0)
            & (num_hidden > 0) & (2 * num_hidden >= counts))
