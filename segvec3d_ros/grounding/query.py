"""Rank the instances of a scene for a free-text query (ROS-free; the query node calls this).

The text is parsed into a target phrase, an optional relation to an anchor phrase and optional
camera superlatives ("the red mug left of the bowl", "the largest box", "the object closest to
the camera"). Each phrase scores every instance in log space: its noun by the learned
similarity of v_T and v_X, its colour word by the instance's measured mean colour, its size
word by the box volume or height against the other likely candidates; relations come from
the boxes' geometry. A head with an Objectness layer adds each instance's log-probability of
being one whole object. The sum ranks the instances; the answer says which parts were used.
Each term is a log-membership, so exp(sum) is the instance's fit to the text on its own, which
the scene's softmax (the ranking scores) is not: "least bad of what is here" scores high there.

Geometry is read in the cloud's frame: an optical frame (frame id containing 'optical', or
none) has x right, y down, z forward; any other follows REP 103 (x forward, y left, z up) with
the sensor at its origin. 'Up' is the support-plane normal when the boxes stand on one (the
pipeline then gives every box that normal as its third axis), else the frame's up.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from segvec3d_ros.colors import NAMED_COLORS, color_distances, color_names
from segvec3d_ros.config import DEFAULT_VOCABULARY
from segvec3d_ros.grounding.grounder import Encoder, shared_text_encoder, text_vectors
from segvec3d_ros.grounding.model import GroundingHead, load_grounding
from segvec3d_ros.instances import InstanceInfo
from segvec3d_ros.names import bundled_grounding_path, resolve_path

MAX_TEXT_CHARS = 1000
COLOUR_WORDS = {**{name: name for name in NAMED_COLORS}, 'grey': 'gray', 'violet': 'purple',
                'golden': 'yellow', 'crimson': 'red', 'navy': 'blue', 'beige': 'brown'}
# word -> (measure, sign): superlatives, comparatives and plain size adjectives alike
SIZE_WORDS = {**dict.fromkeys(('largest', 'biggest', 'larger', 'bigger', 'large', 'big',
                               'huge'), ('volume', 1.0)),
              **dict.fromkeys(('smallest', 'smaller', 'small', 'little', 'tiny', 'tiniest'),
                              ('volume', -1.0)),
              **dict.fromkeys(('tallest', 'taller', 'tall'), ('height', 1.0)),
              **dict.fromkeys(('shortest', 'shorter', 'short', 'flattest', 'flat'),
                              ('height', -1.0)),
              # Where it is, not how tall it is: the top of a stack is 'highest' however thin.
              **dict.fromkeys(('highest', 'higher', 'high', 'top', 'topmost', 'uppermost'),
                              ('elevation', 1.0)),
              **dict.fromkeys(('lowest', 'lower', 'low', 'bottom', 'bottommost', 'lowermost'),
                              ('elevation', -1.0))}
# 'on top' / 'at the top' / 'at the bottom' without an anchor are elevation superlatives, not
# the relation 'on' with the anchor 'top'.
_POSITION_PHRASES = ((r'\b(on|at) (the )?top\b(?! of)', 'topmost'),
                     (r'\b(at|on) (the )?bottom\b(?! of)', 'bottommost'))
# Binary relations, longest phrases first so that 'on top of' wins over 'on'.
RELATIONS = (('to the left of', 'left of'), ('on the left of', 'left of'), ('left of', 'left of'),
             ('to the right of', 'right of'), ('on the right of', 'right of'),
             ('right of', 'right of'), ('in front of', 'in front of'), ('in back of', 'behind'),
             ('behind', 'behind'), ('on top of', 'on'), ('on', 'on'), ('atop', 'on'),
             ('above', 'above'), ('over', 'above'), ('underneath', 'under'),
             ('beneath', 'under'), ('under', 'under'), ('below', 'below'),
             ('next to', 'next to'), ('beside', 'next to'), ('near', 'next to'),
             ('close to', 'next to'), ('closest to', 'next to'), ('nearest to', 'next to'),
             ('by', 'next to'))
# Position in the view, independent of other objects: (pattern, name)
UNARY = ((r'(closest|nearest) to (the camera|me|you|the robot)|(closest|nearest)( one)?$|'
          r'^(the )?(closest|nearest)', 'closest to the camera'),
         (r'(farthest|furthest) (away )?(from (the camera|me|you|the robot))?|'
          r'most distant', 'farthest from the camera'),
         (r'leftmost|left most|on the left( side)?$|at the left$', 'leftmost'),
         (r'rightmost|right most|on the right( side)?$|at the right$', 'rightmost'))
SUPPORT_NOUNS = {'table', 'desk', 'floor', 'ground', 'counter', 'surface', 'shelf', 'tabletop'}
FILLER = {'the', 'a', 'an', 'this', 'that', 'these', 'those', 'one', 'ones', 'object',
          'objects', 'thing', 'things', 'item', 'items', 'please', 'pick', 'up', 'grab', 'get',
          'give', 'me', 'find', 'show', 'take', 'hand', 'fetch', 'which', 'is', 'of', 'and',
          'there', 'it', 'its', 'most', 'more', 'coloured', 'colored', 'in', 'colour', 'color',
          'to', 'at', 'side', 'something', 'anything', 'i', 'want', 'need', 'you'}
# Geometric softness: m for positions, log-volume units for sizes.
_POSITION_SCALE = 0.02
_DISTANCE_SCALE = 0.03
_SIZE_SCALE = 0.1
_ON_GAP = 0.03          # m between a box's bottom and the top of the one it stands on
_NEAR = 0.1             # m of free space at which 'next to' has fallen to 1/e
_COLOUR_SCALE = 8.0     # L*a*b* distance units
_RANK_WEIGHT = 5.0      # log-score cost per likely candidate that beats a superlative
_FLOOR = 1e-6
_CAPTION_TEMPERATURE = 0.05
_COLOUR_PROMPT = '{} object'
_SYNONYM_COSINE = 0.8   # label words this close to the query's noun in the shared space
_TEXT_CACHE_SIZE = 4096
# Fit below which the query node answers "not found", chosen on the validation split for the
# sensor-mix head: it keeps most right answers and rejects most absent words (docs/GROUNDING.md,
# "Not found", has the trade-off).
DEFAULT_MIN_SCORE = 0.05


@dataclass
class QueryResult:
    """Ranked answer; `order` indexes the instances given to `QueryEngine.query`.

    `scores` are their shares of the scene's softmax and `fit_scores` their fits to the text in
    [0, 1].
    """

    success: bool
    message: str
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    fit_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


@dataclass
class Phrase:
    """One noun phrase: its colour and size words, and the rest (the noun) as text."""

    noun: str = ''
    colour: str = ''
    size: str = ''

    def describe(self) -> str:
        """Words understood, for messages."""
        return ' '.join(w for w in (self.size, self.colour, self.noun) if w) or 'any object'


@dataclass
class ParsedQuery:
    """A query split into target, relation and anchor, and camera superlatives."""

    target: Phrase
    relation: str = ''
    anchor: Phrase | None = None
    unary: list[str] = field(default_factory=list)


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


def parse_phrase(text: str) -> Phrase:
    """Colour, size and noun words of a phrase (lower-case words separated by spaces)."""
    phrase = Phrase()
    nouns = []
    for word in text.split():
        if word in COLOUR_WORDS and not phrase.colour:
            phrase.colour = COLOUR_WORDS[word]
        elif word in SIZE_WORDS and not phrase.size:
            phrase.size = word
        elif word not in FILLER:
            nouns.append(word)
    phrase.noun = ' '.join(nouns)
    return phrase


def parse_query(text: str) -> ParsedQuery:
    """Split cleaned text into target phrase, relation, anchor phrase and camera superlatives."""
    words = ' '.join(re.sub(r"[^\w\s]", ' ', text.lower()).split())
    for pattern, word in _POSITION_PHRASES:
        words = re.sub(pattern, word, words)
    unary = []
    for pattern, name in UNARY:
        found = re.search(pattern, words)
        if found:
            unary.append(name)
            words = ' '.join((words[:found.start()] + ' ' + words[found.end():]).split())
    relation, anchor = '', None
    matches = [(m.start(), -len(phrase), name, m) for phrase, name in RELATIONS
               for m in [re.search(rf'(^| ){re.escape(phrase)}( |$)', words)] if m]
    if matches:
        _, _, name, found = min(matches, key=lambda m: m[:2])
        anchor_phrase = parse_phrase(words[found.end():])
        if not set(anchor_phrase.noun.split()) & SUPPORT_NOUNS:
            relation, anchor = name, anchor_phrase
        words = words[:found.start()]
    return ParsedQuery(parse_phrase(words), relation, anchor, unary)


@dataclass
class _Geometry:
    """Boxes of a scene in the camera's horizontal axes and along up."""

    center: np.ndarray      # (K, 3)
    up: np.ndarray          # (3,)
    right: np.ndarray       # (3,) camera right, horizontal
    forward: np.ndarray     # (3,) camera forward, horizontal
    half: np.ndarray        # (K, 3) half extents along right, forward, up
    volume: np.ndarray      # (K,)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def frame_axes(frame_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera right, down and forward in the cloud's frame (see the module docstring)."""
    if not frame_id or 'optical' in frame_id:
        return np.eye(3)[0], np.eye(3)[1], np.eye(3)[2]
    return -np.eye(3)[1], -np.eye(3)[2], np.eye(3)[0]


