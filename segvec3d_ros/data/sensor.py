"""Virtual depth camera: pinhole ray casting plus the artefacts of real RGB-D sensors.

Points come out in the camera optical frame (x right, y down, z forward), organized H x W,
NaN where the sensor would give no return.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import open3d as o3d
from scipy.ndimage import zoom
from scipy.special import ndtri

INVALID = -1    # geometry id of a pixel whose ray hits nothing


@dataclass(frozen=True)
class DepthSensor:
    """Intrinsics and error model of one depth camera (lengths in m, angles in degrees)."""

    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    min_range: float
    max_range: float
    sigma0: float                   # depth noise sigma = sigma0 + sigma2 * z**2 + angle term
    sigma2: float
    sigma_angle: float              # grows like theta^2 / (90 deg - theta)^2 near grazing
    disparity_fb: float             # focal length * baseline (px m) of the disparity; 0: ToF
    disparity_step: float           # px; depth steps grow like z**2 * step / fb
    depth_unit: float               # depth image resolution (uint16 millimetres)
    baseline: float                 # +x offset of the projector / second imager; 0: none
    fade_incidence: float           # returns start to vanish beyond this incidence angle
    max_incidence: float            # ... and are all gone beyond this one
    edge_jump_px: float             # depth jump (in z / fx units) that marks a discontinuity
    edge_dropout: float             # probability of losing a pixel on a discontinuity
    flying_pixels: float            # probability that a kept edge pixel mixes both depths
    random_dropout: float           # independent per-pixel loss
    blob_dropout: float             # area fraction lost in smooth blobs (specular, absorbing)
    blob_cell: float                # px, size of those blobs
    border: tuple[int, int, int, int] = (0, 0, 0, 0)  # max invalid band left, right, top, bottom
    corner_cut: float = 0.0         # invalid corners beyond |u| + |v| > 2 - corner_cut (ToF)
    multipath: float = 0.0          # m, ToF: extra path length at a concave corner
    multipath_reach: float = 0.03   # m, distance from the corner at which it has fallen to 1/e
    exposure: tuple[float, float] = (0.8, 1.1)     # colour gain drawn per frame
    saturation: tuple[float, float] = (0.8, 1.05)  # colour saturation drawn per frame

    @property
    def intrinsics(self) -> np.ndarray:
        """The 3 x 3 pinhole matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, scale: float) -> DepthSensor:
        """Copy of this sensor at `scale` times its resolution (pixel-sized parameters follow)."""
        width, height = max(round(self.width * scale), 2), max(round(self.height * scale), 2)
        sx, sy = width / self.width, height / self.height
        return replace(self, width=width, height=height, fx=self.fx * sx, fy=self.fy * sy,
                       cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5,
                       blob_cell=self.blob_cell * sx,
                       border=tuple(round(b * s) for b, s in zip(self.border, (sx, sx, sy, sy))))

    def jittered(self, rng: np.random.Generator) -> DepthSensor:
        """Another unit of this model: calibration and noise level vary from device to device."""
        f = 1.0 + rng.uniform(-0.02, 0.02)
        noise = rng.uniform(0.8, 1.25)
        return replace(self, fx=self.fx * f * (1.0 + rng.uniform(-0.005, 0.005)), fy=self.fy * f,
                       cx=self.cx + rng.uniform(-0.01, 0.01) * self.width,
                       cy=self.cy + rng.uniform(-0.01, 0.01) * self.height,
                       sigma0=self.sigma0 * noise, sigma2=self.sigma2 * noise)


