"""Each segmenter on the shared Ouster scans with config/lidar.yaml, side by side in one run.

Per bag and segmenter: instances, the largest instance's share of the returns, no-echo
returns labelled, and the median of `Pipeline.process` over 10 frames after 3 warm-ups.
The learned segmenter runs at its model's voxel size, 0.01 m, instead of the preset's 0.1 m;
the range-image segmenter also runs on each scan as an unorganized cloud (its fallback).

    python scripts/lidar_bench.py [--segmenters segvec3d,euclidean,range_image]
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from statistics import median
from time import perf_counter

import numpy as np

from segvec3d_ros.cli.common import pipeline_config
from segvec3d_ros.io.bags import iter_bag_clouds
from segvec3d_ros.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]
LEARNED_VOXEL_SIZE = 0.01
BAGS = ('OS-0-128-U1_v2.3.0_1024x10', 'OS-2-128-U1_v2.3.0_1024x10', 'OS-0-32-U1')


def main() -> None:
    """Print one markdown row per bag and segmenter."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--segmenters', default='segvec3d,euclidean,range_image')
    parser.add_argument('--data', default=str(REPO.parent / 'shared/data/lidar'))
    parser.add_argument('--warmups', type=int, default=3)
    parser.add_argument('--frames', type=int, default=10)
    args = parser.parse_args()
    clouds = {bag: next(iter(iter_bag_clouds(Path(args.data) / bag))).cloud() for bag in BAGS}
    print('| bag | segmenter | instances | largest share of returns | no-echo returns labelled '
          '| `Pipeline.process` median ms |')
    print('| --- | --- | ---: | ---: | ---: | ---: |')
    for bag, cloud in clouds.items():
        # No-echo returns as ouster-ros marks them, independently of Cloud.valid.
        empty = (cloud.xyz == 0).all(axis=1) | (cloud.extra['range'] == 0)
        returns = int((~empty).sum())
        for name in args.segmenters.split(','):
            # The learned model runs only at the voxel size it was trained at.
            voxel = LEARNED_VOXEL_SIZE if name == 'segvec3d' else None
            pipeline = Pipeline(pipeline_config(REPO / 'config' / 'lidar.yaml', segmenter=name,
                                                device='cpu', voxel_size=voxel))
            # The range-image segmenter's fallback: the same scan without its rows.
            flat = dataclasses.replace(cloud, height=1, width=len(cloud))
            runs = [(name, cloud)] + ([(f'{name}, unorganized', flat)]
                                      if name == 'range_image' else [])
            for label, frame_cloud in runs:
                times = []
                for frame in range(args.warmups + args.frames):
                    start = perf_counter()
                    result = pipeline.process(frame_cloud)
                    if frame >= args.warmups:
                        times.append(1e3 * (perf_counter() - start))
                sizes = np.bincount(result.labels.astype(np.int64), minlength=1)[1:]
                print(f'| {bag} | {label} | {len(result.instances)} | '
                      f'{100 * sizes.max(initial=0) / returns:.1f} % | '
                      f'{int(np.count_nonzero(result.labels[empty]))} | {median(times):.0f} |',
                      flush=True)


if __name__ == '__main__':
    main()
