"""Class-agnostic instance segmentation metrics: ScanNet-style AP and the tabletop overlap P/R/F.

Every count is over a scene's valid points. Ground truth gives object ids (> 0) and a support
mask (table, floor, walls); a valid point that is neither is unlabelled. Support and unlabelled
points are the *ignored* points: they count in the size of a prediction that covers them (as
ScanNet's void points do), but are never an object to be found.

AP (ScanNet benchmark procedure, class-agnostic): predictions of all scenes are judged per IoU
threshold t in decreasing confidence; each takes, among the ground-truth objects of its scene
not yet taken, the one with the highest IoU > t (true positive). A prediction that finds none is
a false positive, except when its IoU is <= t with every object of its scene and more than half
of its points are ignored points: then it is left out (a table or wall segment, not a wrong
object; ScanNet uses t instead of one half for this). The precision-recall curve has one point
per distinct confidence, plus (recall 0, precision 1); ScanNet integrates it by weighing each
point's precision by half the recall span between its two neighbours. AP is pooled over all
scenes of a set, not averaged over scenes.

Overlap P/R/F (Xie et al., "Unseen Object Instance Segmentation for Robotic Environments",
T-RO 2021): predictions with more than half of their points ignored are dropped; the others are
matched one-to-one to ground-truth objects by the Hungarian method on their pairwise F-measure;
P = sum of matched intersections / predicted object points, R = the same / ground-truth object
points, F = 2PR / (P + R), and %F>=0.75 is the fraction of ground-truth objects whose match has
F >= 0.75. These are computed per scene and averaged over scenes, as Xie et al. average images.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

AP_THRESHOLDS: np.ndarray = np.round(np.r_[0.25, np.linspace(0.5, 0.95, 10)], 2)
MAP_THRESHOLDS = slice(1, None)     # AP_THRESHOLDS[MAP_THRESHOLDS] = 0.5, 0.55 ... 0.95
MOSTLY_IGNORED = 0.5                # a prediction with a larger fraction of ignored points
GOOD_F = 0.75                       # an object is well segmented at this pairwise F-measure

# outcomes of a prediction at one IoU threshold
IGNORED, FALSE_POSITIVE, TRUE_POSITIVE = -1, 0, 1


@dataclass
class Overlaps:
    """Point counts of one scene's predicted instances and ground-truth objects."""

    intersection: np.ndarray    # (P, G) int64 points of prediction p that are in object g
    pred_size: np.ndarray       # (P,) valid points of each prediction
    gt_size: np.ndarray         # (G,) valid points of each object
    pred_ignored: np.ndarray    # (P,) points of each prediction that are ignored points
    confidence: np.ndarray      # (P,) score of each prediction

    @property
    def iou(self) -> np.ndarray:
        """(P, G) intersection over union."""
        union = self.pred_size[:, None] + self.gt_size[None, :] - self.intersection
        return self.intersection / np.maximum(union, 1)

    @property
    def mostly_ignored(self) -> np.ndarray:
        """(P,) whether more than half of a prediction lies on support or unlabelled points."""
        return self.pred_ignored > MOSTLY_IGNORED * self.pred_size


