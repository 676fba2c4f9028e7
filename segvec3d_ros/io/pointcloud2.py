"""Vectorised sensor_msgs/PointCloud2 <-> Cloud codec, free of ROS imports.

Decoding takes any object with PointCloud2's attributes (an rclpy message, whose `data` is an
`array.array('B')`, or a rosbags message, whose `data` is a uint8 ndarray). Memory stays O(N) with
a small constant: the message buffer is viewed through a structured dtype without copying, then
xyz is copied once to float32, colour to (N, 3) uint8 and each extra field to a compact
native-endian array (so the Cloud does not pin or alias the message buffer).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from segvec3d_ros.cloud import Cloud

# sensor_msgs/PointField datatype constants.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)

POINT_FIELD_TYPES: dict[int, np.dtype] = {
    INT8: np.dtype('<i1'), UINT8: np.dtype('<u1'),
    INT16: np.dtype('<i2'), UINT16: np.dtype('<u2'),
    INT32: np.dtype('<i4'), UINT32: np.dtype('<u4'),
    FLOAT32: np.dtype('<f4'), FLOAT64: np.dtype('<f8'),
}

XYZ = ('x', 'y', 'z')
# Packed-colour fields, in order of preference; either declared FLOAT32 (PCL) or (U)INT32.
COLOUR_FIELDS = ('rgb', 'rgba')


class CloudDecodeError(ValueError):
    """Why a PointCloud2 could not be decoded (clear, human message)."""


@dataclass
class FieldSpec:
    """One PointField: `count` elements of `datatype` at byte `offset` within a point."""

    name: str
    offset: int
    datatype: int
    count: int = 1


@dataclass
class PackedCloud:
    """A PointCloud2 body without header, ready to copy into any PointCloud2 message class."""

    height: int
    width: int
    fields: list[FieldSpec]
    is_bigendian: bool
    point_step: int
    row_step: int
    data: bytes
    is_dense: bool


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours from packed 0xAARRGGBB words (PCL's rgb/rgba bit layout).

    `packed` must hold the words as integers (view a float32 rgb field as uint32 first); any
    shape, flattened in C order.
    """
    words = np.asarray(packed).reshape(-1)
    rgb = np.empty((len(words), 3), np.uint8)
    # Assignment truncates to the low byte, which is the channel after the shift.
    rgb[:, 0] = words >> 16
    rgb[:, 1] = words >> 8
    rgb[:, 2] = words
    return rgb


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N,) uint32 words 0x00RRGGBB from (N, 3) uint8 colours; inverse of `unpack_rgb`."""
    c = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3).astype(np.uint32)
    return (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]


def _as_uint8(data: Any) -> np.ndarray:
    """Return the message's data as a flat uint8 array, without copying buffer-protocol objects."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):  # a list of ints or a non-contiguous array
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _layout(fields: list[FieldSpec], point_step: int,
            byteorder: str) -> dict[str, tuple[np.dtype, int]]:
    """Name -> (dtype, offset) of the count == 1 fields to decode; raises on a bad layout."""
    duplicated = sorted(name for name, k in Counter(f.name for f in fields).items() if k > 1)
    if duplicated:
        raise CloudDecodeError(f'duplicated field names {duplicated}')
    layout: dict[str, tuple[np.dtype, int]] = {}
    for f in fields:
        base = POINT_FIELD_TYPES.get(f.datatype)
        if base is None:
            if f.name in XYZ:
                raise CloudDecodeError(f'field {f.name!r} has unknown datatype {f.datatype}')
            continue  # an exotic extra field must not cost us the whole cloud
        if f.name in XYZ and f.count != 1:
            raise CloudDecodeError(f'field {f.name!r} has count {f.count}, expected 1')
        if f.offset < 0 or f.count < 0 or f.offset + base.itemsize * f.count > point_step:
            raise CloudDecodeError(
                f'field {f.name!r} ({f.count} x {base.itemsize} bytes at offset {f.offset}) '
                f'overruns point_step {point_step}')
        if f.count == 1:
            layout[f.name] = (base.newbyteorder(byteorder), f.offset)
    missing = [axis for axis in XYZ if axis not in layout]
    if missing:
        raise CloudDecodeError(f'missing coordinate field(s) {missing}')
    return layout


