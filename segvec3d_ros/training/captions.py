"""Training captions for the 3D-text alignment, built from the generator's instance attributes.

A caption is a phrasing of optional size, colour and material words and a noun ("the small red
mug", "cylinder", "a metal can", "the blue one"). Which instances it is true of follows from
its words alone, so one table `truth[caption, category, colour, size]` gives every positive and
negative pair of a batch, including the many instances that share a caption.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segvec3d_ros.config import DEFAULT_VOCABULARY
from segvec3d_ros.data.scenes import CATEGORIES, OBJECT_COLOURS

SIZE_WORDS = ('', 'small', 'large')     # index 0: the generator's '' (neither)
# Nouns and the categories they name: names, synonyms, shapes and generic words.
NOUNS: dict[str, tuple[str, ...]] = {
    'box': ('box',), 'package': ('box',), 'cardboard box': ('box',), 'cereal box': ('box',),
    'can': ('can',), 'tin': ('can',), 'tin can': ('can',), 'soda can': ('can',),
    'bottle': ('bottle',), 'water bottle': ('bottle',), 'flask': ('bottle',),
    'spray bottle': ('bottle',), 'squeeze bottle': ('bottle',),
    'bowl': ('bowl',), 'salad bowl': ('bowl',),
    'mug': ('mug',), 'coffee mug': ('mug',), 'coffee cup': ('mug', 'cup'),
    'cup': ('cup', 'mug'), 'paper cup': ('cup',), 'plastic cup': ('cup',),
    'ball': ('ball',), 'sphere': ('ball',), 'toy ball': ('ball',),
    'book': ('book',), 'notebook': ('book',), 'novel': ('book',),
    'plate': ('plate',), 'dish': ('plate', 'bowl'),
    'carton': ('carton',), 'milk carton': ('carton',), 'juice carton': ('carton',),
    'jar': ('jar',), 'glass jar': ('jar',), 'jam jar': ('jar',),
    'toy': ('toy',), 'toy car': ('toy',), 'figure': ('toy',),
    'cylinder': ('can', 'bottle', 'jar'), 'block': ('box', 'book'),
    'container': ('box', 'can', 'bottle', 'bowl', 'mug', 'cup', 'carton', 'jar'),
    'object': CATEGORIES, 'thing': CATEGORIES, 'item': CATEGORIES, 'one': CATEGORIES,
}
# Material words the categories imply (the generator draws no materials).
MATERIALS: dict[str, tuple[str, ...]] = {
    'cardboard': ('box', 'carton'), 'metal': ('can',), 'aluminium': ('can',),
    'plastic': ('bottle', 'cup', 'toy'), 'glass': ('bottle', 'jar'),
    'ceramic': ('bowl', 'mug', 'plate'), 'rubber': ('ball',), 'paper': ('book', 'cup'),
}
# Tabletop things the generator never draws, the label vocabulary's extra words among them:
# captions true of no instance, so that no generated object ends up nearer one of them than
# its own name (untrained, 'banana' had lain nearer the bowls than 'bowl' for some).
DISTRACTORS = (*(w for w in DEFAULT_VOCABULARY if w not in CATEGORIES), 'laptop', 'spoon',
               'fork', 'knife', 'scissors', 'pen', 'remote control', 'sponge', 'towel',
               'potted plant', 'lamp', 'shoe', 'computer mouse', 'stapler')
TEMPLATES = ('{}', 'a {}', 'the {}', 'this {}', 'pick up the {}', 'the {} on the table')


@dataclass
class CaptionBank:
    """Every training caption, and which (category, colour, size) instances it is true of."""

    texts: list[str]
    truth: np.ndarray       # (M, len(CATEGORIES), len(OBJECT_COLOURS), len(SIZE_WORDS)) bool


def _truth(noun_categories: tuple[str, ...], colour: str, size: str,
           material_categories: tuple[str, ...]) -> np.ndarray:
    category = np.isin(CATEGORIES, noun_categories) & np.isin(CATEGORIES, material_categories)
    colours = np.array([not colour or c == colour for c in OBJECT_COLOURS])
    sizes = np.array([not size or s == size for s in SIZE_WORDS])
    return category[:, None, None] & colours[None, :, None] & sizes[None, None, :]


def caption_bank(seed: int = 0, templates_per_phrase: int = 2) -> CaptionBank:
    """Every noun with every colour and size word (none included), then the distractors.

    A material word is on a quarter of the noun phrases, and each phrase is in
    `templates_per_phrase` random templates; then every distractor comes with every colour word
    (or none), true of nothing.
    """
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    truth: list[np.ndarray] = []
    for noun, categories in NOUNS.items():
        fitting = [m for m, of in MATERIALS.items() if set(of) & set(categories)]
        for colour in ('', *OBJECT_COLOURS):
            for size in SIZE_WORDS:
                material = ''
                if fitting and rng.random() < 0.25:
                    material = fitting[rng.integers(len(fitting))]
                words = ' '.join(w for w in (size, colour, material, noun) if w)
                if words in ('one', 'thing', 'item'):
                    continue    # "the one" alone describes nothing
                of = MATERIALS[material] if material else CATEGORIES
                for template in rng.choice(TEMPLATES, templates_per_phrase, replace=False):
                    texts.append(template.format(words))
                    truth.append(_truth(categories, colour, size, of))
    for noun in DISTRACTORS:
        for colour in ('', *OBJECT_COLOURS):
            for template in rng.choice(TEMPLATES, templates_per_phrase, replace=False):
                texts.append(template.format(f'{colour} {noun}'.strip()))
                truth.append(_truth((), '', '', CATEGORIES))
    return CaptionBank(texts, np.stack(truth))
