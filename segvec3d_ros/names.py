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


def bundled_path(name: str) -> Path:
    """models/NAME of the source tree, else of the installed package's share folder."""
    source_tree = Path(__file__).resolve().parents[1] / 'models' / name
    if source_tree.is_file():
        return source_tree
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE)) / 'models' / name
    except (ImportError, LookupError):
        return source_tree


def bundled_model_path() -> Path:
    """Bundled segmentation network, models/segvec3d.onnx."""
    return bundled_path(BUNDLED_MODEL)


def bundled_grounding_path() -> Path:
    """Bundled grounding head, models/grounding.pt."""
    return bundled_path(BUNDLED_GROUNDING)
