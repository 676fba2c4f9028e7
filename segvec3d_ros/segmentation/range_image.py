"""The LiDAR segmenter: ground, then regions of the organized scan's range image.

A spinning LiDAR's organized cloud is a range image, one row per beam. Its ground is a level
RANSAC plane corrected on a grid of cells; the other returns are joined with their image
neighbours by the angle criterion of Bogoslavskyi and Stachniss ("Fast range image-based
segmentation of sparse 3D laser scans for online operation", IROS 2016), and long upright
planar regions (facades) are support surfaces like the ground. Unorganized clouds have no
image: their working points are clustered by Euclidean distance with a tolerance that grows
with range, as the spacing of a LiDAR's returns does.
"""
from __future__ import annotations

from time import perf_counter

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from segvec3d_ros.config import RangeImageConfig
from segvec3d_ros.segmentation.base import Segmentation
from segvec3d_ros.segmentation.geometry import (column_max, column_min, edge_components,
                                                fit_support_plane, plane_basis, rank_labels)

# Degrees: the ground may tilt this far from level, and a wall's normal this far from it.
MAX_TILT_DEG = 15.0
# The ground plane is fitted on a random sample of this many returns: more do not move it.
PLANE_SAMPLE = 20000
# A cell whose lowest return lies farther than this many ground bands from the plane has no
# ground (a car roof's cell); returns that far below the plane are multipath, not ground.
CELL_TOLERANCE_BANDS = 2.0
# Neighbours join when closer than GAP_SCALE times the spacing that their beams have at their
# range, at least cluster_tolerance and at most MAX_GAP m (a wall seen at a grazing angle).
GAP_SCALE = 3.0
MAX_GAP = 2.0
# Walls: a plane within WALL_DISTANCE m holds WALL_INLIERS of an instance's points; instances
# under WALL_POINTS points are not tested (a wall that long has thousands of returns).
WALL_DISTANCE = 0.3
WALL_INLIERS = 0.7
WALL_POINTS = 500
# Unorganized clouds: the tolerance is 2 x range x this beam spacing (0.7 deg, the coarsest
# vertical spacing of the Ouster scans), between cluster_tolerance and twice that.
BEAM_ANGLE = np.deg2rad(0.7)
# Range-image neighbours (rows, columns): the 4-neighbourhood and two pixels away, which
# bridges one missing return (glass, dark paint) or a ground return between two objects' rows.
IMAGE_OFFSETS = ((0, 1), (1, 0), (0, 2), (2, 0))


class RangeImageSegmenter:
    """Ground plane and grid, then range-image regions (organized) or range-adaptive clusters."""

    name = 'range_image'
    sees_colour = False

    def __init__(self, config: RangeImageConfig) -> None:
        """Use `config`'s ground, angle and wall settings."""
        self.config = config

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None,
                pixels: np.ndarray | None = None,
                shape: tuple[int, int] | None = None) -> Segmentation:
        """Label (M, 3) finite points: support (ground, walls), instance 1..K by size, or 0.

        `pixels` are the points' indices in the organized cloud of `shape` (rows, columns);
        without them the points are clustered as an unorganized cloud. Colours are unused.
        """
        cfg = self.config
        pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
        up = np.asarray(cfg.up, dtype=np.float64)
        timings: dict[str, float] = {}
        tick = perf_counter()
        support, normal = ground_mask(pts, up, cfg.plane_distance, cfg.plane_iterations,
                                      cfg.ground_cell, cfg.ground_band)
        timings['ground'] = perf_counter() - tick
        tick = perf_counter()
        rest = ~support
        if pixels is not None and shape is not None:
            ids = range_image_regions(pts, np.asarray(pixels), shape, rest,
                                      cfg.angle_threshold, cfg.cluster_tolerance)
        else:
            ids = np.zeros(len(pts), dtype=np.int64)
            ids[rest] = adaptive_clusters(pts[rest], cfg.cluster_tolerance)
        timings['cluster'] = perf_counter() - tick
        tick = perf_counter()
        if cfg.wall_extent > 0:
            # Upright about the ground when there is one: the sensor may be mounted tilted.
            level = up if normal is None else normal
            walls = np.isin(ids, wall_ids(pts, ids, level, cfg.wall_extent))
            support |= walls
            ids[walls] = 0
        timings['walls'] = perf_counter() - tick
        # Size filtering is the caller's, on input points; ranking keeps ids dense.
        return Segmentation(rank_labels(ids)[0], support, None, timings,
                            support_normal=normal)


