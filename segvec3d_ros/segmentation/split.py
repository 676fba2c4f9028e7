"""The split of touching objects and the join of an object's parts, in one place.

Both where the learned segmenter proposes a split, and the rules by which the grounding step
takes a split or joins a part (a cap, a handle) to the instance it belongs to.

Graph clustering of the embeddings merges two touching objects through a chain of boundary
points whose embeddings shade from one to the other. Such a chain is a weak normalised cut of
the instance's k-NN graph; the segmenter proposes that cut where the two parts meet in a
valley, and the grounding head's Objectness layer decides whether the parts are two whole
objects (`take_splits`). The proposal needs no grounding; the decision is handed the head's
scores, so this module imports neither.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh
from scipy.spatial import cKDTree

from segvec3d_ros.config import OTHER
from segvec3d_ros.segmentation.geometry import cell_index, column_mean, column_min

# A split is proposed where the normalised cut of an instance's k-NN graph, its edges weighted
# by embedding similarity, is this weak: a chain of boundary points between two touching
# objects. The bounds only limit which instances the grounding step examines (its Objectness
# layer decides); they were chosen on the validation scenes' grounding queries, with the
# real mOSD frames' F-measure kept from falling (docs/GROUNDING.md).
MAX_SPLIT_NCUT = 0.05
# ... and where the two parts do not meet convexly: touching and stacked objects meet in a
# valley, the faces of one object (a box's edge) bend away from each other. Units: the
# convergence of the normals of the two bands along the junction (see `junction_convexity`).
MAX_SPLIT_CONVEXITY = 0.0
MIN_SPLIT_FRACTION = 0.05   # of the instance's points in the smaller part
MIN_SPLIT_POINTS = 30       # working points in the smaller part
_JUNCTION_BAND = 0.04       # m on either side of the cut that describes the junction
_CUT_CELL = 0.03            # m, the cubes the eigenvector is solved on
_DENSE_CELLS = 160          # up to this many cubes dense matrices are faster than sparse


def propose_splits(ids: np.ndarray, embeddings: np.ndarray, edges: np.ndarray,
                   xyz: np.ndarray, normals: np.ndarray, scale: float) -> np.ndarray:
    """(N,) int64: 0, or the number j >= 1 of a proposed split.

    Proposed split j is marked on the points that would leave their instance in it.

    An instance is proposed for a split when its normalised cut (Shi and Malik) over the
    spatial k-NN `edges` (-1 = none), weighted by exp(-|e_i - e_j|^2 / scale^2), is at most
    MAX_SPLIT_NCUT, both parts are large enough, and they do not meet convexly (see
    `junction_convexity`). Graph clustering merges two touching objects through a chain of
    boundary points whose embeddings shade from one to the other; such a chain is a weak cut.
    Whether the split is taken is the caller's decision (the grounding step's Objectness).
    """
    proposals = np.zeros(len(ids), dtype=np.int64)
    sizes = np.bincount(ids, minlength=1)
    weights = np.zeros(edges.shape)
    examined = (ids > 0) & (sizes[ids] >= 2 * MIN_SPLIT_POINTS)
    gaps = embeddings[np.maximum(edges[examined], 0)] - embeddings[examined][:, None]
    weights[examined] = np.exp(-np.einsum('nkd,nkd->nk', gaps, gaps) / scale**2)
    for instance in np.flatnonzero(sizes >= 2 * MIN_SPLIT_POINTS):
        if instance == 0:
            continue
        rows = np.flatnonzero(ids == instance)
        part, cut = normalized_cut(rows, edges, weights, xyz)
        if part is None or cut > MAX_SPLIT_NCUT:
            continue
        # Written so that a NaN (normals of degenerate points) proposes nothing.
        if not junction_convexity(xyz, normals, rows[part], rows[~part]) <= MAX_SPLIT_CONVEXITY:
            continue
        leaving = part if part.sum() <= len(rows) / 2 else ~part
        proposals[rows[leaving]] = proposals.max(initial=0) + 1
    return proposals


def normalized_cut(rows: np.ndarray, edges: np.ndarray, edge_weights: np.ndarray,
                   xyz: np.ndarray) -> tuple[np.ndarray | None, float]:
    """Best two-way normalised cut of the points `rows`, along their k-NN graph's Fiedler vector.

    The graph is `edges` (-1 = none) with (N, k) `edge_weights`. Returns (mask of one side, its
    Ncut value), or (None, inf) for too few points, points in one cell, or a failed eigensolver.

    The eigenvector is solved on the graph summed over _CUT_CELL cubes (exactly the fine
    graph's cuts and volumes for cuts along cell faces, with about a ninth of the nodes of a
    surface sampled at 1 cm); the cut and its value are then those of the fine graph. Each
    side keeps MIN_SPLIT_POINTS and MIN_SPLIT_FRACTION of the points.
    """
    smallest = max(MIN_SPLIT_POINTS, int(np.ceil(MIN_SPLIT_FRACTION * len(rows))))
    if len(rows) < 2 * smallest:
        return None, float('inf')
    local = np.full(len(edges), -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    neighbours = edges[rows]
    targets = np.where(neighbours >= 0, local[np.maximum(neighbours, 0)], -1)
    inside = targets >= 0
    sources = np.nonzero(inside)[0]
    weights = edge_weights[rows][inside]
    targets = targets[inside]
    degree = (np.bincount(sources, weights, len(rows))
              + np.bincount(targets, weights, len(rows)))
    corner = np.floor(xyz[rows] / _CUT_CELL).astype(np.int64)
    cell = cell_index(corner - column_min(corner))
    cells = int(cell.max(initial=-1)) + 1
    if cells < 2 or not (degree > 0).all():
        return None, float('inf')
    pairs = (cell[sources], cell[targets])
    if cells <= _DENSE_CELLS:
        coarse = np.zeros((cells, cells))
        np.add.at(coarse, pairs, weights)
    else:
        coarse = sp.coo_matrix((weights, pairs), shape=(cells, cells)).tocsr()
    coarse = coarse + coarse.T
    root = np.sqrt(np.bincount(cell, degree, cells))
    # D^-1/2 W D^-1/2 has the eigenvector D^1/2 1 with eigenvalue 1; with it projected out,
    # the largest eigenvector is the Fiedler vector, even where nearly disconnected parts
    # make 1 a double eigenvalue.
    trivial = root / np.linalg.norm(root)
    if cells <= _DENSE_CELLS:
        deflated = coarse / np.outer(root, root) - np.outer(trivial, trivial)
        vector = np.linalg.eigh(deflated)[1][:, -1]
    else:
        normalised = sp.diags(1 / root) @ coarse @ sp.diags(1 / root)
        deflated = LinearOperator((cells, cells), dtype=np.float64,
                                  matvec=lambda x: normalised @ x - trivial * (trivial @ x))
        try:
            # A seeded start vector: ARPACK's own is random, and a near-tied cut then came out
            # differently from run to run on the same frame.
            start = np.random.default_rng(cells).standard_normal(cells)
            vector = eigsh(deflated, k=1, which='LA', tol=1e-4, maxiter=2000,
                           v0=start)[1][:, 0]
        except ArpackError:
            return None, float('inf')
    fiedler = (vector / root)[cell]
    # Every threshold along the vector at once: an edge is cut by the thresholds between its
    # ends' ranks, so the cut at each rank is a cumulative sum, as are the volumes.
    order = np.argsort(fiedler, kind='stable')
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows))
    low = np.minimum(rank[sources], rank[targets])
    high = np.maximum(rank[sources], rank[targets])
    cut = np.cumsum(np.bincount(low, weights, len(rows)) - np.bincount(high, weights, len(rows)))
    volume = np.cumsum(degree[order])
    # Threshold after rank i: ranks 0..i on one side; both sides at least `smallest` points.
    after = np.arange(smallest - 1, len(rows) - smallest)
    ncut = cut[after] / volume[after] + cut[after] / (volume[-1] - volume[after])
    best = after[int(ncut.argmin())]
    return rank <= best, float(ncut.min())


def junction_convexity(xyz: np.ndarray, normals: np.ndarray, first: np.ndarray,
                       second: np.ndarray) -> float:
    """(n_a - n_b) . (c_a - c_b) / |c_a - c_b| of the bands where two point sets meet.

    The bands are the points of the two sets (indices) within _JUNCTION_BAND of each other: c
    the band's centroid, n its mean normal (normals facing the sensor). Positive where the
    surfaces bend away from each other (a convex edge), negative in a valley; 0 when the sets
    do not meet.
    """
    near = [group[np.isfinite(cKDTree(xyz[other]).query(
        xyz[group], distance_upper_bound=_JUNCTION_BAND)[0])]
        for group, other in ((first, second), (second, first))]
    if not all(len(band) for band in near):
        return 0.0
    centres = [column_mean(xyz[band]) for band in near]
    facing = [column_mean(normals[band]) for band in near]
    offset = centres[0] - centres[1]
    return float((facing[0] - facing[1]) @ offset / max(float(np.linalg.norm(offset)), 1e-9))


# Two parts that get different labels are taken apart even when the Objectness layer finds
# their union this much likelier whole (log-probability): its probabilities saturate near 1,
# for a merge of two touching objects as for one object, and there the labels decide (chosen
# on the validation scenes, docs/GROUNDING.md).
SPLIT_LABEL_MARGIN = 0.02


def split_parts(ids: np.ndarray, proposals: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Parts each proposal would make, as ids for scoring: (parts, parents, leaving).

    Proposal j (the first one on an instance; later ones and those on no instance are ignored)
    gives part 2j + 1, the points staying in the parent, part 2j + 2, the points leaving it,
    and parent j + 1, their union; `leaving[j]` masks the points that would leave.
    """
    parts = np.zeros_like(ids)
    parents = np.zeros_like(ids)
    taken: list[np.ndarray] = []
    for number in np.unique(proposals[proposals > 0]):
        leaving = proposals == number
        parent = int(np.bincount(ids[leaving]).argmax())
        member = ids == parent
        staying = member & ~leaving
        if parent == 0 or parents[member].any() or not staying.any():
            continue
        leaving &= member
        parents[member] = len(taken) + 1
        parts[staying] = 2 * len(taken) + 1
        parts[leaving] = 2 * len(taken) + 2
        taken.append(leaving)
    return parts, parents, taken


