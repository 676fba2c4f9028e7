"""Occlusion reasoning: pieces of one object split by a nearer one are joined, nothing else."""
import numpy as np
import pytest

from segvec3d_ros.segmentation.occlusion import join_occluded

VOXEL = 0.01


def _grid(x: tuple[float, float], y: tuple[float, float], z: float) -> np.ndarray:
    """Points one voxel apart on the rectangle [x] x [y] at depth z (sensor at the origin)."""
    xs = np.arange(x[0], x[1] + 1e-9, VOXEL)
    ys = np.arange(y[0], y[1] + 1e-9, VOXEL)
    gx, gy = np.meshgrid(xs, ys)
    return np.column_stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)])


def _scene(occluder: bool = True, right_depth: float = 1.0,
           background: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A box face at 1 m whose middle a post at 0.7 m hides: left piece 1, right piece 2, post 3.

    The post spans x/z in [-0.05, 0.05], so the face shows for |x| >= 0.06 only.
    """
    parts = [_grid((-0.2, -0.06), (-0.05, 0.05), 1.0),
             _grid((0.06, 0.2), (-0.05, 0.05), right_depth)]
    if occluder:
        parts.append(_grid((-0.035, 0.035), (-0.1, 0.1), 0.7))
    ids = np.concatenate([np.full(len(p), k + 1) for k, p in enumerate(parts)])
    if background:
        wall = _grid((-0.3, 0.3), (-0.2, 0.2), 1.3)
        parts.append(wall)
        ids = np.concatenate([ids, np.zeros(len(wall), dtype=int)])
    return np.concatenate(parts).astype(np.float32), ids


def _join(xyz: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return join_occluded(xyz, ids, VOXEL, min_gap=0.02, max_gap=0.2)


def _pieces(ids: np.ndarray, joined: np.ndarray) -> set[frozenset[int]]:
    """The input instances grouped by the joined instance they ended up in."""
    return {frozenset(np.unique(ids[(joined == k) & (ids > 0)]).tolist())
            for k in np.unique(joined[joined > 0])}


def test_pieces_split_by_a_nearer_object_are_joined() -> None:
    xyz, ids = _scene()
    joined = _join(xyz, ids)
    assert _pieces(ids, joined) == {frozenset({1, 2}), frozenset({3})}
    assert joined.max() == 2 and joined[ids == 1][0] == 1     # renumbered by size
    assert (joined[ids == 0] == 0).all()


def test_joined_with_a_background_behind_the_pieces() -> None:
    xyz, ids = _scene(background=True)
    assert _pieces(ids, _join(xyz, ids)) == {frozenset({1, 2}), frozenset({3})}


@pytest.mark.parametrize('case', ['gap seen empty', 'no return in the gap', 'different depths',
                                  'gap too wide'])
def test_pieces_stay_apart_without_occlusion_evidence(case: str) -> None:
    if case == 'gap seen empty':
        xyz, ids = _scene(occluder=False, background=True)
    elif case == 'no return in the gap':
        xyz, ids = _scene(occluder=False)
    elif case == 'different depths':
        xyz, ids = _scene(right_depth=1.06)
    else:
        xyz, ids = _scene()
        joined = join_occluded(xyz, ids, VOXEL, min_gap=0.02, max_gap=0.1)
        assert len(_pieces(ids, joined)) == 3
        return
    assert len(_pieces(ids, _join(xyz, ids))) == len(np.unique(ids[ids > 0]))


def test_viewpoint_decides_what_is_hidden() -> None:
    xyz, ids = _scene()
    # Seen from beside the scene the post no longer stands between the sensor and the gap.
    joined = join_occluded(xyz, ids, VOXEL, 0.02, 0.2, viewpoint=np.array([1.0, 0.0, 0.0]))
    assert len(_pieces(ids, joined)) == 3


def test_nothing_to_join() -> None:
    xyz, ids = _scene()
    assert (_join(xyz, np.zeros_like(ids)) == 0).all()
    one = np.where(ids == 1, 1, 0)
    assert (_join(xyz, one) == one).all()
    assert _join(np.zeros((0, 3), np.float32), np.zeros(0, dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize('scale', [1e30, 3.3e38])
def test_coordinates_near_the_float32_limit_do_not_raise(scale: float) -> None:
    xyz, ids = _scene()
    huge = xyz * np.float32(scale)      # finite float32, as the pipeline's points always are
    assert np.isfinite(huge).all()
    joined = join_occluded(huge, ids, VOXEL, 0.02, 0.2)
    assert joined.shape == ids.shape and (joined[ids == 0] == 0).all()
