"""Time `Pipeline.process` stage by stage for an earlier commit and this checkout, in turn.

Each round runs a fresh process for the earlier commit (a temporary git worktree of it first
on PYTHONPATH) and one for this checkout, each timing the same frames with the same
`config/segvec3d.yaml` settings; alternating rounds see the same drift of a shared machine,
whose speed moves by tens of per cent within minutes. Per stage: the least and the median
over the rounds of each process's median.

    python scripts/ab_commits.py c3048d5 ../shared/data/mosd/learn/learn33.pcd \
        ../shared/data/realsense/arc2017_bin.pcd --rounds 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / 'config' / 'segvec3d.yaml'
_WARMUP = 2


def time_stages(frames: list[str], segmenter: str, repeats: int) -> dict[str, float]:
    """Median seconds per stage of the importable package's pipeline over the frames."""
    # Imported here: the package is whichever checkout PYTHONPATH puts first.
    from segvec3d_ros.cli.common import pipeline_config
    from segvec3d_ros.io.files import read_cloud
    from segvec3d_ros.pipeline import Pipeline

    pipeline = Pipeline(pipeline_config(PARAMS, segmenter=segmenter))
    times: dict[str, list[float]] = {}
    for frame in frames:
        cloud = read_cloud(Path(frame))
        for repeat in range(_WARMUP + repeats):
            timings = pipeline.process(cloud).timings
            if repeat >= _WARMUP:
                for stage, seconds in timings.items():
                    times.setdefault(stage, []).append(seconds)
    return {stage: float(np.median(values)) for stage, values in times.items()}


def run_child(checkout: Path, args: argparse.Namespace) -> dict[str, float]:
    """Stage medians of `checkout`'s package, measured in a fresh process."""
    environment = dict(os.environ)
    environment['PYTHONPATH'] = os.pathsep.join(
        [str(checkout), environment.get('PYTHONPATH', '')])
    command = [sys.executable, __file__, '--child', '--segmenter', args.segmenter,
               '--repeats', str(args.repeats), args.commit, *args.frames]
    output = subprocess.run(command, env=environment, check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    """Print a markdown table: per stage, min / median ms of the earlier commit and of HEAD."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('commit', help='the earlier commit')
    parser.add_argument('frames', nargs='+', help='cloud files (.pcd, .ply, .npy)')
    parser.add_argument('--segmenter', default='segvec3d')
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=6, help='timed frames per file')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:     # one measurement, of whichever package PYTHONPATH puts first
        print(json.dumps(time_stages(args.frames, args.segmenter, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / 'base'
        subprocess.run(['git', '-C', str(REPO), 'worktree', 'add', '--detach', str(base),
                        args.commit], check=True, capture_output=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {'base': [], 'head': []}
            for _ in range(args.rounds):
                runs['base'].append(run_child(base, args))
                runs['head'].append(run_child(REPO, args))
        finally:
            subprocess.run(['git', '-C', str(REPO), 'worktree', 'remove', '--force', str(base)],
                           check=True, capture_output=True)
    stages = list(dict.fromkeys([*runs['base'][0], *runs['head'][0]]))
    stages.append(stages.pop(stages.index('total')))
    print(f'| stage | {args.commit} min / median ms | HEAD min / median ms |')
    print('| --- | --- | --- |')
    for stage in stages:
        cells = []
        for name in ('base', 'head'):
            values = [1000 * run[stage] for run in runs[name] if stage in run]
            cells.append(f'{min(values):.1f} / {np.median(values):.1f}' if values else '–')
        print(f'| {stage} | {cells[0]} | {cells[1]} |')


if __name__ == '__main__':
    main()
