"""The benchmark report: per-stage statistics, a markdown file and a plot of time per stage."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from segvec3d_ros.bench.measure import STAGES, TOTAL
from segvec3d_ros.evaluation.report import machine_description

BASELINE = 'euclidean'
MIB = 2.0**20
# What test/test_throughput.py reports of a run through the node over DDS, with headers.
DDS_COLUMNS = (('segmenter', 'segmenter'), ('frames', 'published'), ('rate_hz', 'at Hz'),
               ('received', 'received'), ('processed', 'processed'),
               ('dropped', 'dropped (node)'), ('lost', 'lost (DDS)'),
               ('processed_rate_hz', 'processed Hz'), ('latency_median_ms', 'latency median ms'),
               ('latency_p95_ms', 'latency p95 ms'), ('client_median_ms', 'client median ms'),
               ('client_p95_ms', 'client p95 ms'))


@dataclass(frozen=True)
class Setup:
    """One configuration: a segmenter, with its inference backend and device."""

    segmenter: str          # euclidean or segvec3d
    backend: str            # numpy (euclidean), torch or onnxruntime
    device: str             # cpu or cuda
    model_path: str = ''

    @property
    def name(self) -> str:
        """How tables and plots call it."""
        if self.segmenter == BASELINE:
            return BASELINE
        return f'{self.segmenter} {self.backend} {self.device}'


@dataclass
class Measurement:
    """One setup's runs on one frame (`measure.measure_pipeline`'s result)."""

    setup: Setup
    size: int                   # points asked for; the frame has result['num_points']
    result: dict[str, Any]
    frame: str = ''             # a real frame's file name; '' for a generated frame

    def median_ms(self, stage: str) -> float:
        """Median milliseconds of a stage, NaN where the setup has no such stage."""
        values = self.result['seconds'].get(stage)
        return 1e3 * float(np.median(values)) if values else math.nan

    def p95_ms(self, stage: str) -> float:
        """95th percentile milliseconds of a stage, NaN where the setup has no such stage."""
        values = self.result['seconds'].get(stage)
        return 1e3 * float(np.percentile(values, 95)) if values else math.nan


def stage_order(measurements: Sequence[Measurement]) -> list[str]:
    """Stages any measurement timed, in frame order; unknown ones just before encode."""
    timed = dict.fromkeys(s for m in measurements for s in m.result['seconds'] if s != TOTAL)
    extra = [s for s in timed if s not in STAGES]
    return [s for s in STAGES[:-1] if s in timed] + extra + [s for s in STAGES[-1:] if s in timed]


def baseline_ratio(measurement: Measurement, measurements: Sequence[Measurement]) -> float:
    """End-to-end median over the Euclidean baseline's on the same frame, NaN without one."""
    base = [m for m in measurements if (m.size, m.frame) == (measurement.size, measurement.frame)
            and m.setup.name == BASELINE]
    return measurement.median_ms(TOTAL) / base[0].median_ms(TOTAL) if base else math.nan


def _ms(value: float) -> str:
    return '–' if math.isnan(value) else f'{value:.1f}' if value < 100 else f'{value:.0f}'


def _mib(value: int | None) -> str:
    return '–' if value is None else f'{value / MIB:.0f}'


