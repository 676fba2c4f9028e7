"""PointCloud2 codec: round trips, hand-built rclpy messages, every rejection, fuzzed messages."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from segvec3d_ros.io.pointcloud2 import (FLOAT32, FLOAT64, INT8, POINT_FIELD_TYPES, UINT8, UINT16,
                                         UINT32, CloudDecodeError, PackedCloud, decode_pointcloud2,
                                         encode_pointcloud2, pack_rgb, unpack_rgb)

RNG = np.random.default_rng(0)


def ros_msg(fields: list[tuple[str, int, int, int]], point_step: int, data: bytes,
            height: int, width: int, row_step: int | None = None, big: bool = False):
    """A real sensor_msgs/PointCloud2 from (name, offset, datatype, count) fields and raw data."""
    msgs = pytest.importorskip('sensor_msgs.msg')
    return msgs.PointCloud2(
        height=height, width=width, is_bigendian=big, point_step=point_step,
        row_step=width * point_step if row_step is None else row_step, data=data,
        is_dense=False, fields=[msgs.PointField(name=n, offset=o, datatype=d, count=c)
                                for n, o, d, c in fields])


def from_packed(packed: PackedCloud):
    """The rclpy message a node would publish for `packed`."""
    return ros_msg([(f.name, f.offset, f.datatype, f.count) for f in packed.fields],
                   packed.point_step, packed.data, packed.height, packed.width, packed.row_step,
                   packed.is_bigendian)


def records(spec: list[tuple[str, str, int]], itemsize: int, n: int) -> np.ndarray:
    """Zeroed records with (name, numpy format, offset) fields and padding up to `itemsize`."""
    dtype = np.dtype({'names': [s[0] for s in spec], 'formats': [s[1] for s in spec],
                      'offsets': [s[2] for s in spec], 'itemsize': itemsize})
    return np.zeros(n, dtype)


def xyz_points(n: int) -> np.ndarray:
    return RNG.normal(size=(n, 3)).astype(np.float32)


XYZ_FIELDS = [('x', 0, FLOAT32, 1), ('y', 4, FLOAT32, 1), ('z', 8, FLOAT32, 1)]


def xyz_msg(n: int = 4):
    """A valid 12-byte-per-point message, the base the rejection tests break."""
    return ros_msg(XYZ_FIELDS, 12, xyz_points(n).tobytes(), 1, n)


# --- encode and round trip -------------------------------------------------------------------

def test_round_trip_organized_with_colour_labels_and_nan_holes():
    h, w = 3, 5
    xyz = xyz_points(h * w)
    xyz[[0, 7, 14], 2] = np.nan
    xyz[3, 0] = np.inf
    rgb = RNG.integers(0, 256, (h * w, 3), dtype=np.uint8)
    labels = RNG.integers(0, 2 ** 32, h * w, dtype=np.uint64)
    packed = encode_pointcloud2(xyz.reshape(h, w, 3), rgb, labels, height=h, width=w)
    assert not packed.is_dense
    cloud = decode_pointcloud2(from_packed(packed))
    assert (cloud.height, cloud.width, len(cloud)) == (h, w, h * w)
    np.testing.assert_array_equal(cloud.xyz, xyz)  # NaN/Inf compare equal in place
    np.testing.assert_array_equal(cloud.valid, np.isfinite(xyz).all(axis=1))
    np.testing.assert_array_equal(cloud.rgb, rgb)
    assert cloud.extra['label'].dtype == np.uint32
    np.testing.assert_array_equal(cloud.extra['label'], labels)


@pytest.mark.parametrize('as_data', [bytes, lambda b: np.frombuffer(b, np.uint8)],
                         ids=['bytes', 'rosbags-ndarray'])
def test_duck_typed_messages_decode(as_data):
    xyz = xyz_points(6)
    packed = encode_pointcloud2(xyz, labels=np.arange(6))
    msg = SimpleNamespace(**{**vars(packed), 'data': as_data(packed.data)})
    cloud = decode_pointcloud2(msg)
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.extra['label'], np.arange(6))
    assert cloud.rgb is None


@pytest.mark.parametrize('rgb, labels, step, names', [
    (False, False, 12, ['x', 'y', 'z']),
    (True, False, 16, ['x', 'y', 'z', 'rgb']),
    (False, True, 16, ['x', 'y', 'z', 'label']),
    (True, True, 20, ['x', 'y', 'z', 'rgb', 'label'])])
def test_encode_layout(rgb, labels, step, names):
    n = 4
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [1, 2, 3]], np.uint8)
    packed = encode_pointcloud2(xyz_points(n), colours if rgb else None,
                                np.arange(n) if labels else None)
    assert [f.name for f in packed.fields] == names
    assert [f.offset for f in packed.fields] == [4 * i for i in range(len(names))]
    assert (packed.point_step, packed.row_step, len(packed.data)) == (step, n * step, n * step)
    assert packed.is_dense and not packed.is_bigendian and (packed.height, packed.width) == (1, n)
    if rgb:
        assert packed.fields[3].datatype == FLOAT32  # PCL declares the packed colour a float
        words = np.frombuffer(packed.data, '<u4').reshape(n, -1)[:, 3]
        np.testing.assert_array_equal(words, [0xFF0000, 0x00FF00, 0x0000FF, 0x010203])
    if labels:
        assert packed.fields[-1].datatype == UINT32


@pytest.mark.parametrize('kwargs, reason', [
    (dict(xyz=np.zeros((4, 2))), 'xyz must be'),
    (dict(xyz=np.zeros((4, 3)), height=3), r'height \* width'),
    (dict(xyz=np.zeros((4, 3)), rgb=np.zeros((3, 3))), 'rgb has shape'),
    (dict(xyz=np.zeros((4, 3)), labels=np.arange(3)), 'labels has 3'),
    (dict(xyz=np.zeros((4, 3)), labels=np.array([0, 1, -1, 2])), 'fit uint32'),
    (dict(xyz=np.zeros((4, 3)), labels=np.zeros(4)), 'integers')])
def test_encode_rejects(kwargs, reason):
    with pytest.raises(ValueError, match=reason):
        encode_pointcloud2(**kwargs)


def test_pack_unpack_rgb_are_inverse_and_ignore_alpha():
    rgb = RNG.integers(0, 256, (50, 3), dtype=np.uint8)
    words = pack_rgb(rgb)
    np.testing.assert_array_equal(unpack_rgb(words), rgb)
    np.testing.assert_array_equal(unpack_rgb(words | np.uint32(0xFF000000)), rgb)


# --- hand-built messages ---------------------------------------------------------------------

def test_shuffled_fields_point_padding_and_row_padding():
    h, w, step, row_pad = 2, 3, 32, 8
    rec = records([('rgb', '<u4', 0), ('z', '<f4', 4), ('intensity', '<f4', 12),
                   ('x', '<f4', 20), ('y', '<f4', 24)], step, h * w)
    xyz = xyz_points(h * w)
    rgb = RNG.integers(0, 256, (h * w, 3), dtype=np.uint8)
    rec['x'], rec['y'], rec['z'] = xyz.T
    rec['rgb'] = pack_rgb(rgb)
    rec['intensity'] = np.arange(h * w)
    rows = [rec[r * w:(r + 1) * w].tobytes() + b'\xab' * row_pad for r in range(h)]
    msg = ros_msg([('rgb', 0, FLOAT32, 1), ('z', 4, FLOAT32, 1), ('intensity', 12, FLOAT32, 1),
                   ('x', 20, FLOAT32, 1), ('y', 24, FLOAT32, 1)],
                  step, b''.join(rows), h, w, row_step=w * step + row_pad)
    cloud = decode_pointcloud2(msg)
    assert (cloud.height, cloud.width) == (h, w)
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.rgb, rgb)
    np.testing.assert_array_equal(cloud.extra['intensity'], np.arange(h * w))
    assert set(cloud.extra) == {'intensity'}


def test_float64_xyz_and_out_of_float32_range_becomes_invalid():
    rec = records([('x', '<f8', 0), ('y', '<f8', 8), ('z', '<f8', 16)], 24, 3)
    xyz = np.array([[1.5, -2.25, 1e-3], [1e300, 0.0, 1.0], [np.nan, 0.0, 1.0]])
    rec['x'], rec['y'], rec['z'] = xyz.T
    msg = ros_msg([('x', 0, FLOAT64, 1), ('y', 8, FLOAT64, 1), ('z', 16, FLOAT64, 1)],
                  24, rec.tobytes(), 1, 3)
    cloud = decode_pointcloud2(msg)
    assert cloud.xyz.dtype == np.float32
    np.testing.assert_array_equal(cloud.xyz[0], xyz[0].astype(np.float32))
    np.testing.assert_array_equal(cloud.valid, [True, False, False])


@pytest.mark.parametrize('name, datatype, alpha', [
    ('rgba', UINT32, 0xFF), ('rgb', UINT32, 0), ('rgb', FLOAT32, 0xFF)])
def test_packed_colour_fields(name, datatype, alpha):
    rec = records([('x', '<f4', 0), ('y', '<f4', 4), ('z', '<f4', 8), (name, '<u4', 12)], 16, 4)
    rgb = RNG.integers(0, 256, (4, 3), dtype=np.uint8)
    rec[name] = pack_rgb(rgb) | np.uint32(alpha << 24)  # alpha 0xFF makes the float a NaN
    msg = ros_msg(XYZ_FIELDS + [(name, 12, datatype, 1)], 16, rec.tobytes(), 2, 2)
    cloud = decode_pointcloud2(msg)
    np.testing.assert_array_equal(cloud.rgb, rgb)
    assert name not in cloud.extra


def test_big_endian():
    rec = records([('x', '>f4', 0), ('y', '>f4', 4), ('z', '>f4', 8), ('rgba', '>u4', 12),
                   ('ring', '>u2', 16)], 20, 5)
    xyz = xyz_points(5)
    rgb = RNG.integers(0, 256, (5, 3), dtype=np.uint8)
    rec['x'], rec['y'], rec['z'] = xyz.T
    rec['rgba'] = pack_rgb(rgb)
    rec['ring'] = [1, 300, 2, 65535, 0]
    msg = ros_msg(XYZ_FIELDS + [('rgba', 12, UINT32, 1), ('ring', 16, UINT16, 1)], 20,
                  rec.tobytes(), 1, 5, big=True)
    cloud = decode_pointcloud2(msg)
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.rgb, rgb)
    np.testing.assert_array_equal(cloud.extra['ring'], [1, 300, 2, 65535, 0])
    assert cloud.extra['ring'].dtype.isnative


def test_organized_with_nan_holes_keeps_shape_and_positions():
    h, w = 4, 6
    xyz = xyz_points(h * w)
    holes = RNG.random(h * w) < 0.3
    xyz[holes] = np.nan
    cloud = decode_pointcloud2(ros_msg(XYZ_FIELDS, 12, xyz.tobytes(), h, w))
    assert cloud.is_organized and (cloud.height, cloud.width) == (h, w)
    np.testing.assert_array_equal(cloud.valid, ~holes)
    np.testing.assert_array_equal(cloud.xyz[~holes], xyz[~holes])


def test_extra_fields_unknown_datatypes_and_counts():
    rec = records([('x', '<f4', 0), ('y', '<f4', 4), ('z', '<f4', 8), ('label', '<u4', 12),
                   ('flag', 'i1', 16)], 24, 3)
    rec['label'] = [7, 8, 9]
    rec['flag'] = [-1, 0, 1]
    msg = ros_msg(XYZ_FIELDS + [('label', 12, UINT32, 1), ('flag', 16, INT8, 1),
                                ('weird', 17, 42, 1), ('hist', 17, UINT8, 3)],
                  24, rec.tobytes(), 1, 3)
    cloud = decode_pointcloud2(msg)
    assert set(cloud.extra) == {'label', 'flag'}  # unknown datatype and count 3 are skipped
    np.testing.assert_array_equal(cloud.extra['label'], [7, 8, 9])
    np.testing.assert_array_equal(cloud.extra['flag'], [-1, 0, 1])
    assert cloud.extra['flag'].dtype == np.int8


@pytest.mark.parametrize('height, width, fields', [(0, 0, []), (1, 0, XYZ_FIELDS),
                                                   (0, 7, XYZ_FIELDS)])
def test_empty_cloud_is_not_an_error(height, width, fields):
    cloud = decode_pointcloud2(ros_msg(fields, 12 if fields else 0, b'', height, width))
    assert len(cloud) == 0 and cloud.xyz.shape == (0, 3)


def test_default_constructed_message_is_empty():
    msgs = pytest.importorskip('sensor_msgs.msg')
    assert len(decode_pointcloud2(msgs.PointCloud2())) == 0


# Each case breaks the valid 4-point xyz message one way; the error must say how.
REJECTIONS = {
    'truncated': (lambda m: setattr(m, 'data', bytes(m.data)[:-1]), 'truncated'),
    'too long': (lambda m: setattr(m, 'data', bytes(m.data) + b'\0' * 12), 'too long'),
    'row_step short': (lambda m: setattr(m, 'row_step', 47), 'row_step 47 < width'),
    'row_step vs data': (lambda m: setattr(m, 'row_step', 60), 'truncated'),
    'point_step 0': (lambda m: (setattr(m, 'point_step', 0), setattr(m, 'row_step', 0)),
                     'point_step is 0'),
    'field overruns': (lambda m: setattr(m.fields[2], 'offset', 10), "'z'.*overruns"),
    'missing z': (lambda m: setattr(m.fields[2], 'name', 'w'), r"missing.*\['z'\]"),
    'unknown datatype on x': (lambda m: setattr(m.fields[0], 'datatype', 0),
                              "'x' has unknown datatype 0"),
    'duplicated names': (lambda m: setattr(m.fields[1], 'name', 'x'), 'duplicated.*x'),
    'count on y': (lambda m: setattr(m.fields[1], 'count', 2), "'y' has count 2"),
    'huge claimed size': (lambda m: (setattr(m, 'height', 100_000), setattr(m, 'width', 50_000)),
                          'row_step'),
}


@pytest.mark.parametrize('case', REJECTIONS)
def test_rejections_say_why(case):
    msg = xyz_msg(4)
    mutate, reason = REJECTIONS[case]
    mutate(msg)
    with pytest.raises(CloudDecodeError, match=reason):
        decode_pointcloud2(msg)


def test_max_points_refuses_larger_messages():
    assert len(decode_pointcloud2(xyz_msg(4), max_points=4)) == 4
    with pytest.raises(CloudDecodeError, match='5 points exceeds the limit of 4'):
        decode_pointcloud2(xyz_msg(5), max_points=4)


def test_non_message_is_a_decode_error():
    with pytest.raises(CloudDecodeError, match='not a PointCloud2'):
        decode_pointcloud2(object())


def test_agrees_with_sensor_msgs_py():
    point_cloud2 = pytest.importorskip('sensor_msgs_py.point_cloud2')
    xyz = xyz_points(12)
    xyz[3] = np.nan
    msg = from_packed(encode_pointcloud2(xyz, RNG.integers(0, 256, (12, 3)), height=3, width=4))
    theirs = np.array([tuple(p) for p in point_cloud2.read_points(
        msg, field_names=('x', 'y', 'z'), skip_nans=False)], dtype=np.float32)
    np.testing.assert_array_equal(decode_pointcloud2(msg).xyz, theirs)


# --- fuzzing ---------------------------------------------------------------------------------

@st.composite
def fuzzed_messages(draw) -> SimpleNamespace:
    """Messages that are often well formed and often broken in one or more ways."""
    height, width = draw(st.integers(0, 4)), draw(st.integers(0, 5))
    field = st.builds(SimpleNamespace,
                      name=st.sampled_from(['x', 'y', 'z', 'rgb', 'rgba', 'label', '', 'x ']),
                      offset=st.integers(-2, 40), datatype=st.integers(0, 10),
                      count=st.integers(-1, 3))
    fields = draw(st.lists(field, max_size=6))
    if draw(st.booleans()):  # a plausible core so that many examples decode
        fields = [SimpleNamespace(name=a, offset=draw(st.integers(0, 16)),
                                  datatype=draw(st.sampled_from(sorted(POINT_FIELD_TYPES))),
                                  count=1) for a in 'xyz'] + fields[:2]
    point_step = draw(st.integers(0, 48))
    row_step = draw(st.one_of(st.just(width * point_step),
                              st.integers(0, 8).map(lambda pad: width * point_step + pad),
                              st.integers(0, 300)))
    size = draw(st.one_of(st.just(height * row_step), st.integers(0, 400)))
    return SimpleNamespace(height=height, width=width, fields=fields,
                           is_bigendian=draw(st.booleans()), point_step=point_step,
                           row_step=row_step, data=draw(st.binary(min_size=size, max_size=size)),
                           is_dense=draw(st.booleans()))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzed_messages())
def test_fuzzed_messages_decode_or_raise_decode_error(msg):
    try:
        cloud = decode_pointcloud2(msg)
    except CloudDecodeError:
        event('rejected')
        return
    event('decoded')
    n = msg.height * msg.width
    assert len(cloud) == n and cloud.xyz.dtype == np.float32
    assert cloud.rgb is None or cloud.rgb.shape == (n, 3)
    assert all(v.shape == (n,) for v in cloud.extra.values())
