"""The ROS-free frame bookkeeping the segmentation node reports from."""
from __future__ import annotations

from segvec3d_ros.frame_flow import FrameStats, SilentInput


def test_silence_counts_from_the_later_of_matching_and_the_last_cloud() -> None:
    silent = SilentInput()
    assert silent.silence(publishers=0, last_arrival=None, now=10.0) == 0.0
    assert silent.silence(1, None, now=11.0) == 0.0       # matched now
    assert silent.silence(1, None, now=18.0) == 7.0       # and nothing since
    assert silent.silence(1, 17.5, now=18.0) == 0.5       # a cloud came
    assert silent.silence(0, 17.5, now=30.0) == 0.0       # the publisher left
    assert silent.silence(1, 17.5, now=31.0) == 0.0       # a new one matched: counts afresh
    assert silent.silence(1, 17.5, now=35.0) == 4.0


def test_frames_a_cap_changed_are_counted_with_the_last_caps() -> None:
    stats = FrameStats()
    stats.on_limited(['max_points: 80000 voxels subsampled to 50000'])
    stats.on_limited(['max_points: 90000 voxels subsampled to 50000',
                      'max_instances: 2000 instances, kept the 1000 largest'])
    report = stats.report(dropped=0)
    assert report.limited == 2
    assert report.last_limits[-1].startswith('max_instances')
