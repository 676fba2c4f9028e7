"""File readers: PCD (ascii, binary, binary_compressed), PLY, npy, errors, and the shared data."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from segvec3d_ros.io.files import SUPPORTED_SUFFIXES, CloudFileError, read_cloud
from segvec3d_ros.io.pointcloud2 import pack_rgb

RNG = np.random.default_rng(1)


def pcd_header(fields: str, size: str, type_: str, count: str, width: int, height: int,
               data: str, points: int | None = None) -> bytes:
    """A PCD v0.7 header, with a comment line as PCL writes it."""
    points = width * height if points is None else points
    return (f'# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS {fields}\n'
            f'SIZE {size}\nTYPE {type_}\nCOUNT {count}\nWIDTH {width}\nHEIGHT {height}\n'
            f'VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n').encode()


def organized_xyz(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(h*w, 3) float32 points with NaN holes, and the mask of valid points."""
    xyz = RNG.normal(size=(h * w, 3)).astype(np.float32)
    valid = RNG.random(h * w) > 0.3
    xyz[~valid] = np.nan
    return xyz, valid


def literal_lzf(data: bytes) -> bytes:
    """A valid LZF stream made only of literal runs (at most 32 bytes after each control byte)."""
    return b''.join(bytes([len(data[i:i + 32]) - 1]) + data[i:i + 32]
                    for i in range(0, len(data), 32))


def test_ascii_pcd_organized_with_nan_colour_conventions_and_extras(tmp_path):
    # rgb printed as PCL does (the word as an integer) and as older writers do (the float).
    words = [0xFF0000, 0x00FF00, 0x123456, 0x010203]
    rgb_text = ['16711680', str(np.uint32(words[1]).view(np.float32)), str(words[2]),
                str(np.uint32(words[3]).view(np.float32))]
    rows = ['0.5 -1.25 2 {} 7 1 2', 'nan nan nan {} 8 3 4', '1e-3 2 3 {} 9 5 6',
            '4 5 6 {} 10 7 8']
    body = '\n'.join(r.format(c) for r, c in zip(rows, rgb_text)) + '\n'
    path = tmp_path / 'a.pcd'
    path.write_bytes(pcd_header('x y z rgb label hist', '4 4 4 4 4 2', 'F F F F U U',
                                '1 1 1 1 1 2', 2, 2, 'ascii') + body.encode())
    cloud = read_cloud(path)
    assert (cloud.height, cloud.width, len(cloud)) == (2, 2, 4)
    np.testing.assert_array_equal(cloud.xyz[0], np.float32([0.5, -1.25, 2]))
    np.testing.assert_array_equal(cloud.valid, [True, False, True, True])
    np.testing.assert_array_equal(cloud.rgb, [[255, 0, 0], [0, 255, 0], [0x12, 0x34, 0x56],
                                              [1, 2, 3]])
    assert set(cloud.extra) == {'label'}  # the COUNT 2 field is not a per-point scalar
    np.testing.assert_array_equal(cloud.extra['label'], [7, 8, 9, 10])
    assert cloud.extra['label'].dtype == np.uint32


