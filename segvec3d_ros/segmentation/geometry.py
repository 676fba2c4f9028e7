"""Vectorised geometric building blocks: voxel grid, RANSAC plane, Euclidean clusters."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

# Below this product of per-axis voxel counts, (i, j, k) packs into one int64 key without overflow.
_MAX_PACKED_KEY = 2.0**62
# Voxel keys are computed this many points at a time: the float64 and int64 cells of a whole
# cloud made voxel_downsample peak at 595 MiB on 5 million points, blockwise 251 MiB.
_KEY_BLOCK_POINTS = 1 << 20
# Distinct keys are numbered from an occupancy table, not by sorting, while the table has at
# most this many entries per point: a camera frame's voxels span a few cells per point.
_DENSE_KEYS_PER_POINT = 8
# RANSAC scores hypotheses on a random sample of this many points: enough to rank planes by
# inlier fraction (a 10 % plane has ~400 +- 20 sampled inliers) at a fraction of the cost.
_RANSAC_SCORE_POINTS = 4096
# Hypotheses are scored in batches whose (points x 3) @ (3 x hypotheses) products stay under
# OpenBLAS's threading threshold (m * n * k < 4 * 65536): threaded, a 4096 x 3 x 200 product
# waits ~10 ms for a descheduled thread whenever other processes keep the cores busy, 20 times
# its single-threaded cost. Small batches also bound the memory.
_RANSAC_BATCH_PRODUCT = 4 * 65536
# m: a plane parallel to a support surface and at most this far from it is objects' tops (the
# tallest tabletop objects, bottles and boxes, are about this high); a shelf is farther.
OBJECT_HEIGHT = 0.3
# Parallel: normals within 15 degrees (a plane through several rims tilts a few degrees).
_PARALLEL_COS = float(np.cos(np.deg2rad(15.0)))
# A thin object lying on a surface (a book 1 cm thick) has its top inside the surface's inlier
# band. Its points sit high in the band over a whole patch, the surface's own noise only at
# single points: the mean height of a point's neighbours tells them apart. Over half the band
# returned 56 of mOSD's 509,308 support working points and none of 100 held-out synthetic
# scenes' (a third of the band: 6531 and 26,077).
_LAYER_LEVEL = 0.5
_LAYER_NEIGHBOURS = 16
_LAYER_MIN_POINTS = 20
# A surface's band holds this many standard deviations of its noise, where that is wider than
# the inlier distance: stereo depth noise grows with the square of the range (5 mm at 1.5 m on
# a RealSense D435), so a fixed 1 cm band leaves the far part of a table in specks. The noise
# is estimated from the fit's inliers only: a wider window takes in the objects lying flat on
# a floor (a bin's books and boxes), whose heights read as noise and widen the band over them.
_NOISE_SIGMAS = 2.5
# ... and the band is at most this many inlier distances: depth noise past it is not a surface.
_MAX_BAND = 3.0
_MAD_TO_SIGMA = 1.4826
# Planes tried per frame, surfaces and rejected object faces together: the share a surface
# must hold shrinks with what is left, and the rounds stay bounded on a cloud of many planes.
_MAX_SURFACE_ROUNDS = 16


@dataclass
class VoxelGrid:
    """The occupied voxels of a cloud and the voxel of every input point."""

    xyz: np.ndarray             # (V, 3) float32 centroid of the points in each voxel
    rgb: np.ndarray | None      # (V, 3) uint8 mean colour per voxel, or None
    inverse: np.ndarray         # (N,) int64 voxel index of each input point


def edge_components(rows: np.ndarray, cols: np.ndarray, num: int) -> np.ndarray:
    """(num,) connected-component number of each node of the undirected graph of the edges.

    Edge i joins rows[i] and cols[i]; a node without edges is a component of its own.
    """
    graph = coo_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(num, num))
    return connected_components(graph, directed=False)[1]


def column_min(values: np.ndarray, initial: float | None = None) -> np.ndarray:
    """Minimum of each column of (N, C) values (`initial` where N is 0, else N must be > 0).

    One column at a time: numpy reduces an (N, 3) array along axis 0 about 25 times slower.
    """
    return _per_column(np.minimum, values, initial)


def column_max(values: np.ndarray, initial: float | None = None) -> np.ndarray:
    """Maximum of each column of (N, C) values; see `column_min`."""
    return _per_column(np.maximum, values, initial)


def column_mean(values: np.ndarray) -> np.ndarray:
    """Mean of each column of (N, C) values, N > 0; see `column_min`."""
    values = np.asarray(values)
    return np.array([values[:, c].mean() for c in range(values.shape[1])])


def inside_box(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(N,) whether each of the (N, C) points lies within [low, high] in every column.

    One column at a time, as `column_min`: `.all(axis=1)` of an (N, 3) mask is as slow.
    """
    points = np.asarray(points)
    inside = np.ones(len(points), dtype=bool)
    for c in range(points.shape[1]):
        inside &= (points[:, c] >= low[c]) & (points[:, c] <= high[c])
    return inside


