"""`segvec3d segment`, the params-file loader and the PNG rendering."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from scenes import PARAMS_FILE, tabletop_points
from segvec3d_ros.cli import main as cli
from segvec3d_ros.cli.common import pipeline_config
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.colors import instance_colors
from segvec3d_ros.config import PipelineConfig, settings_from_params_file
from segvec3d_ros.names import SEGMENTATION_NODE as NODE
from segvec3d_ros.render import UNLABELLED_DIM, looks_forward, scene_image


def write_pcd(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """A binary PCD with PCL's packed float rgb field."""
    records = np.empty(len(xyz), [('xyz', '<f4', 3), ('rgb', '<u4')])
    records['xyz'] = xyz
    records['rgb'] = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) \
        | rgb[:, 2]
    header = (f'VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n'
              f'WIDTH {len(xyz)}\nHEIGHT 1\nPOINTS {len(xyz)}\nDATA binary\n')
    path.write_bytes(header.encode() + records.tobytes())


@pytest.fixture(scope='module')
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The same kind of tabletop as flat .npy, organized .npy with holes, and .pcd."""
    root = tmp_path_factory.mktemp('inputs')
    xyz, rgb, _ = tabletop_points(seed=1)
    np.save(root / 'flat.npy', np.hstack([xyz, rgb]).astype(np.float32))
    organized = np.hstack([xyz, rgb]).astype(np.float32)[:29000].copy()
    organized[::7, :3] = np.nan
    np.save(root / 'organized.npy', organized.reshape(100, 290, 6))
    write_pcd(root / 'scan.pcd', *tabletop_points(seed=2)[:2])
    return {path.stem: path for path in root.iterdir()}


def check_outputs(out_dir: Path, name: str, shape: tuple[int, ...]) -> dict:
    """The .npy has `shape` and agrees with the .json instances; the .png is an image."""
    labels = np.load(out_dir / f'{name}.npy')
    assert labels.shape == shape and labels.dtype == np.uint32
    record = json.loads((out_dir / f'{name}.json').read_text())
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    assert [i['id'] for i in record['instances']] == ids.tolist()
    assert [i['num_points'] for i in record['instances']] == counts.tolist()
    for instance in record['instances']:
        assert set(instance) == {'id', 'label', 'label_score', 'num_points', 'centroid', 'bbox',
                                 'mean_color', 'embedding'}
        assert len(instance['bbox']['orientation']) == 4 and len(instance['centroid']) == 3
    image = imread(out_dir / f'{name}.png')
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    return record


def test_segment_writes_labels_instances_and_a_picture_per_input(inputs, tmp_path, capsys):
    code = cli.main(['segment', str(inputs['flat']), str(inputs['organized']),
                     str(inputs['scan']), '--out-dir', str(tmp_path / 'out')])
    assert code == 0
    out = tmp_path / 'out'
    flat = check_outputs(out, 'flat', (29000,))
    assert len(flat['instances']) == 3
    check_outputs(out, 'organized', (100, 290))
    organized = np.load(out / 'organized.npy').reshape(-1)
    assert (organized[::7] == 0).all()  # NaN points keep their place, with id 0
    assert len(check_outputs(out, 'scan', (29000,))['instances']) == 3
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(':')[0] for line in lines] == ['flat', 'organized', 'scan']
    assert '3 instances, 29000 points' in lines[0]


def test_segment_reads_each_cloud_of_a_bag(tmp_path, capsys):
    pytest.importorskip('rclpy')
    from segvec3d_ros.ros.bag import write_cloud_bag

    xyz, rgb, _ = tabletop_points(seed=3)
    write_cloud_bag(tmp_path / 'run1', [(10**18, Cloud(xyz, rgb)), (10**18 + 1, Cloud(xyz))],
                    '/points', 'camera', storage='mcap')
    # The baseline: these synthetic boxes are volumes of random points, and the second cloud
    # has no colour; what is tested is that each message of the bag is segmented.
    code = cli.main(['segment', str(tmp_path / 'run1'), '--out-dir', str(tmp_path / 'out'),
                     '--segmenter', 'euclidean'])
    assert code == 0
    for name in ('run1_0000', 'run1_0001'):
        assert len(check_outputs(tmp_path / 'out', name, (len(xyz),))['instances']) == 3


def test_failed_inputs_are_named_and_the_others_still_written(inputs, tmp_path, capsys):
    corrupt = tmp_path / 'corrupt.pcd'
    corrupt.write_bytes(b'VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 100\n'
                        b'POINTS 100\nDATA binary\n' + b'\0' * 12)
    out = tmp_path / 'out'
    code = cli.main(['segment', str(tmp_path / 'missing.pcd'), str(corrupt),
                     str(inputs['flat']), '--out-dir', str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert 'missing.pcd: no such file' in err and 'corrupt.pcd' in err and 'truncated' in err
    check_outputs(out, 'flat', (29000,))
    assert sorted(p.name for p in out.iterdir()) == ['flat.json', 'flat.npy', 'flat.png']

    assert cli.main(['segment', str(tmp_path / 'missing.pcd'), '--out-dir', str(out)]) == 2


def test_segment_overrides_and_bad_settings(inputs, tmp_path, capsys):
    assert cli.main(['segment', str(inputs['flat']), '--out-dir', str(tmp_path),
                     '--voxel-size', '0.05']) == 2  # not below cluster_tolerance 0.02
    assert 'cluster_tolerance' in capsys.readouterr().err
    config = pipeline_config(PARAMS_FILE, voxel_size=0.005, segmenter=None)
    assert config.voxel_size == 0.005 and config.segmenter == 'segvec3d'  # the params file's


def test_without_a_params_file_the_learned_segmenter_labels_instances(inputs, tmp_path):
    assert pipeline_config().segmenter == 'segvec3d'
    assert cli.main(['segment', str(inputs['flat']), '--out-dir', str(tmp_path)]) == 0
    record = json.loads((tmp_path / 'flat.json').read_text())
    assert record['instances'] and all(i['label'] and i['embedding']
                                       for i in record['instances'])


def test_a_model_that_cannot_be_loaded_falls_back_with_the_reason(inputs, tmp_path, capsys):
    broken = tmp_path / 'broken.onnx'
    broken.write_bytes(b'not a model')
    assert cli.main(['segment', str(inputs['flat']), '--out-dir', str(tmp_path),
                     '--model-path', str(broken)]) == 0
    warning = capsys.readouterr().err
    assert 'falling back to the euclidean segmenter' in warning and str(broken) in warning
    record = json.loads((tmp_path / 'flat.json').read_text())
    assert len(record['instances']) == 3 and not any(i['label'] for i in record['instances'])


def test_the_installed_command_runs(inputs, tmp_path):
    result = subprocess.run(['segvec3d', 'segment', str(inputs['flat']), '--out-dir',
                             str(tmp_path), '--params-file', str(PARAMS_FILE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('flat: 3 instances')


@pytest.mark.shared
def test_segment_a_real_scan_keeps_its_organized_shape(shared_dir, tmp_path, capsys):
    scan = shared_dir / 'data' / 'real_scans' / 'table_scene_mug_stereo_textured.pcd'
    assert cli.main(['segment', str(scan), '--out-dir', str(tmp_path),
                     '--params-file', str(PARAMS_FILE)]) == 0
    record = check_outputs(tmp_path, scan.stem, (480, 640))
    assert record['num_valid'] < record['num_points'] == 480 * 640
    # the mug is the largest instance, a few thousand points
    assert record['instances'][0]['num_points'] > 5000


def test_params_file_gives_every_pipeline_setting_of_the_repo_config():
    section = yaml.safe_load(PARAMS_FILE.read_text())[f'/**/{NODE}']['ros__parameters']
    config = settings_from_params_file(PARAMS_FILE, NODE, PipelineConfig)
    for field in dataclasses.fields(PipelineConfig):
        assert getattr(config, field.name) == section[field.name], field.name


def test_params_file_sections_wildcards_and_types(tmp_path):
    path = tmp_path / 'params.yaml'
    path.write_text(f"""