# Kinect v1 noise fitted to the mOSD Kinect frames: local plane residual (noise plus 1/8 px
# disparity and 1 mm quantisation) 1.1-1.4 mm at 0.6 m, 1.5-1.9 mm at 1.0 m, 1.7-2.4 mm at 1.3 m;
# depth steps there are 1, 2, 3, 4 mm at 0.6, 0.8, 1.0, 1.2 m, i.e. fb = 580 px * 7.5 cm.
# Colour: the mOSD frames are muted (median HSV saturation 0.06-0.10) and their brightness
# varies frame to frame (median value 154-226); PCL's Kinect milk-carton scan is dark (81).
_KINECT = DepthSensor(
    name='kinect_v1', width=640, height=480, fx=525.0, fy=525.0, cx=319.5, cy=239.5,
    min_range=0.45, max_range=4.0, sigma0=0.7e-3, sigma2=0.6e-3, sigma_angle=1e-4,
    disparity_fb=43.5, disparity_step=1 / 8, depth_unit=1e-3, baseline=0.075,
    fade_incidence=70.0, max_incidence=84.0, edge_jump_px=15.0, edge_dropout=0.5,
    flying_pixels=0.0, random_dropout=0.0005, blob_dropout=0.003, blob_cell=24.0,
    border=(0, 70, 0, 8),    # registered to colour: mOSD frames lose ~65 px on the right
    exposure=(0.5, 1.3), saturation=(0.3, 0.8))

# Active stereo (RealSense D4xx), depth aligned to the colour image. The depth noise is the
# disparity's subpixel error (~0.08 px RMS, Intel's D400 tuning guide) over focal length times
# baseline: sigma(z) = 0.08 z^2 / (f b), which sigma2 follows. The left imager is the reference:
# the right one, `baseline` to +x, cannot see beside the left of near objects (invalid bands),
# and the left edge of the image has no stereo overlap (`border`). Colour is saturated (the
# ARC 2017 bin frame: median saturation 0.67).
_STEREO = dict(min_range=0.2, max_range=6.0, sigma0=0.5e-3, sigma_angle=2e-4,
               disparity_step=1 / 32, depth_unit=1e-3, fade_incidence=65.0,
               max_incidence=82.0, edge_jump_px=15.0, edge_dropout=0.3, flying_pixels=0.1,
               random_dropout=0.004, blob_dropout=0.01, exposure=(0.6, 1.2),
               saturation=(0.85, 1.3))
# Time of flight (Azure Kinect, Orbbec Femto, which uses its depth module): no disparity steps
# nor shadows, mixed pixels on edges, multipath at concave corners (about a centimetre where
# two surfaces meet, fading within a few centimetres: Microsoft's Azure Kinect depth camera
# documentation), and an octagonal or circular field of view.
_TOF = dict(sigma0=1.2e-3, sigma2=0.4e-3, sigma_angle=1e-4, disparity_fb=0.0,
            disparity_step=0.0, depth_unit=1e-3, baseline=0.0, fade_incidence=75.0,
            max_incidence=87.0, edge_jump_px=15.0, edge_dropout=0.2, flying_pixels=0.5,
            random_dropout=0.001, blob_dropout=0.003, multipath=0.01, multipath_reach=0.03,
            exposure=(0.7, 1.2), saturation=(0.75, 1.15))

