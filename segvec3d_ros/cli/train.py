"""`segvec3d train CONFIG`: train SegVec3D and optionally install the weights into models/."""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from segvec3d_ros.training.train import TrainConfig, train

INSTALLED_FILES = ('segvec3d.pt', 'segvec3d.onnx')


def add_train_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `train` subcommand; its `run` default is `run_train`."""
    parser = commands.add_parser(
        'train', help='train the SegVec3D network on synthetic depth scenes',
        description='Train with the pull-push loss on scenes from the repo\'s generator '
                    '(cached under the config\'s cache_dir). Checkpoints to OUT/last.pt; '
                    'writes OUT/segvec3d.pt, OUT/segvec3d.onnx, OUT/config.yaml, OUT/log.csv.')
    parser.add_argument('config', metavar='CONFIG',
                        help='YAML file, e.g. configs/segvec3d_tabletop.yaml')
    parser.add_argument('--out-dir', required=True, metavar='OUT')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--resume', action='store_true', help='continue from OUT/last.pt')
    parser.add_argument('--steps', type=int, help='override the config\'s step count')
    parser.add_argument('--install', metavar='DIR',
                        help='copy segvec3d.pt and segvec3d.onnx into DIR (e.g. models)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.set_defaults(run=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Train as the arguments say; exit code 0 on success, 2 for an unusable config."""
    try:
        config = TrainConfig.from_file(args.config)
        if args.steps is not None:
            config.steps = args.steps
        config.network_config()
    except (OSError, ValueError, TypeError) as error:
        print(f'segvec3d train: {args.config}: {error}')
        return 2
    started = time.monotonic()
    final = train(config, args.out_dir, device=args.device, resume=args.resume,
                  progress=not args.no_progress)
    print(f'trained {config.steps} steps in {time.monotonic() - started:.0f} s: {final}')
    if args.install:
        target = Path(args.install)
        target.mkdir(parents=True, exist_ok=True)
        for name in INSTALLED_FILES:
            shutil.copy2(Path(args.out_dir) / name, target / name)
        print(f'installed {", ".join(INSTALLED_FILES)} into {target}')
    return 0
