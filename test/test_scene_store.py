"""SceneStore pairs a frame's instances and labeled points, whichever comes first."""
from __future__ import annotations

import time

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.grounding.scene_store import SceneStore
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


def _instance(instance_id: int) -> InstanceInfo:
    return InstanceInfo(id=instance_id, num_points=1, centroid=np.zeros(3),
                        bbox_center=np.zeros(3), bbox_quaternion=np.array([0.0, 0, 0, 1]),
                        bbox_size=np.ones(3), mean_color=np.zeros(4))


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


def test_ids_that_are_ranks_of_one_frame_are_never_remembered() -> None:
    store = SceneStore()
    store.put_instances('a', 'header a', [_instance(1), _instance(2)], ['1', '2'])
    store.put_instances('b', 'header b', [_instance(1)], ['1 of b'])
    assert [c.instance_msg for c in store.candidates(max_age=0.0)] == ['1 of b']
