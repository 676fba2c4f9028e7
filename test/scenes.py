"""Test scenes without ROS: the repo's params file, and a small synthetic tabletop."""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / 'config' / 'segvec3d.yaml'


def tabletop_points(seed: int = 0, n_objects: int = 3) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Table plane and separated boxes seen from a camera frame (z forward, y down).

    Returns xyz (N,3) float32, rgb (N,3) uint8 and the true instance id per point (0 = table).
    """
    rng = np.random.default_rng(seed)
    table = np.column_stack([rng.uniform(-0.5, 0.5, 20000), np.full(20000, 0.3),
                             rng.uniform(0.6, 1.4, 20000)])
    parts, ids = [table], [np.zeros(len(table), np.int64)]
    for obj in range(n_objects):
        centre = np.array([-0.3 + 0.3 * obj, 0.3 - 0.06, 1.0])
        box = centre + rng.uniform(-0.05, 0.05, (3000, 3)) * np.array([1.0, 1.2, 1.0])
        parts.append(box)
        ids.append(np.full(len(box), obj + 1))
    xyz = np.concatenate(parts).astype(np.float32)
    truth = np.concatenate(ids)
    palette = np.array([[150, 110, 70], [220, 30, 30], [30, 60, 220], [40, 170, 50],
                        [230, 210, 40]], np.uint8)
    rgb = palette[truth % len(palette)]
    return xyz, rgb, truth
