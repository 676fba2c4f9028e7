"""k-nearest-neighbour graphs over points, the only spatial query the network needs."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

try:
    import torch_cluster
except ImportError:     # optional: a compiled extension the user may or may not have built
    torch_cluster = None

BACKENDS = ('auto', 'torch_cluster', 'scipy', 'torch')
# The brute-force backend holds at most this many query-to-point distances at once (256 MiB).
_CDIST_BATCH_ELEMENTS = 2**26


def knn_graph(points: torch.Tensor, k: int, backend: str = 'auto') -> torch.Tensor:
    """(N, k) int64 indices of the k nearest points to each of the (N, D) points, nearest first.

    Self is included: each point is its own nearest neighbour at distance 0 (among coincident
    points which ones are listed is unspecified). With N < k the missing columns repeat the point
    itself, so the index is always (N, k). Backends: 'torch_cluster' (when installed), 'scipy'
    (cKDTree, CPU), 'torch' (chunked brute force, any device and dimension); 'auto' picks scipy
    for CPU points of dimension <= 3, else torch_cluster when importable, else torch: on CPU points
    torch_cluster is slower than scipy's k-d tree. The result is on the device of `points`.
    """
    if backend not in BACKENDS:
        raise ValueError(f'knn backend must be one of {", ".join(BACKENDS)}; got {backend!r}')
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k}')
    if backend == 'auto':
        if points.device.type == 'cpu' and points.shape[1] <= 3:
            backend = 'scipy'
        elif torch_cluster is not None:
            backend = 'torch_cluster'
        else:
            backend = 'torch'
    points = points.detach()
    num = len(points)
    found = min(k, num)
    if num == 0:
        index = torch.zeros((0, found), dtype=torch.int64, device=points.device)
    elif backend == 'torch_cluster':
        if torch_cluster is None:
            raise ValueError("knn backend 'torch_cluster' is not installed")
        rows, cols = torch_cluster.knn(points, points, found)
        # A stable sort by query row keeps each row's nearest-first order.
        index = cols[torch.argsort(rows, stable=True)].view(num, found)
    elif backend == 'scipy':
        pts = points.cpu().numpy().astype(np.float64)
        _, nearest = cKDTree(pts).query(pts, k=found, workers=-1)
        index = torch.from_numpy(nearest.reshape(num, found).astype(np.int64)).to(points.device)
    else:
        index = _brute_force_knn(points, found)
    if found < k:
        self_index = torch.arange(num, device=index.device)[:, None]
        index = torch.cat([index, self_index.expand(num, k - found)], dim=1)
    return index


def _brute_force_knn(points: torch.Tensor, k: int) -> torch.Tensor:
    """k-NN by chunks of exact pairwise distances and top-k; fast on GPUs for N up to ~50k."""
    # Centring keeps the matrix-product form of cdist precise far from the origin.
    pts = points.float() - points.float().mean(dim=0)
    rows = max(1, _CDIST_BATCH_ELEMENTS // len(pts))
    chunks = [torch.cdist(pts[start:start + rows], pts).topk(k, dim=1, largest=False).indices
              for start in range(0, len(pts), rows)]
    return torch.cat(chunks)
