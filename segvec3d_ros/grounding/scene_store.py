"""The most recent scene for queries: instances plus their labeled points, swapped atomically."""
from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
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


class SceneStore:
    """Pairs instances and labeled points of the same frame, whichever arrives first.

    Readers get a snapshot by reference, so a query in progress keeps a consistent scene while
    new frames replace the current one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: SceneSnapshot | None = None
        self._early_points: tuple[Hashable, Cloud] | None = None

    def current(self) -> SceneSnapshot | None:
        """Newest scene, or None before the first instances arrived."""
        return self._current

    def put_instances(self, key: Hashable, header: Any, instances: Sequence[InstanceInfo],
                      instance_msgs: Sequence[Any]) -> None:
        """Start a new scene from a frame's instances."""
        with self._lock:
            # The same frame segmented again (a re-sent cloud) keeps the points it already has.
            current = self._current
            points = current.points if current is not None and current.key == key else None
            if self._early_points is not None and self._early_points[0] == key:
                points = self._early_points[1]
                self._early_points = None
            self._current = SceneSnapshot(key, header, tuple(instances), tuple(instance_msgs),
                                          points, time.monotonic())

    def put_points(self, key: Hashable, points: Cloud) -> None:
        """Attach a frame's labeled cloud to its scene, or keep it until the instances come."""
        with self._lock:
            current = self._current
            if current is not None and current.key == key:
                self._current = SceneSnapshot(current.key, current.header, current.instances,
                                              current.instance_msgs, points,
                                              current.received_at)
            else:
                self._early_points = (key, points)
