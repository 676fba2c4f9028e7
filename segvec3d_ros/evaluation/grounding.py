"""`segvec3d evaluate --grounding`: queries with unique answers on held-out synthetic scenes.

Each scene goes through the product pipeline (learned segmenter and grounding head); queries
are generated from its ground truth, only where the answer is unique and clear, and are
answered by the QueryEngine over the predicted instances (as the query node does) and over
the ground-truth masks. A query counts as answered when the top instance overlaps the target
object with IoU > 0.5. Baselines: a random instance, and the label-text rule (the instance
whose zero-shot label's sentence embedding is nearest the query's). The fit scores of the
right answers, and of queries about what the scene lacks, show how well the query node's
min_score tells "this is it" from "least bad of what is here".
"""
from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segvec3d_ros.config import DEFAULT_VOCABULARY, OTHER
from segvec3d_ros.data.scenes import CATEGORIES, OBJECT_COLOURS, SceneObject, generate_scene
from segvec3d_ros.data.splits import TEST_FIRST_SEED
from segvec3d_ros.evaluation.report import machine_description
from segvec3d_ros.grounding.grounder import Encoder, Grounder
from segvec3d_ros.grounding.query import DEFAULT_MIN_SCORE, QueryEngine
from segvec3d_ros.pipeline import Pipeline
from segvec3d_ros.training.grounding_dataset import GroundedScene, InstanceSet, ground_scene

QUERY_TYPES = ('category', 'colour', 'attribute', 'relation', 'camera')
SYSTEMS = ('segvec3d (predicted instances)', 'segvec3d (ground-truth masks)',
           'random instance', 'label-text rule',
           'target segmented (bound for predicted instances)')
# Why the product's answer missed: its instances, not the ranking, can be the cause.
CAUSES = ('target not segmented', 'a fragment or merge answered', 'another object answered')
# m: a relation holds when a centre is this much beyond the anchor's (and fails when as much
# short of it), so that small localisation errors do not decide a query
_CLEAR = 0.05
_SIZE_RATIO = 1.5
# Queries about what no object of the scene is, whose best fit should fall below min_score.
ABSENT_KINDS = ('absent category', 'absent vocabulary word', 'absent colour', 'unknown noun',
                'unknown noun, present colour')
# Nouns that no training caption names (grounding/captions.py: NOUNS, DISTRACTORS).
UNKNOWN_NOUNS = ('elephant', 'guitar', 'umbrella', 'bicycle', 'hammer')
FIT_KEEP = 0.95     # share of the right answers that the suggested min_score keeps
BEGIN, END = '<!-- grounding-evaluation:begin -->', '<!-- grounding-evaluation:end -->'


@dataclass
class Query:
    """One generated query and the index of its answer, -1 for a query about what the scene lacks.

    The index is into GroundedScene.objects.
    """

    kind: str
    text: str
    target: int


