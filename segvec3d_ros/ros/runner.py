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


class _Interrupts:
    """SIGINT handler that stops the spin once and ignores every later signal.

    While the nodes load their models, Ctrl-C must not raise KeyboardInterrupt wherever the
    interpreter happens to be: inside a finaliser (tokenizer and regex objects are collected
    then) Python can only print it as an ignored exception, traceback and all. Once shutdown
    has begun, a second Ctrl-C, or systemd's SIGINT to the whole process group, must not raise
    inside destroy_node() either. rclpy's own handler, installed by init, shuts the context
    down at once and then calls this one.
    """

    def __init__(self) -> None:
        self.received = False
        self.spinning = False

    def __call__(self, _signum: int, _frame: object) -> None:
        self.received = True
        if self.spinning:
            self.spinning = False
            raise KeyboardInterrupt


def run(*node_factories: Callable[[], Node], args: list[str] | None = None) -> None:
    """Create the nodes, spin them on one executor, then destroy them and shut rclpy down."""
    interrupts = _Interrupts()
    signal.signal(signal.SIGINT, interrupts)
    rclpy.init(args=args)
    nodes: list[Node] = []
    exit_code = 0
    try:
        for factory in node_factories:
            nodes.append(factory())
        if interrupts.received:
            raise KeyboardInterrupt
        # One thread: rclpy's MultiThreadedExecutor spends most of a core rebuilding wait sets
        # and polling futures, which starved segmentation to a third of its rate at 30 Hz input
        # and overflowed the sensor-data queue. Segmentation has its own worker thread anyway.
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        interrupts.spinning = True
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
        interrupts.spinning = False
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    # The handler stays: a signal between here and the interpreter's exit is part of the same
    # shutdown, and Python's default handler would print it as a traceback.
    if exit_code:
        sys.exit(exit_code)
