"""The pipeline's grounding step: shared-space vectors and zero-shot labels per instance."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from segvec3d_ros.config import OTHER
from segvec3d_ros.grounding.model import GroundingHead, load_grounding, point_geometry
from segvec3d_ros.instances import InstanceInfo, describe_instances
from segvec3d_ros.model.features import estimate_normals
from segvec3d_ros.names import bundled_grounding_path, resolve_path
from segvec3d_ros.segmentation.base import Segmenter
from segvec3d_ros.segmentation.split import (comparable, junction_convexity, split_parts,
                                             take_joins, take_splits)

if TYPE_CHECKING:
    from segvec3d_ros.config import PipelineConfig
    from segvec3d_ros.grounding.text_encoder import TextEncoder

# Prompts averaged per label, as CLIP-style prompt ensembles do; training used these forms.
PROMPTS = ('{}', 'a {}', 'the {}')
# Normals of instance points: a few working voxels (1 cm) across, so that a handle or a rim
# shows, and estimated on the instances' points alone.
_NORMAL_RADIUS = 0.03
_NORMAL_NEIGHBOURS = 20
# Relative deviation of the probe features above which a backbone is not the one trained with.
_PROBE_TOLERANCE = 1e-2


class Encoder(Protocol):
    """Anything that embeds texts into unit vectors (the TextEncoder, or a test double)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@lru_cache(maxsize=2)
def shared_text_encoder(device: str = 'cpu') -> TextEncoder:
    """One TextEncoder per device and process: pipelines are rebuilt on parameter changes."""
    from segvec3d_ros.grounding.text_encoder import TextEncoder
    return TextEncoder(device=device)


