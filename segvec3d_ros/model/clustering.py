"""Instances from embeddings (section 3.2): (N,) int64 labels 1..K by decreasing size, 0 = noise."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree

from segvec3d_ros.segmentation.geometry import edge_components, rank_labels

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
