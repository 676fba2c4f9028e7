"""`segvec3d train-grounding CONFIG`: align instances and captions in the shared space.

The frozen backbone runs once per synthetic scene through the inference Pipeline; each
instance (predicted and/or ground-truth mask) is cached as a fixed sample of its points'
grounding inputs with its box term and ground-truth words. Training phi, W3D and Wtxt on the
cache then takes seconds per thousand steps.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segvec3d_ros.config import PipelineConfig, dataclass_from_yaml
from segvec3d_ros.data.scenes import CATEGORIES, SceneConfig, generate_scene
from segvec3d_ros.data.splits import TEST_FIRST_SEED
from segvec3d_ros.grounding.grounder import Encoder, Grounder, backbone_probe, shared_text_encoder
from segvec3d_ros.grounding.model import (GEOMETRY_CHANNELS, GroundingConfig, GroundingHead,
                                          box_term, sample_rows, save_grounding)
from segvec3d_ros.pipeline import Pipeline, make_segmenter
from segvec3d_ros.training.captions import caption_bank
from segvec3d_ros.training.grounding_dataset import (GroundedScene, InstanceSet,
                                                     RecordingSegmenter, attribute_indices,
                                                     ground_scene)

MASKS = ('gt', 'predicted', 'both')
OUTPUT = 'grounding.pt'


@dataclass
class GroundingTrainConfig:
    """Everything a grounding run depends on; loaded from a YAML file in configs/."""

    seed: int = 0
    first_scene: int = 500_000          # scene seeds first_scene.. (evaluation uses >= 1e6)
    train_scenes: int = 400
    val_scenes: int = 40                # the seeds after the training ones, for a check
    scene: dict[str, Any] = field(default_factory=dict)      # SceneConfig overrides
    pipeline: dict[str, Any] = field(default_factory=dict)   # PipelineConfig overrides
    backbone: str = ''                  # segmentation model; '' = the bundled one
    masks: str = 'both'                 # instances to train on: gt, predicted or both
    unmatched: bool = False             # instances matching no object: InfoNCE negatives
    objectness_weight: float = 0.0      # > 0: train an Objectness layer on whole vs unmatched
    points_per_instance: int = 128      # cached per instance
    points_per_step: int = 64           # drawn from those at each step
    templates_per_phrase: int = 2
    steps: int = 4000
    batch_instances: int = 256
    negative_captions: int = 128        # extra captions per batch, mostly untrue of all
    lr: float = 0.002
    weight_decay: float = 0.0001
    cache_dir: str = '.cache/segvec3d/grounding'
    head: dict[str, Any] = field(default_factory=dict)       # GroundingConfig fields

    @classmethod
    def from_file(cls, path: str | Path) -> GroundingTrainConfig:
        """Read a YAML config; unknown keys and unusable values are errors naming them."""
        config = dataclass_from_yaml(path, cls, 'grounding')
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ValueError for settings no run can use."""
        if self.masks not in MASKS:
            raise ValueError(f'masks must be one of {MASKS}, got {self.masks!r}')
        if self.first_scene + self.train_scenes + self.val_scenes > TEST_FIRST_SEED:
            raise ValueError(f'training and validation scene seeds must stay below '
                             f'{TEST_FIRST_SEED}, the evaluation scenes')
        if min(self.train_scenes, self.steps, self.batch_instances,
               self.points_per_instance, self.points_per_step) < 1:
            raise ValueError('scene, step, batch and point counts must be at least 1')
        if self.objectness_weight < 0:
            raise ValueError('objectness_weight must be >= 0')
        self.head_config(64)

    def pipeline_config(self) -> PipelineConfig:
        """Learned-segmenter pipeline whose features are grounded.

        Without `split_touching` and `join_parts`: a split or join is taken on a grounding
        head's scores, and the training data must not depend on the head that happens to be
        installed.
        """
        return replace(PipelineConfig(), **{**self.pipeline, 'segmenter': 'segvec3d',
                                            'model_path': self.backbone, 'device': 'cpu',
                                            'split_touching': False, 'join_parts': False})

    def head_config(self, feature_dim: int) -> GroundingConfig:
        """Head this run trains, for backbone features of `feature_dim` channels."""
        return GroundingConfig(**{**self.head, 'feature_dim': feature_dim,
                                  'draw_points': self.points_per_step,
                                  'objectness': self.objectness_weight > 0})


@dataclass
class InstanceTable:
    """Cached instances: sampled point rows, box terms and ground-truth word indices."""

    points: np.ndarray      # (N, S, C + GEOMETRY_CHANNELS) float16
    box: np.ndarray         # (N, BOX_CHANNELS) float32
    attributes: np.ndarray  # (N, 3) int64 category, colour, size word; -1: no object
    predicted: np.ndarray   # (N,) bool: a predicted instance (else a ground-truth mask)

    @staticmethod
    def concat(tables: list[InstanceTable]) -> InstanceTable:
        """All rows of `tables`, in order."""
        return InstanceTable(*(np.concatenate([getattr(t, f.name) for t in tables])
                               for f in fields(InstanceTable)))

    def select(self, rows: np.ndarray) -> InstanceTable:
        """Table of the given rows."""
        return InstanceTable(*(getattr(self, f.name)[rows] for f in fields(InstanceTable)))