def _per_column(ufunc: np.ufunc, values: np.ndarray, initial: float | None) -> np.ndarray:
    values = np.asarray(values)
    kwargs = {} if initial is None else {'initial': initial}
    return np.array([ufunc.reduce(values[:, c], **kwargs) for c in range(values.shape[1])])


def group_means(groups: np.ndarray, values: np.ndarray, num_groups: int) -> np.ndarray:
    """Mean of the (N, C) values per group id in [0, num_groups); empty groups get zeros."""
    counts = np.maximum(np.bincount(groups, minlength=num_groups), 1)
    # bincount sums its weights in float64 whatever their type: a column at a time is copied.
    return np.column_stack([np.bincount(groups, weights=column, minlength=num_groups) / counts
                            for column in np.asarray(values).T])


def voxel_downsample(xyz: np.ndarray, voxel_size: float,
                     rgb: np.ndarray | None = None) -> VoxelGrid:
    """Average finite (N, 3) points, and their colours, per occupied cubic voxel."""
    if not voxel_size > 0:
        raise ValueError(f'voxel_size must be > 0, got {voxel_size}')
    pts = np.asarray(xyz).reshape(-1, 3)
    # Cells counted from the cloud's minimum are non-negative whole numbers, exact in float64.
    low = column_min(pts, initial=np.inf).astype(np.float64)
    # The extreme points' cells bound every other's: each step to a cell is monotonic.
    span = np.floor((column_max(pts, initial=-np.inf) - low) / voxel_size) + 1.0
    if len(pts) and np.prod(span) < _MAX_PACKED_KEY:
        keys = np.concatenate([
            _voxel_keys(pts[start:start + _KEY_BLOCK_POINTS], low, voxel_size, span)
            for start in range(0, len(pts), _KEY_BLOCK_POINTS)])
        inverse = _rank_keys(keys, np.prod(span))
    else:
        inverse = cell_index(np.floor((pts - low) / voxel_size))
    num_voxels = int(inverse.max(initial=-1)) + 1
    colours = None
    if rgb is not None:
        colours = np.rint(group_means(inverse, rgb, num_voxels)).astype(np.uint8)
    return VoxelGrid(group_means(inverse, pts, num_voxels).astype(np.float32), colours, inverse)


def cell_index(cells: np.ndarray) -> np.ndarray:
    """(N,) int64 number of each row's cell among the distinct rows, in sorted order of the cells.

    The rows are (N, 3) non-negative whole-number cell coordinates (float or int).
    """
    span = np.asarray(column_max(cells, initial=0), dtype=np.float64) + 1.0
    if np.prod(span) < _MAX_PACKED_KEY:
        inverse = _rank_keys(_packed_keys(cells, span), np.prod(span))
    else:
        # Too many cells for one packed key (huge extent or tiny voxel): rows compare exactly.
        _, inverse = np.unique(cells, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64, copy=False)


def _packed_keys(cells: np.ndarray, span: np.ndarray) -> np.ndarray:
    """(N,) int64 key of each row of (N, 3) whole-number cell coordinates below `span` per axis.

    The product of `span` is under _MAX_PACKED_KEY; the keys are ordered as the rows are
    lexicographically.
    """
    # A column at a time: on contiguous columns the casts run several times faster.
    i, j, k = (cells[:, axis].astype(np.int64) for axis in range(3))
    return (i * int(span[1]) + j) * int(span[2]) + k


