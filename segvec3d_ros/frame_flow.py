"""Latest-frame-only hand-off, frame statistics, missed-frame counting and silent-input detection.

ROS-free; the segmentation node uses them.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar('T')


class LatestSlot(Generic[T]):
    """Holds only the newest item: a put over an untaken item replaces it and counts a drop.

    This is why the node never builds a backlog: a slow frame makes the node skip stale input
    instead of queueing it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: tuple[T, float] | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        """Offer an item, stamped with its arrival time (monotonic seconds)."""
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = (item, time.monotonic())
            self._condition.notify()

    def take(self, timeout: float | None = None) -> tuple[T, float] | None:
        """Wait for the newest item and its arrival time; None on timeout or after close()."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return None if self._closed else item

    def close(self) -> None:
        """Wake every waiting taker; later takes return None."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class SequenceGaps:
    """Counts the messages a publisher sent that never arrived, from its sequence numbers.

    Best-effort DDS drops silently when the subscription queue overflows or a packet is lost;
    the publisher numbers its messages 1, 2, 3..., so a jump is the number missed. Numbers of
    several publishers interleave and cannot be told apart, so those are not counted.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self.missed = 0

    def observe(self, sequence: int | None, single_publisher: bool) -> None:
        """Note one arrival; `sequence` is None where the middleware does not number them."""
        if sequence is None or not single_publisher:
            self._last = None
            return
        if self._last is not None and sequence > self._last:
            self.missed += sequence - self._last - 1
        self._last = sequence  # a lower number: a restarted publisher, counted afresh


class SilentInput:
    """Notices a matched publisher whose clouds never arrive.

    A publisher can match the subscription while its messages are lost on the way: with Fast
    DDS's defaults a camera-sized best-effort cloud does not fit the shared-memory segment and
    is dropped without a word on either side.
    """

    def __init__(self) -> None:
        self._heard_since: float | None = None

    def silence(self, publishers: int, last_arrival: float | None, now: float) -> float:
        """Seconds since a cloud, or since the publishers matched, whichever is later.

        0 when no publisher is matched. Times are monotonic seconds.
        """
        if publishers == 0:
            self._heard_since = None
            return 0.0
        if self._heard_since is None:
            self._heard_since = now
        if last_arrival is not None:
            self._heard_since = max(self._heard_since, last_arrival)
        return now - self._heard_since


@dataclass
class FrameReport:
    """Counts since start and rates/latencies over the recent window."""

    received: int
    processed: int
    dropped: int
    rejected: int
    failed: int
    input_rate_hz: float
    processed_rate_hz: float
    latency_median_ms: float
    latency_p95_ms: float
    last_problem: str
    limited: int
    last_limits: tuple[str, ...]


class FrameStats:
    """Thread-safe counters and a sliding window of arrival times and processing latencies."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._window_s = window_s
        self._arrivals: deque[float] = deque()
        self._done: deque[tuple[float, float]] = deque()  # (finish time, latency s)
        self.received = self.processed = self.rejected = self.failed = 0
        self.last_problem = ''
        self.last_arrival: float | None = None
        self.limited = 0
        self.last_limits: tuple[str, ...] = ()

    def _trim(self, now: float) -> None:
        while self._arrivals and now - self._arrivals[0] > self._window_s:
            self._arrivals.popleft()
        while self._done and now - self._done[0][0] > self._window_s:
            self._done.popleft()

    def on_received(self) -> None:
        """Count an arriving frame."""
        with self._lock:
            now = time.monotonic()
            self.received += 1
            self.last_arrival = now
            self._arrivals.append(now)
            self._trim(now)

    def on_processed(self, arrived_at: float) -> None:
        """Count a frame whose outputs are all published; latency runs from its arrival."""
        with self._lock:
            now = time.monotonic()
            self.processed += 1
            self._done.append((now, now - arrived_at))
            self._trim(now)

    def on_limited(self, limits: list[str]) -> None:
        """Count a frame whose result a cap changed (`SceneResult.limits_hit`)."""
        with self._lock:
            self.limited += 1
            self.last_limits = tuple(limits)

    def on_rejected(self, reason: str) -> None:
        """Count a frame refused as bad input."""
        with self._lock:
            self.rejected += 1
            self.last_problem = reason

    def on_failed(self, reason: str) -> None:
        """Count a frame whose processing raised an unexpected error."""
        with self._lock:
            self.failed += 1
            self.last_problem = reason

    def report(self, dropped: int) -> FrameReport:
        """Snapshot of the counters; `dropped` comes from the LatestSlot."""
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            latencies = np.array([lat for _, lat in self._done]) * 1e3
            return FrameReport(
                received=self.received, processed=self.processed, dropped=dropped,
                rejected=self.rejected, failed=self.failed,
                input_rate_hz=_rate(list(self._arrivals)),
                processed_rate_hz=_rate([t for t, _ in self._done]),
                latency_median_ms=float(np.median(latencies)) if latencies.size else 0.0,
                latency_p95_ms=float(np.percentile(latencies, 95)) if latencies.size else 0.0,
                last_problem=self.last_problem, limited=self.limited,
                last_limits=self.last_limits)


def _rate(times: list[float]) -> float:
    """Events per second from their timestamps (needs at least two)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])
