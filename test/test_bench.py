"""segvec3d bench: a tiny run end to end, and the pieces of its report."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from scenes import tabletop_points
from segvec3d_ros.bench.measure import measure_query, query_texts
from segvec3d_ros.bench.report import DDS_COLUMNS, Measurement, Setup, baseline_ratio, stage_order
from segvec3d_ros.cli.main import main
from segvec3d_ros.grounding.query import QueryEngine
from segvec3d_ros.instances import InstanceInfo
from segvec3d_ros.model.export import export_onnx
from segvec3d_ros.model.segvec3d import SegVec3D, SegVec3DConfig, save_checkpoint


class HashEncoder:
    """Unit vectors from a hash of each text; remembers the first text of every call."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.queries.append(texts[0])
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        vectors = np.stack([np.random.default_rng(s).normal(size=8) for s in seeds])
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope='module')
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp('models')
    torch.manual_seed(0)
    model = SegVec3D(SegVec3DConfig(use_normals=True))
    save_checkpoint(model, folder / 'segvec3d.pt')
    export_onnx(model, folder / 'segvec3d.onnx', example_n=256)
    return folder / 'segvec3d.pt', folder / 'segvec3d.onnx'


def test_a_tiny_bench_writes_a_report_with_every_setup_and_stage(tmp_path, models):
    dds = {key: 1 for key, _ in DDS_COLUMNS}
    dds.update(segmenter='euclidean', command='python test/test_throughput.py --frames 9',
               query={'calls': 3, 'instances': 4, 'median_ms': 5.0, 'p95_ms': 6.0})
    (tmp_path / 'dds.json').write_text(json.dumps(dds))
    out, plot = tmp_path / 'docs' / 'PERF.md', tmp_path / 'docs' / 'perf.png'
    code = main(['bench', '--sizes', '1500', '--repeats', '2', '--warmup', '0',
                 '--devices', 'cpu', '--model-pt', str(models[0]),
                 '--model-onnx', str(models[1]), '--query-repeats', '0',
                 '--dds', str(tmp_path / 'dds.json'), '--out', str(out), '--plot', str(plot)])
    assert code == 0
    assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    report = out.read_text()
    assert '--sizes 1500 --setups euclidean,torch,onnxruntime --devices cpu' in report
    assert '- GPU: ' in report and '- Machine: ' in report
    assert '(perf.png)' in report
    rows = [line.split(' | ') for line in report.splitlines()
            if line.startswith('| generated | 1,')]
    end_to_end, stages = rows[:3], rows[3:]
    assert [row[4] for row in end_to_end] == ['euclidean', 'segvec3d torch cpu',
                                              'segvec3d onnxruntime cpu']
    assert [row[2] for row in stages] == [row[4] for row in end_to_end]
    ratios = [row[8] for row in end_to_end]
    assert ratios[0] == '1.00' and all(float(r) > 0 for r in ratios[1:])
    # The learned setups time every stage, the baseline has no features, k-NN or network.
    assert stages[0][7:10] == ['–', '–', '–'] and '–' not in ' '.join(stages[1][3:])
    assert '## Through the real node over DDS' in report
    assert 'python test/test_throughput.py --frames 9' in report
    assert '## Text queries' not in report


def test_real_frames_are_measured_as_they_are_without_open3d(tmp_path, models, monkeypatch):
    # A GPU machine may have only CUDA torch: no generated frame, and nothing imports Open3D.
    blocked = tmp_path / 'blocked' / 'open3d'
    blocked.mkdir(parents=True)
    (blocked / '__init__.py').write_text('raise ImportError("open3d is not installed here")\n')
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        [str(blocked.parent), *filter(None, [os.environ.get('PYTHONPATH')])]))
    xyz, rgb, _ = tabletop_points()
    frame = tmp_path / 'table.npy'
    np.save(frame, np.hstack([xyz, rgb]).astype(np.float32))
    out = tmp_path / 'PERF.md'
    code = main(['bench', '--sizes', 'none', '--frames', str(frame), '--repeats', '1',
                 '--warmup', '0', '--setups', 'euclidean,onnxruntime', '--devices', 'cpu',
                 '--model-onnx', str(models[1]), '--query-repeats', '0', '--out', str(out),
                 '--plot', str(tmp_path / 'perf.png')])
    assert code == 0
    report = out.read_text()
    rows = [line.split(' | ') for line in report.splitlines() if line.startswith('| table.npy |')]
    assert [row[4] for row in rows[:2]] == ['euclidean', 'segvec3d onnxruntime cpu']
    assert rows[0][1] == f'{len(xyz):,} (1 × {len(xyz)})' and len(rows) == 4
    assert '--sizes none' in report and f'--frames {frame}' in report
    assert '![' not in report and not (tmp_path / 'perf.png').exists()   # no plot
    assert main(['bench', '--sizes', 'none', '--out', str(out)]) == 2