def take_splits(ids: np.ndarray, leaving: list[np.ndarray],
                parts: dict[int, tuple[float, str]], parents: dict[int, tuple[float, str]]
                ) -> np.ndarray:
    """`ids` with each proposal of `split_parts` taken where its two parts are likelier apart.

    A proposal is taken where its parts are likelier whole objects each than their union,
    P(a) P(b) > P(a + b), or nearly as likely (SPLIT_LABEL_MARGIN) when they get different
    labels, neither of them other: two touching objects, not two faces of one. `parts` and
    `parents` map those ids to (log-probability of being one whole object, label).
    """
    resolved = ids.copy()
    for number, points in enumerate(leaving):
        (first, first_label), (second, second_label) = (
            parts.get(2 * number + part, (-np.inf, OTHER)) for part in (1, 2))
        gain = first + second - parents.get(number + 1, (0.0, OTHER))[0]
        labelled_apart = first_label != second_label and OTHER not in (first_label, second_label)
        if gain > 0 or (labelled_apart and gain > -SPLIT_LABEL_MARGIN):
            resolved[points] = resolved.max() + 1
    return resolved


# A part that came out as an instance of its own (a cap, a handle) holds under this share of
# the points of the instance it touches and belongs to; a bigger neighbour is an object.
PART_SHARE = 0.25
# A part joins the instance it touches when the head finds their union likelier one whole
# object than the two apart by this much in log-probability, log P(a + b) > log P(a) P(b) +
# margin: with none, a small box stacked on a larger one joined it (mOSD stacked F 91.0 ->
# 88.4 on the learn frames); with this margin, chosen on the validation scenes, none did.
JOIN_MARGIN = 0.5
# Two instances of comparable size (a bottle cut where its label ends, a jar at its lid, two
# faces of a box) join only where they also meet without a valley, at a `junction_convexity`
# of at least this: touching objects meet in one. A cap or a handle meets its body in a step
# or a valley, so small parts are left to the head's margin alone.
MIN_JOIN_CONVEXITY = 0.0
# ... and, where the head labels the two differently, only by this larger margin: on the real
# arc2017 bin a flat box beside a book, labelled apart, passed the smaller one. On generated
# training scenes it joins no fewer pairs of two objects, and fewer pieces of one: it is there
# for real frames, where the head is less sure (docs/GROUNDING.md, scripts/join_pairs.py).
UNLIKE_JOIN_MARGIN = 1.0


