"""The network's input features, built the same way for training, inference and export."""
from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # torch, which that module needs, is seconds of import a node need not pay
    from segvec3d_ros.model.segvec3d import SegVec3DConfig


def input_features(xyz: np.ndarray, rgb: np.ndarray | None, config: SegVec3DConfig) -> np.ndarray:
    """(M, in_channels) float32 [centred xyz, rgb in [0, 1], normals] of (M, 3) finite points.

    xyz is centred on the cloud's centroid, which makes the network translation invariant, and
    kept in metres rather than scaled per cloud, so sizes and gaps mean the same in every cloud.
    Normals come from the sensor-frame points (sensor at the origin) and face the sensor.
    """
    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    columns = [pts - pts.mean(axis=0) if len(pts) else pts]
    if config.use_rgb:
        # A colourless cloud (LiDAR, depth-only camera) gets one uniform mid gray, which carries
        # no instance boundary, so the embeddings rest on geometry alone.
        colour = (np.full((len(pts), 3), 0.5) if rgb is None
                  else np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0)
        columns.append(colour)
    if config.use_normals:
        columns.append(estimate_normals(pts, config.normal_radius, config.normal_max_nn))
    # Coordinates near float32's limit centre to inf here; the pipeline never raises on them.
    with np.errstate(over='ignore'):
        return np.concatenate(columns, axis=1).astype(np.float32)


def estimate_normals(xyz: np.ndarray, radius: float, max_nn: int) -> np.ndarray:
    """(M, 3) unit normals of sensor-frame points, flipped to face the sensor at the origin.

    Each normal is the least principal axis of the point's nearest `max_nn` neighbours within
    `radius` (itself included), as Open3D's hybrid search has it; Open3D computes it where it
    is installed, SciPy and NumPy elsewhere (a GPU machine with only CUDA torch), with the
    same result.
    """
    o3d = _open3d()
    if o3d is None:
        normals = _principal_normals(xyz, radius, max_nn)
    else:
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius,
                                                                    max_nn=max_nn))
        normals = np.array(cloud.normals)   # a copy: the cloud owns its buffer
    facing_away = np.einsum('mk,mk->m', normals, -xyz) < 0
    normals[facing_away] *= -1
    return normals


@lru_cache(maxsize=1)
def _open3d() -> ModuleType | None:
    """Open3D, or None where it is not installed (imported once: it takes about a second)."""
    try:
        import open3d
    except ImportError:
        return None
    return open3d


def _principal_normals(xyz: np.ndarray, radius: float, max_nn: int) -> np.ndarray:
    """(M, 3) unit normals, unoriented, by PCA of each point's hybrid neighbourhood.

    Fewer than 3 neighbours give (0, 0, 1), as Open3D does.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros((0, 3))
    distance, index = cKDTree(pts).query(pts, k=min(max_nn, len(pts)),
                                         distance_upper_bound=radius, workers=-1)
    distance, index = distance.reshape(len(pts), -1), index.reshape(len(pts), -1)
    found = np.isfinite(distance)
    count = found.sum(axis=1)
    neighbours = np.vstack([pts, np.zeros((1, 3))])[index] * found[..., None]
    mean = neighbours.sum(axis=1) / np.maximum(count, 1)[:, None]
    offsets = (neighbours - mean[:, None]) * found[..., None]
    covariance = np.einsum('mki,mkj->mij', offsets, offsets)
    with np.errstate(invalid='ignore'):     # non-finite coordinates: no normal, as in Open3D
        normals = np.linalg.eigh(np.nan_to_num(covariance))[1][:, :, 0]
    normals[count < 3] = (0.0, 0.0, 1.0)
    return normals
