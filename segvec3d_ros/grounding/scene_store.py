"""The most recent scene for queries: instances plus their labeled points, swapped atomically.

With tracked ids it also remembers every object of earlier frames, with its own points, so
that a query can answer with an object hidden in the latest frame.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

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


def _points_of(cloud: Cloud, instance_id: int) -> Cloud:
    """Return the points of `cloud` whose label is `instance_id`, labels kept."""
    mask = cloud.extra['label'] == instance_id
    return Cloud(xyz=cloud.xyz[mask], rgb=None if cloud.rgb is None else cloud.rgb[mask],
                 extra={'label': cloud.extra['label'][mask]})


class SceneStore:
    """Pairs instances and labeled points of the same frame, whichever arrives first.

    Readers get a snapshot by reference, so a query in progress keeps a consistent scene while
    new frames replace the current one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: SceneSnapshot | None = None
        self._early_points: tuple[Hashable, Cloud] | None = None
        self._tracked: dict[int, Candidate] = {}    # by id, while the ids are tracked ones

    def current(self) -> SceneSnapshot | None:
        """Newest scene, or None before the first instances arrived."""
        return self._current

    def put_instances(self, key: Hashable, header: Any, instances: Sequence[InstanceInfo],
                      instance_msgs: Sequence[Any], tracked: bool = False) -> None:
        """Start a new scene from a frame's instances; `tracked`: their ids are tracked ones."""
        with self._lock:
            # The same frame segmented again (a re-sent cloud) keeps the points it already has.
            current = self._current
            points = current.points if current is not None and current.key == key else None
            if self._early_points is not None and self._early_points[0] == key:
                points = self._early_points[1]
                self._early_points = None
            self._current = SceneSnapshot(key, header, tuple(instances), tuple(instance_msgs),
                                          points, time.monotonic())
            if not tracked:
                self._tracked.clear()    # ids are ranks of one frame: nothing to remember
                return
            for info, msg in zip(instances, instance_msgs):
                self._tracked[int(info.id)] = Candidate(
                    info, msg, header, None if points is None else _points_of(points, info.id),
                    self._current.received_at)

    def put_points(self, key: Hashable, points: Cloud) -> None:
        """Attach a frame's labeled cloud to its scene, or keep it until the instances come."""
        with self._lock:
            current = self._current
            if current is not None and current.key == key:
                self._current = SceneSnapshot(current.key, current.header, current.instances,
                                              current.instance_msgs, points,
                                              current.received_at)
                for info in current.instances:
                    entry = self._tracked.get(int(info.id))
                    if entry is not None and entry.received_at == current.received_at:
                        self._tracked[int(info.id)] = replace(
                            entry, points=_points_of(points, info.id))
            else:
                self._early_points = (key, points)

    def candidates(self, max_age: float) -> list[Candidate]:
        """List the latest frame's objects, then tracked ones of earlier frames `max_age` s old.

        `max_age` 0 keeps every tracked object. Without tracked ids, the latest frame's only.
        """
        with self._lock:
            current, tracked = self._current, dict(self._tracked)
        if current is None:
            return []
        now = time.monotonic()
        latest = [Candidate(i, m, current.header,
                            None if current.points is None else _points_of(current.points, i.id),
                            current.received_at)
                  for i, m in zip(current.instances, current.instance_msgs)]
        shown = {int(i.id) for i in current.instances}
        earlier = sorted((c for k, c in tracked.items() if k not in shown
                          and (max_age <= 0 or now - c.received_at <= max_age)),
                         key=lambda c: -c.received_at)
        return latest + earlier