def ground_mask(xyz: np.ndarray, up: np.ndarray, distance: float, iterations: int,
                cell: float, band: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,) mask of the ground, a level plane corrected per `cell` m square, and its normal.

    The plane is fitted on the lower half of a sample (walls and roofs are above it). In each
    cell the lowest return not far below the plane sets the local ground height when it lies
    near the plane (a car roof's cell has no ground), and returns within `band` above it are
    ground: slopes, camber and kerbs follow, and objects are never cut at the plane. Without a
    plane the mask is empty and the normal None.
    """
    pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    nothing = np.zeros(len(pts), dtype=bool), None
    if len(pts) < 3:
        return nothing
    rng = np.random.default_rng(0)  # a fresh generator keeps the result the frame's alone
    sample = pts if len(pts) <= PLANE_SAMPLE else pts[rng.choice(len(pts), PLANE_SAMPLE,
                                                                 replace=False)]
    heights = sample.astype(np.float64) @ up
    plane, _ = fit_support_plane(sample[heights <= np.median(heights)], distance, iterations,
                                 rng, up=up, max_tilt_deg=MAX_TILT_DEG)
    if plane is None:
        return nothing
    height = pts @ plane[:3].astype(np.float32) + np.float32(plane[3])   # signed, up positive
    if cell <= 0:
        return np.abs(height) <= distance, plane[:3]
    tolerance = CELL_TOLERANCE_BANDS * band
    # Square cells across `up` (for z-up: x-y cells); the plane is near level, so they tile it.
    axes = plane_basis(up).astype(np.float32)
    cells = np.floor(pts @ axes * np.float32(1.0 / cell)).astype(np.int64)
    cells -= column_min(cells)
    span = column_max(cells) + 1
    if int(span[0]) * int(span[1]) <= 1 << 24:
        key = cells[:, 0] * int(span[1]) + cells[:, 1]
        num_cells = int(span[0]) * int(span[1])
    else:  # a stray return kilometres away: number the occupied cells only
        _, key = np.unique(cells[:, 0] * int(span[1]) + cells[:, 1], return_inverse=True)
        num_cells = int(key.max()) + 1
    candidate = height > -tolerance
    lowest = np.full(num_cells, np.inf, dtype=np.float32)
    np.minimum.at(lowest, key[candidate], height[candidate])
    local = lowest[key]
    return candidate & (np.abs(local) <= tolerance) & (height - local <= band), plane[:3]


def range_image_regions(xyz: np.ndarray, pixels: np.ndarray, shape: tuple[int, int],
                        usable: np.ndarray, angle_threshold: float,
                        min_gap: float) -> np.ndarray:
    """(M,) region id (0 = not usable) of points at `pixels` of an organized (rows, cols) scan.

    The rows are first rolled into line in azimuth (`destagger`). Two neighbouring returns p,
    q (ranges d1 >= d2, beams alpha apart) are one object when beta = atan2(d2 sin alpha,
    d1 - d2 cos alpha) exceeds `angle_threshold` (the surface between them faces the sensor
    rather than grazing it) and they lie closer than the range-scaled gap. Evaluated on whole
    shifted images, without trigonometry: beta > theta <=> d2 sin a > tan theta (d1 - d2 cos a).
    """
    height, width = shape
    full = np.zeros((height * width, 3), dtype=np.float32)
    full[pixels] = xyz
    present = np.zeros(height * width, dtype=bool)
    present[pixels] = True
    image = destagger(full, present, height, width)
    ok = np.zeros(height * width, dtype=bool)
    ok[pixels[usable]] = True
    ok = ok[image]
    ux, uy, uz = full[image.reshape(-1)].T.reshape(3, height, width)
    r = np.sqrt(ux * ux + uy * uy + uz * uz)
    inverse = np.divide(1.0, r, out=np.zeros_like(r), where=r > 0)
    ux, uy, uz = ux * inverse, uy * inverse, uz * inverse
    tan_theta = np.float32(np.tan(np.deg2rad(angle_threshold)))
    edges = {}
    for di, dj in IMAGE_OFFSETS:
        if di >= height or dj >= width:
            continue

        def moved(img: np.ndarray, di: int = di, dj: int = dj) -> np.ndarray:
            # Pixel (i, j) meets (i + di, j + dj); columns wrap around, rows do not.
            return (np.roll(img, -dj, axis=1) if dj else img)[di:]
        rows = slice(0, height - di)
        cos_a = ux[rows] * moved(ux) + uy[rows] * moved(uy) + uz[rows] * moved(uz)
        np.clip(cos_a, -1.0, 1.0, out=cos_a)
        sin_a = np.sqrt(1.0 - cos_a * cos_a)
        q_r = moved(r)
        d1, d2 = np.maximum(r[rows], q_r), np.minimum(r[rows], q_r)
        facing = d2 * sin_a > tan_theta * (d1 - d2 * cos_a)
        gap = np.clip(np.float32(GAP_SCALE) * d2 * sin_a, min_gap, max(MAX_GAP, min_gap))
        close = d1 * d1 + d2 * d2 - 2 * d1 * d2 * cos_a < gap * gap
        edge = ok[rows] & moved(ok) & facing & close
        if di + dj > 1:
            # A two-pixel step bridges a missing or ground return, never an object's return.
            edge &= ~(np.roll(ok, -1, axis=1) if dj else ok[1:height - 1])[:height - di]
        edges[(di, dj)] = edge
    pixel_regions = lattice_components(ok, edges)
    regions = np.zeros(height * width, dtype=np.int64)
    regions[image.reshape(-1)] = pixel_regions.reshape(-1)
    return regions[pixels]


def destagger(xyz: np.ndarray, valid: np.ndarray, height: int, width: int,
              min_points: int = 16, stride: int = 4) -> np.ndarray:
    """(height, width) point index of each pixel of the azimuth-aligned range image.

    Drivers publish each beam's row as fired, so rows of one column point in different
    azimuths (the Ouster bags: up to 61 columns apart). Each row is rolled by the whole number
    of columns that best lines its azimuths up with the first measured row's, measured on
    every `stride`-th column, or on every column for rows with fewer than `min_points`
    returns there (a row that meets one narrow object); rows with fewer than half that in
    all keep their order. The image is a permutation of the points, so labels on
    it go straight back to them.
    """
    pts = np.asarray(xyz).reshape(height, width, 3)
    ok = np.asarray(valid).reshape(height, width)
    sampled = ok[:, ::stride]
    # The column direction: azimuth falls with the column on Ouster, rises on others.
    azimuth = np.arctan2(pts[:, ::stride, 1], pts[:, ::stride, 0]).astype(np.float64)
    both = sampled[:, 1:] & sampled[:, :-1]
    turns = _wrap(azimuth[:, 1:] - azimuth[:, :-1])[both]
    step = (1.0 if len(turns) and np.median(turns) > 0 else -1.0) * 2 * np.pi / width
    offsets = np.full(height, np.nan)
    dense = sampled.sum(axis=1) >= min_points
    offsets[dense] = _row_offsets(azimuth[dense], sampled[dense], stride * step)
    sparse = ~dense & (ok.sum(axis=1) >= min_points // 2)
    if sparse.any():
        offsets[sparse] = _row_offsets(
            np.arctan2(pts[sparse, :, 1], pts[sparse, :, 0]).astype(np.float64), ok[sparse], step)
    shift = np.zeros(height, dtype=np.int64)
    measured = np.isfinite(offsets)
    if measured.any():
        # Row i's azimuth at column j is the reference row's at column j - delta_i; the
        # reference is the first row measured on the most returns.
        reference = offsets[dense][0] if dense.any() else offsets[measured][0]
        delta = _wrap(offsets[measured] - reference) / step
        shift[measured] = np.rint(-delta).astype(np.int64)
    source = (np.arange(width)[None, :] + shift[:, None]) % width
    return np.arange(height)[:, None] * width + source


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles in radians wrapped into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _row_offsets(azimuth: np.ndarray, ok: np.ndarray, step: float) -> np.ndarray:
    """(R,) azimuth of column 0 of each row of (R, C) azimuths, `step` radians per column."""
    offset = _wrap(azimuth - step * np.arange(azimuth.shape[1]))
    centre = np.arctan2(np.where(ok, np.sin(offset), 0).sum(axis=1),
                        np.where(ok, np.cos(offset), 0).sum(axis=1))
    # The median residual about the circular mean: near returns' parallax skews the mean.
    residual = np.where(ok, _wrap(offset - centre[:, None]), np.nan)
    return centre + np.nanmedian(residual, axis=1)


def lattice_components(nodes: np.ndarray, edges: dict[tuple[int, int], np.ndarray]
                       ) -> np.ndarray:
    """(H, W) component (1..K, 0 off the nodes) of a pixel graph whose columns wrap around.

    edges[(di, dj)][i, j] joins (i, j) and (i + di, (j + dj) % W), for the IMAGE_OFFSETS.
    The graph is drawn into a (2H - 1, 2W) lattice (nodes at even positions, an edge as the
    pixels between its ends) and labelled by scipy.ndimage.label, about five times faster
    than a sparse graph's components at 128 x 1024; edges across the column seam are merged
    afterwards. A bridge over a missing pixel passes through its lattice node, so a row and a
    column bridge over one hole join: all four returns are around it.
    """
    height, width = nodes.shape
    lattice = np.zeros((2 * height - 1, 2 * width), dtype=bool)
    lattice[0::2, 0::2] = nodes
    seam_a, seam_b = [], []
    for (di, dj), edge in edges.items():
        if dj == 0:
            for step in range(1, 2 * di):
                lattice[step:2 * (height - di) + step:2, 0::2] |= edge
            continue
        for step in range(1, 2 * dj):
            lattice[0::2, step:2 * (width - dj) + step:2] |= edge[:, :width - dj]
        i, j = np.nonzero(edge[:, width - dj:])
        seam_a.append(i * width + j + width - dj)
        seam_b.append(i * width + j)
    labels, count = ndimage.label(lattice)
    components = np.where(nodes, labels[0::2, 0::2], 0)
    if seam_a:
        flat = components.reshape(-1)
        a, b = flat[np.concatenate(seam_a)], flat[np.concatenate(seam_b)]
        merged = edge_components(a, b, count + 1)
        components = np.where(components > 0, merged[components] + 1, 0)
    return components


def adaptive_clusters(xyz: np.ndarray, min_tolerance: float) -> np.ndarray:
    """(N,) components (1..K) joining points closer than a range-grown tolerance.

    The tolerance is 2 x range x BEAM_ANGLE at the nearer point, between `min_tolerance` and
    twice that: a LiDAR's returns on a surface facing it are that far apart.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = cKDTree(pts).query_pairs(2 * min_tolerance, output_type='ndarray')
    distance = np.linalg.norm(pts, axis=1)
    near = np.minimum(distance[pairs[:, 0]], distance[pairs[:, 1]])
    tolerance = np.clip(2 * near * BEAM_ANGLE, min_tolerance, 2 * min_tolerance)
    gap = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    pairs = pairs[gap < tolerance]
    return edge_components(pairs[:, 0], pairs[:, 1], len(pts)) + 1


def wall_ids(xyz: np.ndarray, ids: np.ndarray, up: np.ndarray, min_extent: float,
             max_tilt_deg: float = MAX_TILT_DEG) -> np.ndarray:
    """Ids (> 0) of the instances that are walls: upright, planar, `min_extent` m long.

    The plane is each instance's least-spread principal plane: its normal within
    `max_tilt_deg` of level, WALL_INLIERS of the points within WALL_DISTANCE of it, and a
    span along the main axis of `min_extent` or more. The covariances of all instances come
    from one pass of bincounts. On a street the facades are what walls are indoors: support,
    and one near facade can hold a third of a 32-beam scan.
    """
    labels = np.asarray(ids, dtype=np.int64).reshape(-1)
    counts = np.bincount(labels, minlength=1)
    counts[0] = 0
    big = np.flatnonzero(counts >= WALL_POINTS)
    if len(big) == 0:
        return big
    keep = np.isin(labels, big)
    slot = np.zeros(len(counts), dtype=np.int64)
    slot[big] = np.arange(len(big))
    s = slot[labels[keep]]
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)[keep]
    n = counts[big].astype(np.float64)
    mean = np.stack([np.bincount(s, pts[:, k], len(big)) for k in range(3)], axis=1) / n[:, None]
    centred = pts - mean[s]
    cov = np.empty((len(big), 3, 3))
    for a in range(3):
        for b in range(a, 3):
            cov[:, a, b] = cov[:, b, a] = np.bincount(s, centred[:, a] * centred[:, b],
                                                      len(big)) / n
    vectors = np.linalg.eigh(cov)[1]
    normal, along = vectors[:, :, 0], vectors[:, :, 2]
    upright = np.abs(normal @ up) <= np.sin(np.deg2rad(max_tilt_deg))
    inlier = np.abs(np.einsum('ij,ij->i', centred, normal[s])) <= WALL_DISTANCE
    share = np.bincount(s, inlier, len(big)) / n
    t = np.einsum('ij,ij->i', centred, along[s])
    high = np.full(len(big), -np.inf)
    low = np.full(len(big), np.inf)
    np.maximum.at(high, s, t)
    np.minimum.at(low, s, t)
    return big[upright & (share >= WALL_INLIERS) & (high - low >= min_extent)]