def _geometry(instances: Sequence[InstanceInfo], frame_id: str) -> _Geometry:
    right, down, forward = frame_axes(frame_id)
    axes = Rotation.from_quat(np.array([i.bbox_quaternion for i in instances])).as_matrix()
    sizes = np.array([i.bbox_size for i in instances], dtype=np.float64)
    # Boxes standing on a support plane share that normal as their third axis.
    third = axes[:, :, 2]
    agree = np.abs(third @ third.T) > 1 - 1e-6
    up = -down
    if len(instances) > 1 and agree.sum(axis=1).max() > 1:
        candidate = third[agree.sum(axis=1).argmax()]
        up = candidate if candidate @ -down >= 0 else -candidate
    right_h = right - (right @ up) * up
    right_h = _unit(right_h if np.linalg.norm(right_h) > 1e-6 else np.cross(forward, up))
    forward_h = np.cross(up, right_h)
    directions = np.stack([right_h, forward_h, up])                   # (3, 3)
    # Half extent of a box along direction d: sum over its axes of |axis . d| * size / 2
    half = (np.abs(np.einsum('kja,dj->kda', axes, directions)) * sizes[:, None, :]).sum(2) / 2
    return _Geometry(np.array([i.bbox_center for i in instances], dtype=np.float64), up,
                     right_h, forward_h, half, np.prod(np.maximum(sizes, 1e-3), axis=1))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def relation_matrix(relation: str, geometry: _Geometry) -> np.ndarray:
    """(K, K) degree in (0, 1) to which instance i stands in `relation` to instance j."""
    g = geometry
    delta = g.center[:, None, :] - g.center[None, :, :]               # i - j
    dx, dz = delta @ g.right, delta @ g.forward
    distance = np.hypot(dx, dz)
    height = g.center @ g.up
    top, bottom = height + g.half[:, 2], height - g.half[:, 2]
    reach = g.half[:, :2].max(axis=1)
    over = _sigmoid((reach[None, :] - distance) / _POSITION_SCALE)    # i's centre over j
    if relation == 'left of':
        return _sigmoid(-dx / _POSITION_SCALE)
    if relation == 'right of':
        return _sigmoid(dx / _POSITION_SCALE)
    if relation == 'behind':
        return _sigmoid(dz / _POSITION_SCALE)
    if relation == 'in front of':
        return _sigmoid(-dz / _POSITION_SCALE)
    if relation in ('on', 'under'):
        gap = np.abs(bottom[:, None] - top[None, :])
        on = _sigmoid((_ON_GAP - gap) / (_ON_GAP / 3)) * over
        return on if relation == 'on' else on.T
    if relation in ('above', 'below'):
        above = _sigmoid((bottom[:, None] - top[None, :] + _ON_GAP) / (_ON_GAP / 3)) * over
        return above if relation == 'above' else above.T
    if relation == 'next to':
        free = np.maximum(distance - reach[:, None] - reach[None, :], 0.0)
        return np.exp(-free / _NEAR)
    raise ValueError(f'unknown relation {relation!r}')