SENSORS: dict[str, DepthSensor] = {s.name: s for s in (
    _KINECT,
    replace(_KINECT, name='xtion', fx=570.3, fy=570.3, disparity_fb=42.8, border=(0, 16, 0, 4)),
    # D435 at 640 x 480 colour: f b = 430 px (depth imager) * 5 cm
    DepthSensor(name='realsense_d435', width=640, height=480, fx=615.0, fy=615.0, cx=319.5,
                cy=239.5, sigma2=2.5e-3, disparity_fb=21.5, baseline=0.05, blob_cell=16.0,
                border=(40, 0, 0, 0), **_STEREO),
    DepthSensor(name='realsense_d435_depth', width=848, height=480, fx=425.0, fy=425.0,
                cx=423.5, cy=239.5, sigma2=2.5e-3, disparity_fb=21.5, baseline=0.05,
                blob_cell=16.0, border=(30, 0, 0, 0), **_STEREO),
    # D435 at 1280 x 720: colour HFOV 69 deg (fx 920); depth imager fx 674 at 1280 * 5 cm
    DepthSensor(name='realsense_d435_hd', width=1280, height=720, fx=920.0, fy=920.0,
                cx=639.5, cy=359.5, sigma2=2.4e-3, disparity_fb=33.7, baseline=0.05,
                blob_cell=32.0, border=(60, 0, 0, 0), **_STEREO),
    # D415: narrower depth FOV (65 deg, fx 1005 at 1280) and 5.5 cm baseline: less noise
    DepthSensor(name='realsense_d415', width=1280, height=720, fx=920.0, fy=920.0, cx=639.5,
                cy=359.5, sigma2=1.45e-3, disparity_fb=55.3, baseline=0.055, blob_cell=32.0,
                border=(40, 0, 0, 0), **_STEREO),
    # Azure Kinect NFOV unbinned
    DepthSensor(name='azure_kinect_nfov', width=640, height=576, fx=504.0, fy=504.0,
                cx=319.5, cy=287.5, min_range=0.5, max_range=3.86, blob_cell=24.0,
                corner_cut=0.55, **_TOF),
    # Azure Kinect WFOV 2x2 binned: 120 deg circular field of view
    DepthSensor(name='azure_kinect_wfov', width=512, height=512, fx=251.0, fy=251.0,
                cx=255.5, cy=255.5, min_range=0.25, max_range=2.88, blob_cell=20.0,
                corner_cut=0.6, **_TOF),
    # Orbbec Femto Bolt NFOV unbinned: the Azure depth module behind another colour camera
    DepthSensor(name='orbbec_femto', width=640, height=576, fx=504.0, fy=504.0, cx=319.5,
                cy=287.5, min_range=0.25, max_range=5.46, blob_cell=24.0, corner_cut=0.55,
                **_TOF),
)}


@dataclass
class Frame:
    """One rendered depth frame or LiDAR scan, pixels in row-major order."""

    xyz: np.ndarray             # (H*W, 3) float32 in the sensor frame, NaN or 0 = no return
    valid: np.ndarray           # (H*W,) bool, the pixels with a return
    geometry_ids: np.ndarray    # (H*W,) int64 surface in view, also where its return was lost
    normals: np.ndarray         # (H*W, 3) float32 world-frame normal of that surface
    primitive_ids: np.ndarray   # (H*W,) int64 triangle of that surface (colours of its parts)
    fields: dict[str, np.ndarray] = field(default_factory=dict)  # LiDAR: the driver's fields


def pixel_rays(sensor: DepthSensor) -> np.ndarray:
    """(H, W, 3) ray directions in the optical frame, scaled to z = 1 so that hit t = depth."""
    u = (np.arange(sensor.width, dtype=np.float32) - sensor.cx) / sensor.fx
    v = (np.arange(sensor.height, dtype=np.float32) - sensor.cy) / sensor.fy
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu, vv, np.ones_like(uu)], -1)


def _neighbour_depths(z: np.ndarray) -> np.ndarray:
    """(4, H, W) depth of the left, right, upper and lower neighbours (self past the border)."""
    p = np.pad(z, 1, mode='edge')
    return np.stack([p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]])


def _blobs(sensor: DepthSensor, rng: np.random.Generator, fraction: np.ndarray) -> np.ndarray:
    """Mask of smooth random blobs covering about `fraction` (per pixel) of the image."""
    # interpolated at half resolution, which halves the cost and is invisible at blob scale
    h, w = (sensor.height + 1) // 2, (sensor.width + 1) // 2
    cell = max(sensor.blob_cell / 2, 2.0)
    coarse = rng.standard_normal((int(np.ceil(h / cell)) + 1, int(np.ceil(w / cell)) + 1))
    # cubic: the level sets of a bilinear field have straight, man-made looking edges
    smooth = zoom(coarse, (h / (coarse.shape[0] - 1), w / (coarse.shape[1] - 1)), order=3)[:h, :w]
    smooth = np.repeat(np.repeat(smooth, 2, 0), 2, 1)[:sensor.height, :sensor.width]
    smooth = (smooth - smooth.mean()) / max(smooth.std(), 1e-9)
    return smooth > ndtri(1.0 - np.clip(fraction, 1e-9, 0.99))