def _sampled(instances: InstanceSet, grounded: GroundedScene, predicted: bool, count: int,
             rng: np.random.Generator) -> InstanceTable:
    """`count` points (with repeats when fewer) of each instance.

    An instance that matches no object (a fragment, or several objects merged) has attributes
    -1.
    """
    keep, rows = sample_rows(instances.point_index, len(instances.instances), count, rng)
    points = instances.point_inputs[rows]
    attributes = np.full((len(keep), 3), -1, dtype=np.int64)
    matched = instances.objects[keep] >= 0
    attributes[matched] = attribute_indices(grounded.objects, instances.objects[keep][matched])
    return InstanceTable(points.astype(np.float16),
                         box_term([instances.instances[k] for k in keep]), attributes,
                         np.full(len(keep), predicted))


class InstanceCache:
    """Per-scene instance tables on disk, keyed by everything that shapes them."""

    def __init__(self, config: GroundingTrainConfig, probe: np.ndarray) -> None:
        """Keep the tables under cache_dir/<hash of what shapes them>/.

        The hash covers the backbone probe, the first scene's segmentation, the pipeline, the
        scenes and the sampling.
        """
        self.config = config
        pipeline_config = config.pipeline_config()
        self._pipeline = Pipeline(pipeline_config,
                                  RecordingSegmenter(make_segmenter(pipeline_config)))
        # The segmentation code shapes the tables as much as its settings: a change to it
        # (a support rule, say) shows in the sizes of the first scene's instances.
        first = self._grounded(config.first_scene)
        recipe = json.dumps({'probe': np.round(probe, 4).tolist(),
                             'segmentation': [i.num_points for i in first.predicted.instances],
                             'pipeline': asdict(pipeline_config),
                             'scene': config.scene, 'points': config.points_per_instance,
                             'geometry': GEOMETRY_CHANNELS, 'instances': 'all'},
                            sort_keys=True, default=str)
        self.directory = (Path(config.cache_dir)
                          / hashlib.sha1(recipe.encode()).hexdigest()[:12])
        if not self._path(config.first_scene).is_file():
            self._store(config.first_scene, first)    # grounded once, for the key and the table

    def _grounded(self, seed: int) -> GroundedScene:
        return ground_scene(self._pipeline, generate_scene(seed, 'tabletop',
                                                           SceneConfig(**self.config.scene)))

    def _path(self, seed: int) -> Path:
        return self.directory / f'{seed:07d}.npz'

    def _store(self, seed: int, grounded: GroundedScene) -> InstanceTable:
        rng = np.random.default_rng(seed)
        count = self.config.points_per_instance
        table = InstanceTable.concat([
            _sampled(grounded.ground_truth, grounded, False, count, rng),
            _sampled(grounded.predicted, grounded, True, count, rng)])
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(seed)
        partial = path.with_suffix('.tmp.npz')
        np.savez_compressed(partial, **asdict(table))
        partial.replace(path)
        return table

    def get(self, seed: int) -> InstanceTable:
        """Scene `seed`'s table, computed and stored on first use."""
        path = self._path(seed)
        if path.is_file():
            with np.load(path) as stored:
                return InstanceTable(*(stored[f.name] for f in fields(InstanceTable)))
        return self._store(seed, self._grounded(seed))


