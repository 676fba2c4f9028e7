"""rosbag2 files (sqlite3 or MCAP) of point clouds read and written with `rosbags`, free of ROS.

Messages stay CDR bytes: readers hand them to rclpy or decode them here on demand, and the writer
takes bytes serialized by whoever built the message, so nothing here builds ROS messages. The
type store is ROS 2 Jazzy's plus segvec3d_msgs, so every connection carries its message
definition and RIHS01 hash, which `ros2 bag play` and Foxglove need.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType

from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.io.pointcloud2 import CloudDecodeError, decode_pointcloud2

POINTCLOUD2 = 'sensor_msgs/msg/PointCloud2'
STORAGES = ('sqlite3', 'mcap')
BAG_VERSION = 9  # the metadata version Jazzy's rosbag2 writes and reads
_MSG_PACKAGE = 'segvec3d_msgs'


class BagError(ValueError):
    """Why a bag could not be read or written; the message names the bag."""


def _msg_dir() -> Path:
    """Folder of the segvec3d_msgs .msg files: the source tree's, else an installed package's."""
    candidates = [Path(__file__).resolve().parents[2] / _MSG_PACKAGE / 'msg']
    candidates += [Path(prefix) / 'share' / _MSG_PACKAGE / 'msg'
                   for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)
                   if prefix]
    for candidate in candidates:
        if any(candidate.glob('*.msg')):
            return candidate
    raise BagError(f'cannot find the {_MSG_PACKAGE} .msg files in {[str(c) for c in candidates]}')


@lru_cache(maxsize=1)
def typestore() -> Typestore:
    """ROS 2 Jazzy's message types plus segvec3d_msgs, for (de)serializing and msgdefs."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for path in sorted(_msg_dir().glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'{_MSG_PACKAGE}/msg/{path.stem}'))
    store.register(types)
    return store


def is_bag(path: str | Path) -> bool:
    """Whether `path` looks like a rosbag2: a folder with metadata.yaml, or a .db3/.mcap file."""
    path = Path(path)
    return (path / 'metadata.yaml').is_file() or path.suffix in ('.db3', '.mcap')


@dataclass(frozen=True)
class BagMessage:
    """One recorded message: its topic, receive time in ns and CDR bytes."""

    topic: str
    timestamp: int
    raw: bytes
    msgtype: str = POINTCLOUD2

    def cloud(self, max_points: int | None = None) -> Cloud:
        """Decode the cloud; raises CloudDecodeError when the bytes are no usable cloud."""
        try:
            msg = typestore().deserialize_cdr(self.raw, self.msgtype)
        except Exception as exc:  # noqa: BLE001 - rosbags raises assorted errors on bad CDR
            raise CloudDecodeError(f'cannot deserialize the CDR message: {exc}') from exc
        return decode_pointcloud2(msg, max_points)


def iter_bag_clouds(path: str | Path, topic: str | None = None) -> Iterator[BagMessage]:
    """Yield the PointCloud2 messages of `topic` in time order.

    With `topic` None the bag must have exactly one PointCloud2 topic. Raises BagError naming
    the bag for an unreadable bag or an unknown or ambiguous topic.
    """
    try:
        with Reader(path) as reader:
            clouds = sorted({c.topic for c in reader.connections if c.msgtype == POINTCLOUD2})
            if topic is None and len(clouds) != 1:
                raise BagError(f'{path}: {len(clouds)} PointCloud2 topics {clouds}; '
                               f'choose one with --topic')
            wanted = clouds[0] if topic is None else topic
            connections = [c for c in reader.connections
                           if c.topic == wanted and c.msgtype == POINTCLOUD2]
            if not connections:
                raise BagError(f'{path}: no PointCloud2 topic {wanted!r}; '
                               f'its PointCloud2 topics are {clouds}')
            for connection, timestamp, raw in reader.messages(connections):
                yield BagMessage(connection.topic, timestamp, bytes(raw))
    except (ReaderError, OSError) as exc:
        raise BagError(f'{path}: not a readable rosbag2 ({exc})') from exc


class BagWriter:
    """A new rosbag2 of CDR messages; a context manager, one connection per topic.

    Write on a closed or failed writer is an error; leaving the context with an exception
    still closes the bag, so what was written stays readable.
    """

    def __init__(self, path: str | Path, storage: str = 'sqlite3') -> None:
        """Create the bag folder `path` (it must not exist) with sqlite3 or mcap storage."""
        if storage not in STORAGES:
            raise BagError(f'{path}: storage {storage!r} is not one of {STORAGES}')
        self.path = Path(path)
        try:
            self._writer = Writer(self.path, version=BAG_VERSION,
                                  storage_plugin=StoragePlugin[storage.upper()])
        except WriterError as exc:
            raise BagError(str(exc)) from exc
        self._connections: dict[str, Connection] = {}

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._writer.close()

    def write(self, topic: str, msgtype: str, timestamp: int, raw: bytes) -> None:
        """Append CDR bytes of `msgtype` (e.g. 'sensor_msgs/msg/PointCloud2') on `topic`."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise BagError(f'{self.path}: topic {topic} has type {connection.msgtype}, '
                           f'not {msgtype}')
        self._writer.write(connection, timestamp, raw)