def part_candidates(xyz: np.ndarray, ids: np.ndarray, reach: float,
                    min_points: int) -> list[tuple[int, int]]:
    """(part, whole) id pairs of instances that touch (points within `reach`): maybe one object.

    A part under PART_SHARE of a larger instance's points (a cap, a handle) comes once, with
    the larger instance it touches at the most points. Two instances of comparable size come
    as a pair wherever they touch, the smaller one first. Instances under `min_points` points
    take no part: specks are dropped later anyway, and a noisy frame has hundreds.
    """
    ids = np.asarray(ids, dtype=np.int64)
    sizes = np.bincount(ids, minlength=1)
    sizes[0] = 0
    members = np.flatnonzero(sizes[ids] >= min_points)
    if len(members) == 0:
        return []
    close = cKDTree(np.asarray(xyz)[members]).query_pairs(reach, output_type='ndarray')
    first, second = ids[members[close[:, 0]]], ids[members[close[:, 1]]]
    apart = first != second
    first, second = first[apart], second[apart]
    if len(first) == 0:
        return []
    larger_first = (sizes[first] > sizes[second]) | ((sizes[first] == sizes[second])
                                                     & (first > second))
    pairs, touches = np.unique(np.column_stack([np.where(larger_first, second, first),
                                                np.where(larger_first, first, second)]),
                               axis=0, return_counts=True)
    small = ~comparable(sizes, pairs[:, 0], pairs[:, 1])
    parts, touches = pairs[small], touches[small]
    # most touched whole first within each part, then the first row of each part
    parts = parts[np.lexsort((-touches, parts[:, 0]))]
    most_touched = np.r_[True, parts[1:, 0] != parts[:-1, 0]][:len(parts)]
    return [(int(a), int(b)) for a, b in np.concatenate([parts[most_touched], pairs[~small]])]