def _voxel_keys(pts: np.ndarray, low: np.ndarray, voxel_size: float,
                span: np.ndarray) -> np.ndarray:
    """(N,) packed key (`_packed_keys`) of the voxel of each of the (N, 3) points."""
    cells = np.empty((len(pts), 3))
    for axis in range(3):
        cells[:, axis] = np.floor((pts[:, axis].astype(np.float64) - low[axis]) / voxel_size)
    return _packed_keys(cells, span)


def _rank_keys(keys: np.ndarray, num_keys: float) -> np.ndarray:
    """(N,) int64 number of each key among the distinct `keys` (all in [0, num_keys)), in order.

    np.unique's inverse; where the keys are few for their count, from an occupancy table
    instead of a sort.
    """
    if num_keys <= _DENSE_KEYS_PER_POINT * len(keys):
        occupied = np.zeros(int(num_keys), dtype=bool)
        occupied[keys] = True
        return (np.cumsum(occupied) - 1)[keys]
    return np.unique(keys, return_inverse=True)[1].reshape(-1).astype(np.int64, copy=False)


def fit_support_plane(xyz: np.ndarray, distance: float, iterations: int,
                      rng: np.random.Generator, up: np.ndarray | None = None,
                      max_tilt_deg: float = 30.0) -> tuple[np.ndarray | None, np.ndarray]:
    """RANSAC plane with the most points within `distance`, refined by least squares.

    With `up`, only planes whose normal is within `max_tilt_deg` of it are considered.
    Returns the plane (a, b, c, d) with a unit normal, or None, and the (N,) inlier mask.
    The normal points along `up` when given, else towards the origin: the sensor, in a
    sensor-frame cloud.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    no_plane = None, np.zeros(len(pts), dtype=bool)
    if len(pts) < 3 or iterations < 1:
        return no_plane
    # Centred coordinates keep cross products precise far from the origin.
    center = column_mean(pts)
    centered = pts - center
    samples = centered[rng.integers(0, len(pts), size=(iterations, 3))]
    normals = np.cross(samples[:, 1] - samples[:, 0], samples[:, 2] - samples[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    usable = lengths > 0    # three distinct, non-collinear samples
    normals = normals[usable] / lengths[usable, None]
    anchors = samples[usable, 0]
    if up is not None:
        up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
        upright = np.abs(normals @ up) >= np.cos(np.deg2rad(max_tilt_deg))
        normals, anchors = normals[upright], anchors[upright]
    if len(normals) == 0:
        return no_plane
    offsets = -np.einsum('hk,hk->h', normals, anchors)
    scored = centered
    if len(pts) > _RANSAC_SCORE_POINTS:
        scored = centered[rng.integers(0, len(pts), size=_RANSAC_SCORE_POINTS)]
    scores = np.empty(len(normals), dtype=np.int64)
    batch = max(1, (_RANSAC_BATCH_PRODUCT - 1) // (3 * len(scored)))
    for start in range(0, len(normals), batch):
        dist = scored @ normals[start:start + batch].T
        dist += offsets[start:start + batch]
        # In place and count_nonzero rather than a summed bool array: a fifth of the time.
        scores[start:start + batch] = np.count_nonzero(np.abs(dist, out=dist) <= distance, axis=0)
    best = int(np.argmax(scores))
    normal, offset = normals[best], offsets[best]
    inliers = np.abs(centered @ normal + offset) <= distance
    if inliers.sum() >= 3:
        # Least squares: the refined normal is the inliers' direction of least spread.
        spread = centered[inliers]
        mean = column_mean(spread)
        spread -= mean
        normal = np.linalg.eigh(spread.T @ spread)[1][:, 0]
        offset = -normal @ mean
        inliers = np.abs(centered @ normal + offset) <= distance
    on_plane = center - offset * normal
    if normal @ (-on_plane if up is None else up) < 0:
        normal = -normal
    return np.append(normal, -normal @ on_plane), inliers


def plane_basis(normal: np.ndarray) -> np.ndarray:
    """(3, 2) two orthonormal vectors spanning the plane perpendicular to the unit `normal`.

    The first is built from the coordinate axis least along the normal.
    """
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    first = np.cross(normal, helper)
    first /= np.linalg.norm(first)
    return np.column_stack([first, np.cross(normal, first)])


def plane_patches(xyz: np.ndarray, normal: np.ndarray, tolerance: float) -> np.ndarray:
    """(N,) id of the connected patch of each point of a plane whose unit `normal` is given.

    The points, projected into the plane, fall into square cells of side `tolerance`; cells
    that touch (8-neighbourhood) form one patch. Sorted cell keys and their neighbours' keys
    give the adjacency, so the cost is O(N log N) however large the plane's extent.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    plane_xy = pts @ plane_basis(np.asarray(normal, dtype=np.float64))
    cells = np.floor((plane_xy - column_min(plane_xy)) / tolerance).astype(np.int64)
    # One spare column keeps a cell's right neighbour from wrapping onto the next row.
    width = int(cells[:, 1].max()) + 2
    keys, inverse = np.unique(cells[:, 0] * width + cells[:, 1], return_inverse=True)
    rows, cols = [], []
    for offset in (1, width - 1, width, width + 1):
        position = np.minimum(np.searchsorted(keys, keys + offset), len(keys) - 1)
        found = keys[position] == keys + offset
        rows.append(np.flatnonzero(found))
        cols.append(position[found])
    return edge_components(np.concatenate(rows), np.concatenate(cols),
                           len(keys))[inverse.reshape(-1)]


