"""Virtual LiDAR: spinning multi-beam and non-repetitive scan patterns with their artefacts.

Points come out in the sensor frame as REP 103 has it (x forward, z up), with the fields each
driver publishes (ouster-ros: `intensity`, `reflectivity`, `ring`, `range`; Velodyne:
`intensity`, `ring`; Livox: `intensity`, `line`); a return that did not come back is
x = y = z = 0 (and range 0), as the drivers write it. Spinning sensors give organized
clouds, one row per beam, their columns staggered by each beam's azimuth offset as the raw
measurement order has them; the non-repetitive pattern gives an unorganized cloud.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import open3d as o3d

from segvec3d_ros.data.sensor import INVALID, Frame, cast_rays

PATTERNS = ('spinning', 'rosette')
# Ouster beams fire from four columns of the detector, each at its own azimuth (deg): the
# published rows are therefore staggered by a few columns, repeating every four beams.
OUSTER_STAGGER = (3.16, 1.05, -1.05, -3.16)
OUSTER_FIELDS = ('intensity', 'reflectivity', 'ring', 'range')
# signal (reflectivity * cos(incidence) / range^2, range in m) at which the intensity field
# reads 1000 counts, near what an Ouster reports for white paint at 4 m
INTENSITY_GAIN = 16000.0


@dataclass(frozen=True)
class LidarSensor:
    """Scan pattern and error model of one LiDAR (lengths in m, angles in degrees)."""

    name: str
    rows: int                       # beams (spinning) or simultaneous lines (rosette)
    columns: int                    # firings per beam and frame
    elevation: tuple[float, float]  # lowest and highest beam; rosette: the circular half field
    min_range: float
    max_range: float
    range_sigma: float              # per-return range noise, 1 sigma
    beam_bias: float                # sigma of each beam's constant range offset (calibration)
    beam_tilt: float                # sigma of each beam's elevation error
    pattern: str = 'spinning'
    stagger: tuple[float, ...] = ()  # azimuth offset of beam i: stagger[i % len(stagger)]
    fields: tuple[str, ...] = OUSTER_FIELDS  # what the driver publishes besides x y z
    calibrated_intensity: bool = False  # `intensity` is reflectivity (Velodyne, Livox), not signal
    range_resolution: float = 1e-3
    min_signal: float = 2e-4        # weaker returns (dark, far, grazing) do not come back
    random_dropout: float = 0.002
    max_incidence: float = 88.0
    edge_jump: float = 0.1          # relative range step between neighbours that is an edge
    mixed_returns: float = 0.3      # probability that an edge return lands between both sides
    unit_seed: int = 0              # per-unit calibration (beam biases and tilts)

    @property
    def height(self) -> int:
        """Rows of the published cloud: one per beam, or 1 for an unorganized pattern."""
        return self.rows if self.pattern == 'spinning' else 1

    @property
    def width(self) -> int:
        """Columns of the published cloud."""
        return self.columns if self.pattern == 'spinning' else self.rows * self.columns

    def scaled(self, scale: float) -> LidarSensor:
        """Copy with `scale` times the firings per beam (512-, 1024- and 2048-column modes)."""
        return replace(self, columns=max(round(self.columns * scale), 8))

    def jittered(self, rng: np.random.Generator) -> LidarSensor:
        """Another unit of this model: its own beam calibration and noise level."""
        return replace(self, range_sigma=self.range_sigma * rng.uniform(0.8, 1.25),
                       unit_seed=int(rng.integers(2 ** 31)))

    def beam_directions(self, rng: np.random.Generator) -> np.ndarray:
        """(height, width, 3) unit rays in the sensor frame, in the published point order.

        The rosette's phase comes from `rng`: each frame covers new directions.
        """
        unit = np.random.default_rng(self.unit_seed)
        if self.pattern == 'spinning':
            elevation = np.linspace(*self.elevation, self.rows)[::-1]   # ring 0 = top beam
            elevation = elevation + unit.normal(0.0, self.beam_tilt, self.rows)
            offsets = np.resize(np.asarray(self.stagger or (0.0,)), self.rows)
            # column 0 looks backwards and the head turns clockwise seen from above, as the
            # Ouster and Velodyne frames have it
            encoder = 180.0 - 360.0 * np.arange(self.columns) / self.columns
            azimuth = np.radians(encoder[None, :] + offsets[:, None])
            elevation = np.radians(np.broadcast_to(elevation[:, None], azimuth.shape))
            return np.stack([np.cos(elevation) * np.cos(azimuth),
                             np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], -1)
        # Rosette (Livox): each line sweeps a rose curve about the forward axis; an irrational
        # ratio of the two frequencies never closes the curve, so coverage grows frame by frame.
        half_field = np.radians(self.elevation[1])
        t = rng.uniform(0.0, 1e4) + np.arange(self.columns) * 2e-3
        line = np.arange(self.rows)[:, None] * (2 * np.pi / self.rows)
        off_axis = half_field * np.abs(np.sin(7.0 * t[None, :] + line))
        around = (1.0 + (5 ** 0.5 - 1) / 2) * t[None, :] + line
        rays = np.stack([np.cos(off_axis), np.sin(off_axis) * np.cos(around),
                         np.sin(off_axis) * np.sin(around)], -1)
        return rays.reshape(1, -1, 3)

    def beam_biases(self) -> np.ndarray:
        """(height, width) constant range offset of each beam of this unit."""
        unit = np.random.default_rng([self.unit_seed, 1])
        bias = unit.normal(0.0, self.beam_bias, self.rows)
        return np.repeat(bias, self.columns).reshape(self.height, self.width)


LIDARS: dict[str, LidarSensor] = {s.name: s for s in (
    # Ouster rev. 6 data sheets: OS0 90 deg vertical field, OS1 45 deg, OS2 22.5 deg; range
    # precision of a few centimetres and a near blind zone of tens of centimetres.
    LidarSensor(name='ouster_os0_32', rows=32, columns=1024, elevation=(-45.0, 45.0),
                min_range=0.3, max_range=50.0, range_sigma=0.015, beam_bias=0.005,
                beam_tilt=0.05, stagger=OUSTER_STAGGER),
    LidarSensor(name='ouster_os1_64', rows=64, columns=1024, elevation=(-22.5, 22.5),
                min_range=0.5, max_range=120.0, range_sigma=0.01, beam_bias=0.005,
                beam_tilt=0.03, stagger=OUSTER_STAGGER),
    LidarSensor(name='ouster_os0_128', rows=128, columns=1024, elevation=(-45.0, 45.0),
                min_range=0.3, max_range=50.0, range_sigma=0.015, beam_bias=0.005,
                beam_tilt=0.05, stagger=OUSTER_STAGGER),
    # Velodyne VLP-16: 16 beams 2 deg apart over +-15 deg, 0.2 deg azimuth steps at 10 Hz,
    # +-3 cm accuracy; its intensity is calibrated reflectivity (0-100 diffuse).
    LidarSensor(name='velodyne_vlp16', rows=16, columns=1800, elevation=(-15.0, 15.0),
                min_range=0.4, max_range=100.0, range_sigma=0.015, beam_bias=0.01,
                beam_tilt=0.05, fields=('intensity', 'ring'), calibrated_intensity=True),
    # Livox-style non-repetitive rosette: 6 lines, a 35 deg half field, 24 000 points per
    # 100 ms frame, 2 cm precision and a blind zone up to about 1 m.
    LidarSensor(name='livox_rosette', rows=6, columns=4000, elevation=(0.0, 35.0),
                min_range=0.8, max_range=200.0, range_sigma=0.02, beam_bias=0.005,
                beam_tilt=0.0, pattern='rosette', random_dropout=0.005,
                fields=('intensity', 'line'), calibrated_intensity=True),
)}


def _row_neighbour_ranges(r: np.ndarray) -> np.ndarray:
    """(2, H, W) range of each return's left and right neighbour in its row (self at ends)."""
    p = np.pad(r, ((0, 0), (1, 1)), mode='edge')
    return np.stack([p[:, :-2], p[:, 2:]])