/**:
  ros__parameters:
    use_sim_time: true
    min_instance_points: 10
/robot/{NODE}:
  ros__parameters:
    voxel_size: 0          # an int, meant as 0.0
    max_range: 3
    output_reliability: best_effort
other_node:
  ros__parameters:
    max_points: 7
""")
    config = settings_from_params_file(path, NODE, PipelineConfig)
    assert config.min_instance_points == 10
    assert config.voxel_size == 0.0 and isinstance(config.voxel_size, float)
    assert config.max_range == 3.0
    assert config.max_points == PipelineConfig().max_points


@pytest.mark.parametrize('text, match', [
    (f'/**/{NODE}:\n  ros__parameters:\n    segmenter: magic\n', 'segmenter'),
    (f'/**/{NODE}:\n  ros__parameters:\n    max_points: "many"\n', 'max_points must be int'),
    ('other:\n  ros__parameters:\n    voxel_size: 0.1\n', 'no ros__parameters section'),
    ('[1, 2\n', 'cannot read'),
])
def test_params_file_problems_name_the_file(tmp_path, text, match):
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        settings_from_params_file(path, NODE, PipelineConfig)
    assert 'bad.yaml' in str(error.value)


def test_organized_picture_colours_instances_dims_the_rest_and_blacks_out_invalid():
    xyz = np.random.default_rng(0).uniform(0.5, 1.0, (12, 3)).astype(np.float32)
    xyz[3] = np.nan
    rgb = np.full((12, 3), 200, np.uint8)
    labels = np.array([0, 1, 1, 0, 2, 2, 0, 0, 1, 0, 0, 0], np.uint32)
    image = scene_image(Cloud(xyz, rgb, height=3, width=4), labels).reshape(-1, 3)
    assert image.shape == (12, 3)
    labelled = labels > 0
    np.testing.assert_array_equal(image[labelled], instance_colors(labels[labelled]))
    assert (image[3] == 0).all()
    assert (image[[0, 6, 7, 9, 10, 11]] == int(200 * UNLABELLED_DIM)).all()

    highlighted = scene_image(Cloud(xyz, rgb, height=3, width=4), labels, highlight=2)
    highlighted = highlighted.reshape(-1, 3)
    np.testing.assert_array_equal(highlighted[labels == 2], image[labels == 2])
    assert (highlighted[labels == 1].astype(int).sum(1) < image[labels == 1].sum(1)).all()