def longest_span(xyz: np.ndarray, normal: np.ndarray) -> float:
    """Length of the points' extent along their principal direction in the plane of `normal`.

    `normal` is a unit vector; the length is a patch's long side, whatever its yaw.
    """
    flat = np.asarray(xyz, dtype=np.float64).reshape(-1, 3) @ plane_basis(normal)
    if len(flat) < 2:
        return 0.0
    flat -= column_mean(flat)
    principal = np.linalg.eigh(flat.T @ flat)[1][:, 1]
    return float(np.ptp(flat @ principal))


def surface_band(xyz: np.ndarray, plane: np.ndarray, distance: float) -> np.ndarray:
    """(N,) half-width of `plane`'s inlier band at each point: `distance`, or wider with noise.

    The noise is modelled as sigma = s * range^2 (depth noise of stereo and structured light,
    the sensor at the origin), s estimated robustly from the residuals of the inliers; a sensor
    whose noise stays under the inlier distance keeps `distance`, and no band passes
    _MAX_BAND inlier distances.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    residual = np.abs(pts @ plane[:3] + plane[3])
    squared_range = np.maximum(np.einsum('ij,ij->i', pts, pts), 1e-4)
    near = residual <= distance
    if near.sum() < 3:
        return np.full(len(pts), distance)
    scale = _MAD_TO_SIGMA * np.median(residual[near] / squared_range[near])
    return np.clip(_NOISE_SIGMAS * scale * squared_range, distance, _MAX_BAND * distance)


def support_surfaces(xyz: np.ndarray, distance: float, iterations: int, min_fraction: float,
                     drop_beyond: bool, rng: np.random.Generator, up: np.ndarray | None = None,
                     *, tolerance: float, min_extent: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Peel off every surface holding >= `min_fraction` of the points left (table, floor, walls).

    A RANSAC plane is a surface when one connected patch of its inliers (within `distance`,
    or within the band its noise needs, `surface_band`; gaps under
    `tolerance`) holds that many points and spans at least `min_extent` m: in a close-up of
    clutter with no table in view, the best plane is the faces of several objects that happen
    to line up, each a small patch; and close to the sensor one object's face (a book's or a
    box's top, a band along a can's side) can hold a tenth of the frame's points, yet it spans
    no more than the object. Nor is a patch a surface when it lies parallel to one found before
    and within `OBJECT_HEIGHT` of it: that is the tops of objects side by side on it (books
    lying flat, the rims of bowls), not a shelf. Even a layer of the same surface's noise is
    left: its inliers would take the bottom centimetres of every object standing there.
    The inliers of a surface are support, the table also in pieces between and behind the
    objects (a piece left out would become an instance of its own), except a raised layer: the
    top of a thin object lying on it.
    Returns the (N,) support mask and the mask of the other points that remain to segment:
    with `drop_beyond`, not those on the far side of a support plane from the sensor at the
    origin, which lie under the table or were seen past its edge.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    support = np.zeros(len(pts), dtype=bool)
    rest = np.ones(len(pts), dtype=bool)
    untried = np.ones(len(pts), dtype=bool)
    surfaces: list[np.ndarray] = []
    # Like PCL's cluster extraction; every round takes >= surface_points points from untried.
    for _ in range(_MAX_SURFACE_ROUNDS):
        candidates = np.flatnonzero(untried)
        # A level above a surface found before (a table over the floor, a shelf's board) needs
        # only that share of the points left: beside a floor that fills most of a wide view the
        # table holds under min_fraction of all the points, yet most of the rest.
        level_points = max(min_fraction * len(candidates), 3)
        plane, inliers = fit_support_plane(pts[candidates], distance, iterations, rng, up)
        if plane is None or inliers.sum() < level_points:
            return support, rest & ~support
        members = candidates[inliers]
        if (inliers.sum() < max(min_fraction * len(pts), 3)
                and not _may_be_above_a_surface(pts[members], plane, surfaces)):
            # Too few points for a surface, and no patch of them can be a level above one:
            # the round ends as it would after finding the patches, which are most of its cost.
            untried[members] = False
            continue
        patches = plane_patches(pts[members], plane[:3], tolerance)
        sizes = np.bincount(patches)
        largest = members[patches == sizes.argmax()]
        level = _above_a_surface(pts[largest], plane, surfaces)
        surface_points = level_points if level else max(min_fraction * len(pts), 3)
        if sizes.max() >= surface_points and (
                longest_span(pts[largest], plane[:3]) < min_extent
                or _on_a_surface(pts[largest], plane, surfaces)):
            # Objects' faces; support seen beside them (a fit tilted to take both) stays to be
            # found in a later round.
            untried[largest] = False
            continue
        untried[members] = False
        if sizes.max() < surface_points:
            continue
        # A surface found, its band widens with its noise (a noisy blob never qualifies by it).
        band = surface_band(pts[candidates], plane, distance)
        # The fit's own inliers stay: a band of NaN (coordinates near float32's limit) takes none.
        inliers |= np.abs(pts[candidates] @ plane[:3] + plane[3]) <= band
        members = candidates[inliers]
        untried[members] = False
        support[members] = True
        support[members[_raised_layer(pts[members], plane, band[inliers], tolerance,
                                      min_extent)]] = False
        surfaces.append(plane)
        # Not beyond a level: the fronts of objects in a row before a wall look like one, and
        # all behind them would go.
        if drop_beyond and not level:
            rest &= (pts @ plane[:3] + plane[3]) * np.sign(plane[3]) >= 0
    return support, rest & ~support


def _above_a_surface(patch: np.ndarray, plane: np.ndarray, surfaces: list[np.ndarray]) -> bool:
    """Whether `patch` of `plane` is parallel to and beyond OBJECT_HEIGHT of one of `surfaces`."""
    return any(abs(plane[:3] @ surface[:3]) >= _PARALLEL_COS
               and abs(np.median(patch @ surface[:3] + surface[3])) > OBJECT_HEIGHT
               for surface in surfaces)


def _may_be_above_a_surface(points: np.ndarray, plane: np.ndarray,
                            surfaces: list[np.ndarray]) -> bool:
    """Whether some patch of `points` could pass `_above_a_surface`: one lies beyond its height."""
    return any(abs(plane[:3] @ surface[:3]) >= _PARALLEL_COS
               and np.abs(points @ surface[:3] + surface[3]).max() > OBJECT_HEIGHT
               for surface in surfaces)


def _on_a_surface(patch: np.ndarray, plane: np.ndarray, surfaces: list[np.ndarray]) -> bool:
    """Whether `patch` of `plane` is parallel to and within OBJECT_HEIGHT of one of `surfaces`."""
    return any(abs(plane[:3] @ surface[:3]) >= _PARALLEL_COS
               and abs(np.median(patch @ surface[:3] + surface[3])) <= OBJECT_HEIGHT
               for surface in surfaces)


def _raised_layer(xyz: np.ndarray, plane: np.ndarray, distance: np.ndarray,
                  tolerance: float, max_span: float = 0.0) -> np.ndarray:
    """(N,) mask of the inliers `xyz` of `plane` (within `distance`, (N,)) in a raised layer.

    Those are the inliers whose neighbours lie on average over _LAYER_LEVEL of the band above
    the plane, on the sensor's side, in patches (gaps under `tolerance`) of at least
    _LAYER_MIN_POINTS points that, with `max_span` > 0, span less than it: a longer one is the
    surface itself, bent out of its plane by the sensor's depth error (a real floor or table
    warps by a centimetre over a metre), not a thin object lying on it.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    raised = np.zeros(len(pts), dtype=bool)
    height = (pts @ plane[:3] + plane[3]) * (np.sign(plane[3]) or 1.0)
    # A point far below the level is the surface's (the neighbour search is the cost).
    candidates = np.flatnonzero(height > 0.4 * _LAYER_LEVEL * distance)
    if len(candidates) < _LAYER_MIN_POINTS:
        return raised
    _, neighbours = cKDTree(pts).query(pts[candidates], k=min(_LAYER_NEIGHBOURS, len(pts)))
    layer = candidates[height[neighbours].mean(axis=1) > _LAYER_LEVEL * distance[candidates]]
    if len(layer) < _LAYER_MIN_POINTS:
        return raised
    patches = plane_patches(pts[layer], plane[:3], tolerance)
    sizes = np.bincount(patches)
    thin_objects = sizes >= _LAYER_MIN_POINTS
    if max_span > 0:
        for patch in np.flatnonzero(thin_objects):
            thin_objects[patch] = longest_span(pts[layer[patches == patch]], plane[:3]) < max_span
    raised[layer[thin_objects[patches]]] = True
    return raised


