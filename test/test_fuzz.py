"""Property-based fuzzing of the whole ROS-free pipeline on arbitrary clouds and messages."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from test_pointcloud2 import fuzzed_messages

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.config import PipelineConfig
from segvec3d_ros.io.pointcloud2 import CloudDecodeError, decode_pointcloud2
from segvec3d_ros.pipeline import Pipeline

F32_MAX = float(np.finfo(np.float32).max)
SPECIAL_VALUES = np.array([np.nan, np.inf, -np.inf, F32_MAX, -F32_MAX, 0.0, -0.0, 1e-45],
                          np.float32)
# Coordinate scales from subnormal to the edge of float32, through sensor-like metres.
SCALES = [1e-38, 1e-6, 1e-3, 1.0, 10.0, 1e3, 1e9, 1e30, F32_MAX / 4]
CONFIGS = {
    'baseline': PipelineConfig(segmenter='euclidean'),
    'learned (the shipped params)': PipelineConfig(device='cpu'),
    # The learned model runs only at the voxel size it was trained at.
    'baseline, no voxels, single-point instances': PipelineConfig(
        segmenter='euclidean', voxel_size=0.0, min_instance_points=1),
    'range-limited, small cap': PipelineConfig(max_range=2.0, max_points=100,
                                               min_instance_points=1),
}
PIPELINES = {name: Pipeline(config) for name, config in CONFIGS.items()}


@st.composite
def generated_xyz(draw: st.DrawFn) -> np.ndarray:
    """Up to 5000 points: blobs, duplicates and special values at drawn scales and rates."""
    n = draw(st.one_of(st.integers(0, 3), st.integers(1000, 5000), st.integers(0, 5000)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from(SCALES))
    centres = rng.normal(0.0, scale, (draw(st.integers(1, 6)), 3))
    spread = scale * draw(st.sampled_from([0.0, 1e-3, 0.05, 1.0]))
    xyz = centres[rng.integers(0, len(centres), n)] + rng.normal(0.0, 1.0, (n, 3)) * spread
    with np.errstate(over='ignore'):  # out of float32 range is one of the cases we want
        xyz = xyz.astype(np.float32)
    duplicated = rng.random(n) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    if duplicated.any():
        xyz[duplicated] = xyz[rng.integers(0, n)]
    special = rng.random(xyz.shape) < draw(st.sampled_from([0.0, 0.01, 0.3, 1.0]))
    xyz[special] = rng.choice(SPECIAL_VALUES, int(special.sum()))
    return xyz


# Small clouds whose every coordinate is any float32 (hypothesis picks the nasty ones).
arbitrary_xyz = hnp.arrays(np.float32, st.tuples(st.integers(0, 60), st.just(3)),
                           elements=st.floats(width=32))


@st.composite
def clouds(draw: st.DrawFn) -> Cloud:
    """A cloud of generated or arbitrary points, maybe organized, maybe coloured."""
    xyz = draw(st.one_of(generated_xyz(), arbitrary_xyz))
    n = len(xyz)
    divisors = [h for h in range(1, min(n, 64) + 1) if n % h == 0] or [1]
    height = draw(st.sampled_from(divisors)) if draw(st.booleans()) else 1
    rgb = None
    if draw(st.booleans()):
        rgb = np.random.default_rng(n).integers(0, 256, (n, 3), dtype=np.uint8)
    event('organized' if height > 1 else 'unorganized')
    event(f'size < {10 ** len(str(n))}')
    return Cloud(xyz, rgb, height=height, width=n // height if n else 0)


@pytest.mark.timeout(120)
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cloud=clouds(), config_name=st.sampled_from(sorted(CONFIGS)))
def test_pipeline_never_raises_and_its_outputs_line_up(cloud: Cloud, config_name: str) -> None:
    config = CONFIGS[config_name]
    result = PIPELINES[config_name].process(cloud)
    n = len(cloud)
    valid = cloud.valid
    if config.max_range > 0:
        # float32 norms differ from float64 ones near the limit, hence the margin.
        valid &= np.linalg.norm(cloud.xyz.astype(np.float64), axis=1) <= 1.01 * config.max_range
    assert result.labels.shape == (n,) and result.labels.dtype == np.uint32
    assert result.support_mask.shape == (n,) and result.support_mask.dtype == bool
    assert result.num_input == n
    if config.max_range > 0:
        assert result.num_valid <= valid.sum()
    else:
        assert result.num_valid == valid.sum()
    assert result.num_working <= min(result.num_valid, config.max_points)
    assert not result.labels[~valid].any() and not result.support_mask[~valid].any()
    assert not result.labels[result.support_mask].any()  # support is never an instance

    ids = [info.id for info in result.instances]
    assert ids == list(range(1, len(ids) + 1))
    counts = np.bincount(result.labels, minlength=len(ids) + 1)
    assert len(counts) == len(ids) + 1  # no label without its instance
    for info in result.instances:
        assert info.num_points == counts[info.id] >= config.min_instance_points
        described = np.concatenate([info.centroid, info.bbox_center, info.bbox_quaternion,
                                    info.bbox_size, info.mean_color])
        assert np.isfinite(described).all(), info
    event(f'{len(ids)} instances' if len(ids) < 3 else '3+ instances')


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=fuzzed_messages())
def test_decoded_messages_always_segment(msg: object) -> None:
    """What the node does with a message: only the codec may refuse it, and only by its error."""
    try:
        cloud = decode_pointcloud2(msg)
    except CloudDecodeError:
        event('rejected')
        return
    event('segmented')
    result = PIPELINES['learned (the shipped params)'].process(cloud)
    assert result.labels.shape == (len(cloud),)
    assert not result.labels[~cloud.valid].any()