def comparable(sizes: np.ndarray, part: int | np.ndarray,
               whole: int | np.ndarray) -> bool | np.ndarray:
    """Whether instance `part` holds at least PART_SHARE of the points of `whole` (elementwise).

    `sizes` are the instances' point counts, np.bincount of the ids.
    """
    return sizes[part] >= PART_SHARE * sizes[whole]


def take_joins(ids: np.ndarray, pairs: list[tuple[int, int]],
               singles: dict[int, tuple[float, str]], unions: dict[tuple[int, int], float],
               convexity: dict[tuple[int, int], float]) -> np.ndarray:
    """`ids` with each (part, whole) pair joined where the head finds the union one object.

    `singles` maps an id to its log-probability of being one whole object and its label,
    `unions` a pair to the union's log-probability. A pair is joined where log P(part + whole)
    > log P(part) + log P(whole) + JOIN_MARGIN. A pair of `comparable` size also needs its
    `convexity` (`junction_convexity`, given for those pairs) to be at least
    MIN_JOIN_CONVEXITY and, labelled apart, UNLIKE_JOIN_MARGIN instead. Joins chain: a jar cut
    in three comes out whole.
    """
    ids = np.asarray(ids, dtype=np.int64)
    sizes = np.bincount(ids)
    group = np.arange(len(sizes))

    def root(instance: int) -> int:
        while group[instance] != instance:
            instance = group[instance]
        return instance

    for pair in pairs:
        (part_score, part_label), (whole_score, whole_label) = singles[pair[0]], singles[pair[1]]
        margin = JOIN_MARGIN
        if comparable(sizes, *pair):
            if not convexity[pair] >= MIN_JOIN_CONVEXITY:
                continue
            margin = JOIN_MARGIN if part_label == whole_label else UNLIKE_JOIN_MARGIN
        if unions[pair] > part_score + whole_score + margin:
            group[root(pair[0])] = root(pair[1])
    return np.array([root(i) for i in range(len(group))], dtype=np.int64)[ids]
