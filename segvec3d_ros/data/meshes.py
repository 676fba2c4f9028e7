"""Triangle-mesh primitives of the procedural scenes, each standing on z = 0 in its own frame.

Every builder returns an open3d legacy TriangleMesh whose local frame has z up, the object
resting on the plane z = 0 and its vertical axis (or footprint centre) at the origin.
"""
from __future__ import annotations

import numpy as np
import open3d as o3d

Mesh = o3d.geometry.TriangleMesh

SEGMENTS = 32   # around the axis of round objects: facets stay below the sensor noise


def _mesh(vertices: np.ndarray, triangles: np.ndarray) -> Mesh:
    return Mesh(o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
                o3d.utility.Vector3iVector(np.asarray(triangles, dtype=np.int32)))


def merge(meshes: list[Mesh]) -> Mesh:
    """One mesh holding all triangles of `meshes`."""
    out = Mesh()
    for m in meshes:
        out += m
    return out


def box(width: float, depth: float, height: float,
        x: float = 0.0, y: float = 0.0, z: float = 0.0) -> Mesh:
    """Box of extent (width, depth, height) whose bottom face is centred at (x, y, z)."""
    m = Mesh.create_box(width, depth, height)
    return m.translate((x - width / 2, y - depth / 2, z))


def lathe(radius: np.ndarray, z: np.ndarray, segments: int = SEGMENTS) -> Mesh:
    """Surface of revolution about the z axis of the profile polyline (radius[i], z[i]).

    A profile ending on the axis (radius 0) closes that end; one ending off the axis leaves
    it open, which is how open-top shells (bowls, mugs) keep their cavity visible.
    """
    n = len(radius)
    phi = np.linspace(0.0, 2 * np.pi, segments, endpoint=False)
    vertices = np.stack([np.outer(radius, np.cos(phi)), np.outer(radius, np.sin(phi)),
                         np.repeat(np.asarray(z, dtype=float)[:, None], segments, 1)], -1)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(segments), indexing='ij')
    a = i * segments + j
    b = i * segments + (j + 1) % segments
    quads = np.stack([a, a + segments, b + segments, b], -1).reshape(-1, 4)
    triangles = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    return _mesh(vertices.reshape(-1, 3), triangles)


def can(radius: float, height: float) -> Mesh:
    """Cylinder closed at both ends, with a slightly recessed lid, like a food or drink can."""
    rim = min(0.004, 0.1 * height)
    r = radius * np.array([0.0, 0.92, 1.0, 1.0, 0.96, 0.9, 0.0])
    z = np.array([0.0, 0.0, rim, height - rim, height, height - rim, height - rim])
    return lathe(r, z)


def bottle(radius: float, height: float) -> Mesh:
    """Bottle closed at both ends: cylindrical body, rounded shoulder, neck and cap."""
    neck = 0.35 * radius
    shoulder = np.linspace(0.0, np.pi / 2, 6)
    body_top = 0.6 * height
    r = np.concatenate([[0.0, radius], radius - (radius - neck) * np.sin(shoulder),
                        [neck, 1.15 * neck, 1.15 * neck, 0.0]])
    z = np.concatenate([[0.0, 0.0], body_top + 0.25 * height * (1 - np.cos(shoulder)),
                        [0.93 * height, 0.93 * height, height, height]])
    return lathe(r, z)


def bowl(radius: float, height: float, wall: float = 0.004) -> Mesh:
    """Open-top bowl: flat foot, sides curving up to a vertical rim, with wall thickness."""
    t = np.linspace(0.0, 1.0, 10)
    foot = 0.45 * radius
    outer_r = foot + (radius - foot) * np.sin(t * np.pi / 2)
    outer_z = height * t
    inner_r = np.maximum(outer_r - wall, 0.0)[::-1]
    inner_z = (outer_z + wall)[::-1]
    inner_z[0] = height
    r = np.concatenate([[0.0], outer_r, inner_r, [0.0]])
    z = np.concatenate([[0.0], outer_z, inner_z, [wall]])
    return lathe(r, z)


def mug(radius: float, height: float, wall: float = 0.004) -> Mesh:
    """Open-top mug with a handle on +x."""
    r = np.array([0.0, radius, radius, radius - wall, radius - wall, 0.0])
    z = np.array([0.0, 0.0, height, height, 1.5 * wall, 1.5 * wall])
    ring = 0.3 * height
    tube = 0.15 * ring
    handle = Mesh.create_torus(torus_radius=ring, tube_radius=tube,
                               radial_resolution=20, tubular_resolution=8)
    handle.rotate(handle.get_rotation_matrix_from_xyz((np.pi / 2, 0.0, 0.0)), center=(0, 0, 0))
    handle.translate((radius + 0.5 * ring, 0.0, 0.5 * height))
    # the part of the ring inside the wall would poke into the cavity
    handle.remove_vertices_by_mask(np.asarray(handle.vertices)[:, 0] < radius - wall / 2)
    return merge([lathe(r, z), handle])


def ball(radius: float) -> Mesh:
    """Sphere resting on z = 0."""
    return Mesh.create_sphere(radius, resolution=16).translate((0.0, 0.0, radius))


