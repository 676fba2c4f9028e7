"""Rank the instances of a scene for a free-text query (ROS-free; the query node calls this)."""
from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from segvec3d_ros.colors import color_names
from segvec3d_ros.instances import InstanceInfo

MAX_TEXT_CHARS = 1000


class Encoder(Protocol):
    """Anything that embeds texts into unit vectors (the TextEncoder, or a test double)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class QueryResult:
    """Ranked answer; `order` indexes the instances given to `QueryEngine.query`."""

    success: bool
    message: str
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def clean_query_text(text: str) -> tuple[str, str | None]:
    """Normalise a query; return (clean text, reason it is unusable or None)."""
    if not isinstance(text, str):
        return '', f'text must be a string, got {type(text).__name__}'
    if len(text) > MAX_TEXT_CHARS:
        return '', f'text has {len(text)} characters; at most {MAX_TEXT_CHARS} are accepted'
    # NFKC folds full-width and compatibility forms; control and format characters (zero-width
    # joiners, direction marks) carry no meaning for the encoder.
    normalised = unicodedata.normalize('NFKC', text)
    kept = ''.join(c if unicodedata.category(c)[0] not in 'CZ' else ' ' for c in normalised)
    clean = ' '.join(kept.split())
    if not clean:
        return '', 'text is empty or whitespace only'
    return clean, None


def size_words(instances: Sequence[InstanceInfo]) -> list[str]:
    """Describe each instance's box volume relative to the others: small, medium or large."""
    if not instances:
        return []
    volumes = np.array([float(np.prod(i.bbox_size)) for i in instances])
    ranks = volumes.argsort().argsort() / max(len(volumes) - 1, 1)
    return ['small' if r < 1 / 3 else 'large' if r > 2 / 3 else 'medium' for r in ranks]


def describe_for_text(instances: Sequence[InstanceInfo]) -> list[str]:
    """Short captions from what the geometry shows: colour, relative size, zero-shot label."""
    colours = color_names(np.array([i.mean_color[:3] for i in instances]).reshape(-1, 3))
    sizes = size_words(instances)
    captions = []
    for instance, colour, size in zip(instances, colours, sizes):
        has_colour = instance.mean_color[3] > 0
        noun = instance.label if instance.label and instance.label != 'other' else 'object'
        captions.append(f'a {size} {colour + " " if has_colour else ""}{noun}')
    return captions


class QueryEngine:
    """Ranks instances by cosine similarity between the query and each instance's caption."""

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder

    def query(self, text: str, instances: Sequence[InstanceInfo], top_k: int) -> QueryResult:
        """Return the top_k best-matching instances (top_k 0 means 1), or why there are none."""
        clean, problem = clean_query_text(text)
        if problem:
            return QueryResult(False, problem)
        if not instances:
            return QueryResult(False, 'the latest scene has no instances')
        captions = describe_for_text(instances)
        vectors = self._encoder.encode([clean, *captions])
        scores = vectors[1:] @ vectors[0]
        order = np.argsort(-scores, kind='stable')[:max(1, min(int(top_k), len(instances)))]
        best = order[0]
        message = (f'best match: instance {instances[best].id} ("{captions[best]}", '
                   f'caption similarity {scores[best]:.2f})')
        return QueryResult(True, message, order, scores[order].astype(np.float32))
