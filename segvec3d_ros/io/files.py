"""Point cloud files (.pcd, .ply, .npy) read into a Cloud, free of ROS imports."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.io.pointcloud2 import COLOUR_FIELDS, XYZ, unpack_rgb

SUPPORTED_SUFFIXES = ('.pcd', '.ply', '.npy')

_PCD_KEYS = ('VERSION', 'FIELDS', 'SIZE', 'TYPE', 'COUNT', 'WIDTH', 'HEIGHT', 'VIEWPOINT',
             'POINTS', 'DATA')
_PCD_SIZES = {'F': (4, 8), 'I': (1, 2, 4, 8), 'U': (1, 2, 4, 8)}


class CloudFileError(ValueError):
    """Why a point cloud file could not be read; the message names the path."""


@dataclass
class _PcdHeader:
    """What a PCD header says about the data after it."""

    fields: list[str]
    dtypes: list[np.dtype]     # little-endian, one element of each field
    counts: list[int]
    height: int
    width: int
    data: str                  # 'ascii', 'binary' or 'binary_compressed'
    data_start: int            # byte offset of the data in the file

    @property
    def colour(self) -> int | None:
        """Index of the packed colour field, chosen as PointCloud2 decoding does, or None."""
        for name in COLOUR_FIELDS:
            if name in self.fields:
                i = self.fields.index(name)
                if self.counts[i] == 1 and self.dtypes[i].itemsize == 4:
                    return i
        return None

    def record_dtype(self, colour: np.dtype) -> np.dtype:
        """Packed dtype of one point, fields named f0, f1...; the colour field read as `colour`."""
        formats = [colour if i == self.colour else dt if count == 1 else (dt, (count,))
                   for i, (dt, count) in enumerate(zip(self.dtypes, self.counts))]
        return np.dtype({'names': [f'f{i}' for i in range(len(formats))], 'formats': formats})


def read_cloud(path: str | Path) -> Cloud:
    """Cloud from a .pcd, .ply or .npy file; raises CloudFileError naming the path and why."""
    path = Path(path)
    readers = {'.pcd': _read_pcd, '.ply': _read_with_open3d, '.npy': _read_npy}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise CloudFileError(f'{path}: unsupported file type, not one of {SUPPORTED_SUFFIXES}')
    if not path.is_file():
        raise CloudFileError(f'{path}: no such file')
    try:
        return reader(path)
    except (OSError, EOFError, ValueError) as exc:
        raise CloudFileError(f'{path}: {exc}') from exc


def _parse_pcd_header(raw: bytes) -> _PcdHeader:
    """Parse the header of a PCD file held in `raw`; raises ValueError when it is malformed."""
    entries: dict[str, list[str]] = {}
    pos = 0
    while 'DATA' not in entries:
        end = raw.find(b'\n', pos)
        if end < 0:
            raise ValueError('PCD header has no DATA line')
        try:
            line = raw[pos:end].decode('ascii').strip()
        except UnicodeDecodeError:
            raise ValueError('not a PCD file: binary bytes before the DATA line') from None
        pos = end + 1
        if not line or line.startswith('#'):
            continue
        key, *values = line.split()
        if key not in _PCD_KEYS:
            raise ValueError(f'unknown PCD header line {line[:40]!r}')
        entries[key] = values
    try:
        fields, sizes, types = entries['FIELDS'], entries['SIZE'], entries['TYPE']
        counts = [int(c) for c in entries.get('COUNT', ['1'] * len(fields))]
        width = int(entries['WIDTH'][0])
        height = int(entries.get('HEIGHT', ['1'])[0])
        points = int(entries.get('POINTS', [str(width * height)])[0])
        data = entries['DATA'][0]
    except (KeyError, IndexError) as exc:
        raise ValueError(f'PCD header lacks {exc}') from exc
    if not len(fields) == len(sizes) == len(types) == len(counts):
        raise ValueError('PCD header FIELDS, SIZE, TYPE and COUNT differ in length')
    if min(counts, default=0) < 0:
        raise ValueError('PCD header has a negative COUNT')
    if width < 0 or height < 0 or width * height != points:
        raise ValueError(f'PCD header WIDTH {width} x HEIGHT {height} != POINTS {points}')
    if data not in ('ascii', 'binary', 'binary_compressed'):
        raise ValueError(f'unknown PCD DATA type {data!r}')
    dtypes = []
    for name, size, kind in zip(fields, sizes, types):
        if int(size) not in _PCD_SIZES.get(kind, ()):
            raise ValueError(f'PCD field {name!r} has unsupported TYPE {kind} SIZE {size}')
        dtypes.append(np.dtype(f'<{kind.lower()}{size}'))
    duplicated = {name for name in fields if name != '_' and fields.count(name) > 1}
    if duplicated:
        raise ValueError(f'PCD fields {sorted(duplicated)} are duplicated')
    for axis in XYZ:
        if axis not in fields or counts[fields.index(axis)] != 1:
            raise ValueError(f'PCD has no single-valued {axis!r} field')
    return _PcdHeader(fields, dtypes, counts, height, width, data, pos)


def _read_pcd(path: Path) -> Cloud:
    """Cloud from a PCD file; ascii and binary decoded here, binary_compressed by open3d."""
    raw = path.read_bytes()
    header = _parse_pcd_header(raw)
    if header.data == 'binary_compressed':
        return _read_with_open3d(path, header.height, header.width)
    n = header.height * header.width
    if header.data == 'binary':
        # Colour words are read as integers: a float rgb field holds bits, not a number.
        dtype = header.record_dtype(np.dtype('<u4'))
        if len(raw) - header.data_start < n * dtype.itemsize:
            raise ValueError(f'binary data truncated: {len(raw) - header.data_start} bytes for '
                             f'{n} points of {dtype.itemsize} bytes')
        records = np.frombuffer(raw, dtype, count=n, offset=header.data_start)
    else:
        # Colours are parsed as float64 first: writers disagree on how they print them.
        records = np.loadtxt(io.BytesIO(raw[header.data_start:]),
                             dtype=header.record_dtype(np.dtype('<f8')), ndmin=1)
        if len(records) != n:
            raise ValueError(f'ascii data has {len(records)} points, the header says {n}')
    rgb = None
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(header.fields):
        values = records[f'f{i}']
        if i == header.colour:
            rgb = unpack_rgb(values if header.data == 'binary' else _ascii_colour_words(values))
        elif header.counts[i] == 1 and name != '_':  # '_' marks PCL's padding fields
            columns[name] = values
    return _cloud(columns, rgb, header.height, header.width)


def _ascii_colour_words(values: np.ndarray) -> np.ndarray:
    """Packed colour words from an ascii rgb/rgba column.

    PCL prints a float rgb field's bits as an unsigned integer, while older writers printed the
    float itself, which for 0x00RRGGBB bits is below 1e-37: so integral values >= 1 are words
    and everything else is a float bit pattern.
    """
    with np.errstate(over='ignore'):  # absurd values only make absurd colours
        words = values.astype(np.float32).view(np.uint32)
    is_word = (values >= 1) & (values < 2 ** 32) & (values == np.floor(values))
    words[is_word] = values[is_word].astype(np.uint32)
    return words


def _read_with_open3d(path: Path, height: int = 1, width: int | None = None) -> Cloud:
    """Cloud read by open3d's tensor reader, which keeps NaN points and the file's point order.

    Point order and NaN were checked against an independent LZF decoder on mOSD frames.
    Single-valued attributes go to `extra`, and open3d's combined `normals` back to normal_x/y/z.
    """
    import open3d as o3d  # a heavy import, needed only for PLY and compressed PCD

    pcd = o3d.t.io.read_point_cloud(str(path))
    attributes = {name: pcd.point[name].numpy() for name in pcd.point}
    if 'positions' not in attributes:  # open3d only warns when it cannot read a file
        raise ValueError('open3d read no points from it (corrupt or empty file)')
    xyz = attributes.pop('positions')
    if width is None:
        width = len(xyz)
    if height * width != len(xyz):
        raise ValueError(f'open3d read {len(xyz)} points, the header says {height} x {width}')
    rgb = _colours_to_uint8(attributes.pop('colors')) if 'colors' in attributes else None
    columns: dict[str, np.ndarray] = {}
    for name, values in attributes.items():
        if name == 'normals' and values.shape[1] == 3:
            columns.update(zip(('normal_x', 'normal_y', 'normal_z'), values.T))
        elif values.shape[1] == 1:
            columns[name] = values[:, 0]
    columns.update(zip(XYZ, xyz.T))
    return _cloud(columns, rgb, height, width)


def _read_npy(path: Path) -> Cloud:
    """Cloud from an (N, 3|6) or organized (H, W, 3|6) array of xyz [rgb]."""
    array = np.load(path, allow_pickle=False)
    if not (array.ndim in (2, 3) and array.shape[-1] in (3, 6)
            and np.issubdtype(array.dtype, np.number)):
        raise ValueError(f'expected a numeric (N, 3|6) or (H, W, 3|6) array, got '
                         f'{array.dtype} {array.shape}')
    height, width = array.shape[:2] if array.ndim == 3 else (1, len(array))
    flat = array.reshape(-1, array.shape[-1])
    rgb = _colours_to_uint8(flat[:, 3:]) if flat.shape[1] == 6 else None
    return Cloud(flat[:, :3], rgb, height=height, width=width)


def _colours_to_uint8(colours: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 from colours in 0..255, or floats in 0..1; NaN ones become black."""
    if colours.dtype == np.uint8:
        return colours
    values = colours.astype(np.float64)
    values[np.isnan(values)] = 0.0  # exporters fill invalid pixels' colour with NaN too
    if np.issubdtype(colours.dtype, np.floating) and values.size and values.max() <= 1.0:
        values = values * 255.0  # a float image with every channel <= 1 is taken as 0..1
    if values.size and (values.min() < 0.0 or values.max() > 255.0):
        raise ValueError('colours are outside 0..255 (and not 0..1 floats)')
    return np.rint(values).astype(np.uint8)


def _cloud(columns: dict[str, np.ndarray], rgb: np.ndarray | None, height: int,
           width: int) -> Cloud:
    """Cloud from per-field (N,) columns holding x, y, z and extras; extras become own arrays."""
    xyz = np.stack([columns.pop(axis) for axis in XYZ], axis=1)
    extra = {name: np.ascontiguousarray(values) for name, values in columns.items()}
    return Cloud(xyz, rgb, height=height, width=width, extra=extra)