def render_lidar(scene: o3d.t.geometry.RaycastingScene, sensor: LidarSensor,
                 pose: np.ndarray, rng: np.random.Generator, surface_reflectivity: np.ndarray,
                 first_triangle: np.ndarray, noise: bool = True,
                 dropout: bool = True) -> Frame:
    """Cast one scan of `sensor` at `pose` (4 x 4 sensor-to-world) into `scene`.

    surface_reflectivity holds the reflectivity (0-1) of every triangle of the scene, those of
    geometry g from first_triangle[g] on: it sets the intensity and whether a weak return comes
    back. noise: range noise, beam biases, mixed returns at edges; dropout: lost returns.
    """
    rays_sensor = sensor.beam_directions(rng).astype(np.float32)
    h, w = rays_sensor.shape[:2]
    rot = pose[:3, :3].astype(np.float32)
    origin = pose[:3, 3].astype(np.float32)
    rays_world = rays_sensor @ rot.T
    hit, gid = cast_rays(scene, origin, rays_world)
    seen = gid != INVALID
    true_range = np.where(seen, hit['t_hit'].numpy(), 0.0).astype(np.float32)
    normals = hit['primitive_normals'].numpy()
    primitives = np.where(seen, hit['primitive_ids'].numpy().astype(np.int64), 0)
    triangle = first_triangle[np.maximum(gid, 0)] + primitives
    reflectivity = np.where(seen, surface_reflectivity[triangle], 0.0).astype(np.float32)
    cos_inc = np.abs((normals * rays_world).sum(-1))
    signal = reflectivity * cos_inc / np.maximum(true_range, 0.1) ** 2
    valid = seen & (true_range >= sensor.min_range) & (true_range <= sensor.max_range)
    if dropout:
        keep = ((signal >= sensor.min_signal)
                & (cos_inc >= np.cos(np.radians(sensor.max_incidence)))
                & (rng.random((h, w), dtype=np.float32) >= sensor.random_dropout))
        valid &= keep

    measured = true_range.copy()
    if noise:
        measured += rng.standard_normal((h, w), dtype=np.float32) * sensor.range_sigma
        measured += sensor.beam_biases().astype(np.float32)
        if sensor.pattern == 'spinning':
            # the beam's footprint straddles an edge: the return averages both surfaces
            far = _row_neighbour_ranges(np.where(valid, true_range, 0.0)).max(0)
            mixed = valid & (far - true_range > sensor.edge_jump * true_range)
            mixed &= rng.random((h, w), dtype=np.float32) < sensor.mixed_returns
            measured[mixed] += rng.random(int(mixed.sum()), dtype=np.float32) \
                * (far - true_range)[mixed]
        measured = np.round(measured / sensor.range_resolution) * sensor.range_resolution
    measured = np.where(valid, np.maximum(measured, 0.0), 0.0).astype(np.float32)
    xyz = rays_sensor * measured[..., None]
    fields = lidar_fields(sensor, valid, measured, reflectivity, signal, rng, noise)
    return Frame(xyz=xyz.reshape(-1, 3).astype(np.float32), valid=valid.ravel(),
                 geometry_ids=gid.ravel(), normals=normals.reshape(-1, 3),
                 primitive_ids=primitives.ravel(), fields=fields)


