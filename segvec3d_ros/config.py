"""Plain-data settings, the ground floor every layer reads.

The pipeline's settings, each segmenter's share of them, and the machinery that declares,
validates and loads settings.

Every dataclass field made with `setting` is a parameter with a description and a range: its
metadata may hold `description`, `range` (lo, hi) and `choices`. The ROS nodes build parameter
descriptors from it, and the CLI and tests validate with `field_problem`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def setting(default: Any, description: str, *, range: tuple[float, float] | None = None,
            choices: tuple[str, ...] | None = None, read_only: bool = False) -> Any:
    """Declare a settings field with its description and allowed values.

    read_only fields are fixed at start-up (changing them would mean rebuilding publishers).
    """
    metadata: dict[str, Any] = {'description': description, 'read_only': read_only}
    if range is not None:
        metadata['range'] = range
    if choices is not None:
        metadata['choices'] = choices
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_value(field: dataclasses.Field) -> Any:
    """Return the default of `field`, whether given directly or by a factory."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def field_problem(settings_class: type, name: str, value: Any) -> str | None:
    """Return why `value` is not allowed for field `name`, or None when it is."""
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    if name not in fields:
        return f'unknown parameter {name!r}'
    field = fields[name]
    expected = type(default_value(field))
    numeric_ok = expected is float and isinstance(value, int) and not isinstance(value, bool)
    if not isinstance(value, expected) and not numeric_ok:
        return f'{name} must be {expected.__name__}, got {type(value).__name__}'
    if isinstance(value, bool) and expected is not bool:
        return f'{name} must be {expected.__name__}, got bool'
    bounds = field.metadata.get('range')
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return f'{name}={value} is outside [{bounds[0]}, {bounds[1]}]'
    choices = field.metadata.get('choices')
    if choices is not None and value not in choices:
        return f'{name}={value!r} is not one of {", ".join(choices)}'
    if isinstance(value, list) and not all(isinstance(v, str) and v.strip() for v in value):
        return f'{name} must be a list of non-empty strings'
    return None


def validate(settings: Any) -> None:
    """Raise ValueError naming the first invalid field of a settings dataclass instance."""
    for field in dataclasses.fields(settings):
        problem = field_problem(type(settings), field.name, getattr(settings, field.name))
        if problem:
            raise ValueError(problem)


def settings_from_params_file(path: str | Path, node_name: str, settings_class: type) -> Any:
    """Read settings from a node's `ros__parameters` in a ROS 2 params YAML file, without ROS.

    A section applies when its key names the node in any namespace (`node_name`,
    `/**/node_name`, `/ns/node_name`) or is a wildcard (`/**`); sections apply in file order,
    later values winning. Parameters that are not fields of `settings_class` (another part of
    the node's parameters) are ignored. Raises ValueError naming the file when it cannot be
    read, has no section for the node, or holds an invalid value.
    """
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f'{path}: cannot read the params file: {exc}') from exc
    if not isinstance(document, dict):
        raise ValueError(f'{path}: not a params file (no mapping of node names)')
    sections = [value['ros__parameters'] for key, value in document.items()
                if str(key).rsplit('/', 1)[-1] in (node_name, '*', '**')
                and isinstance(value, dict) and isinstance(value.get('ros__parameters'), dict)]
    if not sections:
        raise ValueError(f'{path}: no ros__parameters section for node {node_name!r}')
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    values = {name: value for section in sections for name, value in section.items()
              if name in fields}
    for name, value in values.items():
        # `max_range: 0` in YAML is an int; the float field means 0.0, so take it as that.
        if isinstance(default_value(fields[name]), float) and type(value) is int:
            values[name] = value = float(value)
        problem = field_problem(settings_class, name, value)
        if problem:
            raise ValueError(f'{path}: {problem}')
    return settings_class(**values)


def dataclass_from_yaml(path: str | Path, settings_class: type, what: str) -> Any:
    """Build `settings_class` from a YAML mapping; unknown keys are an error naming them."""
    values = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(values) - {f.name for f in dataclasses.fields(settings_class)}
    if unknown:
        raise ValueError(f'{path}: unknown {what} settings {sorted(unknown)}')
    return settings_class(**values)


# The label of an instance that no vocabulary word fits.
OTHER = 'other'
# The generator's categories (data.scenes.CATEGORIES) and common tabletop objects it does not
# draw, which an instance of those categories should not be mistaken for.
DEFAULT_VOCABULARY = ['box', 'can', 'bottle', 'bowl', 'mug', 'ball', 'book', 'cup', 'plate',
                      'carton', 'jar', 'toy', 'banana', 'apple', 'keyboard', 'phone']


