"""Declare ROS parameters from settings dataclasses and validate changes against them."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter

from segvec3d_ros.config import default_value, field_problem


def _descriptor(field: dataclasses.Field) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=field.name,
                                     description=field.metadata.get('description', ''),
                                     read_only=field.metadata.get('read_only', False))
    bounds = field.metadata.get('range')
    default = default_value(field)
    if bounds is not None and isinstance(default, float):
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(bounds[0]), to_value=float(bounds[1]))]
    elif bounds is not None and isinstance(default, int):
        descriptor.integer_range = [
            IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]))]
    choices = field.metadata.get('choices')
    if choices is not None:
        descriptor.additional_constraints = 'one of: ' + ', '.join(choices)
    return descriptor


def declare_settings(node: Node, settings_class: type) -> None:
    """Declare one parameter per field of `settings_class`, with its default and descriptor."""
    for field in dataclasses.fields(settings_class):
        default = default_value(field)
        if isinstance(default, list) and not default:
            # An empty list has no element type; declare the type explicitly.
            node.declare_parameter(field.name, Parameter.Type.STRING_ARRAY, _descriptor(field))
        else:
            node.declare_parameter(field.name, default, _descriptor(field))


def read_settings(node: Node, settings_class: type, overrides: Sequence[Parameter] = ()) -> Any:
    """Build a settings instance from the node's parameters, with pending changes applied."""
    pending = {p.name: p.value for p in overrides}
    values = {}
    for field in dataclasses.fields(settings_class):
        value = pending.get(field.name, node.get_parameter(field.name).value)
        if isinstance(default_value(field), list):
            value = list(value or [])
        values[field.name] = value
    return settings_class(**values)


def check_parameters(parameters: Sequence[Parameter],
                     settings_classes: Sequence[type]) -> SetParametersResult:
    """Reject the whole change, with the reason, if any value breaks its field's constraints."""
    for parameter in parameters:
        owner = next((c for c in settings_classes
                      if parameter.name in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None:
            continue  # use_sim_time and other parameters declared by rclpy itself
        value = parameter.value
        if parameter.type_ == Parameter.Type.STRING_ARRAY:
            value = list(value)
        problem = field_problem(owner, parameter.name, value)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
    return SetParametersResult(successful=True)
