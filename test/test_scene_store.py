"""SceneStore pairs a frame's instances and labeled points, whichever comes first."""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.grounding.scene_store import MAX_REMEMBERED, SceneStore
from segvec3d_ros.instances import InstanceInfo


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


def _instance(instance_id: int, x: float | None = None) -> InstanceInfo:
    """A 10 cm box at x (default: 1 m per id, so that no two boxes overlap)."""
    centre = np.array([float(instance_id) if x is None else x, 0.0, 1.0])
    return InstanceInfo(id=instance_id, num_points=1, centroid=centre, bbox_center=centre,
                        bbox_quaternion=np.array([0.0, 0, 0, 1]), bbox_size=np.full(3, 0.1),
                        mean_color=np.zeros(4))


def _cloud(labels: list[int]) -> Cloud:
    n = len(labels)
    return Cloud(np.arange(3 * n, dtype=np.float32).reshape(n, 3),
                 extra={'label': np.array(labels, np.uint32)})


def test_tracked_objects_of_earlier_frames_are_candidates_with_their_own_points() -> None:
    store = SceneStore()
    store.put_instances('a', 'header a', [_instance(7), _instance(8)], ['m7', 'm8'],
                        tracked=True)
    store.put_points('a', _cloud([7, 7, 8, 0]))
    store.put_instances('b', 'header b', [_instance(8)], ['m8 again'], tracked=True)
    store.put_points('b', _cloud([8, 8, 8]))
    candidates = store.candidates(max_age=10.0)
    assert [(int(c.instance.id), c.instance_msg, c.header) for c in candidates] == \
        [(8, 'm8 again', 'header b'), (7, 'm7', 'header a')]
    assert len(candidates[0].points) == 3 and len(candidates[1].points) == 2
    np.testing.assert_array_equal(candidates[1].points.extra['label'], [7, 7])
    time.sleep(0.05)
    assert [int(c.instance.id) for c in store.candidates(max_age=0.01)] == [8]
    assert [int(c.instance.id) for c in store.candidates(max_age=0.0)] == [8, 7]


def test_an_object_seen_again_under_a_new_id_is_forgotten() -> None:
    store = SceneStore()
    store.put_instances('a', 'header a', [_instance(7), _instance(8)], ['m7', 'm8'],
                        tracked=True)
    store.put_instances('b', 'header b', [_instance(8)], ['m8'], tracked=True)
    # Its track lost, object 7 comes back as 9: 7 is no longer an answer of its own.
    store.put_instances('c', 'header c', [_instance(8), _instance(9, x=7.02)], ['m8', 'm9'],
                        tracked=True)
    assert [int(c.instance.id) for c in store.candidates(max_age=0.0)] == [8, 9]


def test_the_remembered_objects_are_capped_the_most_recently_seen_kept() -> None:
    store = SceneStore()
    for frame in range(MAX_REMEMBERED + 5):
        store.put_instances(frame, f'header {frame}', [_instance(frame)], [f'm{frame}'],
                            tracked=True)
    ids = [int(c.instance.id) for c in store.candidates(max_age=0.0)]
    assert len(ids) == 1 + MAX_REMEMBERED
    assert ids[0] == MAX_REMEMBERED + 4 and ids[1] == MAX_REMEMBERED + 3
    assert min(ids) == 4


def test_ids_that_are_ranks_of_one_frame_are_never_remembered() -> None:
    store = SceneStore()
    store.put_instances('a', 'header a', [_instance(1), _instance(2)], ['1', '2'])
    store.put_instances('b', 'header b', [_instance(1)], ['1 of b'])
    assert [c.instance_msg for c in store.candidates(max_age=0.0)] == ['1 of b']


def test_the_remembered_points_stay_within_what_a_frame_holds() -> None:
    store = SceneStore()
    big = replace(_instance(7), num_points=3)
    store.put_instances('a', 'header a', [big], ['m7'], tracked=True)
    store.put_points('a', _cloud([7, 7, 7]))
    store.put_instances('b', 'header b', [_instance(8)], ['m8'], tracked=True)
    store.put_points('b', _cloud([8]))
    store.put_instances('c', 'header c', [_instance(9)], ['m9'], tracked=True)
    # 7's three points and 8's one pass what frame b's instances held (one point): 7 goes.
    assert [int(c.instance.id) for c in store.candidates(max_age=0.0)] == [9, 8]
