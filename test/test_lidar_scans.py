"""Real Ouster scans (../shared) through `segvec3d segment` with the shipped LiDAR preset."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scenes import REPO
from segvec3d_ros.cli import main as cli
from segvec3d_ros.io.bags import iter_bag_clouds

LIDAR_PARAMS = REPO / 'config' / 'lidar.yaml'
# bag, rows: the three shared scans (../shared/data/lidar/README.md)
BAGS = (('OS-0-128-U1_v2.3.0_1024x10', 128), ('OS-2-128-U1_v2.3.0_1024x10', 128),
        ('OS-0-32-U1', 32))


def no_echo(bag) -> np.ndarray:
    """(N,) mask of the bag's no-echo returns, as ouster-ros marks them: x = y = z = 0, range 0."""
    cloud = next(iter(iter_bag_clouds(bag))).cloud()
    return (cloud.xyz == 0).all(axis=1) | (cloud.extra['range'] == 0)


def check_scan_labels(labels: np.ndarray, empty: np.ndarray, rows: int) -> int:
    """Issue 18's criteria on one scan's labels; returns the number of instances."""
    assert not labels[empty].any(), 'a no-echo return is labelled'
    sizes = np.bincount(labels.astype(np.int64))[1:]
    instances = int(np.count_nonzero(sizes))
    if rows >= 128:
        assert instances >= 10
    assert sizes.max(initial=0) <= 0.25 * np.count_nonzero(~empty), 'one instance is a blob'
    return instances


@pytest.mark.shared
@pytest.mark.parametrize('name, rows', BAGS)
def test_a_real_ouster_scan_is_not_one_blob(shared_dir, tmp_path, name, rows):
    bag = shared_dir / 'data' / 'lidar' / name
    assert cli.main(['segment', str(bag), '--out-dir', str(tmp_path),
                     '--params-file', str(LIDAR_PARAMS)]) == 0
    stem = f'{bag.stem}_0000'   # the CLI names a bag's outputs by its stem and message
    labels = np.load(tmp_path / f'{stem}.npy')
    assert labels.shape == (rows, 1024)   # organized output keeps the scan's shape
    record = json.loads((tmp_path / f'{stem}.json').read_text())
    instances = check_scan_labels(labels.reshape(-1), no_echo(bag), rows)
    assert instances == len(record['instances'])
