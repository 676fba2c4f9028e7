"""Run nodes until Ctrl-C or an external shutdown, and exit without a traceback."""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


class StartupError(RuntimeError):
    """A node cannot start (for example its model file is missing); already logged."""


def run(*node_factories: Callable[[], Node], args: list[str] | None = None) -> None:
    """Create the nodes, spin them on one executor, then destroy them and shut rclpy down."""
    loading = True
    interrupted = False

    def on_sigint(_signum: int, _frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        if not loading:
            raise KeyboardInterrupt

    # While the nodes load their models, Ctrl-C must not raise KeyboardInterrupt wherever the
    # interpreter happens to be: inside a finaliser (tokenizer and regex objects are collected
    # then) Python can only print it as an ignored exception, traceback and all. rclpy's own
    # handler, installed by init, shuts the context down at once and then calls this one.
    default_handler = signal.signal(signal.SIGINT, on_sigint)
    rclpy.init(args=args)
    nodes: list[Node] = []
    exit_code = 0
    try:
        for factory in node_factories:
            nodes.append(factory())
        loading = False
        if interrupted:
            raise KeyboardInterrupt
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
        signal.signal(signal.SIGINT, default_handler)
    if exit_code:
        sys.exit(exit_code)
