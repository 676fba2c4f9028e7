"""Colours: a stable display colour per instance id, and names for observed colours."""
from __future__ import annotations

import numpy as np

# Golden-ratio hue steps keep consecutive ids far apart on the colour wheel.
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895

# Reference colours for naming an instance's mean colour (sRGB 0..255).
NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    'red': (200, 30, 30),
    'orange': (240, 130, 20),
    'yellow': (230, 210, 40),
    'green': (40, 160, 50),
    'blue': (30, 70, 200),
    'purple': (120, 50, 160),
    'pink': (240, 130, 180),
    'brown': (120, 75, 40),
    'white': (235, 235, 235),
    'gray': (128, 128, 128),
    'black': (25, 25, 25),
}


def instance_color(instance_id: int) -> tuple[float, float, float]:
    """Return a stable, well-separated RGB colour in [0, 1] for an instance id."""
    hue = (instance_id * _GOLDEN_RATIO_CONJUGATE) % 1.0
    saturation, value = 0.75, 0.95
    sector = int(hue * 6.0)
    frac = hue * 6.0 - sector
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * frac)
    t = value * (1.0 - saturation * (1.0 - frac))
    rgb = [(value, t, p), (q, value, p), (p, value, t),
           (p, q, value), (t, p, value), (value, p, q)][sector % 6]
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def instance_colors(instance_ids: np.ndarray) -> np.ndarray:
    """Return (N, 3) uint8 display colours for ids; id 0 (no instance) is dark gray."""
    ids = np.asarray(instance_ids, dtype=np.int64)
    unique, inverse = np.unique(ids, return_inverse=True)
    table = np.array([instance_color(int(i)) for i in unique], dtype=np.float64).reshape(-1, 3)
    table[unique == 0] = (0.25, 0.25, 0.25)
    return (table[inverse.reshape(-1)] * 255.0).round().astype(np.uint8)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert (N, 3) sRGB in [0, 1] to CIE L*a*b* (D65), where distances match perception."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array([[0.4124, 0.3576, 0.1805],
                       [0.2126, 0.7152, 0.0722],
                       [0.0193, 0.1192, 0.9505]])
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])],
                    axis=1)


_NAMES = tuple(NAMED_COLORS)
_NAMED_LAB = srgb_to_lab(np.array([NAMED_COLORS[n] for n in _NAMES], dtype=np.float64) / 255.0)


def color_distances(rgb: np.ndarray) -> np.ndarray:
    """(N, len(NAMED_COLORS)) L*a*b* distances of (N, 3) colours to the references.

    Colours are uint8 0..255 or float 0..1; the columns are in NAMED_COLORS order.
    """
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    if rgb.size and rgb.max() > 1.0:
        rgb = rgb / 255.0
    return np.linalg.norm(srgb_to_lab(rgb)[:, None, :] - _NAMED_LAB[None], axis=2)


def color_names(rgb: np.ndarray) -> list[str]:
    """Name each (N, 3) colour (uint8 0..255 or float 0..1) by its nearest reference in L*a*b*."""
    return [_NAMES[i] for i in color_distances(rgb).argmin(axis=1)]
