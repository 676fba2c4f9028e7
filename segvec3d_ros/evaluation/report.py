"""The evaluation report: per-set summaries, a markdown file and a bar plot."""
from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from segvec3d_ros.evaluation.metrics import SceneMetrics, Summary, summarize

ALL = 'all'                 # the subset name of a whole dataset
LEARNED = 'segvec3d'        # the segmenter a report without it is a baseline-only report of


@dataclass
class SceneRecord:
    """One segmenter's result on one scene."""

    dataset: str
    subset: str
    name: str
    segmenter: str
    metrics: SceneMetrics
    seconds: float          # Pipeline.process wall time


@dataclass
class Row:
    """The summary of one segmenter on one subset (or ALL) of a dataset."""

    dataset: str
    subset: str
    segmenter: str
    summary: Summary
    seconds: float          # mean per frame


def summary_rows(records: Sequence[SceneRecord]) -> list[Row]:
    """Summaries per dataset, subset and segmenter, in first-seen order.

    A dataset with more than one subset also gets an ALL row per segmenter.
    """
    groups: dict[tuple[str, str, str], list[SceneRecord]] = {}
    for record in records:
        groups.setdefault((record.dataset, record.subset, record.segmenter), []).append(record)
    datasets = list(dict.fromkeys(r.dataset for r in records))
    segmenters = list(dict.fromkeys(r.segmenter for r in records))
    keys: list[tuple[str, str, str]] = []
    for dataset in datasets:
        subsets = list(dict.fromkeys(r.subset for r in records if r.dataset == dataset))
        for subset in subsets + ([ALL] if len(subsets) > 1 else []):
            keys += [(dataset, subset, s) for s in segmenters]
    rows = []
    for dataset, subset, segmenter in keys:
        members = [r for r in records if r.dataset == dataset and r.segmenter == segmenter
                   and subset in (ALL, r.subset)]
        if members:
            rows.append(Row(dataset, subset, segmenter, summarize([r.metrics for r in members]),
                            float(np.mean([r.seconds for r in members]))))
    return rows


def machine_description() -> str:
    """CPU model and core counts, OS and Python of this machine."""
    try:
        cpuinfo = Path('/proc/cpuinfo').read_text().splitlines()
    except OSError:
        cpuinfo = []
    model = next((line.split(':', 1)[1].strip() for line in cpuinfo
                  if line.startswith('model name')), platform.processor() or platform.machine())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return (f'{model}, {os.cpu_count()} logical cores ({usable} usable by the run), '
            f'{platform.system()} {platform.release()}, Python {platform.python_version()}')


def _pct(value: float) -> str:
    return '–' if math.isnan(value) else f'{100 * value:.1f}'


_COLUMNS = 'objects | predicted | AP25 | AP50 | mAP | P | R | F | %F≥0.75'


def _cells(summary: Summary) -> str:
    s = summary
    return ' | '.join([str(s.num_gt), str(s.num_pred)] + [_pct(v) for v in (
        s.ap25, s.ap50, s.map, s.precision, s.recall, s.f_measure, s.good_fraction)])


def markdown_report(records: Sequence[SceneRecord], command: str, skipped: dict[str, str],
                    datasets: dict[str, str], plot: str | None = None) -> str:
    """Markdown report: set-up, the summary table, a per-scene table and the plot.

    skipped: segmenters not evaluated, with the reason; datasets: a description of each.
    """
    evaluated = list(dict.fromkeys(r.segmenter for r in records))
    lines = ['# Instance segmentation evaluation', '']
    if LEARNED not in evaluated:
        lines += [f'> **Baseline-only run**: the learned {LEARNED} segmenter is not in these '
                  f'results ({skipped.get(LEARNED, "not requested")}). Regenerate this file '
                  f'with the command below once the model exists.', '']
    lines += [f'- Command: `{command}`',
              f'- Machine: {machine_description()}',
              f'- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC',
              f'- Segmenters evaluated: {", ".join(evaluated) or "none"}']
    lines += [f'- Not evaluated: {name}: {reason}' for name, reason in skipped.items()]
    lines += [f'- Dataset {name}: {text}' for name, text in datasets.items()]
    lines += ['', 'Metrics (in %, definitions in `segvec3d_ros/evaluation/metrics.py`): '
              'class-agnostic ScanNet-style AP at IoU 0.25 and 0.5 and mAP over IoU '
              '0.5:0.05:0.95, pooled over the scenes of a row, with a prediction\'s fraction of '
              'the valid points as its confidence; overlap precision, recall and F-measure of '
              'Xie et al. (Hungarian matching on F-measure) and the fraction of objects with '
              'F ≥ 0.75, averaged over scenes. Support surfaces are no objects; predictions '
              'mostly on them are left out. `objects`: ground-truth objects, `predicted`: '
              'predicted instances; time: `Pipeline.process` per frame (reading or generating '
              'the scene excluded).', '',
              f'| dataset | subset | segmenter | scenes | {_COLUMNS} | ms/frame |',
              '|' + ' --- |' * 14]
    lines += [f'| {r.dataset} | {r.subset} | {r.segmenter} | {r.summary.num_scenes} | '
              f'{_cells(r.summary)} | {1000 * r.seconds:.0f} |' for r in summary_rows(records)]
    if plot:
        lines += ['', f'![F-measure and AP50 per subset and segmenter]({plot})']
    lines += ['', '<details><summary>Per scene</summary>', '',
              f'| dataset | subset | scene | segmenter | {_COLUMNS} | ms |',
              '|' + ' --- |' * 14]
    lines += [f'| {r.dataset} | {r.subset} | {r.name} | {r.segmenter} | '
              f'{_cells(summarize([r.metrics]))} | {1000 * r.seconds:.0f} |' for r in records]
    lines += ['', '</details>', '']
    return '\n'.join(lines)


def plot_summary(path: str | Path, rows: Sequence[Row], title: str) -> None:
    """Plot grouped bars of F-measure and AP50 per dataset subset, one bar per segmenter."""
    import matplotlib  # a heavy import, needed only here
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r.dataset, r.subset) for r in rows))
    segmenters = list(dict.fromkeys(r.segmenter for r in rows))
    value = {(r.dataset, r.subset, r.segmenter): r.summary for r in rows}
    width = 0.8 / len(segmenters)
    x = np.arange(len(groups))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.8 * len(groups)), 4.2), sharey=True)
    for ax, (label, metric) in zip(axes, (('overlap F-measure', 'f_measure'), ('AP50', 'ap50'))):
        for k, segmenter in enumerate(segmenters):
            heights = [100 * getattr(value[g + (segmenter,)], metric)
                       if g + (segmenter,) in value else np.nan for g in groups]
            bars = ax.bar(x + (k - (len(segmenters) - 1) / 2) * width, heights, width,
                          label=segmenter)
            ax.bar_label(bars, fmt='%.0f', fontsize=7)
        ax.set_title(label)
        ax.set_xticks(x, [f'{d}\n{s}' for d, s in groups], fontsize=8)
        ax.set_ylim(0, 105)
        ax.grid(axis='y', alpha=0.3)
    axes[0].set_ylabel('%')
    fig.legend(*axes[0].get_legend_handles_labels(), loc='lower center',
               ncols=len(segmenters), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the axes
    fig.savefig(path, dpi=110)
    plt.close(fig)
