"""The interface every segmenter implements, learned or geometric."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from segvec3d_ros.config import SupportConfig
from segvec3d_ros.segmentation.geometry import support_surfaces


@dataclass
class Segmentation:
    """Per-point result of a segmenter, aligned with the points it was given."""

    instance_ids: np.ndarray            # (M,) int64: 0 = no instance, 1..K = instances
    support_mask: np.ndarray            # (M,) bool: support surface (table, floor)
    features: np.ndarray | None = None  # (M, C) float32 point features F_i for grounding, or None
    timings: dict[str, float] | None = None  # seconds per stage, for diagnostics and benchmarks
    # (M,) int64: 0, or the number of a proposed split on the points that would leave their
    # instance in it; the pipeline's grounding step decides (None: no proposals)
    split_proposals: np.ndarray | None = None
    # Lines of the segmenter's own bounds that changed this result (see SceneResult.limits_hit)
    limits_hit: list[str] = field(default_factory=list)
    # (3,) normal of the surface the instances stand on, when the segmenter fitted it (the
    # range-image segmenter's ground); None: the pipeline fits it near the instances
    support_normal: np.ndarray | None = None


class Segmenter(Protocol):
    """Segments a cloud of finite points; called once per frame.

    The range-image segmenter also takes the points' `pixels` and the organized cloud's
    `shape` as keywords; the pipeline passes them to it alone.
    """

    name: str
    sees_colour: bool       # uses `rgb`: the pipeline shades a colourless cloud for it

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None) -> Segmentation:
        """Segment (M, 3) float32 finite points with optional (M, 3) uint8 colours."""
        ...


def peel_support(pts: np.ndarray, config: SupportConfig) -> tuple[np.ndarray, np.ndarray]:
    """Support mask and the points left to segment: the step every segmenter starts with."""
    # A fresh generator per frame keeps the result a function of the frame alone.
    return support_surfaces(pts, config.plane_distance, config.plane_iterations,
                            config.min_support_fraction, config.drop_below_support,
                            np.random.default_rng(0), None, tolerance=config.cluster_tolerance,
                            min_extent=config.min_support_extent)