@dataclass(frozen=True)
class SupportConfig:
    """How every segmenter finds the support surfaces (tables, floor, walls) first."""

    plane_distance: float
    plane_iterations: int
    min_support_fraction: float
    min_support_extent: float
    drop_below_support: bool
    cluster_tolerance: float       # a surface's patches closer than this are one patch


@dataclass(frozen=True)
class EuclideanConfig:
    """The geometric baseline's settings."""

    support: SupportConfig
    cluster_tolerance: float


@dataclass(frozen=True)
class LearnedConfig:
    """The learned segmenter's settings."""

    support: SupportConfig
    model_path: str
    device: str
    voxel_size: float
    cluster_tolerance: float
    embedding_radius: float
    occlusion_gap: float
    claim_openings: bool
    split_touching: bool


@dataclass(frozen=True)
class RangeImageConfig:
    """The range-image (LiDAR) segmenter's settings."""

    up: tuple[float, float, float]   # the cloud frame's up direction, a unit axis
    plane_distance: float            # m: RANSAC band of the ground plane
    plane_iterations: int
    ground_cell: float               # m: grid cell that corrects the plane locally; 0 = none
    ground_band: float               # m above a cell's lowest return that is ground
    angle_threshold: float           # degrees: Bogoslavskyi-Stachniss criterion
    cluster_tolerance: float         # m: the least gap that joins neighbouring returns
    wall_extent: float               # m: upright planar instances this long are support; 0 = off


# The up_axis choices, as unit vectors of the cloud's frame.
UP_AXES = {'z': (0.0, 0.0, 1.0), '-z': (0.0, 0.0, -1.0), 'y': (0.0, 1.0, 0.0),
           '-y': (0.0, -1.0, 0.0), 'x': (1.0, 0.0, 0.0), '-x': (-1.0, 0.0, 0.0)}


