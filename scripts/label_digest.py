"""Labels and instance labels of the shipped pipeline, one JSON line per mOSD frame.

The frames are the mOSD learn and validation scenes, a line each so that two commits can be
compared frame by frame.

    python scripts/label_digest.py --out before.jsonl
    (change the code)
    python scripts/label_digest.py --out after.jsonl && diff before.jsonl after.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from segvec3d_ros.cli.common import pipeline_config
from segvec3d_ros.data.splits import VALIDATION_FIRST_SEED
from segvec3d_ros.evaluation.datasets import iter_mosd, iter_synthetic
from segvec3d_ros.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Write one line per frame: its name, a digest of its labels, and its instances' labels."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='JSON-lines file to write')
    parser.add_argument('--validation-scenes', type=int, default=50)
    parser.add_argument('--mosd-dir', default=str(REPO.parent / 'shared/data/mosd/learn'))
    args = parser.parse_args()
    pipeline = Pipeline(pipeline_config(REPO / 'config' / 'segvec3d.yaml', device='cpu'))
    scenes = [*iter_mosd(args.mosd_dir),
              *iter_synthetic(args.validation_scenes, VALIDATION_FIRST_SEED)]
    with open(args.out, 'w') as out:
        for scene in scenes:
            result = pipeline.process(scene.cloud)
            record = {'frame': scene.name,
                      'labels': hashlib.sha256(result.labels.tobytes()).hexdigest()[:16],
                      'instances': [[i.id, i.num_points, i.label] for i in result.instances]}
            out.write(json.dumps(record) + '\n')
            print(scene.name, len(result.instances), flush=True)


if __name__ == '__main__':
    main()
