"""Veil points of organized depth clouds (segmentation/veil.py) and the pipeline's use of them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.config import PipelineConfig
from segvec3d_ros.pipeline import Pipeline
from segvec3d_ros.segmentation.veil import veil_points

HEIGHT, WIDTH, FOCAL = 240, 320, 600.0     # about a VGA depth camera's focal length


def depth_cloud(depth: np.ndarray) -> Cloud:
    """Organized cloud of a pinhole camera at the origin looking along +z."""
    rows, cols = np.mgrid[0:depth.shape[0], 0:depth.shape[1]].astype(np.float32)
    x = (cols - depth.shape[1] / 2) / FOCAL * depth
    y = (rows - depth.shape[0] / 2) / FOCAL * depth
    xyz = np.stack([x, y, depth], axis=-1).reshape(-1, 3).astype(np.float32)
    return Cloud(xyz, height=depth.shape[0], width=depth.shape[1])


def box_before_wall() -> tuple[np.ndarray, np.ndarray]:
    """Depth of a box face at 0.8 m before a wall at 1.2 m with a 3-pixel ramp between them
    beside the box's right edge, as mixed pixels make it; and the mask of the ramp."""
    depth = np.full((HEIGHT, WIDTH), 1.2, dtype=np.float32)
    depth[60:180, 80:200] = 0.8
    ramp = np.zeros_like(depth, dtype=bool)
    for step in range(3):
        depth[60:180, 200 + step] = 0.8 + 0.4 * (step + 1) / 4
        ramp[60:180, 200 + step] = True
    return depth, ramp


def test_a_ramp_between_two_surfaces_is_veil_and_the_near_face_is_not():
    depth, ramp = box_before_wall()
    veil = veil_points(depth_cloud(depth).xyz, HEIGHT, WIDTH, 10.0).reshape(HEIGHT, WIDTH)
    assert veil[ramp].all()
    assert not veil[depth == 0.8].any()     # the nearer end of every pair stays
    # Of the wall only the farther ends of pairs across the jump go: a band 3 pixels wide.
    wall = depth == 1.2
    band = np.zeros_like(wall)
    band[57:183, 77:206] = True
    assert veil[wall & band].any() and not veil[wall & ~band].any()


def test_a_surface_seen_face_on_with_stereo_noise_keeps_its_points():
    rng = np.random.default_rng(0)
    depth = (1.0 + rng.normal(0.0, 0.003, (HEIGHT, WIDTH))).astype(np.float32)
    assert not veil_points(depth_cloud(depth).xyz, HEIGHT, WIDTH, 10.0).any()


def test_non_finite_points_are_never_veil_and_never_make_one():
    depth, _ = box_before_wall()
    depth[:, 201] = np.nan
    xyz = depth_cloud(depth).xyz
    veil = veil_points(xyz, HEIGHT, WIDTH, 10.0)
    assert veil.any() and not veil[np.isnan(xyz[:, 2])].any()
    assert not veil_points(np.full((HEIGHT * WIDTH, 3), np.nan), HEIGHT, WIDTH, 10.0).any()


@pytest.mark.parametrize('height, width', [(1, 50), (2, 2), (3, 3)])
def test_grids_narrower_than_the_reach_are_handled(height, width):
    xyz = np.random.default_rng(1).uniform(0.5, 1.0, (height * width, 3))
    assert veil_points(xyz, height, width, 10.0).shape == (height * width,)


@pytest.mark.parametrize('segmenter', ['euclidean', 'segvec3d'])
def test_a_veil_no_longer_joins_a_box_to_the_box_behind_it(segmenter):
    """Box A at 0.80 m, box B 6 cm behind it beside it, a wall at 1.5 m; mixed pixels step
    from A's depth to B's over B's first 4 columns along A's edge, 1.2 cm apart."""
    depth = np.full((HEIGHT, WIDTH), 1.5, dtype=np.float32)
    depth[60:180, 80:160] = 0.80
    depth[60:180, 160:240] = 0.86
    depth[60:180, 160:164] = 0.80 + 0.06 * np.arange(1, 5) / 5
    cloud = depth_cloud(depth)
    config = dataclasses.replace(PipelineConfig(segmenter=segmenter), plane_iterations=100)
    box_a = np.zeros((HEIGHT, WIDTH), dtype=bool)
    box_a[60:180, 80:160] = True
    box_b = np.zeros_like(box_a)
    box_b[60:180, 170:240] = True
    box_a, box_b = box_a.reshape(-1), box_b.reshape(-1)
    if segmenter == 'euclidean':   # the learned one tells the two apart even so
        joined = Pipeline(dataclasses.replace(config, veil_angle=0.0)).process(cloud).labels
        assert np.bincount(joined[box_a]).argmax() == np.bincount(joined[box_b]).argmax() > 0
    apart = Pipeline(config).process(cloud).labels
    a, b = np.bincount(apart[box_a]).argmax(), np.bincount(apart[box_b]).argmax()
    assert 0 < a != b > 0
    assert (apart[box_a] == a).mean() > 0.95 and (apart[box_b] == b).mean() > 0.95
