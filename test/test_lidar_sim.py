"""The simulated LiDARs of the scene generator: scan patterns, no-echo returns, fields."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from segvec3d_ros.cli.common import pipeline_config
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.data.lidar import LIDARS, OUSTER_STAGGER
from segvec3d_ros.data.scenes import SceneConfig, generate_scene
from segvec3d_ros.evaluation.datasets import MIN_LIDAR_GT_POINTS, iter_lidar
from segvec3d_ros.evaluation.metrics import evaluate_scene, summarize
from segvec3d_ros.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
SPINNING = [name for name, s in LIDARS.items() if s.pattern == 'spinning']


def _scan(name: str, seed: int = 3, kind: str = 'tabletop', **config):
    return generate_scene(seed, kind, SceneConfig(sensors=(name,), floor_prob=1.0, **config))


@pytest.mark.parametrize('name', list(LIDARS))
@pytest.mark.parametrize('kind', ['tabletop', 'room'])
def test_no_echo_returns_are_zeros_and_never_labelled(name, kind):
    scene = _scan(name, kind=kind)
    sensor, cloud = LIDARS[name], scene.cloud
    assert (cloud.height, cloud.width) == (sensor.height, sensor.width)
    assert cloud.rgb is None and scene.intrinsics is None
    empty = ~cloud.valid
    assert empty.any() or kind == 'room'
    assert (cloud.xyz[empty] == 0).all() and np.isfinite(cloud.xyz).all()
    assert (scene.instance_ids[empty] == 0).all()
    assert set(cloud.extra) == set(sensor.fields)
    for name, values in cloud.extra.items():
        assert name in ('ring', 'line') or (values[empty] == 0).all()
    if 'range' in sensor.fields:
        np.testing.assert_array_equal(cloud.extra['range'] == 0, empty)
        np.testing.assert_allclose(cloud.extra['range'][~empty] / 1000.0,
                                   np.linalg.norm(cloud.xyz[~empty], axis=1), atol=2e-3)
    beam = cloud.extra['ring' if 'ring' in sensor.fields else 'line']
    assert beam.dtype == np.uint16
    np.testing.assert_array_equal(np.bincount(beam), np.full(sensor.rows, sensor.columns))


@pytest.mark.parametrize('name', SPINNING)
def test_one_row_per_beam_from_the_top_beam_down(name):
    sensor = LIDARS[name]
    cloud = _scan(name, kind='room').cloud
    xyz = cloud.xyz.reshape(sensor.rows, sensor.columns, 3)
    seen = cloud.valid.reshape(sensor.rows, sensor.columns)
    elevation = np.degrees(np.arctan2(xyz[..., 2], np.linalg.norm(xyz[..., :2], axis=-1)))
    per_row = np.array([np.median(elevation[r][seen[r]]) for r in range(sensor.rows)])
    assert (np.diff(per_row) < 0).all()
    np.testing.assert_allclose(per_row[[0, -1]], sensor.elevation[::-1], atol=0.5)


def test_ouster_rows_are_staggered_by_their_beams_azimuth():
    sensor = LIDARS['ouster_os1_64']
    rays = sensor.beam_directions(np.random.default_rng(0))
    azimuth = np.degrees(np.arctan2(rays[..., 1], rays[..., 0]))
    column = sensor.columns // 4     # away from the +-180 deg seam
    offsets = azimuth[:4, column] - azimuth[:4, column].mean()
    np.testing.assert_allclose(offsets, OUSTER_STAGGER, atol=0.01)


def test_rosette_never_repeats_and_covers_its_circular_field():
    sensor = LIDARS['livox_rosette']
    a, b = (sensor.beam_directions(np.random.default_rng(s))[0] for s in (1, 2))
    assert a.shape == (sensor.rows * sensor.columns, 3)
    assert np.abs(a - b).max() > 0.1
    off_axis = np.degrees(np.arccos(np.clip(a[:, 0], -1, 1)))
    assert off_axis.max() <= sensor.elevation[1] + 1e-3
    assert np.histogram(off_axis, bins=5, range=(0, sensor.elevation[1]))[0].min() > 0


def test_each_unit_keeps_its_beam_biases_from_frame_to_frame():
    unit = LIDARS['ouster_os0_32'].jittered(np.random.default_rng(4))
    np.testing.assert_array_equal(unit.beam_biases(), unit.beam_biases())
    other = LIDARS['ouster_os0_32'].jittered(np.random.default_rng(5))
    assert not np.array_equal(unit.beam_biases(), other.beam_biases())
    bias = unit.beam_biases()
    assert (bias == bias[:, :1]).all()      # one offset per beam


def test_noise_off_gives_exact_ranges_noise_on_about_the_sensors_sigma():
    clean = _scan('ouster_os1_64', kind='room', noise=False, dropout=False)
    noisy = _scan('ouster_os1_64', kind='room')
    both = clean.cloud.valid & noisy.cloud.valid
    difference = (noisy.cloud.extra['range'][both].astype(float)
                  - clean.cloud.extra['range'][both]) / 1000.0
    sigma = np.median(np.abs(difference - np.median(difference))) * 1.4826
    assert 0.005 < sigma < 0.03
    assert clean.cloud.valid.sum() >= noisy.cloud.valid.sum()


def test_intensity_falls_with_range_reflectivity_does_not():
    scene = _scan('ouster_os0_128', kind='room', noise=False)
    cloud = scene.cloud
    floor_id = next(o.instance_id for o in scene.objects if o.category == 'floor')
    floor = cloud.valid & (scene.instance_ids == floor_id)
    distance = np.linalg.norm(cloud.xyz[floor], axis=1)
    near, far = distance < np.quantile(distance, 0.3), distance > np.quantile(distance, 0.7)
    intensity = cloud.extra['intensity'][floor]
    reflectivity = cloud.extra['reflectivity'][floor].astype(float)
    assert np.median(intensity[near]) > 2 * np.median(intensity[far])
    assert abs(np.median(reflectivity[near]) - np.median(reflectivity[far])) <= 5


@pytest.mark.parametrize('name', ['ouster_os0_32', 'velodyne_vlp16'])
def test_appearance_is_the_return_strength_as_grey(name):
    cloud = _scan(name).cloud
    grey = cloud.appearance()
    assert grey.shape == (len(cloud), 3) and grey.dtype == np.uint8
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[~cloud.valid] == 0).all()
    strength = cloud.extra['reflectivity' if 'reflectivity' in cloud.extra else 'intensity']
    assert np.corrcoef(strength[cloud.valid].astype(float), grey[cloud.valid, 0])[0, 1] > 0.9
    without = dataclasses.replace(cloud, extra={'ring': cloud.extra['ring']})
    assert without.appearance() is None
    coloured = Cloud(cloud.xyz, np.full((len(cloud), 3), 7, np.uint8), cloud.height,
                     cloud.width, extra=cloud.extra)
    assert (coloured.appearance() == 7).all()


def test_held_out_lidar_scans_alternate_kinds_and_label_small_objects():
    scenes = list(iter_lidar(2))
    assert [s.name.split('-')[1] for s in scenes] == ['tabletop', 'room']
    for scene in scenes:
        assert scene.subset in LIDARS
        counts = np.bincount(scene.gt)[1:]
        assert (counts[counts > 0] >= MIN_LIDAR_GT_POINTS).all()
        assert not (scene.support & (scene.gt > 0)).any()
    assert scenes[0].gt.any()


def test_the_lidar_network_parts_the_objects_euclidean_joins_on_a_held_out_scan():
    config = pipeline_config(REPO / 'config' / 'lidar_indoor.yaml')
    (scene,) = iter_lidar(1)        # an OS1-64 over a table of 15 objects
    f = {}
    for segmenter in ('segvec3d', 'euclidean'):
        result = Pipeline(dataclasses.replace(config, segmenter=segmenter)).process(scene.cloud)
        assert not result.labels[~scene.cloud.valid].any()
        metrics = evaluate_scene(result.labels, scene.gt, scene.cloud.valid, scene.support)
        f[segmenter] = summarize([metrics]).f_measure
    assert f['segvec3d'] >= 0.8 and f['segvec3d'] > f['euclidean'] + 0.2
