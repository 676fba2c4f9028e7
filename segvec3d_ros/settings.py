"""Plain-data settings: every dataclass field is a parameter with a description and a range.

A field's metadata may hold `description`, `range` (lo, hi) and `choices`. The ROS nodes build
parameter descriptors from it, and the CLI and tests validate with `field_problem`.
"""
from __future__ import annotations

import dataclasses
from typing import Any


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
