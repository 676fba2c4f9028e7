"""The most recent scene for queries: instances plus their labeled points, swapped atomically.

With tracked ids it also remembers the objects that left the view or were hidden, with their
own points, so that a query can answer with an object the latest frame does not show.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.instances import InstanceInfo


@dataclass(frozen=True)
class SceneSnapshot:
    """One frame's instances (and, once it arrived, its labeled cloud); never mutated."""

    key: Hashable                    # identifies the frame: (stamp, frame_id)
    header: Any                      # the input cloud's header, handed back in answers
    instances: Sequence[InstanceInfo]
    instance_msgs: Sequence[Any]     # the messages as received, to answer with unchanged
    points: Cloud | None             # labeled cloud, `extra['label']` = instance id per point
    received_at: float               # monotonic seconds
    tracked: bool = False            # the ids are tracked ones, not ranks within the frame

    def age(self) -> float:
        """Seconds since the scene's instances arrived."""
        return time.monotonic() - self.received_at


@dataclass(frozen=True)
class Candidate:
    """One object a query may answer with: of the latest frame, or tracked from an earlier one."""

    instance: InstanceInfo
    instance_msg: Any
    header: Any                      # header of the frame it was last seen in
    points: Cloud | None             # its own labeled points there, once they arrived
    received_at: float               # monotonic seconds when that frame's instances arrived

    def age(self) -> float:
        """Seconds since the instances of the frame it was last seen in arrived."""
        return time.monotonic() - self.received_at


# At most this many objects of earlier frames are remembered, the most recently seen first, and
# no more of their points than the last frame's instances hold: the memory of a node fed clouds
# whose tracks never hold (unrelated scenes, a bag's jumps) stays that of one more frame.
MAX_REMEMBERED = 32


def _points_of(cloud: Cloud, instance_id: int) -> Cloud:
    """Return the points of `cloud` whose label is `instance_id`, labels kept."""
    mask = cloud.extra['label'] == instance_id
    return Cloud(xyz=cloud.xyz[mask], rgb=None if cloud.rgb is None else cloud.rgb[mask],
                 extra={'label': cloud.extra['label'][mask]})


def _inside_any_box(points: np.ndarray, instances: Sequence[InstanceInfo]) -> np.ndarray:
    """(P,) whether each of the (P, 3) `points` lies in the oriented box of one of `instances`."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(instances) == 0 or len(points) == 0:
        return np.zeros(len(points), dtype=bool)
    axes = Rotation.from_quat(np.array([i.bbox_quaternion for i in instances])).as_matrix()
    centres = np.array([i.bbox_center for i in instances], dtype=np.float64)
    half = 0.5 * np.array([i.bbox_size for i in instances], dtype=np.float64)
    # Box coordinates of every point in every box: (P, K, 3).
    local = np.einsum('pkj,kjl->pkl', points[:, None, :] - centres[None], axes)
    return (np.abs(local) <= half[None]).all(axis=2).any(axis=1)


class SceneStore:
    """Pairs instances and labeled points of the same frame, whichever arrives first.

    Readers get a snapshot by reference, so a query in progress keeps a consistent scene while
    new frames replace the current one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: SceneSnapshot | None = None
        self._early_points: tuple[Hashable, Cloud] | None = None
        self._remembered: dict[int, Candidate] = {}    # by id: objects the latest frame lacks

    def current(self) -> SceneSnapshot | None:
        """Newest scene, or None before the first instances arrived."""
        return self._current

    def put_instances(self, key: Hashable, header: Any, instances: Sequence[InstanceInfo],
                      instance_msgs: Sequence[Any], tracked: bool = False) -> None:
        """Start a new scene from a frame's instances; `tracked`: their ids are tracked ones."""
        with self._lock:
            # The same frame segmented again (a re-sent cloud) keeps the points it already has.
            previous = self._current
            points = previous.points if previous is not None and previous.key == key else None
            if self._early_points is not None and self._early_points[0] == key:
                points = self._early_points[1]
                self._early_points = None
            self._current = SceneSnapshot(key, header, tuple(instances), tuple(instance_msgs),
                                          points, time.monotonic(), tracked)
            if tracked and previous is not None and previous.tracked:
                self._remember(previous)
            else:
                self._remembered.clear()    # ids that are ranks of one frame name nothing later

    def _remember(self, previous: SceneSnapshot) -> None:
        """Keep the objects of `previous` that the new current frame lacks; forget the rest.

        A remembered object is forgotten once the new frame shows it, by its id or, under a new
        id (its track was lost), by an object whose box holds its centroid.
        """
        shown = {int(i.id) for i in self._current.instances}
        for info, msg in zip(previous.instances, previous.instance_msgs):
            if int(info.id) not in shown:
                points = None if previous.points is None else _points_of(previous.points, info.id)
                self._remembered[int(info.id)] = Candidate(info, msg, previous.header, points,
                                                           previous.received_at)
        unshown = [c for k, c in self._remembered.items() if k not in shown]
        seen_again = _inside_any_box([c.instance.centroid for c in unshown],
                                     self._current.instances)
        newest_first = sorted((c for c, again in zip(unshown, seen_again) if not again),
                              key=lambda c: -c.received_at)[:MAX_REMEMBERED]
        budget = sum(int(i.num_points) for i in previous.instances)
        self._remembered = {}
        for candidate in newest_first:
            budget -= 0 if candidate.points is None else len(candidate.points)
            if budget < 0:
                break
            self._remembered[int(candidate.instance.id)] = candidate

    def put_points(self, key: Hashable, points: Cloud) -> None:
        """Attach a frame's labeled cloud to its scene, or keep it until the instances come."""
        with self._lock:
            current = self._current
            if current is not None and current.key == key:
                self._current = replace(current, points=points)
            else:
                self._early_points = (key, points)

    def candidates(self, max_age: float) -> list[Candidate]:
        """List the latest frame's objects, then remembered ones of frames `max_age` s old.

        `max_age` 0 keeps every remembered object. Without tracked ids, the latest frame's only.
        """
        with self._lock:
            current, remembered = self._current, list(self._remembered.values())
        if current is None:
            return []
        now = time.monotonic()
        latest = [Candidate(i, m, current.header,
                            None if current.points is None else _points_of(current.points, i.id),
                            current.received_at)
                  for i, m in zip(current.instances, current.instance_msgs)]
        return latest + [c for c in remembered if max_age <= 0 or now - c.received_at <= max_age]