def lidar_fields(sensor: LidarSensor, valid: np.ndarray, measured: np.ndarray,
                 reflectivity: np.ndarray, signal: np.ndarray, rng: np.random.Generator,
                 noise: bool) -> dict[str, np.ndarray]:
    """Return the driver's per-point fields of an (H, W) scan, flattened; 0 where no return.

    reflectivity: uint16, 100 for a white Lambertian target (Ouster's calibrated scale);
    intensity: float32, that scale too where `calibrated_intensity`, else signal counts;
    ring / line: uint16 beam (row) or rosette line; range: uint32 mm.
    """
    h, w = valid.shape
    spread = (1.0 + 0.1 * rng.standard_normal((2, h, w), dtype=np.float32) if noise
              else np.ones((2, h, w), dtype=np.float32))
    calibrated = np.where(valid, np.clip(np.round(100.0 * reflectivity * spread[1]), 0, 255), 0)
    intensity = (calibrated if sensor.calibrated_intensity else
                 np.where(valid, np.clip(INTENSITY_GAIN * signal * spread[0], 0.0, 65535.0), 0))
    # both patterns publish beam (or line) after beam, each with all its firings
    beam = np.repeat(np.arange(sensor.rows, dtype=np.uint16), sensor.columns)
    every = {'intensity': intensity.astype(np.float32).ravel(),
             'reflectivity': calibrated.astype(np.uint16).ravel(), 'ring': beam, 'line': beam,
             'range': np.where(valid, np.round(measured * 1000.0), 0).astype(np.uint32).ravel()}
    return {name: every[name] for name in sensor.fields}