def table(width: float, depth: float, height: float, top: float = 0.03,
          leg: float = 0.05) -> Mesh:
    """Table: a top slab of thickness `top` whose upper face is at `height`, on four legs."""
    inset = leg / 2 + 0.03
    legs = [box(leg, leg, height - top, sx * (width / 2 - inset), sy * (depth / 2 - inset))
            for sx in (-1, 1) for sy in (-1, 1)]
    return merge([box(width, depth, top, z=height - top), *legs])


def chair(seat: float, seat_height: float, back_height: float, board: float = 0.03,
          leg: float = 0.03) -> Mesh:
    """Chair facing -y: square seat on four legs with a backrest along +y."""
    inset = leg / 2 + 0.01
    legs = [box(leg, leg, seat_height - board, sx * (seat / 2 - inset), sy * (seat / 2 - inset))
            for sx in (-1, 1) for sy in (-1, 1)]
    back = box(seat, board, back_height, y=seat / 2 - board / 2, z=seat_height)
    return merge([box(seat, seat, board, z=seat_height - board), back, *legs])


def shelf(width: float, depth: float, height: float, levels: int, board: float = 0.02) -> Mesh:
    """Open-front shelf, front towards -y: two sides, a back panel and `levels` + 1 boards."""
    sides = [box(board, depth, height, sx * (width / 2 - board / 2)) for sx in (-1, 1)]
    back = box(width, board, height, y=depth / 2 - board / 2)
    boards = [box(width - 2 * board, depth - board, board, y=-board / 2, z=zb)
              for zb in np.linspace(0.0, height - board, levels + 1)]
    return merge([*sides, back, *boards])


# ----------------------------------------------------------------------------- multi-part objects
# A part list is one mesh per differently coloured part (body first): a bottle's cap, a jar's
# lid, a can's label band, a toy's wheels. `merge_parts` gives the scene one mesh and the part
# of every triangle.

Parts = list[Mesh]


def merge_parts(parts: Parts) -> tuple[Mesh, np.ndarray]:
    """One mesh of all `parts` and the (T,) index of the part each triangle came from."""
    owner = np.concatenate([np.full(len(p.triangles), i, dtype=np.int64)
                            for i, p in enumerate(parts)])
    return merge(parts), owner


def _band(radius: float, z0: float, z1: float, outset: float = 0.0005) -> Mesh:
    """Open cylindrical band (a printed label) just outside a body of `radius`."""
    return lathe(np.array([radius + outset] * 2), np.array([z0, z1]))


def capped_bottle(radius: float, height: float, label: bool) -> Parts:
    """Bottle body, a cap of its own colour, and maybe a label band round the body."""
    body = bottle(radius, 0.93 * height)
    neck = 0.35 * radius
    cap = lathe(np.array([0.0, 1.2 * neck, 1.2 * neck, 0.0]),
                0.93 * height - 0.02 * height + np.array([0.0, 0.0, 0.09, 0.09]) * height)
    parts = [body, cap]
    if label:
        parts.append(_band(radius, 0.2 * height, 0.5 * height))
    return parts


def squeeze_bottle(radius: float, height: float, flatness: float) -> Parts:
    """Flattened bottle (shampoo, ketchup) standing on a flip-top cap or on its base."""
    body = bottle(radius, 0.85 * height)
    body.vertices = o3d.utility.Vector3dVector(np.asarray(body.vertices) * [1.0, flatness, 1.0])
    cap_r = 0.5 * radius
    cap = lathe(np.array([0.0, cap_r, cap_r, 0.0]),
                np.array([0.0, 0.0, 0.15, 0.15]) * height + 0.83 * height)
    return [body, cap]


def spray_bottle(radius: float, height: float) -> Parts:
    """Spray bottle: round body, neck, and a trigger head reaching out over one side."""
    body_h = 0.7 * height
    body = lathe(np.array([0.0, radius, radius, 0.4 * radius, 0.4 * radius, 0.0]),
                 np.array([0.0, 0.0, body_h, body_h + 0.05 * height, body_h + 0.1 * height,
                           body_h + 0.1 * height]))
    head_h = 0.2 * height
    head = box(1.8 * radius, 0.6 * radius, head_h, x=0.4 * radius, z=body_h + 0.1 * height)
    trigger = box(0.25 * radius, 0.4 * radius, 0.5 * head_h, x=0.9 * radius,
                  z=body_h + 0.1 * height - 0.5 * head_h)
    return [body, merge([head, trigger])]


def cup(radius: float, height: float, taper: float, wall: float = 0.003) -> Parts:
    """Open-top cup without a handle, narrower at the foot (paper and plastic cups)."""
    foot = radius * taper
    r = np.array([0.0, foot, radius, radius - wall, foot - wall, 0.0])
    z = np.array([0.0, 0.0, height, height, wall, wall])
    return [lathe(r, z)]


def plate(radius: float, height: float) -> Parts:
    """Flat plate: a wide foot rising to a low rim, with a thin wall."""
    wall = 0.003
    r = np.array([0.0, 0.6 * radius, radius, radius - wall, 0.6 * radius - wall, 0.0])
    z = np.array([0.0, 0.0, height, height, wall, wall])
    return [lathe(r, z)]


