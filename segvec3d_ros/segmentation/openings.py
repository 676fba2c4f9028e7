"""Support points seen through an object's opening belong to the object.

A support plane's inliers include everything within its distance: seen from above, the floor
inside a mug or bowl lies a few millimetres over the table and is peeled off with it, which
can leave an instance with less than half of its points. In the sensor's view such a floor is
ringed by the object's own rim; the table next to an object never is. So a support point is
given to an instance when, in a view-direction image of the working points, the nearest
instance pixel left, right, above and below it is that instance's.
"""
from __future__ import annotations

import numpy as np

from segvec3d_ros.segmentation.geometry import column_max, column_mean, column_min, plane_basis

# Only directions within this angle of the cloud's mean view direction are imaged: the image
# is a tangent-plane projection, whose pixels stretch without bound towards 90 degrees.
_MAX_OFF_AXIS_DEG = 60.0
# Pixels per image side at most (a 4 MiB image of int64 labels per 512 x 1024).
_MAX_IMAGE_SIDE = 2048


def claim_seen_through(xyz: np.ndarray, ids: np.ndarray, support: np.ndarray,
                       voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(ids, support) after each support point ringed on four sides by one instance joins it.

    xyz (M, 3) are working points in the sensor frame (sensor at the origin), ids (M,) their
    instances (0 = none), support (M,) the support mask. The image has pixels of `voxel_size`
    at the instances' median range, so a surface of working points is about one pixel per
    point; pixels without an instance point are looked through.
    """
    ids = np.asarray(ids)
    support = np.asarray(support, dtype=bool)
    on_instance = ids > 0
    if not (support.any() and on_instance.any()):
        return ids, support
    pts = np.asarray(xyz, dtype=np.float64)
    ranges = np.linalg.norm(pts, axis=1)
    directions = pts / np.maximum(ranges, 1e-9)[:, None]
    forward = column_mean(directions[on_instance])
    if not np.linalg.norm(forward) > 0:
        return ids, support
    forward /= np.linalg.norm(forward)
    ahead = directions @ forward
    imaged = np.flatnonzero((ahead >= np.cos(np.deg2rad(_MAX_OFF_AXIS_DEG)))
                            & (on_instance | support))
    if len(imaged) == 0:
        return ids, support
    plane = directions[imaged] @ plane_basis(forward) / ahead[imaged, None]
    low = column_min(plane)
    extent = column_max(plane) - low
    # Far or degenerate clouds would ask for huge images; a coarser one still shows openings.
    with np.errstate(divide='ignore', invalid='ignore'):
        pixel = float(np.max([voxel_size / np.median(ranges[on_instance]),
                              extent.max() / _MAX_IMAGE_SIDE]))
    if not (np.isfinite(pixel) and pixel > 0):
        return ids, support
    cells = np.floor((plane - low) / pixel).astype(np.int64)
    rows, cols = cells[:, 1], cells[:, 0]
    image = np.zeros((rows.max() + 1, cols.max() + 1), dtype=np.int64)
    # A pixel with any instance point shows that instance (the largest id where several do).
    shown = on_instance[imaged]
    np.maximum.at(image, (rows[shown], cols[shown]), ids[imaged[shown]])
    # Support pixels only: a pixel an instance shows stays that instance's business.
    owner = np.where(image[rows, cols] == 0, _ringed_by(image)[rows, cols], 0)
    claimed = owner > 0
    ids = ids.copy()
    ids[imaged[claimed]] = owner[claimed]
    support = support.copy()
    support[imaged[claimed]] = False
    return ids, support


def _ringed_by(image: np.ndarray) -> np.ndarray:
    """Per pixel, the label that is the nearest non-zero one in all four image directions.

    0 where those differ or one direction has none.
    """
    nearest = [_nearest_before(image), _nearest_before(image[:, ::-1])[:, ::-1],
               _nearest_before(image.T).T, _nearest_before(image.T[:, ::-1])[:, ::-1].T]
    same = np.all([n == nearest[0] for n in nearest[1:]], axis=0)
    return np.where(same, nearest[0], 0)


def _nearest_before(image: np.ndarray) -> np.ndarray:
    """Per pixel, the nearest non-zero label to its left in its row (itself excluded), or 0."""
    columns = np.arange(image.shape[1])
    last = np.maximum.accumulate(np.where(image > 0, columns, -1), axis=1)
    before = np.full_like(last, -1)
    before[:, 1:] = last[:, :-1]
    found = np.take_along_axis(image, np.maximum(before, 0), axis=1)
    return np.where(before >= 0, found, 0)
