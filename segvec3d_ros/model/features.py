"""The network's input features, built the same way for training, inference and export."""
from __future__ import annotations

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
    """(M, 3) unit normals of sensor-frame points, flipped to face the sensor at the origin."""
    # open3d takes about a second to import and only normals need it.
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=max_nn))
    normals = np.array(cloud.normals)   # a copy: the cloud owns its buffer
    facing_away = np.einsum('mk,mk->m', normals, -xyz) < 0
    normals[facing_away] *= -1
    return normals