def caption_embeddings(texts: list[str], encoder: Encoder, cache_dir: str | Path) -> np.ndarray:
    """Sentence embeddings of `texts`, stored once per caption list."""
    key = hashlib.sha1('\n'.join(texts).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f'captions_{key}.npy'
    if path.is_file():
        return np.load(path)
    vectors = encoder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def train_head(config: GroundingTrainConfig, table: InstanceTable, text: np.ndarray,
               truth: np.ndarray, log: Any = None) -> GroundingHead:
    """Train a head on `table` against captions `text` (M, 384) with truth (M, 7, 11, 3)."""
    threads = torch.get_num_threads()
    # The head's matrices are small: one thread is many times faster than several that wait
    # on each other, most of all on a busy machine.
    torch.set_num_threads(1)
    try:
        return _train_head(config, table, text, truth, log)
    finally:
        torch.set_num_threads(threads)


def _train_head(config: GroundingTrainConfig, table: InstanceTable, text: np.ndarray,
                truth: np.ndarray, log: Any) -> GroundingHead:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = GroundingHead(config.head_config(table.points.shape[2] - GEOMETRY_CHANNELS)).train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps,
                                                   pct_start=0.05)
    points = torch.from_numpy(table.points)
    box = torch.from_numpy(table.box)
    text_t = torch.from_numpy(np.asarray(text, np.float32))
    # (M, N) truth of each caption for each cached instance; none is true of a fragment or a
    # merge (`whole` False), which the InfoNCE sees only as a negative, with `unmatched`.
    a = table.attributes
    known = a[:, 0] >= 0
    whole = torch.from_numpy(known)
    true_of = torch.zeros((len(text), len(a)), dtype=torch.bool)
    true_of[:, known] = torch.from_numpy(truth[:, a[known, 0], a[known, 1], a[known, 2]])
    batch = min(config.batch_instances, len(a))
    per_step = min(config.points_per_step, points.shape[1])
    index = torch.arange(batch).repeat_interleave(per_step)
    for step in range(config.steps):
        rows = torch.from_numpy(rng.choice(len(a), batch, replace=False))
        # One true caption per instance, drawn uniformly among its true ones (among all
        # captions for an instance with none)
        draw = torch.rand(true_of.shape[0], batch) - 2.0 * (~true_of[:, rows]).float()
        negatives = rng.integers(0, len(text), config.negative_captions)
        captions = torch.cat([draw.argmax(dim=0), torch.from_numpy(negatives)])
        picks = torch.from_numpy(
            rng.random((batch, points.shape[1])).argsort(axis=1)[:, :per_step])
        sampled = torch.gather(points[rows], 1, picks[..., None].expand(-1, -1, points.shape[2]))
        v3d = head.instance_vectors(sampled.reshape(-1, points.shape[2]).float(), index, box[rows])
        vtxt = head.wtxt(text_t[captions])
        # Fragments and merges join the InfoNCE only as its negatives with `unmatched`; the
        # Objectness layer always sees them.
        infonce = whole[rows] | config.unmatched
        loss = head.loss(v3d[infonce], vtxt, true_of[captions][:, rows[infonce]].T)
        if head.objectness is not None:
            loss = loss + config.objectness_weight * F.binary_cross_entropy_with_logits(
                head.objectness(v3d), whole[rows].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None and (step % 500 == 0 or step + 1 == config.steps):
            log(f'step {step + 1}/{config.steps} loss {loss.item():.4f} '
                f'tau {head.loss.temperature:.3f}')
    return head.eval()


def label_accuracy(head: GroundingHead, table: InstanceTable, encoder: Encoder) -> float:
    """Zero-shot category accuracy of `table`'s instances over the generator's categories."""
    if len(table.box) == 0:
        return float('nan')
    grounder = Grounder(head, CATEGORIES, -1.0, encoder)
    # Pooled as the product pools: draws of the cached rows.
    vectors = head.embed_rows(table.points.reshape(-1, table.points.shape[2]),
                              np.arange(len(table.box)).repeat(table.points.shape[1]),
                              table.box)
    labels, _ = grounder.label(vectors)
    return float(np.mean(np.array(labels) == np.array(CATEGORIES)[table.attributes[:, 0]]))


def train_grounding(config: GroundingTrainConfig, out_dir: str | Path,
                    log: Any = print) -> tuple[Path, dict[str, Any]]:
    """Extract (or load) the instance cache, train, write out_dir/grounding.pt."""
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = make_segmenter(config.pipeline_config())
    probe = backbone_probe(segmenter)
    cache = InstanceCache(config, probe)
    seeds = range(config.first_scene, config.first_scene + config.train_scenes
                  + config.val_scenes)
    tables = []
    for number, seed in enumerate(seeds, start=1):
        tables.append(cache.get(seed))
        if number % 50 == 0 or number == len(seeds):
            log(f'scenes {number}/{len(seeds)} ({time.monotonic() - started:.0f} s)')
    train_table = InstanceTable.concat(tables[:config.train_scenes])
    val_table = InstanceTable.concat(tables[config.train_scenes:] or [train_table.select(
        np.zeros(0, dtype=np.int64))])
    if config.masks != 'both':
        train_table = train_table.select(train_table.predicted == (config.masks == 'predicted'))
    if not (config.unmatched or config.objectness_weight > 0):
        train_table = train_table.select(train_table.attributes[:, 0] >= 0)
    val_table = val_table.select(val_table.attributes[:, 0] >= 0)
    extracted = time.monotonic()

    encoder = shared_text_encoder('cpu')
    bank = caption_bank(config.seed, config.templates_per_phrase)
    text = caption_embeddings(bank.texts, encoder, config.cache_dir)
    head = train_head(config, train_table, text, bank.truth, log)
    val_pred = val_table.select(val_table.predicted)
    summary = {'train_instances': int(len(train_table.box)),
               'captions': len(bank.texts),
               'val_label_accuracy_predicted': label_accuracy(head, val_pred, encoder),
               'val_label_accuracy_gt': label_accuracy(
                   head, val_table.select(~val_table.predicted), encoder),
               'extract_seconds': round(extracted - started, 1),
               'train_seconds': round(time.monotonic() - extracted, 1)}
    path = out / OUTPUT
    save_grounding(head, path, {'backbone': str(config.backbone or 'bundled'),
                                'backbone_probe': probe.tolist(),
                                'train_config': json.loads(json.dumps(asdict(config))),
                                'summary': summary})
    return path, summary
