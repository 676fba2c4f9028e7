"""The PCL-style geometric baseline: remove the support planes, cluster what is left."""
from __future__ import annotations

from time import perf_counter

import numpy as np

from segvec3d_ros.config import EuclideanConfig
from segvec3d_ros.segmentation.base import Segmentation, peel_support
from segvec3d_ros.segmentation.geometry import euclidean_clusters


class EuclideanSegmenter:
    """RANSAC support planes + Euclidean clustering of the points in front of them."""

    name = 'euclidean'
    sees_colour = False

    def __init__(self, config: EuclideanConfig) -> None:
        """Use `config`'s plane and cluster settings."""
        self.config = config

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None) -> Segmentation:
        """Label each finite point: support (mask), instance 1..K by size, or 0."""
        cfg = self.config
        pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        start = perf_counter()
        support, rest = peel_support(pts, cfg.support)
        planed = perf_counter()
        ids = np.zeros(len(pts), dtype=np.int64)
        # Size filtering is the caller's: it counts input points, not these working points.
        ids[rest] = euclidean_clusters(pts[rest], cfg.cluster_tolerance)
        return Segmentation(ids, support, None,
                            {'plane': planed - start, 'cluster': perf_counter() - planed})
