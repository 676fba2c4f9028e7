"""Procedural tabletop and room scenes rendered through a virtual depth camera.

The training data of the instance-embedding network and of the 3D-text alignment: each scene
is laid out from primitives (world frame z up, floor at z = 0), seen by a randomly posed
RGB-D sensor with that sensor's artefacts, and labelled per point with instance ids, plus
category, colour, size word and what it rests on per instance.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import open3d as o3d

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.data import meshes
from segvec3d_ros.data.lidar import LIDARS, LidarSensor, render_lidar
from segvec3d_ros.data.sensor import SENSORS, DepthSensor, Frame, render_depth

KINDS = ('tabletop', 'room')
CATEGORIES = ('box', 'can', 'bottle', 'bowl', 'mug', 'ball', 'book', 'cup', 'plate', 'carton',
              'jar', 'toy')
# Lying on their side (bottles, cans, cartons) or upside down (bowls, cups) this often.
LYING = {'bottle': 0.3, 'can': 0.25, 'carton': 0.2, 'cup': 0.15}
UPSIDE_DOWN = {'bowl': 0.25, 'cup': 0.2}
STACKABLE = ('box', 'book')     # flat tops that can carry another box or book
MAX_STACK = 3                   # objects in one stack, the lowest included

PALETTE: dict[str, tuple[int, int, int]] = {
    'red': (200, 35, 35), 'green': (45, 150, 60), 'blue': (35, 75, 190),
    'yellow': (235, 205, 45), 'orange': (240, 125, 30), 'purple': (120, 55, 150),
    'pink': (240, 140, 180), 'white': (235, 235, 230), 'black': (30, 30, 32),
    'gray': (130, 130, 130), 'brown': (125, 80, 45), 'beige': (215, 195, 160),
}
OBJECT_COLOURS = tuple(c for c in PALETTE if c != 'beige')
FURNITURE_COLOURS: dict[str, tuple[str, ...]] = {
    'table': ('brown', 'beige', 'white', 'gray', 'black'),
    'floor': ('gray', 'brown', 'beige'),
    'wall': ('white', 'beige', 'gray'),
    'ceiling': ('white',),
    'chair': ('black', 'gray', 'blue', 'red', 'brown'),
    'cabinet': ('white', 'gray', 'brown', 'beige'),
    'shelf': ('brown', 'white', 'black', 'beige'),
}
# largest extent (m) below which an instance is 'small' and above which it is 'large'
SIZE_THRESHOLDS: dict[str, tuple[float, float]] = {
    'box': (0.12, 0.22), 'can': (0.10, 0.15), 'bottle': (0.20, 0.27), 'bowl': (0.14, 0.21),
    'mug': (0.11, 0.135), 'ball': (0.10, 0.18), 'book': (0.18, 0.25), 'cup': (0.08, 0.11),
    'plate': (0.2, 0.26), 'carton': (0.2, 0.26), 'jar': (0.1, 0.14), 'toy': (0.09, 0.15),
    'table': (1.2, 1.6),
    'chair': (0.85, 0.95), 'cabinet': (0.9, 1.5), 'shelf': (1.1, 1.6),
}
# IR-absorbing and glossy surfaces lose many more returns on real sensors
DARK_DROPOUT_GAIN = 4.0
GLOSSY_DROPOUT_GAIN = {'bottle': 4.0, 'jar': 3.0, 'can': 2.0}
# Non-objects that are no support either: a robot arm in view is background, like a wall.
BACKGROUND = ('robot',)
ROBOT_COLOURS = ('gray', 'white', 'black', 'orange', 'blue')


@dataclass
class SceneConfig:
    """What `generate_scene` draws from; the defaults give varied training scenes."""

    sensors: tuple[str, ...] = tuple(SENSORS)   # one drawn per scene; LIDARS' names too
    image_scale: float = 1.0                    # 0.25 gives 160 x 120 Kinect frames; LiDAR:
    # the firings per beam
    num_objects: tuple[int, int] = (2, 20)      # tabletop objects, inclusive range
    objects_per_table: tuple[int, int] = (1, 5)  # room scenes
    categories: tuple[str, ...] = CATEGORIES
    stack_prob: float = 0.2                     # a box or book goes on another one
    touch_prob: float = 0.3                     # an object goes right beside another one
    lean_prob: float = 0.3                      # a book or plate leans against an object
    floor_prob: float = 0.7                     # tabletop: floor under the table
    wall_prob: float = 0.5                      # tabletop: wall behind the table
    clutter_prob: float = 0.5                   # tabletop: a second table, shelf or chairs
    robot_prob: float = 0.3                     # tabletop: a robot arm reaching into view
    hold_prob: float = 0.5                      # ... holding an object in the air
    noise: bool = True                          # depth noise, quantisation, colour noise
    dropout: bool = True                        # missing returns of every kind
    max_depth: float | None = None              # crop beyond this z, e.g. to match a dataset


@dataclass
class SceneObject:
    """One instance of a scene; supports (tables, floor, walls) included."""

    instance_id: int
    category: str
    color_name: str
    rgb: tuple[int, int, int]
    size: np.ndarray                # (3,) extent in m along the object's x, y and up
    is_support: bool                # support surface or background: table, floor, wall
    on_top_of: int | None           # instance it rests on (table or another object)
    size_word: str                  # 'small', 'large' or '' for its category
    center: np.ndarray              # (3,) world-frame centre of its bounding box
    yaw: float                      # rad about world z
    num_points: int                 # valid points it got in the frame


@dataclass
class Scene:
    """A rendered frame with its per-point labels."""

    cloud: Cloud                    # organized H x W, xyz float32 with NaN holes, rgb uint8;
    # LiDAR: no rgb, no-echo returns at 0, the driver's fields in `extra`
    instance_ids: np.ndarray        # (H*W,) int64, 0 = no return
    part_ids: np.ndarray            # (H*W,) int64 part of its instance: 0 the body (and no
    # return), 1, 2... a cap, a lid, a label band, a toy's pieces
    objects: list[SceneObject]      # includes support surfaces (is_support=True)
    camera_pose: np.ndarray         # (4, 4) camera (optical frame; LiDAR: REP 103) to world
    intrinsics: np.ndarray | None   # (3, 3); None for a LiDAR
    kind: str
    sensor: str


def generate_scene(seed: int, kind: str = 'tabletop', config: SceneConfig | None = None) -> Scene:
    """Lay out and render the scene `seed` of `kind` ('tabletop' or 'room')."""
    if kind not in KINDS:
        raise ValueError(f'unknown scene kind {kind!r}, expected one of {KINDS}')
    config = config or SceneConfig()
    # separate streams: switching noise or dropout off leaves layout and camera unchanged
    layout_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(layout_seq)
    builder = _Builder(rng, config)
    aim = builder.tabletop() if kind == 'tabletop' else builder.room()
    name = config.sensors[rng.integers(len(config.sensors))]
    if name not in SENSORS and name not in LIDARS:
        raise ValueError(f'unknown sensor {name!r}, expected one of {(*SENSORS, *LIDARS)}')
    sensor = (SENSORS.get(name) or LIDARS[name]).scaled(config.image_scale).jittered(rng)
    if config.max_depth is not None:
        sensor = replace(sensor, max_range=min(sensor.max_range, config.max_depth))
    pose = (builder.lidar_pose(aim, sensor) if isinstance(sensor, LidarSensor)
            else builder.camera_pose(aim))
    return builder.render(sensor, pose, np.random.default_rng(noise_seq), kind)


# ----------------------------------------------------------------------------- layout

def _rotation(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


def _corners(lo: np.ndarray, hi: np.ndarray, xy: np.ndarray, yaw: float) -> np.ndarray:
    """(4, 2) world corners of the local rectangle [lo, hi] placed at xy with yaw."""
    local = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    return local @ _rotation(yaw).T + xy


def _overlaps(poly: np.ndarray, others: list[np.ndarray]) -> bool:
    """Whether convex quad `poly` (4, 2) overlaps any of `others` (separating axis test)."""
    if not others:
        return False
    b = np.stack(others)                                        # (K, 4, 2)
    a = np.broadcast_to(poly, b.shape)
    edges = np.concatenate([np.roll(a, -1, 1) - a, np.roll(b, -1, 1) - b], 1)
    axes = np.stack([-edges[..., 1], edges[..., 0]], -1)        # (K, 8, 2)
    pa = np.einsum('kpi,kai->kap', a, axes)
    pb = np.einsum('kpi,kai->kap', b, axes)
    separated = (pa.max(-1) <= pb.min(-1)) | (pb.max(-1) <= pa.min(-1))
    return bool((~separated.any(1)).any())


@dataclass
class _Surface:
    """A horizontal rectangle objects can stand on: a table top, the floor, a box lid."""

    instance_id: int
    center: np.ndarray              # (2,) world xy
    yaw: float
    half: np.ndarray                # (2,) half extents along its own x and y
    z: float
    level: int = 0                  # objects below it in a stack
    footprints: list[np.ndarray] = field(default_factory=list)
    yaws: list[float] = field(default_factory=list)

    def contains(self, poly: np.ndarray, margin: float) -> bool:
        local = (poly - self.center) @ _rotation(self.yaw)
        return bool((np.abs(local) <= self.half - margin).all())


@dataclass
class _Aim:
    """Where the camera of a scene kind looks from: ranges around a target point."""

    target: np.ndarray              # (3,) world point the camera looks at
    azimuth: tuple[float, float]    # deg, 0 = from -y (the front of a tabletop's table)
    distance: tuple[float, float]   # m, eye to target
    elevation: tuple[float, float]  # deg above the horizontal


@dataclass
class _Item:
    """An instance while the scene is being built: world-frame mesh plus its labels."""

    category: str
    color_name: str
    rgb: tuple[int, int, int]
    vertices: np.ndarray
    triangles: np.ndarray
    triangle_parts: np.ndarray      # (T,) part of each triangle; part 0 has the item's colour
    part_rgbs: np.ndarray           # (P, 3) colour of each part
    size: np.ndarray
    yaw: float
    is_support: bool
    on_top_of: int | None
    dropout_gain: float


def _sample_object(category: str, rng: np.random.Generator) -> meshes.Parts:
    """Parts of one tabletop object of `category` with realistic random dimensions and pose.

    Part 0 is the body; caps, lids, labels and a toy's pieces come after it.
    """
    u = rng.uniform
    if category == 'box':
        # cereal and cracker boxes are thin, tea boxes cubes, shoe boxes long and flat
        parts = [meshes.box(*np.exp(u(np.log(0.03), np.log(0.3), 3)))]
    elif category == 'can':
        radius = u(0.025, 0.055)
        height = u(0.04, 0.09) if rng.random() < 0.3 else u(0.08, 0.20)   # tins, cans
        parts = meshes.tin(radius, height, label=rng.random() < 0.6)
    elif category == 'bottle':
        shape = rng.random()
        if shape < 0.6:
            parts = meshes.capped_bottle(u(0.025, 0.045), u(0.15, 0.33), rng.random() < 0.5)
        elif shape < 0.8:
            parts = meshes.squeeze_bottle(u(0.03, 0.045), u(0.14, 0.24), u(0.45, 0.7))
        else:
            parts = meshes.spray_bottle(u(0.035, 0.05), u(0.2, 0.3))
    elif category == 'bowl':
        radius = u(0.05, 0.13)
        parts = [meshes.bowl(radius, radius * u(0.4, 0.65))]
    elif category == 'mug':
        parts = [meshes.mug(u(0.035, 0.05), u(0.07, 0.12))]
    elif category == 'ball':
        parts = [meshes.ball(u(0.03, 0.12))]
    elif category == 'book':
        width = u(0.13, 0.30)
        parts = [meshes.box(width, width * u(0.65, 0.8), u(0.01, 0.06))]
    elif category == 'cup':
        parts = meshes.cup(u(0.03, 0.05), u(0.06, 0.13), u(0.65, 0.85))
    elif category == 'plate':
        parts = meshes.plate(u(0.08, 0.14), u(0.012, 0.03))
    elif category == 'carton':
        width = u(0.06, 0.1)
        parts = meshes.carton(width, width * u(0.6, 1.0), u(0.12, 0.25), rng.random() < 0.5)
    elif category == 'jar':
        parts = meshes.jar(u(0.03, 0.06), u(0.07, 0.16))
    elif category == 'toy':
        parts = meshes.toy(int(rng.integers(3)), u(0.06, 0.16), rng)
    else:
        raise ValueError(f'unknown object category {category!r}')
    if rng.random() < LYING.get(category, 0.0):
        return meshes.lying(parts, rng)
    if rng.random() < UPSIDE_DOWN.get(category, 0.0):
        return meshes.upside_down(parts)
    return parts


def _rotation_about(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """3 x 3 rotation by `angle` (rad) about the unit `axis` (Rodrigues)."""
    k = np.asarray(axis, dtype=float)
    k /= np.linalg.norm(k)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _look_at(eye: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """Camera-to-world pose of an optical frame (x right, y down, z forward) at eye."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([c * right + s * down, -s * right + c * down, forward], 1)
    pose[:3, 3] = eye
    return pose