def markdown_report(measurements: Sequence[Measurement], *, command: str, software: str,
                    gpu: str | None, frames: str, skipped: dict[str, str],
                    query: dict[str, Any] | None, dds: Sequence[dict[str, Any]],
                    plot: str | None) -> str:
    """Markdown report: set-up, end-to-end and per-stage tables, plot, queries, DDS runs.

    gpu: the GPU's name, or None when there was none; skipped: setups not measured, and why;
    query: `measure.measure_query`'s timings and the instance count, or None; dds:
    test/test_throughput.py results.
    """
    lines = ['# Performance', '']
    if gpu is None:
        lines += ['> **CPU-only figures.** The machine this ran on had no GPU, so every number '
                  'below is a CPU number. No GPU figure was measured, and none is estimated.', '']
    lines += [f'- Command: `{command}`',
              f'- Machine: {machine_description()}',
              f'- GPU: {gpu or "none"}',
              f'- Software: {software}',
              f'- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC',
              f'- Frames: {frames}',
              '- Method: each setup runs in a fresh process per frame size: warm-up frames, then '
              'timed frames; median and 95th percentile per stage. End to end = decode of the '
              'sensor\'s PointCloud2 body + `Pipeline.process` + encode of the labeled cloud '
              '(what the node does, without DDS and the instance and marker messages). '
              '`× euclidean`: end-to-end median over the Euclidean baseline\'s on the same '
              'frame, in the same run. Peak RSS: the process\'s peak resident memory while '
              'it processed the frames (Linux VmHWM; interpreter, libraries and model '
              'included); frame Δ: that peak minus the resident memory before the first '
              'frame.']
    lines += [f'- Not measured: {name}: {reason}' for name, reason in skipped.items()]
    lines += ['', '## End to end', '',
              '| frame | points (H × W) | valid | working | setup | median ms | p95 ms | '
              'frames/s | × euclidean | peak RSS MiB | frame Δ MiB |', '|' + ' --- |' * 11]
    for m in measurements:
        r, total = m.result, m.median_ms(TOTAL)
        ratio = baseline_ratio(m, measurements)
        lines.append(
            f'| {m.frame or "generated"} | {r["num_points"]:,} ({r["height"]} × {r["width"]}) | '
            f'{r["num_valid"]:,} | '
            f'{r["num_working"]:,} | {m.setup.name} | {_ms(total)} | {_ms(m.p95_ms(TOTAL))} | '
            f'{1e3 / total:.1f} | {"–" if math.isnan(ratio) else f"{ratio:.2f}"} | '
            f'{_mib(r["peak_rss"])} | {_mib(r["peak_rss"] - r["rss_before"])} |')
    stages = stage_order(measurements)
    lines += ['', '## Per stage: median / p95 ms', '',
              '| frame | points | setup | ' + ' | '.join(stages) + ' |',
              '|' + ' --- |' * (3 + len(stages))]
    for m in measurements:
        cells = [f'{_ms(m.median_ms(s))} / {_ms(m.p95_ms(s))}' if s in m.result['seconds']
                 else '–' for s in stages]
        lines.append(f'| {m.frame or "generated"} | {m.result["num_points"]:,} | {m.setup.name} | '
                     f'{" | ".join(cells)} |')
    if plot:
        lines += ['', f'![Median time per stage against frame size, per setup]({plot})']
    if query:
        lines += ['', '## Text queries', '',
                  f'`QueryEngine.query` (top 5), the query node\'s engine ({query["engine"]}), '
                  f'on the {query["instances"]} instances {query["segmenter"]} finds in a '
                  '640 × 480 frame of 20 objects, text encoder on the CPU, no DDS:', '',
                  '| query | runs | median ms | p95 ms |', '| --- | --- | --- | --- |']
        for kind, label in (('cached', 'text asked before (embeddings cached)'),
                            ('first_time', 'first time of each text')):
            values = 1e3 * np.asarray(query[kind])
            lines.append(f'| {label} | {len(values)} | {_ms(float(np.median(values)))} | '
                         f'{_ms(float(np.percentile(values, 95)))} |')
    if dds:
        lines += ['', '## Through the real node over DDS', '',
                  '640 × 480 organized clouds published at a fixed rate to `segvec3d-up`; '
                  'received, processed, dropped, rate and latency (arrival to outputs '
                  'published) from the node\'s /diagnostics, client latency from publishing to '
                  'receiving the labeled cloud; lost = published but never received.', '',
                  '| ' + ' | '.join(header for _, header in DDS_COLUMNS) + ' |',
                  '|' + ' --- |' * len(DDS_COLUMNS)]
        for run in dds:
            lines.append('| ' + ' | '.join(str(run[key]) for key, _ in DDS_COLUMNS) + ' |')
        lines += [''] + [f'- `{run["command"]}`' + (
            f': query service over DDS, {run["query"]["calls"]} calls on '
            f'{run["query"]["instances"]} instances: median {run["query"]["median_ms"]} ms, '
            f'p95 {run["query"]["p95_ms"]} ms' if run.get('query') else '') for run in dds]
    lines.append('')
    return '\n'.join(lines)


def plot_stages(path: str | Path, measurements: Sequence[Measurement], title: str) -> None:
    """Stacked median time per stage against frame size, one panel per setup.

    Only the generated frames: one scene at several sizes, so that the curve is the size's.
    """
    import matplotlib  # a heavy import, needed only here
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    measurements = [m for m in measurements if not m.frame]
    setups = list(dict.fromkeys(m.setup.name for m in measurements))
    stages = stage_order(measurements)
    colours = dict(zip(stages, plt.get_cmap('tab20').colors))
    fig, axes = plt.subplots(1, len(setups), figsize=(4.2 * len(setups), 4.0), sharey=True,
                             squeeze=False)
    for ax, setup in zip(axes[0], setups):
        rows = sorted((m for m in measurements if m.setup.name == setup),
                      key=lambda m: m.result['num_points'])
        points = [m.result['num_points'] / 1e3 for m in rows]
        present = [s for s in stages if any(s in m.result['seconds'] for m in rows)]
        ax.stackplot(points, [[0.0 if math.isnan(v := m.median_ms(s)) else v for m in rows]
                              for s in present],
                     labels=present, colors=[colours[s] for s in present])
        ax.plot(points, [m.median_ms(TOTAL) for m in rows], 'k.--', lw=0.8, label='end to end')
        ax.set_title(setup, fontsize=9)
        ax.set_xlabel('points per frame (thousands)')
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('median ms per frame')
    legend = {label: handle for ax in axes[0]
              for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(legend.values(), legend.keys(), loc='lower center', ncols=min(len(legend), 6),
               fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))   # room for the legend below the panels
    fig.savefig(path, dpi=110)
    plt.close(fig)