def _outside_field_of_view(sensor: DepthSensor, rng: np.random.Generator) -> np.ndarray:
    """(H, W) mask of the invalid border bands and cut corners of the sensor."""
    h, w = sensor.height, sensor.width
    left, right, top, bottom = (int(rng.integers(0, b + 1)) for b in sensor.border)
    cols, rows = np.arange(w), np.arange(h)
    mask = ((cols[None, :] < left) | (cols[None, :] >= w - right)
            | (rows[:, None] < top) | (rows[:, None] >= h - bottom))
    if sensor.corner_cut > 0:
        mask |= (np.abs(cols[None, :] - sensor.cx) / (w / 2)
                 + np.abs(rows[:, None] - sensor.cy) / (h / 2)) > 2.0 - sensor.corner_cut
    return mask


def cast_rays(scene: o3d.t.geometry.RaycastingScene, origin: np.ndarray,
              directions: np.ndarray) -> tuple[dict[str, o3d.core.Tensor], np.ndarray]:
    """Cast (H, W, 3) world-frame `directions` from `origin` into `scene`.

    Returns Open3D's hit tensors and the (H, W) int64 geometry ids, INVALID where a ray hit
    nothing.
    """
    rays = np.concatenate([np.broadcast_to(origin, directions.shape), directions], -1)
    hit = scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays, dtype=np.float32)))
    gid = hit['geometry_ids'].numpy().astype(np.int64)
    gid[gid == o3d.t.geometry.RaycastingScene.INVALID_ID] = INVALID
    return hit, gid


def render_depth(scene: o3d.t.geometry.RaycastingScene, sensor: DepthSensor,
                 camera_pose: np.ndarray, rng: np.random.Generator, noise: bool = True,
                 dropout: bool = True, dropout_gain: np.ndarray | None = None) -> Frame:
    """Cast one frame of `sensor` at `camera_pose` (4 x 4 camera-to-world) into `scene`.

    noise: depth noise, flying pixels and quantisation; dropout: every kind of missing return.
    dropout_gain (G,) scales random and blob dropout per geometry id (dark, glossy surfaces).
    """
    h, w = sensor.height, sensor.width
    rays_cam = pixel_rays(sensor)
    rot = camera_pose[:3, :3].astype(np.float32)
    origin = camera_pose[:3, 3].astype(np.float32)
    rays_world = rays_cam @ rot.T
    hit, gid = cast_rays(scene, origin, rays_world)
    z = hit['t_hit'].numpy()
    normals = hit['primitive_normals'].numpy()
    seen = gid != INVALID
    z = np.where(seen, z, np.inf).astype(np.float32)
    z_hit = np.where(seen, z, 0.0)     # keeps inf out of the noise arithmetic
    valid = seen & (z >= sensor.min_range) & (z <= sensor.max_range)

    cos_inc = np.abs((normals * rays_world).sum(-1)) / np.linalg.norm(rays_world, axis=-1)
    incidence = np.degrees(np.arccos(np.clip(cos_inc, 0.0, 1.0)))
    neighbours = _neighbour_depths(z)
    with np.errstate(invalid='ignore'):     # inf - inf between two rays that hit nothing
        edge = (np.abs(neighbours - z) > z * sensor.edge_jump_px / sensor.fx).any(0) & seen

    if dropout:
        if sensor.baseline > 0:
            valid &= ~_shadowed(scene, sensor, rot, origin, rays_world, z, valid)
        fade = (incidence - sensor.fade_incidence) / (sensor.max_incidence - sensor.fade_incidence)
        gain = np.ones((h, w)) if dropout_gain is None else dropout_gain[np.maximum(gid, 0)]
        # independent losses: grazing incidence, discontinuity, random; one draw decides all
        keep = ((1.0 - np.clip(fade, 0.0, 1.0)) * (1.0 - sensor.edge_dropout * edge)
                * (1.0 - sensor.random_dropout * gain))
        valid &= rng.random((h, w), dtype=np.float32) < keep
        valid &= ~_blobs(sensor, rng, sensor.blob_dropout * gain)
        valid &= ~_outside_field_of_view(sensor, rng)

    measured = z.copy()
    if noise:
        theta = np.radians(np.minimum(incidence, sensor.max_incidence))
        sigma = (sensor.sigma0 + sensor.sigma2 * z_hit ** 2
                 + sensor.sigma_angle * theta ** 2 / (np.pi / 2 - theta) ** 2)
        measured = z_hit + rng.standard_normal((h, w), dtype=np.float32) * sigma
        # a mixed (ToF) or mismatched (stereo) pixel lands between the two surfaces it sees
        far = np.where(np.isfinite(neighbours), neighbours, 0.0).max(0)
        flying = edge & valid & (far > z_hit)
        flying &= rng.random((h, w), dtype=np.float32) < sensor.flying_pixels
        measured[flying] += rng.random(int(flying.sum()), dtype=np.float32) \
            * (far - z_hit)[flying]
        if sensor.multipath > 0:
            points = origin + rays_world * z_hit[..., None]
            measured += _multipath(points, normals, seen, sensor)
        if sensor.disparity_fb > 0:
            disparity = sensor.disparity_fb / np.where(valid, measured, 1.0)
            disparity = np.maximum(np.round(disparity / sensor.disparity_step), 1.0)
            measured = sensor.disparity_fb / (disparity * sensor.disparity_step)
        measured = np.round(measured / sensor.depth_unit) * sensor.depth_unit
    xyz = rays_cam * np.where(valid, measured, np.nan)[..., None]
    primitives = hit['primitive_ids'].numpy().astype(np.int64)
    primitives[~seen] = 0
    return Frame(xyz=xyz.reshape(-1, 3).astype(np.float32), valid=valid.ravel(),
                 geometry_ids=gid.ravel(), normals=normals.reshape(-1, 3),
                 primitive_ids=primitives.ravel())


