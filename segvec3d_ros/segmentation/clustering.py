"""Instances from embeddings (section 3.2).

The labels are (N,) int64, 1..K by decreasing size, 0 = noise.
"""
from __future__ import annotations

import numpy as np
import torch

from segvec3d_ros.segmentation.geometry import edge_components, rank_labels

Array = np.ndarray | torch.Tensor


def graph_clusters(embeddings: Array, knn_index: Array, radius: float = 0.4,
                   min_size: int = 1) -> np.ndarray:
    """Clusters: connected components of the spatial k-NN edges with close embeddings.

    An edge is kept when its embedding distance is below `radius`.

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


def _numpy(values: Array) -> np.ndarray:
    """Values as a numpy array, fetched from the GPU when they are there."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