def test_binary_pcd_like_mosd_organized_with_nan(tmp_path):
    h, w = 3, 4
    xyz, valid = organized_xyz(h, w)
    rgb = RNG.integers(0, 256, (h * w, 3), dtype=np.uint8)
    rec = np.zeros(h * w, [('label', '<u4'), ('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                           ('rgba', '<u4'), ('_', 'u1', (4,)), ('intensity', '<f8')])
    rec['label'] = np.arange(h * w) * 3
    rec['x'], rec['y'], rec['z'] = xyz.T
    rec['rgba'] = pack_rgb(rgb) | np.uint32(0xFF000000)
    rec['intensity'] = np.linspace(0, 1, h * w)
    path = tmp_path / 'b.pcd'
    path.write_bytes(pcd_header('label x y z rgba _ intensity', '4 4 4 4 4 1 8',
                                'U F F F U U F', '1 1 1 1 1 4 1', w, h, 'binary')
                     + rec.tobytes())
    cloud = read_cloud(path)
    assert (cloud.height, cloud.width) == (h, w)
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.valid, valid)
    np.testing.assert_array_equal(cloud.rgb, rgb)
    assert set(cloud.extra) == {'label', 'intensity'}
    np.testing.assert_array_equal(cloud.extra['label'], np.arange(h * w) * 3)
    np.testing.assert_array_equal(cloud.extra['intensity'], np.linspace(0, 1, h * w))


def test_binary_compressed_pcd_keeps_order_nan_shape_and_fields(tmp_path):
    h, w = 5, 7
    xyz, valid = organized_xyz(h, w)
    rgb = RNG.integers(0, 256, (h * w, 3), dtype=np.uint8)
    normals = RNG.normal(size=(h * w, 3)).astype(np.float32)
    # binary_compressed stores each field contiguously (structure of arrays) before LZF.
    columns = [np.arange(h * w, dtype='<u4'), *xyz.T, pack_rgb(rgb).view('<f4'), *normals.T]
    body = b''.join(c.astype(c.dtype.newbyteorder('<')).tobytes() for c in columns)
    compressed = literal_lzf(body)
    path = tmp_path / 'c.pcd'
    path.write_bytes(pcd_header('label x y z rgb normal_x normal_y normal_z',
                                '4 4 4 4 4 4 4 4', 'U F F F F F F F', '1 1 1 1 1 1 1 1',
                                w, h, 'binary_compressed')
                     + struct.pack('<II', len(compressed), len(body)) + compressed)
    cloud = read_cloud(path)
    assert (cloud.height, cloud.width) == (h, w)
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.valid, valid)
    np.testing.assert_array_equal(cloud.rgb, rgb)
    np.testing.assert_array_equal(cloud.extra['label'], np.arange(h * w))
    np.testing.assert_array_equal(
        np.stack([cloud.extra[f'normal_{a}'] for a in 'xyz'], axis=1), normals)


def test_ply_positions_colours_and_extras(tmp_path):
    path = tmp_path / 'p.ply'
    path.write_text('ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n'
                    'property float y\nproperty float z\nproperty uchar red\n'
                    'property uchar green\nproperty uchar blue\nproperty float intensity\n'
                    'end_header\n0 0 1 255 0 0 0.5\n1 nan 2 0 255 0 0.25\n2 3 4 0 0 255 1\n')
    cloud = read_cloud(path)
    assert (cloud.height, cloud.width) == (1, 3)
    np.testing.assert_array_equal(cloud.xyz[[0, 2]], [[0, 0, 1], [2, 3, 4]])
    np.testing.assert_array_equal(cloud.valid, [True, False, True])
    np.testing.assert_array_equal(cloud.rgb, [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    np.testing.assert_array_equal(cloud.extra['intensity'], np.float32([0.5, 0.25, 1]))


XYZ6 = RNG.normal(size=(6, 3))
RGB6 = RNG.integers(0, 256, (6, 3))


@pytest.mark.parametrize('array, shape, rgb', [
    (XYZ6, (1, 6), None),
    (np.hstack([XYZ6, RGB6]), (1, 6), RGB6),
    (np.hstack([XYZ6, RGB6 / 255.0]), (1, 6), RGB6),
    (np.hstack([XYZ6, RGB6]).astype(np.float32), (1, 6), RGB6),
    (XYZ6.reshape(2, 3, 3), (2, 3), None),
    (np.hstack([XYZ6, RGB6]).reshape(3, 2, 6), (3, 2), RGB6)],
    ids=['n3', 'n6-255', 'n6-unit', 'n6-float32-255', 'hw3', 'hw6'])
def test_npy_layouts(tmp_path, array, shape, rgb):
    path = tmp_path / 'a.npy'
    np.save(path, array)
    cloud = read_cloud(path)
    assert (cloud.height, cloud.width) == shape
    np.testing.assert_allclose(cloud.xyz, XYZ6, rtol=1e-6)
    if rgb is None:
        assert cloud.rgb is None
    else:
        np.testing.assert_array_equal(cloud.rgb, rgb)


def test_npy_nan_pixels_keep_place_and_get_black(tmp_path):
    array = np.hstack([XYZ6, RGB6]).reshape(2, 3, 6)
    array[1, 1] = np.nan
    np.save(tmp_path / 'a.npy', array)
    cloud = read_cloud(tmp_path / 'a.npy')
    np.testing.assert_array_equal(cloud.valid, [True] * 4 + [False, True])
    np.testing.assert_array_equal(cloud.rgb[4], [0, 0, 0])


def test_binary_compressed_corrupt(tmp_path):
    path = tmp_path / 'z.pcd'
    path.write_bytes(pcd_header('x y z', '4 4 4', 'F F F', '1 1 1', 10, 1, 'binary_compressed')
                     + struct.pack('<II', 1000, 120) + b'\x05abc')
    with pytest.raises(CloudFileError, match='open3d read no points'):
        read_cloud(path)


ERROR_CASES = [
    ('gone.pcd', None, 'no such file'),
    ('a.xyz', b'1 2 3\n', 'unsupported file type'),
    ('garbage.pcd', b'\x00\xff\x10garb\nage' * 10, 'not a PCD file'),
    ('noheader.pcd', b'VERSION 0.7\nFIELDS x y z\n', 'no DATA line'),
    ('shape.pcd', pcd_header('x y z', '4 4 4', 'F F F', '1 1 1', 2, 2, 'ascii', points=5),
     r'WIDTH 2 x HEIGHT 2 != POINTS 5'),
    ('noz.pcd', pcd_header('x y', '4 4', 'F F', '1 1', 1, 1, 'ascii') + b'1 2\n', "'z'"),
    ('type.pcd', pcd_header('x y z', '4 4 3', 'F F F', '1 1 1', 1, 1, 'ascii'),
     'unsupported TYPE F SIZE 3'),
    ('rows.pcd', pcd_header('x y z', '4 4 4', 'F F F', '1 1 1', 3, 1, 'ascii') + b'1 2 3\n',
     'ascii data has 1 points, the header says 3'),
    ('text.pcd', pcd_header('x y z', '4 4 4', 'F F F', '1 1 1', 1, 1, 'ascii') + b'1 two 3\n',
     'two'),
    ('short.pcd', pcd_header('x y z', '4 4 4', 'F F F', '1 1 1', 3, 1, 'binary') + bytes(30),
     'binary data truncated: 30 bytes for 3 points'),
    ('bad.ply', b'ply\nformat ascii 1.0\nelement vertex 3\ngarbage', 'open3d read no points'),
    ('bad.npy', b'\x93NUMPY garbage', 'format version'),
    ('shape.npy', None, r'\(N, 3\|6\)'),
]


@pytest.mark.parametrize('name, content, reason', ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_name_the_path_and_the_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    if name == 'shape.npy':
        np.save(path, np.zeros((4, 4)))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CloudFileError, match=reason) as info:
        read_cloud(path)
    assert str(path) in str(info.value)


def test_out_of_range_npy_colours_are_an_error(tmp_path):
    np.save(tmp_path / 'c.npy', np.hstack([XYZ6, RGB6 + 300]))
    with pytest.raises(CloudFileError, match='outside 0..255'):
        read_cloud(tmp_path / 'c.npy')


def test_suffixes_are_case_insensitive(tmp_path):
    assert SUPPORTED_SUFFIXES == ('.pcd', '.ply', '.npy')
    np.save(tmp_path / 'a.npy', XYZ6)
    (tmp_path / 'a.npy').rename(tmp_path / 'A.NPY')
    assert len(read_cloud(tmp_path / 'A.NPY')) == 6


@pytest.mark.shared
def test_mosd_learn0(shared_dir: Path):
    cloud = read_cloud(shared_dir / 'data/mosd/learn/learn0.pcd')
    assert (len(cloud), cloud.height, cloud.width) == (307200, 480, 640)
    assert 160_000 <= int(np.isfinite(cloud.xyz[:, 2]).sum()) <= 209_000
    assert cloud.rgb is not None and cloud.extra['label'].shape == (307200,)
    # A pinhole camera's organized cloud has x/z strictly increasing along every row: any
    # reordering of points by the reader would break that.
    u = (cloud.xyz[:, 0] / cloud.xyz[:, 2]).reshape(480, 640)
    for row in u:
        assert np.all(np.diff(row[np.isfinite(row)]) > 0)


@pytest.mark.shared
def test_every_real_scan_loads(shared_dir: Path):
    paths = sorted(p for p in (shared_dir / 'data/real_scans').iterdir()
                   if p.suffix in SUPPORTED_SUFFIXES)  # the folder also holds a licence
    assert paths
    for path in paths:
        cloud = read_cloud(path)
        assert cloud.valid.sum() > 0, path
        assert cloud.height * cloud.width == len(cloud)
