"""Time `Pipeline.process` with a boolean pipeline setting on and off, frame by frame in turn.

Run side by side in one process, the two pipelines see the same machine load, so the median of
the per-frame differences is the setting's cost even where the machine's speed drifts (a shared
CPU) and separate benchmark runs disagree by more than that cost.

    python scripts/ab_setting.py split_touching --sizes 20000,307200 --frames 40
    python scripts/ab_setting.py split_touching --files ../shared/data/mosd/learn/*.pcd
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from segvec3d_ros.bench.measure import bench_frame
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.config import PipelineConfig
from segvec3d_ros.io.files import read_cloud
from segvec3d_ros.pipeline import Pipeline

_WARMUP = 3


def main() -> None:
    """Print, per frame size, each pipeline's median and the median paired difference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('setting', help='a boolean PipelineConfig field, e.g. split_touching')
    parser.add_argument('--sizes', default='20000,307200',
                        help='frame sizes in points, as segvec3d bench takes them')
    parser.add_argument('--frames', type=int, default=40, help='timed frames per pipeline')
    parser.add_argument('--files', nargs='+', metavar='CLOUD',
                        help='instead of --sizes: these clouds, each timed once per pipeline, '
                             'the differences pooled over the files')
    args = parser.parse_args()
    base = PipelineConfig(segmenter='segvec3d', device='cpu')
    if not isinstance(getattr(base, args.setting, None), bool):
        parser.error(f'{args.setting!r} is not a boolean pipeline setting')
    pipelines = {value: Pipeline(dataclasses.replace(base, **{args.setting: value}))
                 for value in (True, False)}
    if args.files:
        clouds = [read_cloud(path) for path in args.files]
        _compare(args.setting, pipelines, clouds, f'{len(clouds)} files')
        return
    for size in (int(text) for text in args.sizes.split(',')):
        _compare(args.setting, pipelines, [bench_frame(size)] * args.frames, f'{size} points')


def _compare(setting: str, pipelines: dict[bool, Pipeline], clouds: list[Cloud],
             name: str) -> None:
    """Warm both pipelines up on the first cloud, then time each cloud with both in turn."""
    for pipeline in pipelines.values():
        for _ in range(_WARMUP):
            pipeline.process(clouds[0])
    totals: dict[bool, list[float]] = {value: [] for value in pipelines}
    for cloud in clouds:
        for value, pipeline in pipelines.items():
            totals[value].append(1000 * pipeline.process(cloud).timings['total'])
    paired = np.array(totals[True]) - np.array(totals[False])
    print(f'{name}: {setting} true {np.median(totals[True]):.1f} ms, '
          f'false {np.median(totals[False]):.1f} ms (medians of {len(clouds)} frames); '
          f'paired difference median {np.median(paired):.1f} ms, mean {paired.mean():.1f} ms')


if __name__ == '__main__':
    main()
