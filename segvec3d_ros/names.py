"""Names that the package, the nodes, the command line and the launch file share.

The bundled model files, the node names and the topic and service names.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = 'segvec3d_ros'
BUNDLED_MODEL = 'segvec3d.onnx'
BUNDLED_GROUNDING = 'grounding.pt'

SEGMENTATION_NODE = 'segvec3d_segmentation'
QUERY_NODE = 'segvec3d_query'
PLAY_NODE = 'segvec3d_play'

POINTS_TOPIC = 'points'
LABELED_POINTS_TOPIC = 'segvec3d/labeled_points'
INSTANCES_TOPIC = 'segvec3d/instances'
MARKERS_TOPIC = 'segvec3d/markers'
INSTANCE_MASK_TOPIC = 'segvec3d/instance_mask'
DIAGNOSTICS_TOPIC = '/diagnostics'
QUERY_SERVICE = 'segvec3d/query'
CLICKED_POINT_TOPIC = 'clicked_point'          # what RViz's Publish Point tool sends
SELECTED_POINTS_TOPIC = 'segvec3d/selected_points'
SELECTED_TOPIC = 'segvec3d/selected'
SEGMENT_AT_SERVICE = 'segvec3d/segment_at'


def bundled_path(name: str, under: str = 'models') -> Path:
    """UNDER/NAME of the source tree, else of the installed package's share folder."""
    source_tree = Path(__file__).resolve().parents[1] / under / name
    if source_tree.exists():
        return source_tree
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE)) / under / name
    except (ImportError, LookupError):
        return source_tree


PACKAGE_URL = 'package://'


def resolve_path(path: str | Path) -> Path:
    """File of `path`, where package://PKG/REL names REL in PKG's share folder (as in ROS).

    This package's own files resolve in the source tree first, like `bundled_path`; a
    package that cannot be found leaves the path as given, which then names no file.
    """
    text = str(path)
    if not text.startswith(PACKAGE_URL):
        return Path(path)
    package, _, relative = text[len(PACKAGE_URL):].partition('/')
    if package == PACKAGE:
        return bundled_path(relative, under='')
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(package)) / relative
    except (ImportError, LookupError):
        return Path(path)


def bundled_model_path() -> Path:
    """Bundled segmentation network, models/segvec3d.onnx."""
    return bundled_path(BUNDLED_MODEL)


def bundled_grounding_path() -> Path:
    """Bundled grounding head, models/grounding.pt."""
    return bundled_path(BUNDLED_GROUNDING)
