"""Run nodes until Ctrl-C or an external shutdown, and exit without a traceback."""
from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


class StartupError(RuntimeError):
    """A node cannot start (for example its model file is missing); already logged."""


def run(*node_factories: Callable[[], Node], args: list[str] | None = None) -> None:
    """Create the nodes, spin them on one executor, then destroy them and shut rclpy down."""
    rclpy.init(args=args)
    nodes: list[Node] = []
    exit_code = 0
    try:
        for factory in node_factories:
            nodes.append(factory())
        # One thread: rclpy's MultiThreadedExecutor spends most of a core rebuilding wait sets
        # and polling futures, which starved segmentation to a third of its rate at 30 Hz input
        # and overflowed the sensor-data queue. Segmentation has its own worker thread anyway.
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError:
        exit_code = 1
    except Exception:
        # Ctrl-C or SIGTERM while a node was still starting (loading a model takes seconds)
        # shuts the context down under it, and its next call fails: that is a clean stop.
        if rclpy.ok():
            raise
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    if exit_code:
        sys.exit(exit_code)