def test_a_missing_model_is_reported_not_measured(tmp_path, models):
    out = tmp_path / 'PERF.md'
    code = main(['bench', '--sizes', '1200', '--repeats', '1', '--warmup', '0',
                 '--setups', 'euclidean,torch', '--devices', 'cpu',
                 '--model-pt', str(tmp_path / 'none.pt'), '--query-repeats', '0',
                 '--out', str(out), '--plot', str(tmp_path / 'perf.png')])
    assert code == 0
    report = out.read_text()
    assert f'- Not measured: segvec3d torch cpu: no model file {tmp_path / "none.pt"}' in report
    assert '| segvec3d torch cpu |' not in report


def test_bad_options_are_refused(capsys):
    for bad in (['--sizes', '10'], ['--setups', 'magic'], ['--repeats', '0'],
                ['--devices', 'tpu']):
        with pytest.raises(SystemExit):
            main(['bench', *bad])
    assert 'choose from euclidean, torch, onnxruntime' in capsys.readouterr().err


def test_query_timing_asks_each_text_once_then_repeats_them():
    encoder = HashEncoder()
    rng = np.random.default_rng(0)
    instances = [InstanceInfo(id=i, num_points=100, centroid=rng.uniform(-1, 1, 3),
                              bbox_center=rng.uniform(-1, 1, 3),
                              bbox_quaternion=np.array([0.0, 0.0, 0.0, 1.0]),
                              bbox_size=rng.uniform(0.05, 0.3, 3),
                              mean_color=np.append(rng.uniform(0, 1, 3), 1.0))
                 for i in range(1, 21)]
    timed = measure_query(QueryEngine(encoder), instances, repeats=30)
    assert len(timed['first_time']) == len(timed['cached']) == 30
    assert all(seconds > 0 for seconds in timed['first_time'] + timed['cached'])
    assert encoder.queries     # the engine did embed text
    assert len(set(query_texts(252))) == 252
    with pytest.raises(ValueError):
        query_texts(253)


def test_ratio_is_against_the_baseline_on_the_same_frame():
    def measured(setup: Setup, size: int, seconds: list[float]) -> Measurement:
        return Measurement(setup, size, {'seconds': {'total': seconds}})
    base = Setup('euclidean', 'numpy', 'cpu')
    learned = Setup('segvec3d', 'onnxruntime', 'cpu')
    rows = [measured(base, 10, [0.1, 0.2, 0.3]), measured(learned, 10, [0.4, 0.4, 1.0]),
            measured(learned, 20, [1.0])]
    assert rows[1].median_ms('total') == pytest.approx(400)
    assert rows[1].p95_ms('total') == pytest.approx(940)
    assert baseline_ratio(rows[1], rows) == pytest.approx(2.0)
    assert np.isnan(baseline_ratio(rows[2], rows))
    assert np.isnan(rows[0].median_ms('network'))


def test_stages_come_in_frame_order_with_new_ones_before_encode():
    def measured(*stages: str) -> Measurement:
        return Measurement(Setup('euclidean', 'numpy', 'cpu'), 1,
                           {'seconds': {stage: [0.1] for stage in stages}})
    rows = [measured('decode', 'network', 'describe', 'ground', 'encode', 'total'),
            measured('decode', 'plane', 'network', 'encode', 'total')]
    assert stage_order(rows) == ['decode', 'plane', 'network', 'describe', 'ground', 'encode']
