"""The interface every segmenter implements, learned or geometric."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Segmentation:
    """Per-point result of a segmenter, aligned with the points it was given."""

    instance_ids: np.ndarray            # (M,) int64: 0 = no instance, 1..K = instances
    support_mask: np.ndarray            # (M,) bool: support surface (table, floor)
    features: np.ndarray | None = None  # (M, C) float32 point features F_i for grounding, or None
    timings: dict[str, float] | None = None  # seconds per stage, for diagnostics and benchmarks


class Segmenter(Protocol):
    """Segments a cloud of finite points; called once per frame."""

    name: str

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None) -> Segmentation:
        """Segment (M, 3) float32 finite points with optional (M, 3) uint8 colours."""
        ...