def _rank_term(values: np.ndarray, weights: np.ndarray, scale: float) -> np.ndarray:
    """Log-score cost of each instance: weighted count of the others with a larger value."""
    beaten = _sigmoid((values[None, :] - values[:, None]) / scale)   # [i, j]: j beats i
    np.fill_diagonal(beaten, 0.0)
    return -_RANK_WEIGHT * beaten @ weights


def describe_for_text(instances: Sequence[InstanceInfo]) -> list[str]:
    """Short captions from what the geometry shows, for scenes without learned vectors."""
    colours = color_names(np.array([i.mean_color[:3] for i in instances]).reshape(-1, 3))
    volumes = np.array([float(np.prod(i.bbox_size)) for i in instances])
    ranks = volumes.argsort().argsort() / max(len(volumes) - 1, 1)
    captions = []
    for instance, colour, rank in zip(instances, colours, ranks):
        size = 'small' if rank < 1 / 3 else 'large' if rank > 2 / 3 else 'medium'
        has_colour = instance.mean_color[3] > 0
        noun = instance.label if instance.label and instance.label != 'other' else 'object'
        captions.append(f'a {size} {colour + " " if has_colour else ""}{noun}')
    return captions


class QueryEngine:
    """Ranks instances for text: parsed words and geometry, plus the learned 3D-text space."""

    def __init__(self, encoder: Encoder, head: GroundingHead | None = None) -> None:
        """`head` maps text into the space of the instances' embeddings.

        Without it (or without embeddings on the instances) nouns are matched by caption
        similarity.
        """
        self._encoder = encoder
        self._head = head
        # v_T per phrase: repeated queries then cost no encoder or torch call at all.
        self._text_cache: dict[str, np.ndarray] = {}

    def _text_vector(self, text: str) -> np.ndarray:
        """v_T of `text` in the shared space, over the label prompts (the engine has a head)."""
        vector = self._text_cache.get(text)
        if vector is None and self._head is not None:
            if len(self._text_cache) >= _TEXT_CACHE_SIZE:
                self._text_cache.clear()
            vector = text_vectors(self._head, self._encoder, [text])[0]
            self._text_cache[text] = vector
        return vector

    def _learned_class(self, head: GroundingHead, instances: Sequence[InstanceInfo], word: str,
                       competitors: Sequence[str], prompt: str = '{}') -> np.ndarray:
        """(K,) log P(word | instance) over `word` and the competitors that are no synonym of it.

        The logits are scaled by the trained temperature.
        """
        query = self._text_vector(prompt.format(word))
        others = np.array([self._text_vector(prompt.format(c)) for c in competitors])
        classes = np.vstack([query, others[others @ query < _SYNONYM_COSINE]])
        logits = np.array([i.embedding for i in instances]) @ classes.T \
            / head.loss.temperature
        return logits[:, 0] - np.logaddexp.reduce(logits, axis=1)

    def _phrase_scores(self, phrase: Phrase, instances: Sequence[InstanceInfo],
                       geometry: _Geometry, head: GroundingHead | None,
                       parts: list[str], whole: np.ndarray) -> np.ndarray:
        """(K,) log-membership of each instance in `phrase`; appends what was used to parts.

        It starts from the instances' `whole` log-probabilities of being one object.
        """
        scores = whole.copy()
        if phrase.noun and head is not None:
            # Membership, not rank: P(noun | instance) against the label words it is not a
            # synonym of, so that every mug fits 'mug' and colour or relation decide among them.
            scores += self._learned_class(head, instances, phrase.noun, DEFAULT_VOCABULARY)
            parts.append(f"category '{phrase.noun}' (learned)")
        elif phrase.noun:
            captions = describe_for_text(instances)
            vectors = self._encoder.encode([phrase.noun, *captions])
            similarity = vectors[1:] @ vectors[0]
            scores += (similarity - similarity.max()) / _CAPTION_TEMPERATURE
            parts.append(f"category '{phrase.noun}' (caption similarity, no learned embeddings)")
        if phrase.colour and head is not None:
            # Learned colour words see through the scene's shading, which mean colours do not.
            scores += self._learned_class(head, instances, phrase.colour, list(NAMED_COLORS),
                                          _COLOUR_PROMPT)
            parts.append(f"colour '{phrase.colour}' (learned)")
        elif phrase.colour and all(i.mean_color[3] > 0 for i in instances):
            log_p = -color_distances(np.array([i.mean_color[:3] for i in instances])) \
                / _COLOUR_SCALE
            log_p -= np.logaddexp.reduce(log_p, axis=1, keepdims=True)
            scores += log_p[:, list(NAMED_COLORS).index(phrase.colour)]
            parts.append(f"colour '{phrase.colour}' (mean colour)")
        elif phrase.colour:
            parts.append(f"colour '{phrase.colour}' ignored (the cloud has no colour)")
        if phrase.size:
            measure, sign = SIZE_WORDS[phrase.size]
            if measure == 'elevation':
                # the top of the box above the support: metres, ranked like positions
                values, scale = geometry.center @ geometry.up + geometry.half[:, 2], \
                    _POSITION_SCALE
            else:
                values = np.log(geometry.volume) if measure == 'volume' else \
                    np.log(np.maximum(2 * geometry.half[:, 2], 1e-3))
                scale = _SIZE_SCALE
            scores += _rank_term(sign * values, np.exp(scores), scale)
            parts.append(f"size '{phrase.size}' (box {measure})")
        return scores

    def query(self, text: str, instances: Sequence[InstanceInfo], top_k: int,
              frame_id: str = '', min_score: float = 0.0) -> QueryResult:
        """Return the top_k best-matching instances (top_k 0 means 1), or why there are none.

        `scores` rank the instances (a softmax over the scene); `fit_scores` say how well each
        fits the text on its own. A best fit below `min_score` is success=False ("not found"),
        with the ranked candidates still returned.
        """
        clean, problem = clean_query_text(text)
        if problem:
            return QueryResult(False, problem)
        if not instances:
            return QueryResult(False, 'the latest scene has no instances')
        # Instances from the euclidean segmenter, or another head, carry no usable vectors.
        head = self._head if self._head is not None and all(
            len(i.embedding) == self._head.config.embed_dim for i in instances) else None
        parsed = parse_query(clean)
        geometry = _geometry(instances, frame_id)
        parts: list[str] = []
        # Every phrase names whole objects: fragments and merges count for little.
        whole = (np.zeros(len(instances)) if head is None else
                 head.log_objectness(np.array([i.embedding for i in instances])))
        if head is not None and head.objectness is not None:
            parts.append('whole objects (learned objectness)')
        if not (parsed.target.colour or parsed.target.size or parsed.relation or parsed.unary):
            # Nothing structural understood (another language, a bare noun): the whole text.
            parsed.target = Phrase(noun=parsed.target.noun or clean)
        scores = self._phrase_scores(parsed.target, instances, geometry, head, parts, whole)
        if parsed.relation and parsed.anchor is not None:
            anchor_parts: list[str] = []
            anchor = np.exp(self._phrase_scores(parsed.anchor, instances, geometry, head,
                                                anchor_parts, whole))
            fits = relation_matrix(parsed.relation, geometry) * anchor[None, :]
            np.fill_diagonal(fits, 0.0)
            scores += np.log(fits.max(axis=1) + _FLOOR)
            parts.append(f"relation '{parsed.relation}' anchor '{parsed.anchor.describe()}' "
                         f"(geometry; anchor by {', '.join(anchor_parts) or 'any object'})")
        for name in parsed.unary:
            if name.endswith('camera'):
                distance = np.linalg.norm(geometry.center, axis=1)
                values, scale = (-distance if name.startswith('closest') else distance), \
                    _DISTANCE_SCALE
            else:
                across = geometry.center @ geometry.right
                values, scale = (-across if name == 'leftmost' else across), _POSITION_SCALE
            scores += _rank_term(values, np.exp(scores), scale)
            parts.append(f"'{name}' (geometry)")
        probabilities = np.exp(scores - np.logaddexp.reduce(scores))
        # Every term is a log-membership (<= 0), so exp(sum) says how well the instance fits
        # the text on its own, before the softmax makes it a share of the scene. Without
        # learned embeddings the noun's caption term is relative to the scene's best caption:
        # that fit cannot tell an absent noun.
        fits = np.exp(np.minimum(scores, 0.0))
        order = np.argsort(-probabilities, kind='stable')[:max(1, min(int(top_k), len(instances)))]
        best = instances[order[0]]
        frame = 'optical' if (not frame_id or 'optical' in frame_id) else 'REP 103 body'
        candidate = (f'instance {best.id}{f" ({best.label})" if best.label else ""}, score '
                     f'{probabilities[order[0]]:.2f}, fit {fits[order[0]]:.2f}')
        success = bool(fits[order[0]] >= min_score)
        message = ((f'best match: {candidate}' if success else
                    f'not found: the best candidate, {candidate}, fits below min_score '
                    f'{min_score:.2f}')
                   + '; interpretation: ' + ' + '.join(parts)
                   + (f'; geometry in the {frame} frame' if parsed.relation or parsed.unary
                      or parsed.target.size else ''))
        return QueryResult(success, message, order, probabilities[order].astype(np.float32),
                           fits[order].astype(np.float32))


def make_query_engine(grounding_model_path: str = '', text_device: str = 'cpu'
                      ) -> tuple[QueryEngine, str]:
    """Engine with the text encoder and grounding head, and a line saying what it matches nouns by.

    An empty path gives the bundled head. A missing or unreadable head leaves the engine on
    caption similarity: a named path is then a ValueError, the bundled one only a reason in the
    line.
    """
    path = resolve_path(grounding_model_path or bundled_grounding_path())
    head = None
    try:
        head, _ = load_grounding(path)
        status = f'nouns matched in the learned space of {path}'
    except (OSError, ValueError) as error:
        if grounding_model_path:
            raise ValueError(str(error)) from error
        status = f'nouns matched by caption similarity ({error})'
    return QueryEngine(shared_text_encoder(text_device), head), status
