"""`segvec3d evaluate`: every segmenter through the same Pipeline on the same labelled scenes."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from segvec3d_ros.cli.common import override_words, pipeline_config, setting_overrides
from segvec3d_ros.config import validate_field
from segvec3d_ros.data.splits import TEST_FIRST_SEED
from segvec3d_ros.evaluation.datasets import (CAMERA_DATASETS, DATASETS, DEFAULT_MOSD_DIR,
                                              DEFAULT_REALSENSE_DIR, MIN_GT_POINTS,
                                              MIN_LIDAR_GT_POINTS, MOSD_SUBSETS, iter_scenes,
                                              labelled_frames)
from segvec3d_ros.evaluation.metrics import evaluate_scene, summarize
from segvec3d_ros.evaluation.report import (LEARNED, SceneRecord, machine_description,
                                            markdown_report, plot_summary, summary_rows)
from segvec3d_ros.pipeline import Pipeline


def _segmenter_list(text: str) -> list[str]:
    """Comma-separated segmenter names, each one the pipeline knows."""
    names = list(dict.fromkeys(name.strip() for name in text.split(',') if name.strip()))
    for name in names:
        problem = validate_field('segmenter', name)
        if problem:
            raise argparse.ArgumentTypeError(problem)
    if not names:
        raise argparse.ArgumentTypeError('no segmenter named')
    return names


def add_evaluate_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `evaluate` subcommand; its `run` default is `run_evaluate`."""
    parser = commands.add_parser(
        'evaluate', help='instance segmentation metrics of the segmenters on labelled scenes',
        description='Run each segmenter through the same pipeline on the mOSD learn frames, '
                    'held-out synthetic tabletop scenes (a subset per simulated sensor), '
                    'labelled real frames of other cameras and/or held-out simulated LiDAR '
                    'scans (a subset per LiDAR model); write a markdown report of AP25, '
                    'AP50, mAP, overlap P/R/F, %F>=0.75 and time per frame, and a bar plot. A '
                    'segmenter that cannot be built (no model) is reported and skipped.')
    parser.add_argument('--dataset', choices=(*DATASETS, 'both', 'all'), default='both',
                        help='both: mosd and synthetic; all: every camera dataset (lidar: '
                             'simulated LiDAR scans, --synthetic-scenes of them)')
    parser.add_argument('--segmenters', type=_segmenter_list, default=['euclidean', LEARNED],
                        metavar='NAMES', help=f'comma-separated (default: euclidean,{LEARNED})')
    parser.add_argument('--params-file', metavar='YAML',
                        help='ROS params file (e.g. config/segvec3d.yaml) setting the pipeline')
    parser.add_argument('--model', '--model-path', dest='model', metavar='PATH',
                        help='weights of the learned segmenter')
    parser.add_argument('--synthetic-scenes', type=int, default=30, metavar='N',
                        help=f'held-out synthetic scenes, seeds {TEST_FIRST_SEED} on (default 30)')
    parser.add_argument('--synthetic-first-seed', type=int, default=TEST_FIRST_SEED, metavar='S',
                        help='first synthetic seed (default %(default)s; a different range, '
                             'e.g. 2000000, is a validation split for tuning)')
    parser.add_argument('--voxel-size', type=float, metavar='M',
                        help='override voxel_size (the learned segmenter needs its model\'s)')
    parser.add_argument('--min-range', type=float, metavar='M',
                        help='override min_range (config/lidar.yaml drops returns within 1 m)')
    parser.add_argument('--plane-distance', type=float, metavar='M',
                        help='override plane_distance, the support band\'s least half width')
    parser.add_argument('--embedding-radius', type=float, metavar='R',
                        help='override the learned segmenter\'s embedding_radius')
    parser.add_argument('--occlusion-gap', type=float, metavar='M',
                        help='override the learned segmenter\'s occlusion_gap (0 = no joining '
                             'of occluded pieces: the network and clustering alone)')
    parser.add_argument('--min-support-extent', type=float, metavar='M',
                        help='override min_support_extent (0 = a plane of any span can be a '
                             'support surface)')
    parser.add_argument('--veil-angle', type=float, metavar='DEG',
                        help='override veil_angle (0 = keep the veil points of organized '
                             'clouds)')
    parser.add_argument('--no-claim-openings', dest='claim_openings', action='store_false',
                        default=None, help='learned segmenter: leave support points seen '
                        'through an instance\'s opening as support (claim_openings false)')
    parser.add_argument('--no-split-touching', dest='split_touching', action='store_false',
                        default=None, help='learned segmenter: take no proposed split of '
                        'touching objects (split_touching false)')
    parser.add_argument('--no-join-parts', dest='join_parts', action='store_false',
                        default=None, help='learned segmenter: join no part (a cap, a handle) '
                        'to the instance it touches (join_parts false)')
    parser.add_argument('--mosd-dir', default=str(DEFAULT_MOSD_DIR), metavar='DIR',
                        help='folder of learn0.pcd ... learn44.pcd (default: %(default)s)')
    parser.add_argument('--realsense-dir', default=str(DEFAULT_REALSENSE_DIR), metavar='DIR',
                        help='folder of labelled .pcd frames of other cameras, objects numbered '
                             'by a label field (default: %(default)s)')
    parser.add_argument('--out', metavar='MD', help='default: docs/EVALUATION.md, with '
                        '--grounding docs/GROUNDING.md (its results block)')
    parser.add_argument('--plot', metavar='PNG', help='default: docs/evaluation.png, with '
                        '--grounding docs/grounding_confusion.png')
    parser.add_argument('--grounding', action='store_true',
                        help='instead: language queries with unique answers and zero-shot '
                             'labels on the held-out synthetic scenes (learned segmenter)')
    parser.add_argument('--grounding-model', metavar='PATH',
                        help='with --grounding: the grounding head (default: bundled)')
    parser.add_argument('--tracking', action='store_true',
                        help='instead: ids kept across perturbed frames and point prompts '
                             '(objects; parts on generated scenes) with the first segmenter '
                             'named; prints the figures and writes them to --out')
    parser.set_defaults(run=run_evaluate)
    return parser