def decode_pointcloud2(msg: Any, max_points: int | None = None) -> Cloud:
    """Cloud from a PointCloud2-like message; raises CloudDecodeError saying why it cannot.

    Points keep the message order and (height, width); non-finite points stay in place (and
    float64 coordinates beyond float32 range become Inf, hence invalid). A colour field `rgb` or
    `rgba` with 4-byte elements becomes `Cloud.rgb`; other count == 1 fields of known datatype go
    to `Cloud.extra`; fields of unknown datatype are skipped. An empty message (height * width
    == 0) is an empty Cloud, with empty arrays for the extra fields it declares. `max_points`
    refuses larger messages outright (no downsampling).
    """
    try:
        height, width = int(msg.height), int(msg.width)
        point_step, row_step = int(msg.point_step), int(msg.row_step)
        byteorder = '>' if msg.is_bigendian else '<'
        fields = [FieldSpec(str(f.name), int(f.offset), int(f.datatype), int(f.count))
                  for f in msg.fields]
        data = _as_uint8(msg.data)
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise CloudDecodeError(f'not a PointCloud2-like message: {exc}') from exc
    if min(height, width, point_step, row_step) < 0:
        raise CloudDecodeError('negative height, width, point_step or row_step')
    n = height * width
    if n == 0:
        # No bytes to misread, so no layout checks; the scalar fields still come back (empty),
        # so that an empty labeled cloud has its labels like any other.
        extra = {f.name: np.empty(0, POINT_FIELD_TYPES[f.datatype]) for f in fields
                 if f.count == 1 and f.datatype in POINT_FIELD_TYPES
                 and f.name not in XYZ + COLOUR_FIELDS}
        return Cloud(np.empty((0, 3), np.float32), height=height, width=width, extra=extra)
    if max_points is not None and n > max_points:
        raise CloudDecodeError(f'{n} points exceeds the limit of {max_points}')
    if point_step == 0:
        raise CloudDecodeError(f'point_step is 0 for {n} points')
    if row_step < width * point_step:
        raise CloudDecodeError(
            f'row_step {row_step} < width * point_step = {width} * {point_step}')
    if len(data) != height * row_step:
        problem = 'truncated' if len(data) < height * row_step else 'too long'
        raise CloudDecodeError(
            f'data {problem}: {len(data)} bytes, height * row_step = {height} * {row_step}')
    layout = _layout(fields, point_step, byteorder)

    colour = next((c for c in COLOUR_FIELDS if c in layout and layout[c][0].itemsize == 4), None)
    if colour is not None:  # read the packed bits as an integer whatever the declared type
        layout[colour] = (np.dtype(byteorder + 'u4'), layout[colour][1])
    names = list(layout)
    # Positional names: message field names need not be valid, distinct numpy field names.
    dtype = np.dtype({'names': [f'f{i}' for i in range(len(names))],
                      'formats': [layout[name][0] for name in names],
                      'offsets': [layout[name][1] for name in names],
                      'itemsize': point_step})
    points = np.ndarray((height, width), dtype, buffer=data, strides=(row_step, point_step))
    column = {name: points[f'f{i}'] for i, name in enumerate(names)}

    xyz = np.empty((height, width, 3), np.float32)
    with np.errstate(over='ignore'):  # out-of-range float64 -> Inf, an invalid point
        for i, axis in enumerate(XYZ):
            xyz[..., i] = column.pop(axis)
    rgb = unpack_rgb(column.pop(colour)) if colour is not None else None
    extra = {name: values.astype(values.dtype.newbyteorder('=')).reshape(-1)
             for name, values in column.items()}
    return Cloud(xyz.reshape(-1, 3), rgb, height=height, width=width, extra=extra)


def encode_pointcloud2(xyz: np.ndarray, rgb: np.ndarray | None = None,
                       labels: np.ndarray | None = None, height: int = 1,
                       width: int | None = None) -> PackedCloud:
    """Little-endian PointCloud2 body with fields x y z [rgb] [label].

    The layout is compact (x, y, z float32 at 0, 4, 8, then rgb float32 holding 0x00RRGGBB bits
    as in PCL, then label uint32), so point_step is 12, 16 or 20: always a multiple of 4, but
    not PCL's 32-byte PointXYZRGBL alignment; readers go by the field offsets. `width` defaults
    to N // height; is_dense says whether all points are finite.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim < 1 or xyz.shape[-1] != 3:
        raise ValueError(f'xyz must be (..., 3), got shape {xyz.shape}')
    xyz = xyz.reshape(-1, 3)
    n = len(xyz)
    if width is None:
        width = n // height if height > 0 else 0
    if height < 0 or width < 0 or height * width != n:
        raise ValueError(f'height * width = {height} * {width} != {n} points')

    columns: list[tuple[str, int, np.ndarray]] = [
        ('x', FLOAT32, xyz[:, 0]), ('y', FLOAT32, xyz[:, 1]), ('z', FLOAT32, xyz[:, 2])]
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.size != 3 * n:
            raise ValueError(f'rgb has shape {rgb.shape} for {n} points')
        columns.append(('rgb', FLOAT32, pack_rgb(rgb)))
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n:
            raise ValueError(f'labels has {len(labels)} entries for {n} points')
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f'labels must be integers, got {labels.dtype}')
        if n and (labels.min() < 0 or labels.max() > np.iinfo(np.uint32).max):
            raise ValueError('labels must fit uint32')
        columns.append(('label', UINT32, labels))

    # The rgb column is stored from its uint32 bits, so the record holds integers there.
    dtype = np.dtype([(name, '<u4' if name in ('rgb', 'label') else '<f4')
                      for name, _, _ in columns])
    records = np.empty(n, dtype)
    for name, _, values in columns:
        records[name] = values
    fields = [FieldSpec(name, 4 * i, datatype) for i, (name, datatype, _) in enumerate(columns)]
    return PackedCloud(height=height, width=width, fields=fields, is_bigendian=False,
                       point_step=dtype.itemsize, row_step=width * dtype.itemsize,
                       data=records.tobytes(), is_dense=bool(np.isfinite(xyz).all()))
