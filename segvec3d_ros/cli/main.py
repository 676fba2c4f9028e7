"""segvec3d: command-line tools around the ROS-free pipeline (no ROS needed to run them).

    segvec3d segment FILE... --out-dir DIR [--params-file YAML] [--segmenter S]
                             [--model-path P] [--voxel-size M] [--topic T]
    segvec3d evaluate [--dataset mosd|synthetic|both] [--segmenters euclidean,segvec3d] ...
    segvec3d train CONFIG --out-dir OUT [--device auto|cpu|cuda] [--resume] [--install DIR]
    segvec3d train-grounding CONFIG --out-dir OUT [--backbone PATH] [--install DIR]

A subcommand is an `add_<name>_parser(commands)` function, here or in its own module, that adds
its parser and sets `run` to a function taking the parsed arguments and returning the exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from segvec3d_ros.cli.bench import add_bench_parser
from segvec3d_ros.cli.common import add_pipeline_options, pipeline_from_args
from segvec3d_ros.cli.evaluate import add_evaluate_parser
from segvec3d_ros.cli.grounding import add_train_grounding_parser
from segvec3d_ros.cli.train import add_train_parser
from segvec3d_ros.cloud import Cloud
from segvec3d_ros.instances import InstanceInfo
from segvec3d_ros.io.bags import BagError, is_bag, iter_bag_clouds
from segvec3d_ros.io.files import SUPPORTED_SUFFIXES, CloudFileError, read_cloud
from segvec3d_ros.io.pointcloud2 import CloudDecodeError
from segvec3d_ros.pipeline import SceneResult
from segvec3d_ros.render import render_instances


def instance_record(info: InstanceInfo) -> dict[str, Any]:
    """JSON-ready fields of one instance, as in segvec3d_msgs/Instance."""
    def floats(values: np.ndarray) -> list[float]:
        return np.asarray(values, dtype=np.float64).tolist()
    return {'id': info.id, 'label': info.label, 'label_score': float(info.label_score),
            'num_points': info.num_points, 'centroid': floats(info.centroid),
            'bbox': {'center': floats(info.bbox_center),
                     'orientation': floats(info.bbox_quaternion),  # x y z w
                     'size': floats(info.bbox_size)},
            'mean_color': floats(info.mean_color), 'embedding': floats(info.embedding)}


def write_outputs(out_dir: Path, name: str, source: str, cloud: Cloud,
                  result: SceneResult) -> None:
    """DIR/<name>.npy (instance id per input point, H x W when organized), .json and .png."""
    shape = (cloud.height, cloud.width) if cloud.is_organized else (len(cloud),)
    np.save(out_dir / f'{name}.npy', result.labels.reshape(shape))
    record = {'source': source, 'height': cloud.height, 'width': cloud.width,
              'num_points': result.num_input, 'num_valid': result.num_valid,
              'instances': [instance_record(info) for info in result.instances]}
    (out_dir / f'{name}.json').write_text(json.dumps(record, indent=1))
    render_instances(out_dir / f'{name}.png', cloud, result.labels, result.instances,
                     title=name)


def _clouds(path: str, topic: str | None) -> Iterator[tuple[str, str, Callable[[], Cloud]]]:
    """(output name, source, loader) of each cloud in a file or bag; bags yield one per message."""
    if is_bag(path):
        stem = Path(path).stem
        for index, message in enumerate(iter_bag_clouds(path, topic)):
            yield f'{stem}_{index:04d}', f'{path}[{index}]', message.cloud
    else:
        yield Path(path).stem, path, partial(read_cloud, path)


def run_segment(args: argparse.Namespace) -> int:
    """Segment every input; 0 when all worked, 1 when some failed, 2 when all failed."""
    try:
        pipeline = pipeline_from_args(args, 'segvec3d segment')
    except (ValueError, OSError) as error:
        print(f'segvec3d segment: error: {error}', file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = failed = 0
    for path in args.files:
        try:
            for name, source, load in _clouds(path, args.topic):
                start = time.perf_counter()
                try:
                    cloud = load()
                except (CloudFileError, CloudDecodeError) as error:
                    # A CloudFileError names its file already; a bag message's error does not.
                    if isinstance(error, CloudDecodeError):
                        error = f'{source}: {error}'
                    print(f'segvec3d segment: error: {error}', file=sys.stderr)
                    failed += 1
                    continue
                result = pipeline.process(cloud)
                write_outputs(out_dir, name, source, cloud, result)
                done += 1
                print(f'{name}: {len(result.instances)} instances, {result.num_input} points '
                      f'({result.num_valid} valid), {time.perf_counter() - start:.2f} s',
                      flush=True)
        except BagError as error:
            print(f'segvec3d segment: error: {error}', file=sys.stderr)
            failed += 1
    return 0 if not failed else 1 if done else 2


def add_segment_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `segment` subcommand; its `run` default is `run_segment`."""
    parser = commands.add_parser(
        'segment', help='segment point cloud files and bags into instance files',
        description='Write DIR/<name>.npy (uint32 instance id per input point, 0 = none; '
                    'H x W for organized clouds), DIR/<name>.json (the instances) and '
                    'DIR/<name>.png for each input. A bag gives one <bag>_<index:04d> per '
                    'cloud. Exit code 1 when some inputs failed, 2 when all did.')
    parser.add_argument('files', nargs='+', metavar='FILE',
                        help=f'{"/".join(SUPPORTED_SUFFIXES)} file, or a rosbag2 '
                             f'(folder, .db3 or .mcap)')
    parser.add_argument('--out-dir', required=True, metavar='DIR')
    parser.add_argument('--topic', help="PointCloud2 topic of bag inputs (default: the only one)")
    add_pipeline_options(parser)
    parser.set_defaults(run=run_segment)


def build_parser() -> argparse.ArgumentParser:
    """`segvec3d` command line with all its subcommands."""
    parser = argparse.ArgumentParser(prog='segvec3d', description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(metavar='COMMAND', required=True)
    add_segment_parser(commands)
    add_evaluate_parser(commands)
    add_train_parser(commands)
    add_bench_parser(commands)
    add_train_grounding_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print('segvec3d: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
