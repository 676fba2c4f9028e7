"""`segvec3d bench`: every setup on frames of several sizes, reported in docs/PERFORMANCE.md."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from segvec3d_ros.bench.measure import (VGA_PIXELS, BenchError, bench_frame, run_isolated,
                                        save_frame)
from segvec3d_ros.bench.report import Measurement, Setup, markdown_report, plot_stages
from segvec3d_ros.cli.common import pipeline_config
from segvec3d_ros.io.files import read_cloud

DEFAULT_SIZES = (20_000, 50_000, 200_000, 307_200)
SETUPS = ('euclidean', 'torch', 'onnxruntime')
DEVICES = ('cpu', 'cuda')
QUERY_OBJECTS = 20


def _sizes(text: str) -> list[int]:
    """Comma-separated frame sizes in points, each at least 1000; 'none' for no such frame."""
    if text.strip() == 'none':
        return []
    try:
        sizes = [int(word) for word in text.split(',') if word.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'sizes must be whole numbers: {error}') from error
    if not sizes or min(sizes) < 1000:
        raise argparse.ArgumentTypeError('give one or more sizes of at least 1000 points')
    return sorted(set(sizes))


def _names(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    """Argparse type for comma-separated names out of `choices`."""
    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(word.strip() for word in text.split(',') if word.strip()))
        if not names or any(name not in choices for name in names):
            raise argparse.ArgumentTypeError(f'choose from {", ".join(choices)}; got {text!r}')
        return names
    return parse


def _at_least(minimum: int) -> Callable[[str], int]:
    """Argparse type for whole numbers of at least `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be at least {minimum}, got {value}')
        return value
    return parse


def add_bench_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `bench` subcommand; its `run` default is `run_bench`."""
    parser = commands.add_parser(
        'bench', help='per-stage timings and peak memory of every segmenter setup',
        description='Time decode, every pipeline stage and encode of generated organized frames '
                    'of each size, for the Euclidean baseline and SegVec3D with torch and '
                    'onnxruntime on each device (median and p95 after warm-up, one process per '
                    'setup and size for its peak memory), time text queries, and write a '
                    'markdown report and a plot of time per stage against frame size.')
    parser.add_argument('--sizes', type=_sizes, default=list(DEFAULT_SIZES), metavar='N,...',
                        help='points per generated frame (default: 20000,50000,200000,307200; '
                             'none: no generated frame, which needs no Open3D)')
    parser.add_argument('--frames', nargs='+', default=[], metavar='FILE',
                        help='real frames (.pcd, .ply, .npy) measured too, each as it is, '
                             'e.g. ../shared/data/mosd/learn/learn30.pcd')
    parser.add_argument('--setups', type=_names(SETUPS), default=list(SETUPS), metavar='NAMES',
                        help='comma-separated: euclidean, torch, onnxruntime (default: all)')
    parser.add_argument('--devices', type=_names(('auto',) + DEVICES), default=['auto'],
                        metavar='NAMES',
                        help='comma-separated cpu, cuda; auto (default) = cpu, and cuda where '
                             'the backend has it')
    parser.add_argument('--repeats', type=_at_least(1), default=20,
                        help='timed frames per setup and size (default: %(default)s)')
    parser.add_argument('--warmup', type=_at_least(0), default=3,
                        help='untimed frames before them (default: %(default)s)')
    parser.add_argument('--model-pt', default='models/segvec3d.pt', metavar='PATH',
                        help='checkpoint for the torch setups (default: %(default)s)')
    parser.add_argument('--model-onnx', default='models/segvec3d.onnx', metavar='PATH',
                        help='export for the onnxruntime setups (default: %(default)s)')
    parser.add_argument('--params-file', metavar='YAML',
                        help='ROS params file (e.g. config/segvec3d.yaml) setting the pipeline')
    parser.add_argument('--seed', type=int, default=0, help='scene of the generated frames')
    parser.add_argument('--query-repeats', type=_at_least(0), default=200, metavar='R',
                        help=f'timed text queries on a 640 x 480 frame of {QUERY_OBJECTS} '
                             'objects, with the query node\'s engine; 0 = none')
    parser.add_argument('--dds', action='append', default=[], metavar='JSON',
                        help='a result of `python test/test_throughput.py --out JSON` to '
                             'include (repeatable)')
    parser.add_argument('--timeout', type=float, default=1800.0, metavar='S',
                        help='seconds allowed per measurement process')
    parser.add_argument('--out', default='docs/PERFORMANCE.md', metavar='MD')
    parser.add_argument('--plot', default='docs/performance.png', metavar='PNG')
    parser.set_defaults(run=run_bench)
    return parser


def command_line(args: argparse.Namespace) -> str:
    """`segvec3d bench` command that repeats this run, every option spelled out."""
    words = ['segvec3d', 'bench', '--sizes', ','.join(map(str, args.sizes)) or 'none',
             '--setups', ','.join(args.setups), '--devices', ','.join(args.devices),
             '--repeats', str(args.repeats), '--warmup', str(args.warmup),
             '--model-pt', args.model_pt, '--model-onnx', args.model_onnx]
    if args.params_file:
        words += ['--params-file', args.params_file]
    if args.frames:
        words += ['--frames', *args.frames]
    words += ['--seed', str(args.seed), '--query-repeats', str(args.query_repeats)]
    for path in args.dds:
        words += ['--dds', path]
    return shlex.join(words + ['--out', args.out, '--plot', args.plot])


def plan_setups(args: argparse.Namespace) -> tuple[list[Setup], dict[str, str], str | None]:
    """Setups to measure, those that cannot be (with why), and the GPU's name or None."""
    import onnxruntime as ort
    import torch

    torch_cuda = torch.cuda.is_available()
    ort_cuda = 'CUDAExecutionProvider' in ort.get_available_providers()
    gpu = torch.cuda.get_device_name(0) if torch_cuda else (
        'a CUDA device (onnxruntime CUDA provider)' if ort_cuda else None)
    devices = list(DEVICES) if 'auto' in args.devices else args.devices
    setups: list[Setup] = []
    skipped: dict[str, str] = {}
    for name in args.setups:
        if name == 'euclidean':
            setups.append(Setup('euclidean', 'numpy', 'cpu'))
            continue
        model = args.model_pt if name == 'torch' else args.model_onnx
        for device in devices:
            setup = Setup('segvec3d', name, device, model)
            has_cuda = torch_cuda if name == 'torch' else ort_cuda
            if device == 'cuda' and not has_cuda:
                if 'auto' not in args.devices:
                    skipped[setup.name] = f'{name} has no CUDA device here'
            elif not Path(model).is_file():
                skipped[setup.name] = f'no model file {model}'
            else:
                setups.append(setup)
    return setups, skipped, gpu


def software_line() -> str:
    """Versions and thread settings of the libraries that do the work."""
    import numpy as np
    import onnxruntime as ort
    import scipy
    import torch
    return (f'torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), '
            f'onnxruntime {ort.__version__} (providers: {", ".join(ort.get_available_providers())}'
            f'; intra-op threads: its default, one per core), numpy {np.__version__}, '
            f'scipy {scipy.__version__}')


def _error(message: str) -> int:
    print(f'segvec3d bench: error: {message}', file=sys.stderr)
    return 2


def run_bench(args: argparse.Namespace) -> int:
    """Measure, print a line per setup and size, write the report; 0 on success, 2 on none."""
    try:
        config = pipeline_config(args.params_file)
        dds = [json.loads(Path(path).read_text()) for path in args.dds]
    except (OSError, ValueError) as error:
        return _error(str(error))
    setups, skipped, gpu = plan_setups(args)
    for name, reason in skipped.items():
        print(f'segvec3d bench: {name} is NOT measured: {reason}', file=sys.stderr, flush=True)
    if not setups:
        return _error('no setup can be measured')
    if not args.sizes and not args.frames:
        return _error('nothing to measure: --sizes none and no --frames')
    try:
        real = [(Path(path).name, read_cloud(path)) for path in args.frames]
    except (OSError, ValueError) as error:
        return _error(f'cannot read a frame: {error}')
    measurements: list[Measurement] = []
    query = None
    with tempfile.TemporaryDirectory(prefix='segvec3d-bench-') as scratch:
        folder = Path(scratch)
        to_measure = [(size, '', lambda size=size: bench_frame(size, args.seed))
                      for size in args.sizes]
        to_measure += [(len(cloud), name, lambda cloud=cloud: cloud) for name, cloud in real]
        for size, name, make in to_measure:
            frame = folder / f'frame{size}{name}.npz'
            save_frame(make(), frame)
            # Every setup on this frame before the next one: the ratios compare runs made
            # minutes apart at most, under the same machine load.
            for setup in setups:
                task = {'kind': 'pipeline', 'frame': str(frame), 'warmup': args.warmup,
                        'repeats': args.repeats,
                        'config': dict(dataclasses.asdict(config), segmenter=setup.segmenter,
                                       model_path=setup.model_path, device=setup.device)}
                label = f'{setup.name} on {name or f"{size} points"}'
                try:
                    result = run_isolated(task, folder, args.timeout)
                except BenchError as error:
                    skipped[label] = str(error)
                    print(f'segvec3d bench: {label} failed: {error}', file=sys.stderr,
                          flush=True)
                    continue
                measurement = Measurement(setup, size, result, name)
                measurements.append(measurement)
                print(f'{name or "generated":>28} {result["num_points"]:>8,} points  '
                      f'{setup.name:28} median {measurement.median_ms("total"):7.1f} ms  p95 '
                      f'{measurement.p95_ms("total"):7.1f} ms', flush=True)
        if args.query_repeats > 0:
            frame = folder / 'query_frame.npz'
            save_frame(bench_frame(VGA_PIXELS, args.seed, QUERY_OBJECTS) if args.sizes
                       else real[0][1], frame)
            # The scene's instances come from the learned segmenter where it can run, as
            # in the product; its grounding head then gives them their embeddings.
            learned = next((s for s in setups if s.backend == 'onnxruntime'), None)
            segmenter = {'segmenter': 'segvec3d', 'model_path': learned.model_path,
                         'device': learned.device} if learned else {'segmenter': 'euclidean'}
            try:
                query = run_isolated({'kind': 'query', 'frame': str(frame),
                                      'repeats': args.query_repeats,
                                      'config': dict(dataclasses.asdict(config), **segmenter)},
                                     folder, args.timeout)
                query['segmenter'] = learned.name if learned else 'euclidean'
            except BenchError as error:
                skipped['text queries'] = str(error)
    if not measurements:
        return _error('every measurement failed')
    out, plot = Path(args.out), Path(args.plot)
    for path in (out, plot):
        path.parent.mkdir(parents=True, exist_ok=True)
    plot_ref = None
    described = []
    if args.sizes:
        plot_stages(plot, measurements, f'segvec3d bench: median ms per stage '
                                        f'({"CPU only, no GPU" if gpu is None else gpu})')
        # The plot is referenced relative to the report, wherever the two are written.
        plot_ref = Path(os.path.relpath(plot.resolve(), out.resolve().parent)).as_posix()
        described.append(f'generated: organized tabletop frames of `generate_scene` (seed '
                         f'{args.seed}), the same scene through a Kinect v1 (640 × 480) scaled '
                         'to the resolution with about N pixels, NaN holes included in N')
    if real:
        described.append('real: ' + ', '.join(f'`{path}`' for path in args.frames)
                         + ', each as read (organized where the file is)')
    frames = '; '.join(described) + (f'; pipeline settings '
                                     f'{args.params_file or "PipelineConfig defaults"} '
                                     f'(voxel_size {config.voxel_size} m, max_points '
                                     f'{config.max_points})')
    out.write_text(markdown_report(measurements, command=command_line(args),
                                   software=software_line(), gpu=gpu, frames=frames,
                                   skipped=skipped, query=query, dds=dds, plot=plot_ref))
    print(f'wrote {out} and {plot}')
    return 0
