"""Plain-data settings: every dataclass field is a parameter with a description and a range.

A field's metadata may hold `description`, `range` (lo, hi) and `choices`. The ROS nodes build
parameter descriptors from it, and the CLI and tests validate with `field_problem`.
"""
from __future__ import annotations

import dataclasses
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
    """The field's default, whether given directly or by a factory."""
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
    """Settings from a node's `ros__parameters` in a ROS 2 params YAML file, without ROS.

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
