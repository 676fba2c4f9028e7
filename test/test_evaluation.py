"""Evaluation metrics on hand-made scenes with known answers, the datasets and the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segvec3d_ros.cli.main import main
from segvec3d_ros.data.splits import TEST_FIRST_SEED
from segvec3d_ros.data.sensor import SENSORS
from segvec3d_ros.evaluation.datasets import (MIN_GT_POINTS, MIN_LIDAR_GT_POINTS, iter_labelled,
                                              iter_lidar, iter_synthetic, labelled_scene,
                                              mosd_frames, mosd_ground_truth, mosd_scene)
from segvec3d_ros.evaluation.metrics import (AP_THRESHOLDS, FALSE_POSITIVE, IGNORED, TRUE_POSITIVE,
                                             Detections, evaluate_scene, scene_overlaps, summarize)

REPO = Path(__file__).resolve().parents[1]


def ids(*runs: tuple[int, int]) -> np.ndarray:
    """Per-point ids from (id, count) runs."""
    return np.repeat([i for i, _ in runs], [n for _, n in runs]).astype(np.int64)


def detections(confidence: list[float], outcome: list[int], num_gt: int) -> Detections:
    """The same outcomes at every AP threshold."""
    return Detections(np.array(confidence, float),
                      np.tile(np.array(outcome, np.int8), (len(AP_THRESHOLDS), 1)), num_gt)


def test_overlaps_equal_direct_counts():
    rng = np.random.default_rng(0)
    pred, gt = rng.integers(0, 6, 2000) * 3, rng.integers(0, 5, 2000)
    valid, support = rng.random(2000) > 0.2, rng.random(2000) > 0.7
    ov = scene_overlaps(pred, gt, valid, support)
    object_ = valid & ~support & (gt > 0)
    pred_ids, gt_ids = np.unique(pred[pred > 0]), np.unique(gt[object_])
    for p, pid in enumerate(pred_ids):
        mine = valid & (pred == pid)
        assert ov.pred_size[p] == mine.sum()
        assert ov.pred_ignored[p] == (mine & ~object_).sum()
        assert ov.confidence[p] == pytest.approx(mine.sum() / valid.sum())
        for g, gid in enumerate(gt_ids):
            assert ov.intersection[p, g] == (mine & object_ & (gt == gid)).sum()
    assert list(ov.gt_size) == [(object_ & (gt == g)).sum() for g in gt_ids]


def test_perfect_prediction_scores_one():
    gt = ids((0, 50), (1, 100), (2, 60), (3, 30))
    support = gt == 0
    s = summarize([evaluate_scene(np.where(gt > 0, gt + 6, 0), gt, support=support)])
    np.testing.assert_allclose(s.ap, 1.0)
    assert (s.precision, s.recall, s.f_measure, s.good_fraction) == (1.0, 1.0, 1.0, 1.0)
    assert (s.num_gt, s.num_pred) == (3, 3)


def test_merged_pair():
    gt = ids((0, 50), (1, 70), (2, 30))
    s = summarize([evaluate_scene(np.where(gt > 0, 5, 0), gt, support=gt == 0)])
    # matched to the 70-point object: P = R = 70 / 100; its F = 140 / 170, the other's 0
    assert (s.precision, s.recall, s.f_measure) == pytest.approx((0.7, 0.7, 0.7))
    assert s.good_fraction == 0.5
    # IoU 0.7 with one object of two: recall 1/2 at precision 1, up to IoU 0.65
    assert (s.ap25, s.ap50) == pytest.approx((0.5, 0.5))
    assert s.map == pytest.approx(4 / 10 * 0.5)


def test_split_object_and_confidence_order():
    gt = ids((1, 100))
    pred = ids((1, 70), (2, 30))
    scene = evaluate_scene(pred, gt, confidence=np.array([0.2, 0.9]))
    s = summarize([scene])
    assert (s.precision, s.recall, s.f_measure) == pytest.approx((0.7, 0.7, 0.7))
    assert s.good_fraction == 1.0     # the 70-point part has F = 140 / 170 > 0.75
    # IoU 0.25: the confident 30-point part takes the object, the other is a duplicate
    assert list(scene.detections.outcome[0]) == [FALSE_POSITIVE, TRUE_POSITIVE]
    assert s.ap25 == pytest.approx(1.0)
    # IoU 0.5: a false positive first, then the hit: (r, p) = (0, 1), (0, 0), (1, 1/2)
    assert s.ap50 == pytest.approx(0.25)
    # by size, the larger part ranks first
    assert summarize([evaluate_scene(pred, gt)]).ap50 == pytest.approx(1.0)


def test_empty_prediction_scores_zero():
    gt = ids((0, 20), (1, 100), (2, 50))
    s = summarize([evaluate_scene(np.zeros_like(gt), gt, support=gt == 0)])
    np.testing.assert_array_equal(s.ap, 0.0)
    assert (s.precision, s.recall, s.f_measure, s.good_fraction) == (0.0, 0.0, 0.0, 0.0)
    assert s.num_pred == 0


def test_support_is_no_object_and_predictions_on_it_are_left_out():
    gt = ids((9, 200), (1, 100), (2, 100))        # the table carries an id too
    support = gt == 9
    pred = ids((3, 20), (4, 180), (1, 100), (2, 100))
    pred[gt == 2] = 3                              # object 2 and 20 table points
    scene = evaluate_scene(pred, gt, support=support)
    s = summarize([scene])
    assert s.num_gt == 2
    # the largest, most confident prediction is the table: ignored, not a false positive
    assert scene.detections.outcome[1, 2] == IGNORED
    assert (s.ap25, s.ap50) == pytest.approx((1.0, 1.0))
    assert (s.precision, s.recall) == pytest.approx((200 / 220, 1.0))
    # without the support mask, the table is an object and the prediction on it finds it
    assert summarize([evaluate_scene(pred, gt)]).num_gt == 3


def test_prediction_more_than_half_on_support_is_dropped():
    gt = ids((0, 200), (1, 100))
    pred = ids((0, 140), (1, 60), (1, 40), (2, 60))     # 60 % table and 40 % of the object
    scene = evaluate_scene(pred, gt, support=gt == 0)
    assert (scene.detections.outcome[:, 0] == IGNORED).all()
    assert (scene.objects.precision, scene.objects.recall) == pytest.approx((1.0, 0.6))
    # half on the table: an object prediction, a false positive at IoU 40 / 140 < 0.5
    pred[140:160] = 0
    scene = evaluate_scene(pred, gt, support=gt == 0)
    assert scene.detections.outcome[1, 0] == FALSE_POSITIVE
    assert scene.objects.precision == pytest.approx(60 / (80 + 60))


def test_average_precision_by_hand():
    # (r, p): (0, 1) (1/2, 1) (1/2, 1/2) (1, 2/3), each weighed by half its neighbours' span
    hand = 1 * 0.25 + 1 * 0.25 + 0.5 * 0.25 + 2 / 3 * 0.25
    d = detections([0.9, 0.8, 0.7], [TRUE_POSITIVE, FALSE_POSITIVE, TRUE_POSITIVE], 2)
    np.testing.assert_allclose(d.average_precision(), hand)
    with_ignored = detections([0.95, 0.9, 0.8, 0.7],
                              [IGNORED, TRUE_POSITIVE, FALSE_POSITIVE, TRUE_POSITIVE], 2)
    np.testing.assert_allclose(with_ignored.average_precision(), hand)
    # equal confidences are one operating point: (1, 2/3)
    tied = detections([1.0, 1.0, 1.0], [TRUE_POSITIVE, FALSE_POSITIVE, TRUE_POSITIVE], 2)
    np.testing.assert_allclose(tied.average_precision(), 0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(detections([0.5], [FALSE_POSITIVE], 0).average_precision()).all()


def test_ap_is_pooled_over_scenes():
    gt_a, gt_b = ids((1, 100), (2, 50)), ids((1, 80))
    s = summarize([evaluate_scene(gt_a, gt_a), evaluate_scene(np.zeros_like(gt_b), gt_b)])
    # two hits of three objects at precision 1: (r, p) = (0, 1) (1/3, 1) (2/3, 1)
    assert s.ap50 == pytest.approx(2 / 3)     # the mean of per-scene APs would be 1/2
    assert s.f_measure == pytest.approx(0.5)  # overlap F is a mean over scenes
    assert (s.num_scenes, s.num_gt) == (2, 3)


def test_mosd_label_mapping():
    n = MIN_GT_POINTS
    label = np.repeat([0, 1, 5, 20, 21, 29, 30, 12, 20, 1, 50], [n, n, n, n, n, n, n, n, n, n, 9])
    valid = np.repeat([False, True, True, True, True, True, True, True, False, False, True],
                      [n, n, n, n, n, n, n, n, n, n, 9])
    gt, support = mosd_ground_truth(label, valid)
    expected = np.repeat([0, 0, 0, 1, 1, 1, 2, 0, 0, 0, 0], [n, n, n, n, n, n, n, n, n, n, 9])
    np.testing.assert_array_equal(gt, expected)   # labelled NaN points and tiny objects: 0
    np.testing.assert_array_equal(support, valid & (label >= 1) & (label <= 9))
    assert support[n:3 * n].all() and not support[9 * n:10 * n].any()


def test_synthetic_split_is_held_out_and_labelled():
    (scene,) = iter_synthetic(1)
    assert scene.name == f'seed{TEST_FIRST_SEED}' and scene.subset in SENSORS
    assert scene.support.any() and not (scene.support & (scene.gt > 0)).any()
    assert not ((scene.gt > 0) & ~scene.cloud.valid).any()
    counts = np.bincount(scene.gt)[1:]
    assert (counts[counts > 0] >= MIN_GT_POINTS).all() and (counts > 0).sum() >= 1


@pytest.mark.shared
def test_the_labelled_frame_of_another_camera_numbers_its_objects(shared_dir):
    (scene,) = iter_labelled(shared_dir / 'data' / 'realsense')
    assert scene.name == 'arc2017_bin' and scene.subset == 'real'
    assert len(np.unique(scene.gt[scene.gt > 0])) == 8 and not scene.support.any()
    assert not ((scene.gt > 0) & ~scene.cloud.valid).any()


def test_a_frame_without_labels_is_refused_by_name(tmp_path):
    path = tmp_path / 'plain.pcd'
    path.write_text('VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\n'
                    'HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n0 0 1\n0 0 2\n')
    with pytest.raises(ValueError, match='no label field'):
        labelled_scene(path)
    with pytest.raises(FileNotFoundError, match='no labelled'):
        list(iter_labelled(tmp_path / 'empty'))


@pytest.mark.shared
def test_mosd_frames_and_learn17(shared_dir):
    frames = mosd_frames(shared_dir / 'data' / 'mosd' / 'learn')
    subsets = [subset for subset, _ in frames]
    assert [subsets.count(s) for s in ('boxes', 'stacked', 'occluded', 'cylinders')] == \
        [17, 8, 8, 12]
    scene = mosd_scene('stacked', dict((p.stem, p) for _, p in frames)['learn17'])
    assert len(np.unique(scene.gt[scene.gt > 0])) >= 2
    assert scene.support.sum() > 100_000 and not (scene.support & (scene.gt > 0)).any()


def test_cli_evaluates_and_reports_an_unbuildable_segmenter(tmp_path, capsys):
    out, plot = tmp_path / 'EVAL.md', tmp_path / 'plots' / 'eval.png'
    code = main(['evaluate', '--dataset', 'synthetic', '--synthetic-scenes', '1',
                 '--segmenters', 'euclidean,segvec3d', '--model', str(tmp_path / 'missing.pt'),
                 '--out', str(out), '--plot', str(plot)])
    assert code == 0
    report = out.read_text()
    (scene,) = iter_synthetic(1)
    assert f'| synthetic | {scene.subset} | euclidean | 1 |' in report
    assert 'Not evaluated: segvec3d' in report and 'Baseline-only run' in report
    assert '--segmenters euclidean,segvec3d' in report and '](plots/eval.png)' in report
    assert plot.read_bytes()[:4] == b'\x89PNG'
    assert 'segvec3d is NOT evaluated' in capsys.readouterr().err


def test_cli_evaluates_simulated_lidar_scans_with_the_lidar_preset(tmp_path):
    out = tmp_path / 'LIDAR.md'
    code = main(['evaluate', '--dataset', 'lidar', '--synthetic-scenes', '2',
                 '--params-file', str(REPO / 'config' / 'lidar.yaml'), '--min-range', '0.3',
                 '--segmenters', 'range_image', '--out', str(out),
                 '--plot', str(tmp_path / 'lidar.png')])
    assert code == 0
    report = out.read_text()
    for scene in iter_lidar(2):
        assert f'| lidar | {scene.subset} | range_image | 1 |' in report
    assert '--dataset lidar' in report and '--min-range 0.3' in report
    assert f'objects under {MIN_LIDAR_GT_POINTS} valid points' in report


def test_cli_rejects_an_unknown_segmenter():
    with pytest.raises(SystemExit) as exit_:
        main(['evaluate', '--segmenters', 'euclidean,bogus'])
    assert exit_.value.code == 2