def _horizontal(centers: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions along the camera's horizontal right and forward axes."""
    right = np.array([1.0, 0.0, 0.0]) - up[0] * up
    right /= np.linalg.norm(right)
    return centers @ right, centers @ np.cross(up, right)


def generate_queries(objects: Sequence[SceneObject], visible: Sequence[int],
                     centers: np.ndarray, up: np.ndarray) -> list[Query]:
    """Unambiguous queries about the `visible` objects (indices into `objects`).

    The objects' box centres `centers` and the world's `up` are in the camera (optical) frame.
    """
    visible = [int(i) for i in visible]
    category = {i: objects[i].category for i in visible}
    counts = Counter(category.values())
    queries = [Query('category', f'the {c}', i) for i, c in category.items() if counts[c] == 1]
    colours = Counter(objects[i].color_name for i in visible)
    queries += [Query('colour', f'the {objects[i].color_name} one', i) for i in visible
                if colours[objects[i].color_name] == 1]
    pairs = Counter((objects[i].color_name, category[i]) for i in visible)
    queries += [Query('attribute', f'the {objects[i].color_name} {category[i]}', i)
                for i in visible if counts[category[i]] > 1
                and pairs[objects[i].color_name, category[i]] == 1]
    volume = {i: float(np.prod(objects[i].size)) for i in visible}
    for name in counts:
        same = sorted((i for i in visible if category[i] == name), key=volume.get)
        if len(same) > 1 and volume[same[-1]] > _SIZE_RATIO * volume[same[-2]]:
            queries.append(Query('attribute', f'the largest {name}', same[-1]))
        if len(same) > 1 and volume[same[1]] > _SIZE_RATIO * volume[same[0]]:
            queries.append(Query('attribute', f'the smallest {name}', same[0]))

    across, depth = _horizontal(centers, up)
    position = dict(zip(range(len(objects)), zip(across, depth)))
    tests = {'left of': lambda t, a: position[a][0] - position[t][0],
             'right of': lambda t, a: position[t][0] - position[a][0],
             'behind': lambda t, a: position[t][1] - position[a][1],
             'in front of': lambda t, a: position[a][1] - position[t][1]}
    for anchor in (i for i in visible if counts[category[i]] == 1):
        for relation, margin in tests.items():
            for name in counts:
                same = [i for i in visible if category[i] == name and i != anchor]
                if len(same) < 2:
                    continue
                holds = [i for i in same if margin(i, anchor) > _CLEAR]
                if len(holds) == 1 and all(margin(i, anchor) < -_CLEAR
                                           for i in same if i != holds[0]):
                    queries.append(Query('relation', f'the {name} {relation} the '
                                                     f'{category[anchor]}', holds[0]))
    index = {o.instance_id: k for k, o in enumerate(objects)}
    for i in visible:
        base = index.get(objects[i].on_top_of, -1)
        if base in category and counts[category[base]] == 1 and sum(
                1 for j in visible if category[j] == category[i]
                and index.get(objects[j].on_top_of, -1) == base) == 1:
            queries.append(Query('relation', f'the {category[i]} on the {category[base]}', i))
    distance = {i: float(np.linalg.norm(centers[i])) for i in visible}
    ranked = sorted(visible, key=distance.get)
    if len(ranked) > 1 and distance[ranked[1]] - distance[ranked[0]] > _CLEAR:
        queries.append(Query('camera', 'the object closest to the camera', ranked[0]))
    if len(ranked) > 1 and distance[ranked[-1]] - distance[ranked[-2]] > _CLEAR:
        queries.append(Query('camera', 'the object farthest from the camera', ranked[-1]))
    return queries


def absent_queries(objects: Sequence[SceneObject]) -> list[Query]:
    """Absent queries, about what none of `objects` (visible or not) is.

    They name a category or colour the generator draws elsewhere, a label word it never draws,
    and unknown nouns, alone and with a colour of the scene ("the purple elephant").
    """
    categories = {o.category for o in objects}
    colours = [o.color_name for o in objects]
    queries = [Query(ABSENT_KINDS[0], f'the {c}', -1) for c in CATEGORIES if c not in categories]
    queries += [Query(ABSENT_KINDS[1], f'the {w}', -1) for w in DEFAULT_VOCABULARY
                if w not in CATEGORIES]
    queries += [Query(ABSENT_KINDS[2], f'the {c} one', -1) for c in OBJECT_COLOURS
                if c not in colours]
    queries += [Query(ABSENT_KINDS[3], f'the {n}', -1) for n in UNKNOWN_NOUNS]
    if colours:
        queries += [Query(ABSENT_KINDS[4], f'the {colours[k % len(colours)]} {n}', -1)
                    for k, n in enumerate(UNKNOWN_NOUNS)]
    return queries


@dataclass
class Outcome:
    """Top-1 success of each system on one query, and the engine's latency."""

    kind: str
    hits: dict[str, float]      # system -> 1/0 (random: probability of a hit)
    seconds: float
    cause: str = ''             # one of CAUSES when the predicted instances' answer missed
    fit: float = float('nan')   # fit score of the predicted instances' answer (nan: none)


def _label_rule(text: str, instances: InstanceSet, encoder: Encoder) -> int:
    """Index of the instance whose label text is nearest the query text (first on ties)."""
    labels = [i.label for i in instances.instances]
    vectors = encoder.encode([text, *labels])
    return int(np.argmax(vectors[1:] @ vectors[0]))


def answer_queries(grounded: GroundedScene, queries: Sequence[Query], engine: QueryEngine,
                   encoder: Encoder) -> list[Outcome]:
    """Every system's top-1 hit per query.

    The engine is timed on its second call (cached text embeddings, as a repeated query in the
    node).
    """
    outcomes = []
    sets = {SYSTEMS[0]: grounded.predicted, SYSTEMS[1]: grounded.ground_truth}
    for query in queries:
        hits: dict[str, float] = {}
        seconds = 0.0
        answered = -1
        fit = float('nan')
        for system, instances in sets.items():
            if not instances.instances:
                hits[system] = 0.0
                continue
            engine.query(query.text, instances.instances, 1)
            start = time.perf_counter()
            result = engine.query(query.text, instances.instances, 1)
            if system == SYSTEMS[0]:
                seconds = time.perf_counter() - start
                answered = int(instances.objects[result.order[0]]) if result.success else -1
                fit = float(result.fit_scores[0]) if result.success else fit
            hits[system] = float(result.success
                                 and instances.objects[result.order[0]] == query.target)
        predicted = grounded.predicted
        found = predicted.objects == query.target
        hits[SYSTEMS[2]] = float(found.sum() / max(len(found), 1))
        hits[SYSTEMS[4]] = float(found.any())
        hits[SYSTEMS[3]] = float(bool(predicted.instances) and predicted.objects[
            _label_rule(query.text, predicted, encoder)] == query.target)
        cause = ('' if hits[SYSTEMS[0]] else CAUSES[0] if not found.any()
                 else CAUSES[1] if answered < 0 else CAUSES[2])
        outcomes.append(Outcome(query.kind, hits, seconds, cause, fit))
    return outcomes


@dataclass
class GroundingReport:
    """Everything the evaluation measured."""

    outcomes: list[Outcome]
    labels: dict[str, list[tuple[str, str]]]   # instance set -> (true category, label) pairs
    scenes: int
    seconds_per_scene: float
    first_seed: int = TEST_FIRST_SEED
    # absent_queries and the fit score of the predicted instances' answer to each
    absent: list[tuple[Query, float]] = field(default_factory=list)

    def hits(self, system: str, kind: str) -> list[float]:
        """`system`'s hit on each query of `kind` ('all' for every one).

        A hit is 1 or 0; the random system's is its probability.
        """
        return [o.hits[system] for o in self.outcomes if kind in ('all', o.kind)]

    def accuracy(self, system: str, kind: str) -> tuple[float, int]:
        """Top-1 accuracy of `system` on queries of `kind` ('all' for every one) and count."""
        hits = self.hits(system, kind)
        return (float(np.mean(hits)) if hits else float('nan')), len(hits)

    def interval(self, system: str, kind: str, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval, 95 % for z = 1.96, of `accuracy(system, kind)`.

        With a few hundred queries per type, a point or two either way is noise.
        """
        accuracy, count = self.accuracy(system, kind)
        if not count:
            return float('nan'), float('nan')
        centre = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
        half = z / (1 + z * z / count) * np.sqrt(accuracy * (1 - accuracy) / count
                                                 + z * z / (4 * count * count))
        return centre - half, centre + half

    def miss_rate(self, cause: str, kind: str) -> float:
        """Share of the queries of `kind` that the predicted instances missed for `cause`.

        `kind` 'all' stands for every query.
        """
        causes = [o.cause for o in self.outcomes if kind in ('all', o.kind)]
        return float(np.mean([c == cause for c in causes])) if causes else float('nan')

    def answer_fits(self, kind: str, right: bool = True) -> np.ndarray:
        """Fit scores of the predicted instances' right (or wrong) answers to queries of `kind`.

        `kind` 'all' stands for every query.
        """
        return np.array([o.fit for o in self.outcomes if kind in ('all', o.kind)
                         and bool(o.hits[SYSTEMS[0]]) == right and not np.isnan(o.fit)])

    def absent_fits(self, kind: str, text: str = '') -> np.ndarray:
        """Fit scores of the best answers to the absent queries of `kind` (and `text`)."""
        return np.array([fit for query, fit in self.absent
                         if query.kind == kind and text in ('', query.text)])

    def fit_threshold(self, keep: float = FIT_KEEP) -> float:
        """Largest min_score that keeps at least `keep` of the right answers."""
        fits = np.sort(self.answer_fits('all'))
        return float(fits[int((1 - keep) * len(fits))]) if len(fits) else float('nan')

    def label_accuracy(self, source: str) -> tuple[float, int]:
        """Zero-shot label accuracy of the matched instances of `source`."""
        pairs = self.labels[source]
        return (float(np.mean([t == p for t, p in pairs])) if pairs else float('nan')), len(pairs)


def evaluate_grounding(pipeline: Pipeline, engine: QueryEngine, encoder: Encoder,
                       scenes: int, first_seed: int = TEST_FIRST_SEED,
                       progress: Callable[[str], None] = print) -> GroundingReport:
    """Run the pipeline on the held-out tabletop scenes and answer their queries.

    The segmenter is wrapped in a RecordingSegmenter and the grounder loaded; the absent
    queries of each scene are answered too.
    """
    grounder: Grounder | None = pipeline.grounder
    if grounder is None:
        raise ValueError(f'the pipeline has no grounding head: {pipeline.grounding_status}')
    outcomes: list[Outcome] = []
    absent: list[tuple[Query, float]] = []
    labels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    started = time.monotonic()
    for number, seed in enumerate(range(first_seed, first_seed + scenes), start=1):
        grounded = ground_scene(pipeline, generate_scene(seed, 'tabletop'))
        truth = grounded.ground_truth
        grounder.apply(truth.instances, truth.point_inputs, truth.point_index)
        for source, instances in (('predicted', grounded.predicted), ('gt', truth)):
            labels[source] += [(grounded.objects[o].category, i.label)
                               for i, o in zip(instances.instances, instances.objects) if o >= 0]
        queries = generate_queries(grounded.objects, truth.objects, grounded.centers,
                                   grounded.up)
        scene_outcomes = answer_queries(grounded, queries, engine, encoder)
        outcomes += scene_outcomes
        if grounded.predicted.instances:
            absent += [(query, float(engine.query(query.text, grounded.predicted.instances,
                                                  1).fit_scores[0]))
                       for query in absent_queries(grounded.objects)]
        progress(f'[{number}/{scenes}] seed {seed}: {len(grounded.predicted.instances)} '
                 f'instances, {len(scene_outcomes)} queries, '
                 f'{sum(o.hits[SYSTEMS[0]] for o in scene_outcomes):.0f} answered')
    return GroundingReport(outcomes, dict(labels), scenes,
                           (time.monotonic() - started) / max(scenes, 1), first_seed, absent)


def plot_confusion(path: str | Path, pairs: Sequence[tuple[str, str]],
                   vocabulary: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix: true category (rows) against zero-shot label."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys([*vocabulary, OTHER]))
    counts = np.zeros((len(CATEGORIES), len(columns)))
    for true, label in pairs:
        counts[CATEGORIES.index(true), columns.index(label)] += 1
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(1.0 + 0.5 * len(columns), 4.2))
    axis.imshow(shares, cmap='Blues', vmin=0.0, vmax=1.0)
    for (row, column), share in np.ndenumerate(shares):
        if counts[row, column]:
            axis.text(column, row, f'{share:.2f}', ha='center', va='center', fontsize=7,
                      color='white' if share > 0.6 else 'black')
    axis.set_xticks(range(len(columns)), columns, rotation=45, ha='right')
    axis.set_yticks(range(len(CATEGORIES)),
                    [f'{c} ({int(n)})' for c, n in zip(CATEGORIES, counts.sum(axis=1))])
    axis.set_xlabel('zero-shot label')
    axis.set_ylabel('true category (instances)')
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _pct(value: float) -> str:
    return '-' if np.isnan(value) else f'{100 * value:.1f}'


def fit_lines(report: GroundingReport, min_score: float = DEFAULT_MIN_SCORE) -> list[str]:
    """Fit-score table: right answers kept and absent queries rejected at `min_score`."""
    def share(fits: np.ndarray, kept: bool) -> str:
        return _pct(np.mean((fits >= min_score) == kept)) if len(fits) else '-'

    rows = [(f'right answers: {kind}', report.answer_fits(kind), True)
            for kind in (*QUERY_TYPES, 'all')]
    rows.append(('wrong answers: all', report.answer_fits('all', right=False), False))
    rows += [(kind, report.absent_fits(kind), False) for kind in ABSENT_KINDS]
    cells = [f'| {name} | {len(fits)} | {f"{np.median(fits):.3g}" if len(fits) else "-"} | '
             f'{share(fits, kept)} {"kept" if kept else "rejected"} |'
             for name, fits, kept in rows]
    unknown = ', '.join(f"'{n}' {share(report.absent_fits(ABSENT_KINDS[3], f'the {n}'), False)}"
                        for n in UNKNOWN_NOUNS)
    return [
        'Fit scores of the predicted instances\' best answers (`fit_scores`) and the share (%) '
        f'that min_score {min_score:.2f} (the query node\'s default: {DEFAULT_MIN_SCORE:.2f}) '
        'keeps or rejects (a best fit below it is "not found"); the absent queries name what no '
        'object of the scene is.',
        '',
        '| queries | count | median fit | at min_score |',
        '| --- | --- | --- | --- |',
        *cells,
        '',
        f'The largest min_score that keeps {100 * FIT_KEEP:.0f} % of the right answers: '
        f'{report.fit_threshold():.3f}. Unknown nouns alone, rejected (%): {unknown}.']


def markdown_section(report: GroundingReport, command: str, plot: str) -> str:
    """Results block of docs/GROUNDING.md, between its markers."""
    header = ('| system | ' + ' | '.join(QUERY_TYPES) + ' | all |\n|'
              + ' --- |' * (len(QUERY_TYPES) + 2))
    rows = []
    for system in SYSTEMS:
        cells = [_pct(report.accuracy(system, kind)[0]) for kind in (*QUERY_TYPES, 'all')]
        rows.append(f'| {system} | ' + ' | '.join(cells) + ' |')
    counts = ' | '.join(str(report.accuracy(SYSTEMS[0], k)[1]) for k in (*QUERY_TYPES, 'all'))
    answered = ' | '.join(str(int(sum(report.hits(SYSTEMS[0], k))))
                          for k in (*QUERY_TYPES, 'all'))
    intervals = ' | '.join('–'.join(map(_pct, report.interval(SYSTEMS[0], k)))
                           for k in (*QUERY_TYPES, 'all'))
    misses = [f'| {cause} | ' + ' | '.join(_pct(report.miss_rate(cause, kind))
                                           for kind in (*QUERY_TYPES, 'all')) + ' |'
              for cause in CAUSES]
    latency = np.array([o.seconds for o in report.outcomes]) * 1000
    labels = {source: report.label_accuracy(source) for source in report.labels}
    return '\n'.join([
        BEGIN,
        f'Command: `{command}`',
        '',
        f'{report.scenes} tabletop scenes, seeds {report.first_seed}–'
        f'{report.first_seed + report.scenes - 1} (training uses seeds below '
        f'{TEST_FIRST_SEED}); '
        f'{machine_description()}; {report.seconds_per_scene:.1f} s per scene for '
        f'segmentation, grounding and all queries.',
        '',
        'Top-1 accuracy (%) of the query service\'s answer; a hit is the instance that '
        'overlaps the target object with IoU > 0.5 (random: expected accuracy; last row: '
        'share of queries whose target the segmenter produced at all).',
        '',
        header, *rows, f'| queries | {counts} |', f'| answered, {SYSTEMS[0]} | {answered} |',
        f'| 95 % interval, {SYSTEMS[0]} | {intervals} |',
        '',
        'Misses of segvec3d (predicted instances) by cause (% of the queries): the target '
        'overlaps no instance with IoU > 0.5; the answer matches no object; it is another '
        'object.',
        '',
        header.replace('| system |', '| cause |'), *misses,
        '',
        *fit_lines(report),
        '',
        'Zero-shot labels (default vocabulary, `other` counts as wrong): '
        + ', '.join(f'{_pct(acc)} % of {n} {source} instances matched to an object'
                    for source, (acc, n) in labels.items()) + '.',
        '',
        f'Query latency (cached text embeddings, {len(latency)} queries over predicted '
        f'instances): median {np.median(latency):.2f} ms, 95th percentile '
        f'{np.percentile(latency, 95):.2f} ms.' if len(latency) else 'No queries.',
        '',
        f'![zero-shot labels against the true categories]({plot})',
        END])


def write_section(path: str | Path, section: str) -> None:
    """Replace the block between the markers in `path` (or append it)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else '# Grounding\n'
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip('\n') + '\n\n' + section + '\n'
    path.write_text(text)


def plot_reference(plot: str | Path, out: str | Path) -> str:
    """Path of the plot relative to the markdown file's folder."""
    return Path(os.path.relpath(Path(plot).resolve(), Path(out).resolve().parent)).as_posix()
