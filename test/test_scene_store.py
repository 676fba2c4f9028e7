"""SceneStore pairs a frame's instances and labeled points, whichever comes first."""
from __future__ import annotations

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.grounding.scene_store import SceneStore


def labeled(n: int) -> Cloud:
    return Cloud(np.zeros((n, 3), np.float32), extra={'label': np.ones(n, np.uint32)})


def test_points_before_or_after_their_instances_end_up_in_one_scene() -> None:
    store = SceneStore()
    assert store.current() is None
    store.put_instances('a', 'header a', [], [])
    store.put_points('a', labeled(3))
    assert store.current().key == 'a' and len(store.current().points) == 3
    store.put_points('b', labeled(5))           # early: b's instances are not there yet
    assert store.current().key == 'a'
    store.put_instances('b', 'header b', [], [])
    assert store.current().header == 'header b' and len(store.current().points) == 5


def test_points_of_another_frame_never_join_the_current_scene() -> None:
    store = SceneStore()
    store.put_points('old', labeled(2))
    store.put_instances('new', 'header', [], [])
    assert store.current().points is None


def test_a_frame_segmented_again_keeps_its_points_and_readers_keep_their_snapshot() -> None:
    store = SceneStore()
    store.put_instances('a', 'header', [], [])
    store.put_points('a', labeled(4))
    held = store.current()
    store.put_instances('a', 'header', [], [])   # the same cloud re-sent and segmented again
    assert store.current().points is held.points
    store.put_instances('b', 'header b', [], [])
    assert held.key == 'a' and len(held.points) == 4