def carton(width: float, depth: float, height: float, gable: bool) -> Parts:
    """Drink carton: a box with a gable roof and spout (milk) or a flat top and screw cap."""
    body = box(width, depth, height)
    if gable:
        roof_h = 0.35 * width
        v = np.array([[-width / 2, -depth / 2, height], [width / 2, -depth / 2, height],
                      [width / 2, depth / 2, height], [-width / 2, depth / 2, height],
                      [0.0, -depth / 2, height + roof_h], [0.0, depth / 2, height + roof_h]])
        t = np.array([[0, 1, 4], [2, 3, 5], [0, 4, 5], [0, 5, 3], [1, 2, 5], [1, 5, 4]])
        roof = _mesh(v, t)
        fin = box(0.02, depth, 0.012, z=height + roof_h)
        return [merge([body, roof, fin])]
    cap_r = min(width, depth) * 0.18
    cap = lathe(np.array([0.0, cap_r, cap_r, 0.0]), height + np.array([0.0, 0.0, 0.02, 0.02]))
    cap.translate((0.2 * width, 0.0, 0.0))
    return [body, cap]


def jar(radius: float, height: float) -> Parts:
    """Jar: a wide glass body with a shoulder and a screw lid of its own colour."""
    r = np.array([0.0, radius, radius, 0.85 * radius, 0.0])
    z = np.array([0.0, 0.0, 0.85 * height, 0.9 * height, 0.9 * height])
    lid_r = 0.9 * radius
    lid = lathe(np.array([0.0, lid_r, lid_r, 0.0]), np.array([0.88, 0.88, 1.0, 1.0]) * height)
    return [lathe(r, z), lid, _band(radius, 0.25 * height, 0.65 * height)]


def tin(radius: float, height: float, label: bool) -> Parts:
    """Food or drink can, maybe with a printed band of its own colour."""
    parts = [can(radius, height)]
    if label:
        parts.append(_band(radius, 0.15 * height, 0.85 * height))
    return parts


def toy(kind: int, size: float, rng: np.random.Generator) -> Parts:
    """Build a toy of several coloured parts: a car (0), a figure (1) or a brick tower (2)."""
    if kind == 0:
        length, width = size, size * rng.uniform(0.45, 0.6)
        wheel = 0.18 * length
        chassis = box(length, width, 0.3 * length, z=0.6 * wheel)
        cabin = box(0.5 * length, 0.9 * width, 0.25 * length, x=-0.05 * length,
                    z=0.6 * wheel + 0.3 * length)
        wheels = []
        for sx in (-0.32, 0.32):
            for sy in (-1, 1):
                w = Mesh.create_cylinder(wheel, 0.12 * width, resolution=16)
                w.rotate(w.get_rotation_matrix_from_xyz((np.pi / 2, 0.0, 0.0)), center=(0, 0, 0))
                w.translate((sx * length, sy * (width / 2 + 0.04 * width), wheel))
                wheels.append(w)
        return [chassis, cabin, merge(wheels)]
    if kind == 1:
        body_r = 0.25 * size
        body = ball(body_r)
        head = ball(0.6 * body_r).translate((0.0, 0.0, 1.8 * body_r))
        hat = box(0.9 * body_r, 0.9 * body_r, 0.35 * body_r, z=1.8 * body_r + 1.15 * body_r)
        return [body, head, hat]
    parts, z = [], 0.0
    for _ in range(int(rng.integers(2, 5))):
        w, d, h = size * rng.uniform(0.35, 0.7, 3) * np.array([1.0, 1.0, 0.5])
        parts.append(box(w, d, h, x=rng.uniform(-0.1, 0.1) * size,
                         y=rng.uniform(-0.1, 0.1) * size, z=z))
        z += h
    return parts


def lying(parts: Parts, rng: np.random.Generator) -> Parts:
    """`parts` turned onto their side (about x), resting on z = 0 and centred in x and y."""
    turned = [Mesh(p) for p in parts]
    rotation = turned[0].get_rotation_matrix_from_xyz((np.pi / 2, 0.0, rng.uniform(0, 2 * np.pi)))
    for p in turned:
        p.rotate(rotation, center=(0, 0, 0))
    return on_ground(turned)


def upside_down(parts: Parts) -> Parts:
    """`parts` turned over (a bowl or cup on its rim), resting on z = 0."""
    turned = [Mesh(p) for p in parts]
    for p in turned:
        p.rotate(p.get_rotation_matrix_from_xyz((np.pi, 0.0, 0.0)), center=(0, 0, 0))
    return on_ground(turned)


def on_ground(parts: Parts) -> Parts:
    """Parts moved to stand on z = 0 with their footprint centred on the origin."""
    vertices = np.concatenate([np.asarray(p.vertices) for p in parts])
    low, high = vertices.min(0), vertices.max(0)
    shift = (-(low[0] + high[0]) / 2, -(low[1] + high[1]) / 2, -low[2])
    return [p.translate(shift) for p in parts]