# Image offsets (px) at which a concave corner's second surface is looked for.
_MULTIPATH_STEPS = (2, 4, 8, 16)


def _multipath(points: np.ndarray, normals: np.ndarray, seen: np.ndarray,
               sensor: DepthSensor) -> np.ndarray:
    """(H, W) extra depth of a ToF return near a concave corner (a box on a table, a wall's foot).

    Light bounces off the second surface of the corner onto the first and back, so the phase
    measures a longer path: the error is largest at the corner and fades with the distance to
    the other surface. A pixel is near a corner when a surface within a few pixels faces
    another way and lies in front of its own tangent plane (a convex edge lies behind it).
    """
    extra = np.zeros(seen.shape, dtype=np.float32)
    facing = np.where((normals * points).sum(-1, keepdims=True) > 0, -normals, normals)
    for step in _MULTIPATH_STEPS:
        for axis in (0, 1):
            for shift in (step, -step):
                other = np.roll(points, shift, axis)
                other_normal = np.roll(facing, shift, axis)
                both = seen & np.roll(seen, shift, axis)
                offset = other - points
                in_front = (offset * facing).sum(-1) > 1e-3
                turned = (facing * other_normal).sum(-1) < 0.7
                gap = np.linalg.norm(offset, axis=-1)
                bias = sensor.multipath * np.exp(-gap / sensor.multipath_reach)
                extra = np.where(both & in_front & turned, np.maximum(extra, bias), extra)
    return extra


def _shadowed(scene: o3d.t.geometry.RaycastingScene, sensor: DepthSensor, rot: np.ndarray,
              origin: np.ndarray, rays_world: np.ndarray, z: np.ndarray,
              candidates: np.ndarray) -> np.ndarray:
    """(H, W) mask of points the projector (or second imager) cannot see."""
    emitter = origin + rot[:, 0] * sensor.baseline
    points = origin + rays_world[candidates] * z[candidates, None]
    to_emitter = emitter - points
    # leave the surface by 2 mm so that the ray does not hit its own triangle
    start = points + to_emitter * (2e-3 / np.linalg.norm(to_emitter, axis=1, keepdims=True))
    rays = np.concatenate([start, emitter - start], 1).astype(np.float32)
    shadow = np.zeros(z.shape, dtype=bool)
    shadow[candidates] = scene.test_occlusions(o3d.core.Tensor(rays), tfar=1.0).numpy()
    return shadow