def grounding_inputs(xyz: np.ndarray, features: np.ndarray, ids: np.ndarray,
                     instances: list[InstanceInfo], normals: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Rows [F_i, g_i] of the working points with an instance, and each row's instance index.

    The index is into `instances`; `ids` are per point, with 0 = none and k = the instance whose
    id is k.

    `normals`, when the caller has them, are (N, 3) per point, as `Grounder.point_normals`
    gives them (e.g. one estimate for several sets of instances on the same points); else they
    are estimated on these rows' points.
    """
    slot = np.full(int(max(np.max(ids, initial=0), max((i.id for i in instances), default=0)))
                   + 1, -1, dtype=np.int64)
    slot[[i.id for i in instances]] = np.arange(len(instances))
    index = slot[np.asarray(ids, dtype=np.int64)]
    rows = np.flatnonzero(index >= 0)
    points = np.asarray(xyz, dtype=np.float64)[rows]
    if normals is None:
        normals = instance_normals(points)
    elif len(normals) != len(index):
        raise ValueError(f'{len(normals)} normals given for {len(index)} points')
    else:
        normals = np.asarray(normals)[rows]
    inputs = np.concatenate([np.asarray(features, np.float32)[rows],
                             point_geometry(points, normals, index[rows], instances)], axis=1)
    return inputs, index[rows]


def instance_normals(points: np.ndarray) -> np.ndarray:
    """(P, 3) normals of instance points, estimated on those points alone."""
    return (estimate_normals(np.asarray(points, dtype=np.float64), _NORMAL_RADIUS,
                             _NORMAL_NEIGHBOURS) if len(points) else np.zeros((0, 3)))


def probe_cloud() -> tuple[np.ndarray, np.ndarray]:
    """Small fixed scene whose mean point feature identifies a backbone's weights.

    The scene is a box on a plane, in the sensor frame; the feature identifies the weights
    whatever file format holds them.
    """
    rng = np.random.default_rng(12345)
    plane = np.column_stack([rng.uniform(-0.3, 0.3, 600), np.full(600, 0.2),
                             rng.uniform(0.6, 1.0, 600)])
    box = np.array([0.0, 0.15, 0.8]) + rng.uniform(-0.05, 0.05, (300, 3))
    xyz = np.concatenate([plane, box]).astype(np.float32)
    rgb = np.concatenate([np.full((600, 3), 150), np.tile([200, 40, 40], (300, 1))])
    return xyz, rgb.astype(np.uint8)


def backbone_probe(segmenter: Segmenter) -> np.ndarray:
    """(C,) mean point feature of `segmenter` on the probe cloud."""
    features = segmenter.segment(*probe_cloud()).features
    if features is None:
        raise ValueError(f'the {segmenter.name} segmenter gives no point features')
    return features.mean(axis=0)


def text_vectors(head: GroundingHead, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """(T, embed_dim) unit v_T per text, averaged over its PROMPTS forms.

    A CLIP-style prompt ensemble, as the captions trained the head on several phrasings of each
    word.
    """
    forms = [prompt.format(text) for text in texts for prompt in PROMPTS]
    vectors = head.embed_texts(encoder.encode(forms)).reshape(
        len(texts), len(PROMPTS), head.config.embed_dim).mean(axis=1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class Grounder:
    """Embeds a frame's instances and labels each by its nearest vocabulary word."""

    def __init__(self, head: GroundingHead, vocabulary: Sequence[str], threshold: float,
                 encoder: Encoder) -> None:
        """Embed the vocabulary once (its prompts averaged in the shared space)."""
        self.head = head
        self.vocabulary = list(vocabulary)
        self.threshold = threshold
        self.label_vectors = text_vectors(head, encoder, self.vocabulary)

    def label(self, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Zero-shot label, 'other' below the threshold, and its cosine score per vector."""
        if not self.vocabulary:
            return [OTHER] * len(embeddings), np.zeros(len(embeddings), np.float32)
        scores = np.asarray(embeddings) @ self.label_vectors.T
        best = scores.argmax(axis=1)
        top = scores[np.arange(len(scores)), best]
        return ([self.vocabulary[b] if s >= self.threshold else OTHER for b, s in zip(best, top)],
                top.astype(np.float32))

    @staticmethod
    def point_normals(xyz: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(N, 3) normals of the points with an instance (`ids` > 0), on those points; 0 elsewhere.

        Splits and joins move points between instances, never off them: one estimate serves
        a frame's every scoring, as the instances of a training scene share one.
        """
        on_instance = np.asarray(ids) > 0
        normals = np.zeros((len(on_instance), 3))
        normals[on_instance] = instance_normals(np.asarray(xyz)[on_instance])
        return normals

    def ground(self, instances: list[InstanceInfo], xyz: np.ndarray, features: np.ndarray,
               ids: np.ndarray, normals: np.ndarray | None = None) -> None:
        """Set embedding, label and label_score of `instances` from their working points.

        `normals`: (N, 3) per working point, as `point_normals` gives them; estimated here on
        the instances' points when not given.
        """
        self.apply(instances, *grounding_inputs(xyz, features, ids, instances, normals))

    def apply(self, instances: list[InstanceInfo], inputs: np.ndarray,
              index: np.ndarray) -> None:
        """Set embedding, label and label_score of `instances` from `grounding_inputs` rows."""
        if not instances:
            return
        embeddings = self.head.embed_instances(inputs, index, instances)
        labels, scores = self.label(embeddings)
        for instance, vector, label, score in zip(instances, embeddings, labels, scores):
            instance.embedding = vector
            instance.label = label
            instance.label_score = float(score)

    def resolve_splits(self, xyz: np.ndarray, rgb: np.ndarray | None, features: np.ndarray,
                       ids: np.ndarray, proposals: np.ndarray, up: np.ndarray | None,
                       normals: np.ndarray | None = None) -> np.ndarray:
        """`ids` of the working points with the proposed splits taken where the head favours them.

        A proposed split (`Segmentation.split_proposals`) is taken where the head's Objectness
        layer finds the two parts more likely to be whole objects each than their union,
        P(a) P(b) > P(a + b), or nearly as likely (`split.SPLIT_LABEL_MARGIN`) when they get
        different labels, neither of them other: two touching objects, not two faces of one. A
        head without that layer takes no split.

        One proposal per instance, the first; a proposal whose points have no instance is
        ignored. `normals` are those of `point_normals(xyz, ids)`, estimated here if not given.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if self.head.objectness is None:
            return ids
        parts, parents, taken = split_parts(ids, proposals)
        if not taken:
            return ids
        if normals is None:
            normals = self.point_normals(xyz, ids)
        return take_splits(ids, taken,
                           self._whole_and_label(xyz, rgb, features, parts, normals, up),
                           self._whole_and_label(xyz, rgb, features, parents, normals, up))

    def join_parts(self, xyz: np.ndarray, rgb: np.ndarray | None, features: np.ndarray,
                   ids: np.ndarray, pairs: list[tuple[int, int]], up: np.ndarray | None,
                   normals: np.ndarray | None = None) -> np.ndarray:
        """`ids` of the working points with each part joined to the instance it belongs to.

        `pairs` are (part, whole) ids (`split.part_candidates`: a cap, a handle the embeddings
        cut off, or two pieces of comparable size); a part joins its whole where the head's
        Objectness layer finds the union likelier one whole object than the two apart, and
        pieces of comparable size where they also meet without a valley (`split.take_joins`).
        A head without that layer joins nothing. `normals` as for `resolve_splits`.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if self.head.objectness is None or not pairs:
            return ids
        xyz = np.asarray(xyz)
        # Only the instances of a pair are scored: a noisy frame has hundreds of specks.
        members = np.isin(ids, np.unique(np.array(pairs)))
        if normals is None:
            normals = self.point_normals(xyz, ids)
        singles = self._whole_and_label(xyz, rgb, features, np.where(members, ids, 0), normals,
                                        up)
        unions: dict[tuple[int, int], float] = {}
        pending = pairs
        while pending:
            # One scoring per round of pairs that share no instance: each point, one union.
            batch: list[tuple[int, int]] = []
            used: set[int] = set()
            for pair in pending:
                if used.isdisjoint(pair):
                    batch.append(pair)
                    used.update(pair)
            round_ids = np.zeros_like(ids)
            for number, (part, whole) in enumerate(batch, start=1):
                round_ids[(ids == part) | (ids == whole)] = number
            scored = self._whole_and_label(xyz, rgb, features, round_ids, normals, up)
            unions.update((pair, scored[number][0]) for number, pair in enumerate(batch, 1))
            pending = [pair for pair in pending if pair not in batch]
        sizes = np.bincount(ids)
        convexity = {(part, whole): junction_convexity(xyz, normals, np.flatnonzero(ids == part),
                                                       np.flatnonzero(ids == whole))
                     for part, whole in pairs if comparable(sizes, part, whole)}
        return take_joins(ids, pairs, singles, unions, convexity)

    def _whole_and_label(self, xyz: np.ndarray, rgb: np.ndarray | None, features: np.ndarray,
                         ids: np.ndarray, normals: np.ndarray, up: np.ndarray | None
                         ) -> dict[int, tuple[float, str]]:
        """Log-probability of being one whole object, and label, of each id > 0 of `ids`.

        `normals` are (N, 3) per point, as `point_normals` gives them.
        """
        instances = describe_instances(xyz, rgb, ids, up)
        vectors = self.head.embed_instances(
            *grounding_inputs(xyz, features, ids, instances, normals), instances)
        return dict(zip((i.id for i in instances),
                        zip(self.head.log_objectness(vectors), self.label(vectors)[0])))


def load_grounder(config: PipelineConfig, segmenter: Segmenter
                  ) -> tuple[Grounder | None, str]:
    """Grounding step for `segmenter`, or None, and a line saying which and why.

    An explicit `grounding_model_path` that is missing or was trained on another backbone is
    a ValueError; the bundled head is skipped (with the reason) when either is the case.
    """
    path = resolve_path(config.grounding_model_path or bundled_grounding_path())
    explicit = bool(config.grounding_model_path)
    try:
        head, metadata = load_grounding(path)
        _check_backbone(metadata, segmenter, path)
    except (OSError, ValueError) as error:
        if explicit:
            raise ValueError(str(error)) from error
        return None, f'no grounding: {error}'
    grounder = Grounder(head, config.label_vocabulary, config.label_threshold,
                        shared_text_encoder(_text_device(config.device)))
    return grounder, (f'grounding with {path} ({len(grounder.vocabulary)} labels, '
                      f'threshold {config.label_threshold})')


def _text_device(device: str) -> str:
    import torch
    return 'cuda' if device == 'cuda' or (device == 'auto' and torch.cuda.is_available()) \
        else 'cpu'


def _check_backbone(metadata: dict[str, Any], segmenter: Segmenter, path: Path) -> None:
    """Raise ValueError unless `segmenter` computes the features the head was trained on."""
    stored = metadata.get('backbone_probe')
    if stored is None:
        raise ValueError(f'{path} does not record the backbone it was trained on')
    probe = backbone_probe(segmenter)
    stored = np.asarray(stored, dtype=np.float32)
    if probe.shape != stored.shape or (np.linalg.norm(probe - stored)
                                       > _PROBE_TOLERANCE * np.linalg.norm(stored)):
        raise ValueError(f'{path} was trained on another segmentation model '
                         f'({metadata.get("backbone", "unknown")}); retrain it with '
                         f'segvec3d train-grounding')
