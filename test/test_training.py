"""Training data preparation and the training loop (tiny runs on tiny scenes)."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import yaml

from segvec3d_ros.cli.main import main as cli_main
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.model.segvec3d import load_checkpoint
from segvec3d_ros.training.dataset import Sample, majority_labels, working_sample
from segvec3d_ros.training.train import TrainConfig, texture, train


def test_majority_labels_pick_the_most_frequent_label_per_voxel():
    inverse = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    labels = np.array([5, 5, 3, 7, 2, 0, 4, 4, 0])
    # voxel 1 ties 7 vs 2 (smaller wins); voxel 2 ties 0 vs 4 (smaller wins)
    np.testing.assert_array_equal(majority_labels(inverse, labels, 4), [5, 2, 0, 0])


def test_working_sample_voxelises_like_the_pipeline_and_keeps_labels():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.1, (500, 3))
    b = rng.uniform(0, 0.1, (500, 3)) + [0.5, 0, 0]
    xyz = np.concatenate([a, b, [[np.nan, 0, 0]]]).astype(np.float32)
    ids = np.r_[np.ones(500), np.full(500, 2), 9].astype(np.int64)
    sample = working_sample(Cloud(xyz, np.zeros((1001, 3), np.uint8)), ids, 0.02, 10_000, rng)
    assert set(sample.instance_ids.tolist()) == {1, 2}
    assert (sample.instance_ids[sample.xyz[:, 0] > 0.3] == 2).all()
    assert len(sample.xyz) <= 2 * 6**3
    capped = working_sample(Cloud(xyz, None), ids, 0.02, 50, rng)
    assert len(capped.xyz) == 50


def tiny_config(tmp_path) -> TrainConfig:
    return TrainConfig(train_scenes=3, scene={'image_scale': 0.25, 'num_objects': [2, 4]},
                       max_points=600, steps=4, warmup_steps=2, checkpoint_every=2,
                       positive_pairs=256, negative_pairs=256, edge_pairs=256,
                       cache_dir=str(tmp_path / 'cache'),
                       model={'channels': 16, 'hidden': 16, 'layers': 2, 'k': 8,
                              'use_normals': True})


def test_training_writes_loadable_weights_and_resume_repeats_the_uninterrupted_run(tmp_path):
    config = tiny_config(tmp_path)
    straight = load_checkpoint(train(config, tmp_path / 'straight', device='cpu',
                                     progress=False))
    config.steps = 2
    train(config, tmp_path / 'resumed', device='cpu', progress=False)
    config.steps = 4
    resumed = load_checkpoint(train(config, tmp_path / 'resumed', device='cpu', resume=True,
                                    progress=False))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert (tmp_path / 'straight' / 'segvec3d.onnx').is_file()
    losses = np.loadtxt(tmp_path / 'straight' / 'log.csv', delimiter=',', skiprows=1)[:, 1]
    assert len(losses) == 4 and np.isfinite(losses).all()


def test_train_command_installs_the_weights(tmp_path):
    config_file = tmp_path / 'tiny.yaml'
    config = tiny_config(tmp_path)
    config.steps = 1
    config_file.write_text(yaml.safe_dump(asdict(config)))
    code = cli_main(['train', str(config_file), '--out-dir', str(tmp_path / 'run'),
                     '--device', 'cpu', '--install', str(tmp_path / 'models'),
                     '--no-progress'])
    assert code == 0
    assert (tmp_path / 'models' / 'segvec3d.pt').is_file()
    assert (tmp_path / 'models' / 'segvec3d.onnx').is_file()
    bad = tmp_path / 'bad.yaml'
    bad.write_text('stepz: 3\n')
    assert cli_main(['train', str(bad), '--out-dir', str(tmp_path / 'x')]) == 2


def test_texture_paints_only_chosen_instances_and_varies_colour_within_them():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 0.3, (2000, 3)).astype(np.float32)
    ids = np.r_[np.ones(1000), np.full(1000, 2)].astype(np.int64)
    plain = np.full((2000, 3), 100, np.uint8)
    sample = Sample(xyz, plain, ids)
    untouched = texture(sample, 0.0, rng)
    np.testing.assert_array_equal(untouched, plain)
    painted = texture(sample, 1.0, rng)
    for instance in (1, 2):
        assert painted[ids == instance].std(axis=0).min() > 5.0