class _Builder:
    """Collects the instances of one scene, then renders them."""

    def __init__(self, rng: np.random.Generator, config: SceneConfig) -> None:
        self.rng = rng
        self.config = config
        self.items: list[_Item] = []
        self.eye_keepout: list[np.ndarray] = []     # floor footprints the camera must avoid
        self.room_half: np.ndarray | None = None

    # -- instances

    def _rgb(self, color_name: str) -> tuple[int, int, int]:
        """One unit's colour of the named colour: paints and prints vary."""
        return tuple(int(c) for c in np.clip(
            np.add(PALETTE[color_name], self.rng.integers(-12, 13, 3)), 0, 255))

    def add(self, category: str, parts: o3d.geometry.TriangleMesh | meshes.Parts,
            xyz: np.ndarray, yaw: float, color_name: str | None = None,
            is_support: bool = False, on_top_of: int | None = None,
            rotation: np.ndarray | None = None) -> int:
        """Add `parts` (local frame) at world position xyz with yaw; returns the instance id.

        The first part has the instance's colour, every other part one of its own. `rotation`
        (3 x 3), when given, replaces the yaw's: a held or leaning object.
        """
        rng = self.rng
        if color_name is None:
            palette = (ROBOT_COLOURS if category in BACKGROUND
                       else FURNITURE_COLOURS.get(category, OBJECT_COLOURS))
            color_name = palette[rng.integers(len(palette))]
        mesh, owner = meshes.merge_parts(parts if isinstance(parts, list) else [parts])
        part_rgbs = np.array([self._rgb(color_name)] + [
            self._rgb(OBJECT_COLOURS[rng.integers(len(OBJECT_COLOURS))])
            for _ in range(int(owner.max(initial=0)))], dtype=np.float32)
        local = np.asarray(mesh.vertices)
        rot = np.eye(3)
        rot[:2, :2] = _rotation(yaw)
        if rotation is not None:
            rot = rotation
        gain = (DARK_DROPOUT_GAIN if color_name == 'black' else 1.0) \
            * GLOSSY_DROPOUT_GAIN.get(category, 1.0)
        self.items.append(_Item(
            category=category, color_name=color_name, rgb=tuple(int(c) for c in part_rgbs[0]),
            vertices=local @ rot.T + xyz, triangles=np.asarray(mesh.triangles),
            triangle_parts=owner, part_rgbs=part_rgbs,
            size=local.max(0) - local.min(0), yaw=float(yaw), is_support=is_support,
            on_top_of=on_top_of, dropout_gain=gain))
        return len(self.items)

    def place(self, surface: _Surface, category: str,
              mesh: o3d.geometry.TriangleMesh | meshes.Parts | None = None,
              touching: bool = False,
              yaw_step: float | None = None, margin: float = 0.01, tries: int = 30) -> int | None:
        """Stand an object of `category` on `surface` without interpenetration.

        touching puts it right beside an object already there; yaw_step quantises the yaw
        (furniture stands square to the room). Returns the instance id, or None if no spot fits.
        """
        rng = self.rng
        mesh = mesh if mesh is not None else _sample_object(category, rng)
        local = np.concatenate([np.asarray(m.vertices)
                                for m in (mesh if isinstance(mesh, list) else [mesh])])
        lo, hi = local[:, :2].min(0), local[:, :2].max(0)
        for _ in range(tries):
            if touching and surface.footprints:
                xy, yaw = self._beside(surface, lo, hi)
            else:
                yaw = rng.uniform(0, 2 * np.pi) if yaw_step is None else \
                    surface.yaw + yaw_step * rng.integers(4) + rng.normal(0, np.radians(3))
                # draw the position among those that keep the footprint on the surface
                own = _corners(lo, hi, np.zeros(2), yaw - surface.yaw)
                low, high = -surface.half + margin - own.min(0), surface.half - margin - own.max(0)
                if (low > high).any():
                    continue
                xy = surface.center + _rotation(surface.yaw) @ rng.uniform(low, high)
            poly = _corners(lo, hi, xy, yaw)
            if surface.contains(poly, margin) and not _overlaps(poly, surface.footprints):
                surface.footprints.append(poly)
                surface.yaws.append(yaw)
                return self.add(category, mesh, np.array([*xy, surface.z]), yaw,
                                on_top_of=surface.instance_id)
        return None

    def _beside(self, surface: _Surface, lo: np.ndarray, hi: np.ndarray
                ) -> tuple[np.ndarray, float]:
        """Pose whose footprint [lo, hi] faces one side of a random neighbour, 0.5-3 mm off."""
        rng = self.rng
        k = rng.integers(len(surface.footprints))
        frame = surface.yaws[k] + np.pi / 2 * rng.integers(4)
        yaw = frame + np.pi / 2 * rng.integers(4)
        nb = surface.footprints[k] @ _rotation(frame)           # neighbour in the frame
        own = _corners(lo, hi, np.zeros(2), yaw - frame)        # own footprint in the frame
        nb_lo, nb_hi, own_lo, own_hi = nb.min(0), nb.max(0), own.min(0), own.max(0)
        x = nb_hi[0] - own_lo[0] + rng.uniform(0.0005, 0.003)
        slack = 0.3 * min(nb_hi[1] - nb_lo[1], own_hi[1] - own_lo[1])
        y = rng.uniform(nb_lo[1] - own_hi[1] + slack, nb_hi[1] - own_lo[1] - slack)
        return _rotation(frame) @ np.array([x, y]), yaw

    def objects_on(self, table: _Surface, count: int) -> None:
        """Put `count` objects on `table`: some stacked, some touching, the rest free."""
        rng, config = self.rng, self.config
        stacks: list[_Surface] = []
        for _ in range(count):
            category = config.categories[rng.integers(len(config.categories))]
            free = [s for s in stacks if not s.footprints and s.level < MAX_STACK]
            if category in STACKABLE and free and rng.random() < config.stack_prob:
                base = free[rng.integers(len(free))]
                iid = self._stack_on(base, category)
                surface = base
            else:
                touching = rng.random() < config.touch_prob
                iid = self.place(table, category, touching=touching)
                surface = table
            if iid is not None and category in STACKABLE:
                stacks.append(self._lid(iid, surface))
        if table.footprints and rng.random() < config.lean_prob:
            for _ in range(6):      # sides of crowded objects are often taken
                if self._lean_on(table, int(rng.integers(len(table.footprints)))):
                    break

    def _lean_on(self, table: _Surface, k: int) -> bool:
        """Lean a book or plate against one side of the k-th object standing on `table`.

        Its bottom edge stands on the table, its top rests on the object's face, tilted 10-35
        degrees from upright; nothing is added (False) when its footprint would overlap another's.
        """
        rng = self.rng
        u = rng.uniform
        frame = table.yaws[k] + np.pi / 2 * rng.integers(4)
        neighbour = table.footprints[k] @ _rotation(frame)       # its corners in that frame
        face, centre_y = neighbour[:, 0].max(), neighbour[:, 1].mean()
        category = 'book' if rng.random() < 0.7 else 'plate'
        tilt = np.radians(u(10.0, 35.0))
        if category == 'book':
            tall, wide, thick = u(0.15, 0.3), u(0.1, 0.22), u(0.01, 0.05)
            parts = [meshes.box(thick, wide, tall)]
        else:
            radius = u(0.08, 0.13)
            tall, wide, thick = 2 * radius, 2 * radius, u(0.012, 0.025)
            parts = meshes.plate(radius, thick)
            parts[0].rotate(parts[0].get_rotation_matrix_from_xyz((0.0, np.pi / 2, 0.0)),
                            center=(0, 0, 0))
            parts = meshes.on_ground(parts)   # standing on its rim, facing x
        # about the face's axis: top towards the object (-x), bottom edge on the table
        c, s = np.cos(tilt), np.sin(tilt)
        rotation = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        x = face + 0.002 + tall * s + thick / 2 * c
        corners = np.array([[x - tall * s - thick / 2 * c, centre_y - wide / 2],
                            [x + thick / 2 * c, centre_y + wide / 2]])
        poly = _corners(corners[0], corners[1], np.zeros(2), 0.0) @ _rotation(frame).T
        others = [f for i, f in enumerate(table.footprints) if i != k]
        if not table.contains(poly, 0.0) or _overlaps(poly, others):
            return False
        world = np.eye(3)
        world[:2, :2] = _rotation(frame)
        xy = _rotation(frame) @ np.array([x, centre_y])
        self.add(category, parts, np.array([*xy, table.z + thick / 2 * s]), frame,
                 on_top_of=table.instance_id, rotation=world @ rotation)
        table.footprints.append(poly)
        table.yaws.append(frame)
        return True

    def _stack_on(self, base: _Surface, category: str) -> int | None:
        """Add a box or book smaller than `base`, resting on it."""
        u = self.rng.uniform
        width, depth = 2 * base.half * u(0.5, 0.95, 2)
        height = u(0.03, 0.25) if category == 'box' else u(0.01, 0.06)
        return self.place(base, category, mesh=meshes.box(width, depth, height),
                          yaw_step=0.0, margin=0.0)

    def _lid(self, iid: int, below: _Surface) -> _Surface:
        """Top of instance `iid` as a surface for stacking."""
        item = self.items[iid - 1]
        top = item.vertices.max(0)
        return _Surface(instance_id=iid, center=(item.vertices.min(0)[:2] + top[:2]) / 2,
                        yaw=item.yaw, half=item.size[:2] / 2, z=float(top[2]),
                        level=below.level + 1)

    # -- scene kinds

    def tabletop(self) -> _Aim:
        """Build a table with objects, maybe floor and a wall behind; returns the camera aim."""
        rng, config = self.rng, self.config
        width, depth, height = rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.78)
        table_half = np.array([width, depth]) / 2
        table_id = self.add('table', meshes.table(width, depth, height), np.zeros(3), 0.0,
                            is_support=True)
        wall = rng.random() < config.wall_prob
        floor_id = None
        if rng.random() < config.floor_prob:
            floor_id = self.add('floor', meshes.box(8.0, 8.0, 0.02, z=-0.02), np.zeros(3), 0.0,
                                is_support=True)
        wall_y = depth / 2 + 0.05 + rng.uniform(0.0, 0.3)
        if wall:
            self.add('wall', meshes.box(8.0, 0.1, 2.6), np.array([0, wall_y, 0]), 0.0,
                     is_support=True)
        # furniture around the table stays within a few metres of it, in front of the wall
        floor = _Surface(floor_id or table_id, np.zeros(2), 0.0,
                         np.array([2.5, wall_y if wall else 2.5]), 0.0)
        floor.footprints.append(_corners(-table_half, table_half, np.zeros(2), 0.0))
        floor.yaws.append(0.0)
        if rng.random() < config.clutter_prob:
            self._surroundings(floor, _Surface(table_id, np.zeros(2), 0.0, table_half, height))
        self.eye_keepout = floor.footprints[1:]
        # objects crowd a workspace the camera is aimed at, as in tabletop datasets; it grows
        # with their number so that most of them still fit
        count = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
        half = (np.array([rng.uniform(0.25, 0.5), rng.uniform(0.2, 0.35)])
                * max(1, count / 8) ** 0.5)
        half = np.minimum(half, table_half - 0.02)
        centre = rng.uniform(half - table_half, table_half - half)
        self.objects_on(_Surface(table_id, centre, 0.0, half, height), count)
        if rng.random() < config.robot_prob:
            self._robot_arm(np.array([*centre, height]), half)
        # from nearly top-down to low and oblique, as wrist, head and fixed cameras see tables
        return _Aim(np.array([*centre, height]), (-60.0, 60.0) if wall else (-180.0, 180.0),
                    (0.4, 1.6), (15.0, 88.0))

    def _surroundings(self, floor: _Surface, table: _Surface) -> None:
        """Furniture around the table: a second table with objects, a shelf, chairs."""
        rng = self.rng
        u = rng.uniform
        if rng.random() < 0.5:
            w, d, h = u(0.6, 1.6), u(0.5, 0.9), u(0.45, 0.9)
            placed = self._furniture(floor, 'table', meshes.table(w, d, h))
            if placed is not None:
                second = _Surface(*placed, np.array([w, d]) / 2 - 0.03, h)
                self.objects_on(second, int(rng.integers(0, 5)))
        if rng.random() < 0.4:
            w, d, h = u(0.5, 1.0), u(0.25, 0.4), u(0.8, 1.9)
            levels = int(rng.integers(2, 5))
            placed = self._furniture(floor, 'shelf', meshes.shelf(w, d, h, levels))
            if placed is not None:
                for board_z in np.linspace(0.0, h - 0.02, levels + 1)[1:-1] + 0.02:
                    board = _Surface(*placed, np.array([w, d]) / 2 - 0.04, float(board_z))
                    self.objects_on(board, int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(0, 3))):
            self._chair_at(floor, table)

    def _furniture(self, floor: _Surface, category: str, mesh: o3d.geometry.TriangleMesh
                   ) -> tuple[int, np.ndarray, float] | None:
        """Place support furniture on `floor`; its instance id, footprint centre and yaw."""
        iid = self.place(floor, category, mesh, yaw_step=np.pi / 2, margin=0.05)
        if iid is None:
            return None
        item = self.items[iid - 1]
        item.is_support = True
        return iid, (item.vertices.min(0) + item.vertices.max(0))[:2] / 2, item.yaw

    def _robot_arm(self, workspace: np.ndarray, half: np.ndarray) -> None:
        """Add a robot arm reaching down into the view, its gripper maybe holding an object.

        The arm is background (like a wall); an object in its fingers is an object, which
        must come out apart from the fingers that touch it.
        """
        rng = self.rng
        u = rng.uniform
        held: meshes.Parts | None = None
        category = ''
        if rng.random() < self.config.hold_prob:
            category = ('bottle', 'can', 'box', 'cup', 'carton', 'toy')[rng.integers(6)]
            held = _sample_object(category, rng)
        held_width = 0.04
        held_height = 0.0
        if held is not None:
            vertices = np.concatenate([np.asarray(p.vertices) for p in held])
            extent = vertices.max(0) - vertices.min(0)
            held_width = float(min(extent[0], extent[1]))
            held_height = float(extent[2])
        # gripper frame: tool axis -z, fingertips at the origin, fingers along +-x
        finger = 0.012
        opening = held_width / 2 + finger / 2
        parts = [meshes.box(finger, 0.025, 0.07, x=sx * opening, z=0.0) for sx in (-1, 1)]
        parts.append(meshes.box(2 * opening + 2 * finger, 0.05, 0.04, z=0.07))
        link_r = u(0.03, 0.05)
        forearm = u(0.2, 0.45)
        parts.append(meshes.lathe(np.array([0.0, link_r, link_r, 0.0]),
                                  np.array([0.11, 0.11, 0.11 + forearm, 0.11 + forearm])))
        tilt = u(0.0, np.radians(50))
        heading = u(0, 2 * np.pi)
        rotation = _rotation_about((np.cos(heading), np.sin(heading), 0.0), tilt)
        lift = held_height + 0.02 if held is not None else u(0.02, 0.3)
        tip = workspace + np.array([*(u(-1, 1, 2) * half), lift + u(0.0, 0.15)])
        self.add('robot', [meshes.merge(parts)], tip, 0.0, is_support=True, rotation=rotation)
        if held is not None:
            # upright in the gripper, its top 4 cm between the fingertips
            offset = rotation @ np.array([0.0, 0.0, -held_height + 0.04])
            self.add(category, held, tip + offset, 0.0, rotation=rotation)

    def room(self) -> _Aim:
        """Build a room with furniture and objects on its tables; returns the camera aim."""
        rng, config = self.rng, self.config
        half = np.array([rng.uniform(2.0, 4.0), rng.uniform(1.75, 3.0)])
        ceiling, thick = rng.uniform(2.5, 3.0), 0.1
        self.room_half = half
        floor_id = self.add('floor', meshes.box(*(2 * half), 0.02, z=-0.02), np.zeros(3), 0.0,
                            is_support=True)
        self.add('ceiling', meshes.box(*(2 * half), 0.02), np.array([0, 0, ceiling]), 0.0,
                 is_support=True)
        wall_colour = FURNITURE_COLOURS['wall'][rng.integers(len(FURNITURE_COLOURS['wall']))]
        for axis in range(4):
            along = half[(axis + 1) % 2]
            normal = _rotation(axis * np.pi / 2) @ np.array([1.0, 0.0])
            offset = half[axis % 2] + thick / 2
            self.add('wall', meshes.box(thick, 2 * along + 2 * thick, ceiling),
                     np.array([*(normal * offset), 0.0]), axis * np.pi / 2,
                     color_name=wall_colour, is_support=True)
        floor = _Surface(floor_id, np.zeros(2), 0.0, half, 0.0)

        tables: list[_Surface] = []
        for _ in range(rng.integers(1, 4)):
            w, d, h = rng.uniform(1.0, 2.0), rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.78)
            placed = self._furniture(floor, 'table', meshes.table(w, d, h))
            if placed is not None:
                tables.append(_Surface(*placed, np.array([w, d]) / 2, h))
        for category in (['cabinet'] * int(rng.integers(1, 4))
                         + ['shelf'] * int(rng.integers(1, 3))):
            self._against_wall(floor, category)
        for table in tables:
            for _ in range(rng.integers(0, 5)):
                self._chair_at(floor, table)
        self.eye_keepout = floor.footprints
        for table in tables:
            self.objects_on(table, int(rng.integers(config.objects_per_table[0],
                                                    config.objects_per_table[1] + 1)))
        aim = tables[rng.integers(len(tables))] if tables else floor
        return _Aim(np.array([*aim.center, aim.z]), (-180.0, 180.0), (1.3, 3.2), (15.0, 45.0))

    def _against_wall(self, floor: _Surface, category: str) -> None:
        """Add a cabinet or shelf with its back to a random wall, front into the room."""
        rng = self.rng
        u = rng.uniform
        if category == 'cabinet':
            w, d, h = u(0.4, 1.2), u(0.4, 0.6), u(0.7, 2.0)
            mesh = meshes.box(w, d, h)
        else:
            w, d, h = u(0.6, 1.2), u(0.28, 0.4), u(0.9, 2.0)
            mesh = meshes.shelf(w, d, h, levels=int(rng.integers(2, 6)))
        axis = int(rng.integers(4))
        yaw = axis * np.pi / 2 - np.pi / 2
        normal = _rotation(axis * np.pi / 2) @ np.array([1.0, 0.0])
        along = floor.half[(axis + 1) % 2] - w / 2
        for _ in range(10):
            xy = normal * (floor.half[axis % 2] - d / 2 - u(0.005, 0.03)) \
                + np.array([-normal[1], normal[0]]) * u(-along, along)
            poly = _corners(np.array([-w, -d]) / 2, np.array([w, d]) / 2, xy, yaw)
            if not _overlaps(poly, floor.footprints):
                floor.footprints.append(poly)
                floor.yaws.append(yaw)
                # Furniture, like the tabletop scenes' shelf and chairs: no object a query or
                # a grasp is after.
                self.add(category, mesh, np.array([*xy, 0.0]), yaw, is_support=True,
                         on_top_of=floor.instance_id)
                return

    def _chair_at(self, floor: _Surface, table: _Surface) -> None:
        """Add a chair facing one side of `table`, a little pulled out."""
        rng = self.rng
        seat = rng.uniform(0.4, 0.5)
        mesh = meshes.chair(seat, rng.uniform(0.42, 0.48), rng.uniform(0.35, 0.5))
        side = int(rng.integers(4))
        alpha = table.yaw + side * np.pi / 2
        normal = _rotation(alpha) @ np.array([1.0, 0.0])
        reach, along = (table.half[0], table.half[1]) if side % 2 == 0 else \
            (table.half[1], table.half[0])
        xy = table.center + normal * (reach + seat / 2 + rng.uniform(0.02, 0.3)) \
            + np.array([-normal[1], normal[0]]) * rng.uniform(-along, along) * 0.7
        yaw = alpha - np.pi / 2 + rng.normal(0, np.radians(8))
        poly = _corners(np.full(2, -seat / 2), np.full(2, seat / 2), xy, yaw)
        if floor.contains(poly, 0.02) and not _overlaps(poly, floor.footprints):
            floor.footprints.append(poly)
            floor.yaws.append(yaw)
            # Furniture, like the shelf: no object a tabletop query or grasp is after.
            self.add('chair', mesh, np.array([*xy, 0.0]), yaw, is_support=True,
                     on_top_of=floor.instance_id)

    # -- camera and rendering

    def camera_pose(self, aim: _Aim) -> np.ndarray:
        """Random camera-to-world pose within `aim`, in free space (else the last draw)."""
        rng = self.rng
        for _ in range(100):
            az = np.radians(rng.uniform(*aim.azimuth))
            el = np.radians(rng.uniform(*aim.elevation))
            r = rng.uniform(*aim.distance)
            eye = aim.target + r * np.array([np.cos(el) * np.sin(az), -np.cos(el) * np.cos(az),
                                             np.sin(el)])
            if self._eye_free(eye):
                break
        return _look_at(eye, aim.target + rng.normal(0, 0.03, 3), np.radians(rng.normal(0, 2)))

    def lidar_pose(self, aim: _Aim, sensor: LidarSensor) -> np.ndarray:
        """Sensor-to-world pose (REP 103) of a LiDAR on a robot beside the aimed-at table.

        A spinning head is mounted level (within a few degrees) at any yaw; a forward-looking
        rosette sensor faces the target. Heights: just above a tabletop's objects up to a
        mast's 1.9 m; a few metres from the target, as a mobile manipulator stands.
        """
        rng = self.rng
        room = self.room_half is not None
        for _ in range(100):
            az = np.radians(rng.uniform(*aim.azimuth))
            reach = rng.uniform(1.0, 3.0) if room else rng.uniform(0.8, 2.5)
            height = rng.uniform(0.4, 1.8) if room else aim.target[2] + rng.uniform(0.1, 0.9)
            eye = np.array([aim.target[0] + reach * np.sin(az),
                            aim.target[1] - reach * np.cos(az), height])
            if self._eye_free(eye):
                break
        if sensor.pattern == 'spinning':
            yaw, pitch = rng.uniform(-np.pi, np.pi), np.radians(rng.normal(0.0, 2.0))
        else:
            forward = aim.target - eye
            yaw = np.arctan2(forward[1], forward[0]) + np.radians(rng.normal(0.0, 5.0))
            pitch = np.arctan2(-forward[2], np.linalg.norm(forward[:2]))
        pose = np.eye(4)
        pose[:3, :3] = (_rotation_about((0, 0, 1), yaw) @ _rotation_about((0, 1, 0), pitch)
                        @ _rotation_about((1, 0, 0), np.radians(rng.normal(0.0, 2.0))))
        pose[:3, 3] = eye
        return pose

    def _eye_free(self, eye: np.ndarray) -> bool:
        """Whether the camera is inside the room (if any) and clear of the furniture."""
        if self.room_half is not None and ((np.abs(eye[:2]) > self.room_half - 0.3).any()
                                           or eye[2] > 1.9):
            return False
        probe = _corners(np.full(2, -0.2), np.full(2, 0.2), eye[:2], 0.0)
        return not _overlaps(probe, self.eye_keepout)

    def render(self, sensor: DepthSensor | LidarSensor, pose: np.ndarray,
               noise_rng: np.random.Generator, kind: str) -> Scene:
        """Ray-cast the scene and attach the labels."""
        raycaster = o3d.t.geometry.RaycastingScene()
        geometry = np.array([raycaster.add_triangles(
            o3d.core.Tensor(item.vertices.astype(np.float32)),
            o3d.core.Tensor(item.triangles.astype(np.uint32))) for item in self.items])
        instance_of = np.zeros(geometry.max() + 1, dtype=np.int64)
        instance_of[geometry] = np.arange(1, len(self.items) + 1)
        # every triangle's colour, the triangles of geometry g from first_triangle[g] on
        triangle_rgbs = np.concatenate([item.part_rgbs[item.triangle_parts]
                                        for item in self.items])
        triangle_parts = np.concatenate([item.triangle_parts for item in self.items])
        first_triangle = np.zeros(geometry.max() + 1, dtype=np.int64)
        first_triangle[geometry] = np.cumsum([0] + [len(i.triangles) for i in self.items])[:-1]
        if isinstance(sensor, LidarSensor):
            frame = render_lidar(raycaster, sensor, pose, noise_rng,
                                 self._reflectivity(triangle_rgbs), first_triangle,
                                 noise=self.config.noise, dropout=self.config.dropout)
        else:
            gain = np.ones(len(instance_of))
            gain[geometry] = [item.dropout_gain for item in self.items]
            frame = render_depth(raycaster, sensor, pose, noise_rng, noise=self.config.noise,
                                 dropout=self.config.dropout, dropout_gain=gain)
        seen = np.where(frame.geometry_ids >= 0, instance_of[frame.geometry_ids], 0)
        instance_ids = np.where(frame.valid, seen, 0)
        surface = np.where(frame.geometry_ids >= 0,
                           first_triangle[np.maximum(frame.geometry_ids, 0)] + frame.primitive_ids,
                           -1)
        rgb = (None if isinstance(sensor, LidarSensor)
               else self._colours(surface, triangle_rgbs, frame, sensor, noise_rng))
        counts = np.bincount(instance_ids, minlength=len(self.items) + 1)
        objects = [SceneObject(
            instance_id=i, category=item.category, color_name=item.color_name, rgb=item.rgb,
            size=item.size, is_support=item.is_support, on_top_of=item.on_top_of,
            size_word=self._size_word(item),
            center=(item.vertices.min(0) + item.vertices.max(0)) / 2, yaw=item.yaw,
            num_points=int(counts[i])) for i, item in enumerate(self.items, start=1)]
        cloud = Cloud(xyz=frame.xyz, rgb=rgb, height=sensor.height, width=sensor.width,
                      extra=frame.fields)
        part_ids = np.where(instance_ids > 0, triangle_parts[np.maximum(surface, 0)], 0)
        return Scene(cloud=cloud, instance_ids=instance_ids.astype(np.int64),
                     part_ids=part_ids.astype(np.int64), objects=objects,
                     camera_pose=pose, intrinsics=getattr(sensor, 'intrinsics', None), kind=kind,
                     sensor=sensor.name)

    def _reflectivity(self, triangle_rgbs: np.ndarray) -> np.ndarray:
        """(T,) near-infrared reflectivity (0-1) of every triangle, from its paint.

        Dark paint absorbs the laser too, but pigments differ between visible and infrared
        light: brightness sets the mean, each triangle's paint batch a spread about it.
        """
        brightness = (np.asarray(triangle_rgbs, np.float32) / 255.0).mean(axis=1)
        spread = self.rng.uniform(0.7, 1.3, len(brightness)).astype(np.float32)
        return np.clip((0.04 + 0.8 * brightness ** 2.2) * spread, 0.02, 1.0)

    def _colours(self, surface: np.ndarray, triangle_rgbs: np.ndarray, frame: Frame,
                 sensor: DepthSensor, noise_rng: np.random.Generator) -> np.ndarray:
        """Shaded, vignetted, exposed, noisy colour of every pixel, also those without a return.

        surface (H*W,) is the triangle in view per pixel (its colour in triangle_rgbs), -1
        where the ray hit nothing. Exposure and saturation are drawn from the sensor's ranges.
        """
        rng = self.rng
        light = np.array([*rng.normal(0, 0.5, 2), 1.0])
        light /= np.linalg.norm(light)
        ambient = rng.uniform(0.35, 0.55)
        white_balance = rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, 3)
        exposure = rng.uniform(*sensor.exposure)
        saturation = np.float32(rng.uniform(*sensor.saturation))
        background = rng.integers(20, 90, 3)
        base = np.vstack([triangle_rgbs, background[None]]).astype(np.float32)
        shade = ambient + (1 - ambient) * np.abs(frame.normals @ light.astype(np.float32))
        u = (np.arange(sensor.width, dtype=np.float32) - sensor.cx) / sensor.width
        v = (np.arange(sensor.height, dtype=np.float32) - sensor.cy) / sensor.height
        vignette = 1.0 - 0.6 * (u[None, :] ** 2 + v[:, None] ** 2).ravel()
        colour = base[surface] * ((shade * vignette * exposure)[:, None]
                                  * white_balance.astype(np.float32))
        grey = colour.mean(axis=1, keepdims=True)
        colour = grey + saturation * (colour - grey)
        if self.config.noise:
            colour += 3.0 * noise_rng.standard_normal(colour.shape, dtype=np.float32)
        return np.clip(np.round(colour), 0, 255).astype(np.uint8)

    # -- language

    def _size_word(self, item: _Item) -> str:
        small, large = SIZE_THRESHOLDS.get(item.category, (0.0, np.inf))
        extent = float(item.size.max())
        return 'small' if extent < small else 'large' if extent > large else ''