def scene_overlaps(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
                   support: np.ndarray | None = None,
                   confidence: np.ndarray | None = None) -> Overlaps:
    """Count the overlaps of (N,) predicted ids and (N,) ground-truth ids in one bincount.

    Id 0 is no instance (pred) or no object (gt); `support` (N,) marks support points, which
    are never object points. `confidence[k - 1]` scores predicted id k; without it a
    prediction's score is its fraction of the valid points, so larger instances rank first.
    """
    pred = np.asarray(pred, dtype=np.int64).ravel()
    gt = np.asarray(gt, dtype=np.int64).ravel()
    keep = np.ones(len(pred), bool) if valid is None else np.asarray(valid, bool).ravel()
    if support is not None:
        gt = np.where(np.asarray(support, bool).ravel(), 0, gt)
    pred, gt = pred[keep], gt[keep]
    pred_ids = np.unique(pred[pred > 0])
    gt_ids = np.unique(gt[gt > 0])
    num_pred, num_gt = len(pred_ids), len(gt_ids)
    # Last row: points of no prediction; last column: ignored points.
    rows = np.where(pred > 0, np.searchsorted(pred_ids, pred), num_pred)
    cols = np.where(gt > 0, np.searchsorted(gt_ids, gt), num_gt)
    counts = np.bincount(rows * (num_gt + 1) + cols,
                         minlength=(num_pred + 1) * (num_gt + 1)).reshape(num_pred + 1, -1)
    pred_size = counts[:num_pred].sum(axis=1)
    scores = (pred_size / max(len(pred), 1) if confidence is None
              else np.asarray(confidence, dtype=np.float64)[pred_ids - 1])
    return Overlaps(intersection=counts[:num_pred, :num_gt], pred_size=pred_size,
                    gt_size=counts[:, :num_gt].sum(axis=0), pred_ignored=counts[:num_pred, -1],
                    confidence=scores)


@dataclass
class Detections:
    """Predictions of one or more scenes judged at each of the AP thresholds."""

    confidence: np.ndarray      # (D,)
    outcome: np.ndarray         # (T, D) int8: TRUE_POSITIVE, FALSE_POSITIVE or IGNORED
    num_gt: int                 # ground-truth objects to be found

    @staticmethod
    def pooled(parts: Sequence[Detections]) -> Detections:
        """Pool the detections of several scenes into one set."""
        return Detections(
            confidence=np.concatenate([p.confidence for p in parts] or [np.zeros(0)]),
            outcome=np.concatenate([p.outcome for p in parts] or
                                   [np.zeros((len(AP_THRESHOLDS), 0), np.int8)], axis=1),
            num_gt=sum(p.num_gt for p in parts))

    def average_precision(self) -> np.ndarray:
        """(T,) AP per threshold: NaN without ground truth, 0 without counted predictions."""
        return np.array([_average_precision(self.confidence[row != IGNORED],
                                            row[row != IGNORED] == TRUE_POSITIVE, self.num_gt)
                         for row in self.outcome])


def match_detections(overlaps: Overlaps) -> Detections:
    """Judge one scene's predictions at every AP threshold (greedy, by decreasing confidence)."""
    iou = overlaps.iou
    num_pred, num_gt = iou.shape
    above = iou[:, None, :] > AP_THRESHOLDS[None, :, None]        # (P, T, G)
    taken = np.zeros((len(AP_THRESHOLDS), num_gt), bool)
    outcome = np.full((len(AP_THRESHOLDS), num_pred), FALSE_POSITIVE, np.int8)
    thresholds = np.arange(len(AP_THRESHOLDS))
    # The loop runs over instances, all thresholds at once; matching is sequential by nature.
    for p in np.argsort(-overlaps.confidence, kind='stable') if num_gt else ():
        free = above[p] & ~taken
        best = np.where(free, iou[p], -1.0).argmax(axis=1)
        hit = free[thresholds, best]
        taken[thresholds[hit], best[hit]] = True
        outcome[hit, p] = TRUE_POSITIVE
    near_no_object = ~above.any(axis=2).T                         # (T, P)
    outcome[near_no_object & overlaps.mostly_ignored[None, :]] = IGNORED
    return Detections(overlaps.confidence.astype(np.float64), outcome, num_gt)


def _average_precision(confidence: np.ndarray, true_positive: np.ndarray, num_gt: int) -> float:
    """Area under ScanNet's precision-recall curve of the counted predictions."""
    if num_gt == 0:
        return float('nan')
    if len(confidence) == 0:
        return 0.0
    order = np.argsort(-confidence, kind='stable')
    scores = confidence[order]
    hits = np.cumsum(true_positive[order])
    # Predictions of equal confidence share one operating point, after the last of them.
    last = np.r_[scores[1:] != scores[:-1], True]
    recall = np.r_[0.0, hits[last] / num_gt]
    precision = np.r_[1.0, hits[last] / (np.flatnonzero(last) + 1)]
    padded = np.r_[0.0, recall, recall[-1]]
    return float(precision @ (padded[2:] - padded[:-2]) / 2)