def test_unorganized_picture_is_a_pinhole_view_where_nearer_points_hide_farther_ones():
    u, v = np.meshgrid(np.linspace(-0.5, 0.5, 80), np.linspace(-0.4, 0.4, 64))
    rays = np.column_stack([u.ravel(), v.ravel(), np.ones(u.size)])
    centre = (np.abs(rays[:, 0]) < 0.2) & (np.abs(rays[:, 1]) < 0.2)
    # a wall at 2 m (instance 2), and on the central rays an object at 1 m (instance 1)
    xyz = np.concatenate([rays * 2.0, rays[centre] * 1.0]).astype(np.float32)
    labels = np.concatenate([np.full(len(rays), 2), np.full(centre.sum(), 1)]).astype(np.uint32)
    assert looks_forward(xyz)
    image = scene_image(Cloud(xyz), labels)
    colour = {i: instance_colors(np.array([i]))[0] for i in (1, 2)}
    is_object = (image == colour[1]).all(axis=2)
    is_wall = (image == colour[2]).all(axis=2)
    assert is_object.sum() == centre.sum()  # every object point has a pixel of its own
    assert is_wall.sum() == len(rays) - centre.sum()  # the wall behind it is hidden
    rows, cols = np.nonzero(is_object)
    assert is_wall[rows.min():rows.max() + 1, cols.min():cols.max() + 1].sum() == 0


def test_an_organized_scan_in_a_body_frame_is_drawn_from_above():
    # A spinning LiDAR's rows: z up, points all around the sensor, 16 x 360.
    azimuth = np.radians(np.arange(360))
    elevation = np.radians(np.linspace(-15, 15, 16))[:, None]
    scan = np.stack([10 * np.cos(azimuth) * np.cos(elevation),
                     10 * np.sin(azimuth) * np.cos(elevation),
                     10 * np.sin(elevation) * np.ones_like(azimuth)], axis=-1).reshape(-1, 3)
    image = scene_image(Cloud(scan, height=16, width=360), np.zeros(len(scan), np.uint32))
    height, width = image.shape[:2]
    assert (height, width) != (16, 360) and abs(height - width) <= 0.1 * width  # a ring


def test_clouds_not_in_an_optical_frame_are_drawn_from_above():
    rng = np.random.default_rng(1)
    room = np.column_stack([rng.uniform(-4, 4, 5000), rng.uniform(-3, 3, 5000),
                            rng.uniform(0.0, 2.5, 5000)])  # z up, camera in the middle
    assert not looks_forward(room)
    image = scene_image(Cloud(room), np.zeros(len(room), np.uint32))
    height, width = image.shape[:2]
    assert width > height  # x (8 m) runs across, y (6 m) down the picture


def test_evaluate_overrides_reach_every_mode_and_its_command_line():
    from segvec3d_ros.cli.common import override_words, pipeline_config, setting_overrides
    from segvec3d_ros.cli.main import build_parser
    args = build_parser().parse_args(['evaluate', '--grounding', '--veil-angle', '0',
                                      '--no-join-parts'])
    overrides = setting_overrides(args)
    assert overrides['veil_angle'] == 0.0 and overrides['join_parts'] is False
    assert overrides['voxel_size'] is None and overrides['split_touching'] is None
    config = pipeline_config(None, **overrides)
    assert config.veil_angle == 0.0 and not config.join_parts and config.split_touching
    assert override_words(args) == ['--veil-angle', '0.0', '--no-join-parts']