def command_line(args: argparse.Namespace) -> str:
    """`segvec3d evaluate` command that repeats this run, every option spelled out."""
    words = ['segvec3d', 'evaluate', '--dataset', args.dataset,
             '--segmenters', ','.join(args.segmenters)]
    if args.params_file:
        words += ['--params-file', args.params_file]
    if args.model:
        words += ['--model', args.model]
    if args.dataset in ('mosd', 'both', 'all'):
        words += ['--mosd-dir', args.mosd_dir]
    if args.dataset in ('realsense', 'all'):
        words += ['--realsense-dir', args.realsense_dir]
    if args.dataset in ('synthetic', 'both', 'all', 'lidar'):
        words += ['--synthetic-scenes', str(args.synthetic_scenes)]
        if args.synthetic_first_seed != TEST_FIRST_SEED:
            words += ['--synthetic-first-seed', str(args.synthetic_first_seed)]
    return shlex.join(words + override_words(args) + ['--out', args.out, '--plot', args.plot])


def _datasets(choice: str) -> tuple[str, ...]:
    """Name the datasets of a --dataset choice: both is mosd and synthetic, all every camera's."""
    return {'both': ('mosd', 'synthetic'), 'all': CAMERA_DATASETS}.get(choice, (choice,))


def _error(message: str) -> int:
    print(f'segvec3d evaluate: error: {message}', file=sys.stderr)
    return 2


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate, print progress per scene, write the report; 0 on success, 2 when nothing ran."""
    if args.synthetic_scenes < 1:
        return _error('--synthetic-scenes must be at least 1')
    if args.grounding:
        from segvec3d_ros.cli.grounding import run_grounding_evaluation
        return run_grounding_evaluation(args)
    if args.tracking:
        return run_tracking_evaluation(args)
    args.out = args.out or 'docs/EVALUATION.md'
    args.plot = args.plot or 'docs/evaluation.png'
    if args.synthetic_first_seed < TEST_FIRST_SEED:
        return _error(f'--synthetic-first-seed below {TEST_FIRST_SEED} would evaluate on '
                      'training scenes')
    try:
        config = pipeline_config(args.params_file, model_path=args.model,
                                 **setting_overrides(args))
    except ValueError as error:
        return _error(str(error))
    pipelines: dict[str, Pipeline] = {}
    skipped: dict[str, str] = {}
    for name in args.segmenters:
        try:
            pipelines[name] = Pipeline(dataclasses.replace(config, segmenter=name))
        except (ValueError, OSError, RuntimeError) as error:
            skipped[name] = str(error)
            print(f'segvec3d evaluate: {name} is NOT evaluated, it cannot be built: {error}',
                  file=sys.stderr, flush=True)
    if not pipelines:
        return _error('no segmenter could be built')

    datasets = _datasets(args.dataset)
    counts = {'mosd': sum(map(len, MOSD_SUBSETS.values())), 'synthetic': args.synthetic_scenes,
              'lidar': args.synthetic_scenes}
    try:
        if 'realsense' in datasets:
            counts['realsense'] = len(labelled_frames(args.realsense_dir))
        sources = {name: iter_scenes(name, args.mosd_dir, args.synthetic_scenes,
                                     args.synthetic_first_seed, args.realsense_dir)
                   for name in datasets}
    except FileNotFoundError as error:
        return _error(str(error))
    records: list[SceneRecord] = []
    for dataset, scenes in sources.items():
        for index, scene in enumerate(scenes, start=1):
            for name, pipeline in pipelines.items():
                result = pipeline.process(scene.cloud)
                metrics = evaluate_scene(result.labels, scene.gt, scene.cloud.valid,
                                         scene.support)
                records.append(SceneRecord(dataset, scene.subset, scene.name, name, metrics,
                                           result.timings['total']))
                one = summarize([metrics])
                print(f'[{dataset} {index}/{counts[dataset]}] {scene.name} ({scene.subset}) '
                      f'{name}: {one.num_pred} predicted / {one.num_gt} objects, '
                      f'AP50 {one.ap50:.2f}, F {one.f_measure:.2f}, '
                      f'{1000 * result.timings["total"]:.0f} ms', flush=True)

    descriptions = {
        'mosd': f'{counts["mosd"]} mOSD learn frames from {args.mosd_dir}, subsets '
                + ', '.join(f'{s} (learn{r.start}-{r.stop - 1})' for s, r in MOSD_SUBSETS.items())
                + '; objects = label // 10 - 1 for labels >= 20, labels 1-9 = support',
        'synthetic': f'{args.synthetic_scenes} held-out generated tabletop scenes, seeds '
                     f'{args.synthetic_first_seed}-'
                     f'{args.synthetic_first_seed + args.synthetic_scenes - 1} (training '
                     f'uses seeds below {TEST_FIRST_SEED}), one subset per simulated sensor; '
                     'table, floor, wall and robot arm = support',
        'realsense': f'{counts.get("realsense", 0)} labelled real frames from '
                     f'{args.realsense_dir} (cameras other than a Kinect v1); objects = the '
                     'label field > 0, the rest unlabelled',
        'lidar': f'{args.synthetic_scenes} held-out simulated LiDAR scans, seeds '
                 f'{args.synthetic_first_seed}-'
                 f'{args.synthetic_first_seed + args.synthetic_scenes - 1}, tabletop and room '
                 'scenes in turn, one subset per LiDAR model; table, floor, walls, chairs and '
                 'robot arm = support'}
    descriptions = {name: f'{descriptions[name]}; objects under '
                          f'{MIN_LIDAR_GT_POINTS if name == "lidar" else MIN_GT_POINTS} valid '
                          f'points count as unlabelled' for name in datasets}
    out, plot = Path(args.out), Path(args.plot)
    for path in (out, plot):
        path.parent.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(records)
    title = f'segvec3d evaluate: {", ".join(pipelines)}'
    if LEARNED not in pipelines:
        title += f' (baseline only, no {LEARNED})'
    plot_summary(plot, rows, title)
    # The plot is referenced relative to the report, wherever the two are written.
    plot_ref = Path(os.path.relpath(plot.resolve(), out.resolve().parent)).as_posix()
    out.write_text(markdown_report(records, command_line(args), skipped, descriptions, plot_ref))
    for row in rows:
        s = row.summary
        print(f'{row.dataset:9} {row.subset:9} {row.segmenter:9} AP25 {s.ap25:.3f} '
              f'AP50 {s.ap50:.3f} mAP {s.map:.3f} P {s.precision:.3f} R {s.recall:.3f} '
              f'F {s.f_measure:.3f} F>=0.75 {s.good_fraction:.3f} '
              f'{1000 * row.seconds:.0f} ms/frame')
    print(f'wrote {out} and {plot}')
    return 0


def run_tracking_evaluation(args: argparse.Namespace) -> int:
    """`segvec3d evaluate --tracking`: id persistence and prompts, per dataset, into --out."""
    from segvec3d_ros.evaluation.tracking import (DROP, FRAMES, NOISE, STEP,
                                                  evaluate_interaction)
    out = Path(args.out or 'docs/TRACKING.md')
    datasets = _datasets(args.dataset)
    try:
        config = pipeline_config(args.params_file, model_path=args.model,
                                 segmenter=args.segmenters[0], **setting_overrides(args))
        pipeline = Pipeline(config)
        sources = {name: iter_scenes(name, args.mosd_dir, args.synthetic_scenes,
                                     args.synthetic_first_seed, args.realsense_dir)
                   for name in datasets}
    except (ValueError, OSError) as error:
        return _error(str(error))
    words = ['segvec3d', 'evaluate', '--tracking', '--dataset', args.dataset,
             '--segmenters', args.segmenters[0]]
    for option, value in (('--params-file', args.params_file), ('--model', args.model)):
        if value:
            words += [option, value]
    if args.dataset in ('synthetic', 'both', 'all', 'lidar'):
        words += ['--synthetic-scenes', str(args.synthetic_scenes),
                  '--synthetic-first-seed', str(args.synthetic_first_seed)]
    words += override_words(args)
    rows = ['| dataset | scenes | ids kept | objects selected | parts | part IoU | '
            'parts IoU >= 0.5 |', '| --- | --- | --- | --- | --- | --- | --- |']
    for name, scenes in sources.items():
        listed = list(scenes)
        f = evaluate_interaction(pipeline, listed, log=lambda line: print(line, flush=True))
        parts = np.array(f.part_ious)
        row = (f'| {name} | {len(listed)} | {f.kept}/{f.object_frames} '
               f'({100 * f.kept / max(f.object_frames, 1):.1f} %) | '
               f'{f.prompt_hits}/{f.prompts} ({100 * f.prompt_hits / max(f.prompts, 1):.1f} %) | '
               f'{len(parts)} | {parts.mean() if len(parts) else float("nan"):.2f} | '
               f'{100 * (parts >= 0.5).mean() if len(parts) else float("nan"):.1f} % |')
        print(row, flush=True)
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join([
        '# Stable ids and point prompts', '',
        f'- Command: `{shlex.join(words + ["--out", str(out)])}`',
        f'- Machine: {machine_description()}', f'- Segmenter: {config.segmenter}',
        f'- Perturbation per frame: {FRAMES} frames, {1000 * NOISE:.0f} mm noise, '
        f'{100 * DROP:.0f} % of the points dropped, one object moved {1000 * STEP:.0f} mm '
        'further each frame (definitions in `segvec3d_ros/evaluation/tracking.py`)', '',
        *rows, '']))
    print(f'wrote {out}')
    return 0