@dataclass
class ObjectOverlap:
    """Overlap P/R/F of one scene, from the Hungarian matching on pairwise F-measure."""

    matched: int                # sum of |prediction & object| over matched pairs
    pred_points: int            # points of the kept predictions
    gt_points: int              # points of the ground-truth objects
    num_gt: int
    num_good: int               # objects whose match has F >= GOOD_F

    @property
    def precision(self) -> float:
        return self.matched / self.pred_points if self.pred_points else 0.0

    @property
    def recall(self) -> float:
        return self.matched / self.gt_points if self.gt_points else float('nan')

    @property
    def f_measure(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def good_fraction(self) -> float:
        """Fraction of objects with F >= GOOD_F; NaN without objects."""
        return self.num_good / self.num_gt if self.num_gt else float('nan')


def object_overlap(overlaps: Overlaps) -> ObjectOverlap:
    """Overlap P/R/F of one scene; predictions mostly on ignored points are dropped first."""
    kept = ~overlaps.mostly_ignored
    inter = overlaps.intersection[kept]
    pred_size = overlaps.pred_size[kept]
    f = 2 * inter / np.maximum(pred_size[:, None] + overlaps.gt_size[None, :], 1)
    rows, cols = linear_sum_assignment(f, maximize=True)
    return ObjectOverlap(matched=int(inter[rows, cols].sum()), pred_points=int(pred_size.sum()),
                         gt_points=int(overlaps.gt_size.sum()), num_gt=len(overlaps.gt_size),
                         num_good=int((f[rows, cols] >= GOOD_F).sum()))


@dataclass
class SceneMetrics:
    """What one scene contributes to the metrics of a set."""

    detections: Detections
    objects: ObjectOverlap
    num_pred: int


def evaluate_scene(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
                   support: np.ndarray | None = None,
                   confidence: np.ndarray | None = None) -> SceneMetrics:
    """Metrics of one scene; the arguments are those of `scene_overlaps`."""
    overlaps = scene_overlaps(pred, gt, valid, support, confidence)
    return SceneMetrics(match_detections(overlaps), object_overlap(overlaps),
                        num_pred=len(overlaps.pred_size))


@dataclass
class Summary:
    """Metrics of a set of scenes (or of one)."""

    ap: np.ndarray              # (T,) AP per threshold of AP_THRESHOLDS, pooled over scenes
    precision: float            # overlap P/R/F and %F>=0.75: means over scenes
    recall: float
    f_measure: float
    good_fraction: float
    num_scenes: int
    num_gt: int
    num_pred: int

    @property
    def ap25(self) -> float:
        return float(self.ap[0])

    @property
    def ap50(self) -> float:
        return float(self.ap[1])

    @property
    def map(self) -> float:
        """Mean AP over IoU 0.5:0.05:0.95."""
        return float(np.mean(self.ap[MAP_THRESHOLDS]))


def summarize(scenes: Sequence[SceneMetrics]) -> Summary:
    """Pool AP over `scenes` and average their overlap P/R/F (scenes without objects skipped)."""
    with_objects = [s.objects for s in scenes if s.objects.num_gt]

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float('nan')

    return Summary(
        ap=Detections.pooled([s.detections for s in scenes]).average_precision(),
        precision=mean([o.precision for o in with_objects]),
        recall=mean([o.recall for o in with_objects]),
        f_measure=mean([o.f_measure for o in with_objects]),
        good_fraction=mean([o.good_fraction for o in with_objects]),
        num_scenes=len(scenes), num_gt=sum(s.detections.num_gt for s in scenes),
        num_pred=sum(s.num_pred for s in scenes))
