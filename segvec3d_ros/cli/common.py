"""What the subcommands that segment share: pipeline settings and the pipeline they describe.

The settings come from a params file and options.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from segvec3d_ros.config import PipelineConfig, settings_from_params_file
from segvec3d_ros.names import SEGMENTATION_NODE
from segvec3d_ros.pipeline import Pipeline, pipeline_or_baseline


# Options of `segvec3d evaluate` that override one pipeline setting each, in every mode:
# valued ones (--voxel-size M) and switches that turn a step off (--no-join-parts).
EVALUATE_OVERRIDES = ('voxel_size', 'min_range', 'plane_distance', 'embedding_radius',
                      'occlusion_gap', 'min_support_extent', 'veil_angle')
EVALUATE_SWITCHES = ('claim_openings', 'split_touching', 'join_parts')


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the pipeline settings `segvec3d evaluate`'s options set; None where not given."""
    return {name: getattr(args, name) for name in EVALUATE_OVERRIDES + EVALUATE_SWITCHES}


def override_words(args: argparse.Namespace) -> list[str]:
    """Return the options of `setting_overrides` as they are written on the command line."""
    words = []
    for name in EVALUATE_OVERRIDES:
        if getattr(args, name) is not None:
            words += ['--' + name.replace('_', '-'), str(getattr(args, name))]
    for name in EVALUATE_SWITCHES:
        if getattr(args, name) is False:
            words.append('--no-' + name.replace('_', '-'))
    return words


def pipeline_config(params_file: str | Path | None = None, **overrides: Any) -> PipelineConfig:
    """Pipeline settings from a params file's segmentation section, or the defaults.

    The overrides that are not None are applied; raises ValueError on an invalid file or value.
    """
    config = (PipelineConfig() if params_file is None
              else settings_from_params_file(params_file, SEGMENTATION_NODE, PipelineConfig))
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    config.validate()
    return config


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose the pipeline settings, shared by subcommands that segment."""
    group = parser.add_argument_group('pipeline')
    group.add_argument('--params-file', metavar='YAML',
                       help=f'ROS params file (e.g. config/segvec3d.yaml); its '
                            f'{SEGMENTATION_NODE} section sets the pipeline')
    group.add_argument('--segmenter', choices=('euclidean', 'segvec3d', 'range_image'))
    group.add_argument('--model-path', help='weights of the learned segmenter')
    group.add_argument('--voxel-size', type=float, metavar='M',
                       help='working resolution in m (0 = no downsampling)')


def pipeline_or_warn(config: PipelineConfig, command: str) -> Pipeline:
    """Pipeline of `config`, or the euclidean baseline when its learned model cannot be loaded.

    The fallback comes with a warning naming the reason on stderr, as the node does.
    """
    pipeline, warning = pipeline_or_baseline(config)
    if warning is not None:
        print(f'{command}: warning: {warning}', file=sys.stderr)
    return pipeline


def pipeline_from_args(args: argparse.Namespace, command: str) -> Pipeline:
    """Pipeline that `add_pipeline_options` arguments describe (loads the model once)."""
    return pipeline_or_warn(pipeline_config(args.params_file, segmenter=args.segmenter,
                                            model_path=args.model_path,
                                            voxel_size=args.voxel_size), command)