def rank_labels(labels: np.ndarray, min_size: int = 1,
                max_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Renumber non-negative labels 1..K by decreasing size; 0 and out-of-size groups become 0.

    Returns the new labels and the old-to-new id map (index = old id).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=1)
    counts[0] = 0
    keep = counts >= max(min_size, 1)
    if max_size is not None:
        keep &= counts <= max_size
    order = np.argsort(-counts, kind='stable')
    order = order[keep[order]]
    mapping = np.zeros(len(counts), dtype=np.int64)
    mapping[order] = np.arange(1, len(order) + 1)
    return mapping[labels], mapping


def euclidean_clusters(xyz: np.ndarray, tolerance: float, min_points: int = 1,
                       max_points: int | None = None) -> np.ndarray:
    """Connected-component labels of the `tolerance`-radius graph: (N,) int64, largest 1, noise 0.

    Memory grows with the number of point pairs within `tolerance`, so feed voxelised points.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    pairs = cKDTree(pts).query_pairs(tolerance, output_type='ndarray')
    components = edge_components(pairs[:, 0], pairs[:, 1], len(pts))
    return rank_labels(components + 1, min_points, max_points)[0]


def nearest_labels(src_xyz: np.ndarray, src_labels: np.ndarray, dst_xyz: np.ndarray,
                   max_distance: float = np.inf) -> np.ndarray:
    """Rows of `src_labels` at the source point nearest to each destination point.

    A destination with no source point within `max_distance` gets a row of zeros.
    """
    src_labels = np.asarray(src_labels)
    dst = np.asarray(dst_xyz, dtype=np.float64).reshape(-1, 3)
    labels = np.zeros((len(dst),) + src_labels.shape[1:], dtype=src_labels.dtype)
    if len(src_labels) == 0:
        return labels
    distance, nearest = cKDTree(np.asarray(src_xyz, dtype=np.float64).reshape(-1, 3)).query(
        dst, k=1, distance_upper_bound=max_distance)
    found = np.isfinite(distance)
    labels[found] = src_labels[nearest[found]]
    return labels
