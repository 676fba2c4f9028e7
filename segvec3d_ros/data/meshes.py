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
