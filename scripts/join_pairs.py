"""Touching instances at the join step of training scenes: how many pairs each join rule takes.

Runs the shipped pipeline on generated training scenes (seeds below TEST_FIRST_SEED) and, where
it reaches the join step, scores every pair of touching instances of at least MIN_PAIR_POINTS
working points as that step does: the head's gain log P(a + b) - log P(a) - log P(b), the two
labels, and the `junction_convexity` of the pair. A pair is one object's pieces when both
instances lie mostly on the same generated object. Prints, for pairs of comparable size and
for small parts, how many pairs of each kind a rule joins.

    python scripts/join_pairs.py --first-seed 0 --scenes 160
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from segvec3d_ros.cli.common import pipeline_config
from segvec3d_ros.data.scenes import generate_scene
from segvec3d_ros.evaluation.datasets import synthetic_ground_truth
from segvec3d_ros.grounding.grounder import Grounder
from segvec3d_ros.pipeline import Pipeline
from segvec3d_ros.segmentation.split import (JOIN_MARGIN, MIN_JOIN_CONVEXITY, UNLIKE_JOIN_MARGIN,
                                             comparable, junction_convexity)

REPO = Path(__file__).resolve().parents[1]
MIN_PAIR_POINTS = 20


@dataclass
class Pair:
    """Two touching instances at the join step."""

    one_object: bool
    comparable: bool
    gain: float
    same_label: bool
    convexity: float


class RecordingGrounder(Grounder):
    """The shipped grounder, keeping the inputs of its join step."""

    recorded: dict | None = None

    def join_parts(self, xyz, rgb, features, ids, pairs, up, normals=None):
        """Record the step's inputs, then join as shipped."""
        self.recorded = dict(xyz=xyz, rgb=rgb, features=features, ids=ids.copy(), up=up,
                             normals=normals)
        return super().join_parts(xyz, rgb, features, ids, pairs, up, normals)


def scene_pairs(pipeline: Pipeline, seed: int) -> list[Pair]:
    """Every pair of touching instances of scene `seed` at its join step."""
    grounder = pipeline.grounder
    grounder.recorded = None
    scene = generate_scene(seed, 'tabletop')
    gt, _ = synthetic_ground_truth(scene)
    pipeline.process(scene.cloud)
    if grounder.recorded is None:
        return []
    xyz, ids, normals = (grounder.recorded[k] for k in ('xyz', 'ids', 'normals'))
    valid = scene.cloud.valid
    point_object = gt.ravel()[valid][cKDTree(scene.cloud.xyz[valid]).query(xyz)[1]]
    sizes = np.bincount(ids)
    members = np.flatnonzero((ids > 0) & (sizes[ids] >= MIN_PAIR_POINTS))
    close = cKDTree(xyz[members]).query_pairs(0.02, output_type='ndarray')
    first, second = ids[members[close[:, 0]]], ids[members[close[:, 1]]]
    touching = np.unique(np.sort(np.column_stack([first, second])[first != second], axis=1),
                         axis=0)
    if len(touching) == 0:
        return []
    majority = {i: np.bincount(point_object[ids == i]).argmax() for i in np.unique(touching)}

    def scored(numbered: np.ndarray) -> dict[int, tuple[float, str]]:
        return grounder._whole_and_label(xyz, grounder.recorded['rgb'],
                                         grounder.recorded['features'], numbered, normals,
                                         grounder.recorded['up'])

    singles = scored(np.where(np.isin(ids, touching), ids, 0))
    pairs = []
    for a, b in touching:
        if not (majority[a] and majority[b]):
            continue    # a piece of the table or the room
        union = scored(np.isin(ids, (a, b)).astype(np.int64))[1][0]
        pairs.append(Pair(
            one_object=majority[a] == majority[b],
            comparable=bool(comparable(sizes, *sorted((a, b), key=lambda i: sizes[i]))),
            gain=union - singles[a][0] - singles[b][0],
            same_label=singles[a][1] == singles[b][1],
            convexity=junction_convexity(xyz, normals, np.flatnonzero(ids == a),
                                         np.flatnonzero(ids == b))))
    return pairs


def main() -> None:
    """Score the pairs of the scenes and print what each rule joins."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--first-seed', type=int, default=0)
    parser.add_argument('--scenes', type=int, default=160)
    args = parser.parse_args()
    pipeline = Pipeline(pipeline_config(REPO / 'config' / 'segvec3d.yaml', device='cpu'))
    pipeline.grounder.__class__ = RecordingGrounder
    pairs = [pair for seed in range(args.first_seed, args.first_seed + args.scenes)
             for pair in scene_pairs(pipeline, seed)]

    def margin(pair: Pair) -> float:
        return JOIN_MARGIN if pair.same_label else UNLIKE_JOIN_MARGIN

    rules = {
        f'gain > {JOIN_MARGIN}': lambda p: p.gain > JOIN_MARGIN,
        f'gain > {JOIN_MARGIN}, convexity >= {MIN_JOIN_CONVEXITY}':
            lambda p: p.gain > JOIN_MARGIN and p.convexity >= MIN_JOIN_CONVEXITY,
        f'gain > {JOIN_MARGIN} ({UNLIKE_JOIN_MARGIN} labelled apart), convexity >= '
        f'{MIN_JOIN_CONVEXITY}':
            lambda p: p.gain > margin(p) and p.convexity >= MIN_JOIN_CONVEXITY,
    }
    print(f'{len(pairs)} pairs of touching instances on objects, seeds {args.first_seed}-'
          f'{args.first_seed + args.scenes - 1}')
    print('| pairs | rule | pieces of one object joined | pairs of two objects joined |')
    print('| --- | --- | --- | --- |')
    for kind, of_comparable_size in (('comparable size', True), ('small part', False)):
        group = [p for p in pairs if p.comparable == of_comparable_size]
        one = sum(p.one_object for p in group)
        for name, rule in rules.items():
            joined_one = sum(p.one_object and rule(p) for p in group)
            joined_two = sum(not p.one_object and rule(p) for p in group)
            print(f'| {kind} | {name} | {joined_one} of {one} | '
                  f'{joined_two} of {len(group) - one} |')


if __name__ == '__main__':
    main()
