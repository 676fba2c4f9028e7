"""Veil points of organized depth clouds: returns strung along a view ray between two surfaces.

Where a near surface ends in front of a far one, depth cameras return points between the two
depths: mixed pixels of time-of-flight cameras, mismatched and smoothed disparities of stereo
cameras, a few pixels wide. In 3D they form a sheet along the view rays, which joins the near
object to whatever lies behind it for any clustering, learned or not. The test is that of laser
scanners' shadow filters (ROS laser_filters' ScanShadowsFilter): two pixels `VEIL_REACH` apart
in a row or a column whose connecting segment lies within the angle of the view ray are not on
one surface seen from the side, and the farther of the two is taken off. Real surfaces seen
that obliquely (at incidence beyond 90 degrees minus the angle) go too: sensors lose most of
them anyway, and what they keep is their noisiest depth.
"""
from __future__ import annotations

import numpy as np

# Pixels apart of the pairs tested: a veil a few pixels wide is crossed by one pair, while at
# depth noise of a few millimetres the segment between neighbours this far apart on a surface
# still leans well away from the ray.
VEIL_REACH = 3


def veil_points(xyz: np.ndarray, height: int, width: int, max_angle: float) -> np.ndarray:
    """(N,) mask of the veil points of an organized cloud of height x width points.

    A point is one when its segment to the pixel VEIL_REACH away along a row or a column makes
    less than `max_angle` degrees with its view ray (the sensor at the origin) and it is the
    farther of the two. Non-finite points are never veil points nor make one.
    """
    # One contiguous image per coordinate: elementwise work on them is several times faster
    # than on the interleaved (H, W, 3) grid.
    x, y, z = (np.ascontiguousarray(column, dtype=np.float32).reshape(height, width)
               for column in np.asarray(xyz).reshape(-1, 3).T)
    squared_cos = np.float32(np.cos(np.deg2rad(max_angle)) ** 2)
    veil = np.zeros((height, width), dtype=bool)
    # Coordinates near float32's limit overflow to inf and NaN, which no comparison passes.
    with np.errstate(over='ignore', invalid='ignore'):
        squared_range = x * x + y * y + z * z
        for rows, cols in ((0, VEIL_REACH), (VEIL_REACH, 0)):
            if rows >= height or cols >= width:
                continue
            first = (slice(0, height - rows), slice(0, width - cols))
            second = (slice(rows, height), slice(cols, width))
            dx, dy, dz = x[second] - x[first], y[second] - y[first], z[second] - z[first]
            along = dx * x[first] + dy * y[first] + dz * z[first]
            # cos^2 of the angle to the first one's ray, without a square root or a division
            on_ray = along * along > (squared_cos * (dx * dx + dy * dy + dz * dz)
                                      * squared_range[first])
            second_farther = squared_range[second] > squared_range[first]
            veil[first] |= on_ray & ~second_farther
            veil[second] |= on_ray & second_farther
    return veil.reshape(-1)
