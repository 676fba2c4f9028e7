"""`segvec3d train-grounding CONFIG` and `segvec3d evaluate --grounding`."""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from segvec3d_ros.cli.common import override_words, pipeline_config, setting_overrides
from segvec3d_ros.data.splits import TEST_FIRST_SEED
from segvec3d_ros.evaluation.grounding import (QUERY_TYPES, SYSTEMS, evaluate_grounding, fit_lines,
                                               markdown_section, plot_confusion, plot_reference,
                                               write_section)
from segvec3d_ros.grounding.grounder import shared_text_encoder
from segvec3d_ros.grounding.query import QueryEngine
from segvec3d_ros.pipeline import Pipeline, make_segmenter
from segvec3d_ros.training.grounding import OUTPUT, GroundingTrainConfig, train_grounding
from segvec3d_ros.training.grounding_dataset import RecordingSegmenter


def add_train_grounding_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `train-grounding` subcommand; its `run` default is `run_train_grounding`."""
    parser = commands.add_parser(
        'train-grounding', help='train the 3D-text grounding head on synthetic scenes',
        description='Run the frozen segmentation model once per synthetic scene through the '
                    'pipeline (cached under the config\'s cache_dir), then train phi, W3D and '
                    'Wtxt with InfoNCE against generated captions. Writes OUT/grounding.pt.')
    parser.add_argument('config', metavar='CONFIG', help='YAML file, e.g. configs/grounding.yaml')
    parser.add_argument('--out-dir', required=True, metavar='OUT')
    parser.add_argument('--backbone', metavar='PATH',
                        help='segmentation model (.pt/.onnx) whose features are grounded '
                             '(default: the config\'s, else the bundled model)')
    parser.add_argument('--steps', type=int, help='override the config\'s step count')
    parser.add_argument('--install', metavar='DIR', help=f'copy {OUTPUT} into DIR (e.g. models)')
    parser.set_defaults(run=run_train_grounding)
    return parser


def run_train_grounding(args: argparse.Namespace) -> int:
    """Train as the arguments say; exit code 0 on success, 2 for an unusable config or model."""
    try:
        config = GroundingTrainConfig.from_file(args.config)
        if args.backbone is not None:
            config.backbone = args.backbone
        if args.steps is not None:
            config.steps = args.steps
        config.validate()
        path, summary = train_grounding(config, args.out_dir,
                                        log=lambda line: print(line, flush=True))
    except (OSError, ValueError, TypeError) as error:
        print(f'segvec3d train-grounding: {args.config}: {error}')
        return 2
    print(f'wrote {path}: ' + ', '.join(f'{k} {v}' for k, v in summary.items()))
    if args.install:
        target = Path(args.install)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / OUTPUT)
        print(f'installed {OUTPUT} into {target}')
    return 0


def run_grounding_evaluation(args: argparse.Namespace) -> int:
    """`segvec3d evaluate --grounding`: write the results block and the confusion plot.

    The results block holds the fit scores too.
    """
    out = args.out or 'docs/GROUNDING.md'
    plot = args.plot or 'docs/grounding_confusion.png'
    try:
        config = pipeline_config(args.params_file, segmenter='segvec3d', model_path=args.model,
                                 grounding_model_path=args.grounding_model,
                                 **setting_overrides(args))
        pipeline = Pipeline(config, RecordingSegmenter(make_segmenter(config)))
        if pipeline.grounder is None:
            raise ValueError(pipeline.grounding_status)
    except (OSError, ValueError) as error:
        print(f'segvec3d evaluate: error: {error}', file=sys.stderr)
        return 2
    encoder = shared_text_encoder('cpu')
    engine = QueryEngine(encoder, pipeline.grounder.head)
    report = evaluate_grounding(pipeline, engine, encoder, args.synthetic_scenes,
                                args.synthetic_first_seed,
                                progress=lambda line: print(line, flush=True))
    words = ['segvec3d', 'evaluate', '--grounding', '--synthetic-scenes',
             str(args.synthetic_scenes)]
    if args.synthetic_first_seed != TEST_FIRST_SEED:
        words += ['--synthetic-first-seed', str(args.synthetic_first_seed)]
    for option, value in (('--params-file', args.params_file), ('--model', args.model),
                          ('--grounding-model', args.grounding_model)):
        if value:
            words += [option, value]
    words += override_words(args)
    for path in (out, plot):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    plot_confusion(plot, report.labels.get('predicted', []), config.label_vocabulary,
                   f'zero-shot labels of predicted instances, {args.synthetic_scenes} scenes')
    write_section(out, markdown_section(report, shlex.join(words + ['--out', out,
                                                                    '--plot', plot]),
                                        plot_reference(plot, out)))
    for system in SYSTEMS:
        print(f'{system:32} ' + ' '.join(
            f'{kind} {100 * report.accuracy(system, kind)[0]:.1f}'
            for kind in (*QUERY_TYPES, 'all')))
    print('\n'.join(fit_lines(report)))
    print(f'wrote {out} and {plot}')
    return 0