@dataclass
class PipelineConfig:
    """Plain-data pipeline settings; every field is also a ROS parameter of the same name."""

    segmenter: str = setting('segvec3d', 'segmenter: segvec3d (learned model), euclidean '
                             '(geometric baseline) or range_image (LiDAR: regions of the '
                             'organized scan\'s range image)',
                             choices=('segvec3d', 'euclidean', 'range_image'))
    device: str = setting('auto', 'torch device of the learned segmenter',
                          choices=('auto', 'cpu', 'cuda'))
    model_path: str = setting('', 'weights of the learned segmenter (.pt or .onnx), a path or '
                              'package:// URL; empty = the bundled models/segvec3d.onnx')
    voxel_size: float = setting(0.01, 'working resolution in m; 0 = no voxel downsampling',
                                range=(0.0, 0.5))
    max_points: int = setting(50000, 'cap on working points after voxelisation (seeded random '
                              'subset; the others take their nearest working label)',
                              range=(100, 5_000_000))
    min_instance_points: int = setting(50, 'instances with fewer input points are dropped',
                                       range=(1, 1_000_000))
    max_instances: int = setting(1000, 'only this many instances, the largest, are kept (each '
                                 'costs a box, a grounding pass and two markers; synthetic rooms '
                                 'have up to ~500, a scattered broken cloud tens of thousands)',
                                 range=(1, 100_000))
    cluster_tolerance: float = setting(0.02, 'Euclidean clustering radius in m (range_image: '
                                       'the least gap that joins neighbouring returns; it '
                                       'grows with their range)', range=(0.001, 1.0))
    embedding_radius: float = setting(0.3, 'learned segmenter: k-NN neighbours closer than '
                                      'this in embedding space join one instance',
                                      range=(0.01, 2.0))
    occlusion_gap: float = setting(0.2, 'learned segmenter: join instances up to this far apart '
                                   'in m when the gap between them is hidden behind a nearer '
                                   'object, seen from the cloud origin (the sensor); 0 = off',
                                   range=(0.0, 1.0))
    claim_openings: bool = setting(True, 'learned segmenter: support points seen through an '
                                   'instance\'s opening (the floor inside a mug or bowl), ringed '
                                   'by it in the view from the cloud origin (the sensor), join it')
    split_touching: bool = setting(True, 'learned segmenter with a grounding head: split an '
                                   'instance where a weak cut of its embeddings meets in a '
                                   'concave junction and the grounding head labels the two '
                                   'parts differently (touching or stacked objects)')
    join_parts: bool = setting(True, 'learned segmenter with a grounding head: join touching '
                               'instances the grounding head finds one object: a part under a '
                               'quarter of its neighbour (a cap, a handle), or two pieces of '
                               'comparable size that meet without a valley')
    plane_distance: float = setting(0.01, 'RANSAC inlier distance of the support surface in m',
                                    range=(0.001, 0.5))
    plane_iterations: int = setting(200, 'RANSAC hypotheses per support surface',
                                    range=(1, 10_000))
    min_support_fraction: float = setting(0.05, 'a plane with fewer inliers (fraction of '
                                          'working points) is not a support surface',
                                          range=(0.01, 1.0))
    min_support_extent: float = setting(0.5, 'a plane whose largest patch spans less than this '
                                        'in m (a book\'s or a box\'s top close to the sensor) '
                                        'is not a support surface; a layer raised inside a '
                                        'surface\'s band that spans this much is the surface '
                                        'bent by depth error, not a thin object on it',
                                        range=(0.0, 100.0))
    drop_below_support: bool = setting(True, 'ignore points on the far side of a support '
                                       'surface from the sensor (cloud in the sensor frame)')
    veil_angle: float = setting(10.0, 'organized depth clouds: degrees; drop the veil points '
                                'strung between a near surface and a far one (mixed and flying '
                                'pixels), whose segment to a pixel 3 away lies within this angle '
                                'of the view ray; 0 = keep them (LiDAR scans: rows are beams)',
                                range=(0.0, 45.0))
    max_range: float = setting(0.0, 'drop points farther than this from the sensor in m '
                               '(0 = keep all)', range=(0.0, 1000.0))
    min_range: float = setting(0.0, 'drop points nearer than this to the sensor in m (a '
                               'LiDAR\'s own vehicle; 0 = keep all)', range=(0.0, 100.0))
    up_axis: str = setting('z', 'range_image: the cloud frame\'s up axis (z in REP 103 body '
                           'and LiDAR frames, -y in a camera optical frame); the ground is '
                           'level and walls upright about it', choices=tuple(UP_AXES))
    ground_cell: float = setting(1.0, 'range_image: m; the ground plane is corrected per cell '
                                 'of this size (slopes, camber, kerbs); 0 = the plane alone',
                                 range=(0.0, 20.0))
    ground_band: float = setting(0.2, 'range_image: m; returns this little above their '
                                 'cell\'s lowest return are ground', range=(0.01, 5.0))
    angle_threshold: float = setting(10.0, 'range_image: degrees; neighbouring returns join '
                                     'when the surface between them makes more than this '
                                     'angle with the farther beam (Bogoslavskyi-Stachniss)',
                                     range=(0.5, 89.0))
    wall_extent: float = setting(10.0, 'range_image: m; upright planar instances at least this '
                                 'long (facades) are support surfaces; 0 = none are',
                                 range=(0.0, 1000.0))
    grounding_model_path: str = setting('', 'grounding head of the learned segmenter (.pt); '
                                        'empty = the bundled models/grounding.pt')
    label_vocabulary: list[str] = setting(DEFAULT_VOCABULARY, 'zero-shot instance labels '
                                          '(learned segmenter with a grounding head)')
    label_threshold: float = setting(0.1, 'an instance whose best label scores below this '
                                     'cosine is labelled other', range=(-1.0, 1.0))

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field and why."""
        validate(self)
        if self.voxel_size > 0 and self.cluster_tolerance <= self.voxel_size:
            raise ValueError(f'cluster_tolerance={self.cluster_tolerance} must exceed '
                             f'voxel_size={self.voxel_size}, or every voxel is its own cluster')
        if 0 < self.max_range <= self.min_range:
            raise ValueError(f'max_range={self.max_range} must exceed '
                             f'min_range={self.min_range}, or no point is kept')

    def support(self) -> SupportConfig:
        """Support-surface settings every segmenter starts with."""
        return SupportConfig(self.plane_distance, self.plane_iterations,
                             self.min_support_fraction, self.min_support_extent,
                             self.drop_below_support, self.cluster_tolerance)

    def euclidean(self) -> EuclideanConfig:
        """Geometric baseline's share of the settings."""
        return EuclideanConfig(self.support(), self.cluster_tolerance)

    def range_image(self) -> RangeImageConfig:
        """Range-image (LiDAR) segmenter's share of the settings."""
        return RangeImageConfig(UP_AXES[self.up_axis], self.plane_distance,
                                self.plane_iterations, self.ground_cell, self.ground_band,
                                self.angle_threshold, self.cluster_tolerance, self.wall_extent)

    def learned(self) -> LearnedConfig:
        """Learned segmenter's share of the settings."""
        return LearnedConfig(self.support(), self.model_path, self.device, self.voxel_size,
                             self.cluster_tolerance, self.embedding_radius, self.occlusion_gap,
                             self.claim_openings, self.split_touching)


def validate_field(name: str, value: Any) -> str | None:
    """Why `value` is invalid for PipelineConfig field `name`, or None when it is valid."""
    return field_problem(PipelineConfig, name, value)
