"""Instances from embeddings (section 3.2): (N,) int64 labels 1..K by decreasing size, 0 = noise."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh
from scipy.spatial import cKDTree

from segvec3d_ros.segmentation.geometry import cell_index, edge_components, rank_labels

Array = np.ndarray | torch.Tensor


def graph_clusters(embeddings: Array, knn_index: Array, radius: float = 0.4,
                   min_size: int = 1) -> np.ndarray:
    """Connected components of the spatial k-NN edges whose embedding distance is below `radius`.

    knn_index is (N, k), normally the network's own; negative entries are no edge. Distances are
    computed by the embeddings' library where they live: numpy arrays by numpy, which is much
    faster on a CPU, torch tensors by torch on their device, so that GPU embeddings stay there
    and only the kept edges come back. A large flat region such as the table stays one
    component however big it is.
    """
    if isinstance(embeddings, torch.Tensor):
        xp, emb, index = torch, embeddings, torch.as_tensor(knn_index, device=embeddings.device)
    else:
        xp, emb, index = np, np.asarray(embeddings), _numpy(knn_index)
    diff = emb[index.clip(0)]
    diff -= emb[:, None]
    keep = (xp.einsum('nkd,nkd->nk', diff, diff) < radius**2) & (index >= 0)
    components = edge_components(np.nonzero(_numpy(keep))[0], _numpy(index[keep]), len(keep))
    return rank_labels(components + 1, min_size)[0]


def absorb_fragments(labels: np.ndarray, knn_index: np.ndarray, min_size: int,
                     rounds: int = 8) -> np.ndarray:
    """Give the points of clusters under `min_size` to a neighbouring large cluster.

    Boundary points between two objects get mixed embeddings and form slivers of their own;
    they belong to one of the objects they touch, not to no object. Each round hands every
    unassigned point the label of its nearest assigned k-NN neighbour (negative index = none).
    A small cluster that touches no large one stays as it is: it may be a whole small object
    (or many identical points in one voxel), which the caller's size filter then judges.
    """
    counts = np.bincount(labels, minlength=1)
    out = np.where(counts[labels] >= min_size, labels, 0)
    out[labels == 0] = 0
    pending = (labels > 0) & (out == 0)
    index = np.asarray(knn_index)
    for _ in range(rounds):
        rows = np.flatnonzero(pending)
        if len(rows) == 0:
            break
        neighbours = index[rows]
        neighbour_labels = np.where(neighbours >= 0, out[np.maximum(neighbours, 0)], 0)
        has = neighbour_labels > 0
        first = has.argmax(axis=1)
        found = has.any(axis=1)
        out[rows[found]] = neighbour_labels[found, first[found]]
        pending[rows[found]] = False
    out[pending] = labels[pending] + out.max(initial=0)
    return rank_labels(out)[0]


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
    """(N,) int64: 0, or the number j >= 1 of a proposed split on the points that would leave
    their instance in it.

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
    """The best two-way normalised cut of the points `rows`, connected by their k-NN graph
    (`edges`, -1 = none, with (N, k) `edge_weights`), along its Fiedler vector: (mask of one
    side, its Ncut value), or (None, inf) for too few points, points in one cell, or a failed
    eigensolver.

    The eigenvector is solved on the graph summed over _CUT_CELL cubes (exactly the fine
    graph's cuts and volumes for cuts along cell faces, with about a ninth of the nodes of a
    surface sampled at 1 cm);
    the cut and its value are then those of the fine graph. Each side keeps MIN_SPLIT_POINTS
    and MIN_SPLIT_FRACTION of the points.
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
    cell = cell_index(corner - corner.min(axis=0))
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
            vector = eigsh(deflated, k=1, which='LA', tol=1e-4, maxiter=2000)[1][:, 0]
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
    """(n_a - n_b) . (c_a - c_b) / |c_a - c_b| of the bands of the two point sets (indices)
    within _JUNCTION_BAND of each other: c the band's centroid, n its mean normal (normals
    facing the sensor). Positive where the surfaces bend away from each other (a convex edge),
    negative in a valley; 0 when the sets do not meet."""
    near = [group[np.isfinite(cKDTree(xyz[other]).query(
        xyz[group], distance_upper_bound=_JUNCTION_BAND)[0])]
        for group, other in ((first, second), (second, first))]
    if not all(len(band) for band in near):
        return 0.0
    centres = [xyz[band].mean(axis=0) for band in near]
    facing = [normals[band].mean(axis=0) for band in near]
    offset = centres[0] - centres[1]
    return float((facing[0] - facing[1]) @ offset / max(float(np.linalg.norm(offset)), 1e-9))


def dbscan_clusters(embeddings: Array, eps: float = 0.3, min_samples: int = 10,
                    min_size: int = 1) -> np.ndarray:
    """DBSCAN: points with >= min_samples points (self included) within eps are core; core points
    within eps of each other share a cluster, other points within eps of a core point join one of
    its clusters, the rest are noise.

    Memory grows with the number of pairs within eps, i.e. with the squared instance sizes.
    """
    pts = _numpy(embeddings)
    num = len(pts)
    pairs = cKDTree(pts).query_pairs(eps, output_type='ndarray')
    core = np.bincount(pairs.reshape(-1), minlength=num) + 1 >= min_samples
    linked = core[pairs[:, 0]] & core[pairs[:, 1]]
    components = edge_components(pairs[linked, 0], pairs[linked, 1], num)
    labels = np.where(core, components + 1, 0)
    # A border point may reach several clusters; like sklearn it simply takes one of them.
    for border, anchor in ((1, 0), (0, 1)):
        reach = core[pairs[:, anchor]] & ~core[pairs[:, border]]
        labels[pairs[reach, border]] = components[pairs[reach, anchor]] + 1
    return rank_labels(labels, min_size)[0]


def mean_shift_clusters(embeddings: Array, bandwidth: float = 0.3, max_seeds: int = 512,
                        iterations: int = 30, min_size: int = 1, seed: int = 0) -> np.ndarray:
    """Flat-kernel mean shift from at most `max_seeds` seeds; each point joins its nearest mode.

    Seeds are a seeded random subsample, so the cost is O(iterations * max_seeds * N * D) however
    large N is; modes closer than `bandwidth` merge into one cluster.
    """
    pts = _numpy(embeddings).astype(np.float32)
    num = len(pts)
    if num == 0:
        return np.zeros(0, dtype=np.int64)
    modes = pts[np.random.default_rng(seed).choice(num, min(num, max_seeds), replace=False)]
    squared_norms = np.einsum('nd,nd->n', pts, pts)
    for _ in range(iterations):
        squared = np.einsum('sd,sd->s', modes, modes)[:, None] + squared_norms - 2 * modes @ pts.T
        window = (squared <= bandwidth**2).astype(np.float32)
        counts = window.sum(axis=1, keepdims=True)
        # A mode whose window emptied (possible in high dimension) stays where it is.
        shifted = np.where(counts > 0, window @ pts / np.maximum(counts, 1), modes)
        moved = np.abs(shifted - modes).max(initial=0.0)
        modes = shifted
        if moved < 1e-3 * bandwidth:
            break
    merged = cKDTree(modes).query_pairs(bandwidth, output_type='ndarray')
    mode_labels = edge_components(merged[:, 0], merged[:, 1], len(modes))
    nearest = cKDTree(modes).query(pts, k=1)[1]
    return rank_labels(mode_labels[nearest] + 1, min_size)[0]


METHODS: dict[str, Callable[..., np.ndarray]] = {
    'graph': graph_clusters, 'dbscan': dbscan_clusters, 'meanshift': mean_shift_clusters}


def cluster_embeddings(embeddings: Array, method: str = 'graph', **params: object) -> np.ndarray:
    """Cluster (N, D) embeddings with `method` (graph, dbscan, meanshift) and its parameters."""
    if method not in METHODS:
        raise ValueError(f'clustering method must be one of {", ".join(METHODS)}; got {method!r}')
    return METHODS[method](embeddings, **params)


def _numpy(values: Array) -> np.ndarray:
    """The values as a numpy array, fetched from the GPU when they are there."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
