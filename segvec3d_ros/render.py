"""PNG pictures of segmented clouds, instances in their display colours (ROS-free, Agg).

Organized clouds are drawn pixel for pixel. Unorganized ones are projected: through a pinhole
when they look like a camera's optical frame (z forward), otherwise seen from above (z up);
where several points fall on one pixel the nearest one (or the highest, from above) is drawn.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.colors import instance_color, instance_colors
from segvec3d_ros.instances import InstanceInfo

UNLABELLED_DIM = 0.4       # own colour kept for context, but dark enough for instances to pop
FADED = 0.35               # with a highlight, the other instances keep this much of their colour
MAX_SIDE = 800             # pixels of a projected image's longer side
MAX_LEGEND = 20
# A camera sees (nearly) everything in front of it, within about +-63 degrees of its axis.
FORWARD_FRACTION = 0.9
MAX_SLOPE = 2.0


def point_colours(cloud: Cloud, labels: np.ndarray, highlight: int | None = None) -> np.ndarray:
    """(N, 3) uint8: instances in their id colours, others darkened (or gray), invalid black.

    With `highlight` the other instances are faded, so the highlighted one stands out.
    """
    labels = np.asarray(labels).reshape(-1)
    colours = instance_colors(labels)
    unlabelled = labels == 0
    if cloud.rgb is not None:
        colours[unlabelled] = cloud.rgb[unlabelled] * UNLABELLED_DIM
    if highlight is not None:
        others = ~unlabelled & (labels != highlight)
        colours[others] = colours[others] * FADED
    colours[~cloud.valid] = 0
    return colours


def scene_image(cloud: Cloud, labels: np.ndarray, highlight: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 picture of the cloud coloured by `point_colours`.

    An organized cloud in front of an optical frame is its own image; any other cloud is
    projected, so a spinning LiDAR's scan, whose rows drivers publish staggered in azimuth, is
    drawn from above.
    """
    colours = point_colours(cloud, labels, highlight)
    valid = cloud.valid
    xyz = cloud.xyz[valid].astype(np.float64)
    if cloud.is_organized and looks_forward(xyz):
        return colours.reshape(cloud.height, cloud.width, 3)
    return _projected(xyz, colours[valid])


def looks_forward(xyz: np.ndarray) -> bool:
    """Whether (N, 3) points lie in front of an optical frame's origin (z forward)."""
    x, y, z = xyz.T
    in_view = (z > 0) & (np.abs(x) < MAX_SLOPE * z) & (np.abs(y) < MAX_SLOPE * z)
    return len(xyz) > 0 and in_view.mean() >= FORWARD_FRACTION


def _projected(xyz: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Pinhole (z forward) or top-view image of finite points, the nearest point per pixel."""
    if len(xyz) == 0:
        return np.zeros((MAX_SIDE * 3 // 4, MAX_SIDE, 3), np.uint8)
    forward = looks_forward(xyz)
    if forward:
        front = xyz[:, 2] > 0
        xyz, colours = xyz[front], colours[front]
        u, v, depth = xyz[:, 0] / xyz[:, 2], xyz[:, 1] / xyz[:, 2], xyz[:, 2]  # x right, y down
    else:
        u, v, depth = xyz[:, 0], -xyz[:, 1], -xyz[:, 2]  # from above: x right, y up
    # A camera's field of view bounds its points; from above, a few stray far points would
    # shrink the scene to a dot, so the view leaves out the outer 0.5 % on each side.
    clip = 0.0 if forward else 0.5
    lo, hi = np.percentile(np.column_stack([u, v]), [clip, 100.0 - clip], axis=0)
    span = np.maximum(hi - lo, 1e-9)
    # About one point per pixel over the bounds, so sparse clouds do not dissolve into dots.
    scale = min(np.sqrt(len(xyz) / (span[0] * span[1])), (MAX_SIDE - 1) / span.max())
    width, height = (np.ceil(span * scale).astype(int) + 1).tolist()
    col = np.floor((u - lo[0]) * scale)
    row = np.floor((v - lo[1]) * scale)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    pixel = row[inside].astype(np.int64) * width + col[inside].astype(np.int64)
    order = np.lexsort((depth[inside], pixel))
    first = np.r_[True, pixel[order][1:] != pixel[order][:-1]]
    image = np.zeros((height * width, 3), np.uint8)
    image[pixel[order][first]] = colours[inside][order[first]]
    return image.reshape(height, width, 3)


def save_png(path: str | Path, image: np.ndarray, instances: Sequence[InstanceInfo],
             highlight: int | None = None, title: str = '') -> None:
    """Write `image` with a legend of instance ids, labels and sizes to a PNG file."""
    height, width = image.shape[:2]
    fig = Figure(figsize=(8.0, max(8.0 * height / width, 2.0)), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation='nearest')
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    handles = [Patch(facecolor=instance_color(info.id),
                     label=(f'{info.id}: {info.label or "-"} ({info.num_points} pts)'
                            + ('  <- best match' if info.id == highlight else '')))
               for info in instances[:MAX_LEGEND]]
    if len(instances) > MAX_LEGEND:
        handles.append(Patch(color='none', label=f'... {len(instances) - MAX_LEGEND} more'))
    if handles:
        ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.01, 1.0),
                  fontsize=8, frameon=False, title='instances')
    fig.savefig(path, bbox_inches='tight', facecolor='white')


def render_instances(path: str | Path, cloud: Cloud, labels: np.ndarray,
                     instances: Sequence[InstanceInfo], highlight: int | None = None,
                     title: str = '') -> None:
    """PNG of the cloud coloured by instance, with a legend; `highlight` marks one instance."""
    save_png(path, scene_image(cloud, labels, highlight), instances, highlight, title)
