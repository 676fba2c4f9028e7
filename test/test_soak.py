"""Soak/load: 20k-point frames at 30 Hz through segvec3d-up for a fixed time, queries at 2 Hz.

CI runs it briefly; `pytest test/test_soak.py --soak-seconds 300` runs the long version and writes
its figures into docs/RELIABILITY.md.
"""
from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from ros_harness import make_header, wait_for
from scenes import REPO, tabletop_points
from segvec3d_ros.ros.dds import isolate_dds

isolate_dds()

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from segvec3d_msgs.msg import InstanceArray  # noqa: E402
from segvec3d_ros.io.pointcloud2 import encode_pointcloud2  # noqa: E402
from segvec3d_ros.ros.conversions import pointcloud2_msg  # noqa: E402

pytestmark = pytest.mark.ros
CI_SECONDS = 15.0
FRAME_HZ = 30.0
QUERY_HZ = 2.0
POINTS = 20_000
WARM_UP_S = 5.0        # start-up allocations settle; memory growth is counted after this
REPORT = REPO / 'docs' / 'RELIABILITY.md'
BEGIN, END = '<!-- soak figures: begin -->', '<!-- soak figures: end -->'
MiB = 2**20


def frames(count: int = 4) -> list:
    """Encoded 20k-point tabletops with 3 boxes, to cycle through."""
    bodies = []
    for seed in range(count):
        xyz, rgb, _ = tabletop_points(seed)
        keep = np.random.default_rng(seed).choice(len(xyz), POINTS, replace=False)
        bodies.append(encode_pointcloud2(xyz[keep], rgb[keep]))
    return bodies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def percentiles(values: list[float]) -> tuple[float, float]:
    """Median and 95th percentile, in ms, of values in seconds."""
    return float(np.median(values)) * 1e3, float(np.percentile(values, 95)) * 1e3


def test_soak_frames_at_sensor_rate_with_queries(system, soak_seconds: float | None) -> None:
    duration = soak_seconds or CI_SECONDS
    bodies = frames()
    sent_at: dict[tuple[int, int], float] = {}
    answered_at: dict[tuple[int, int], float] = {}
    system.node.create_subscription(
        InstanceArray, 'segvec3d/instances',
        lambda m: answered_at.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                         time.monotonic()),
        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    stop = threading.Event()

    def stream() -> None:
        due = time.monotonic()
        while not stop.is_set():
            header = make_header()
            sent_at[(header.stamp.sec, header.stamp.nanosec)] = time.monotonic()
            system.points_pub.publish(pointcloud2_msg(header, bodies[len(sent_at) % len(bodies)]))
            due += 1.0 / FRAME_HZ
            stop.wait(max(0.0, due - time.monotonic()))

    query_latency: list[float] = []
    failed_queries: list[str] = []

    def ask() -> None:
        texts = ['the red box', 'a small object', 'the blue thing', 'something green']
        due = time.monotonic()
        while not stop.is_set():
            start = time.monotonic()
            response = system.ask(texts[len(query_latency) % len(texts)], top_k=3)
            query_latency.append(time.monotonic() - start)
            if not response.success:
                failed_queries.append(response.message)
            due += 1.0 / QUERY_HZ
            stop.wait(max(0.0, due - time.monotonic()))

    # The node counts the frames lost on the way from the publisher's sequence numbers, which
    # it can only while one publisher sends; a writer of an earlier test module may still be
    # known to discovery for a while.
    topic = system.points_pub.topic_name
    assert wait_for(lambda: system.node.count_publishers(topic) == 1, timeout=30.0), \
        system.node.get_publishers_info_by_topic(topic)
    before = wait_for(lambda: system.pipeline_status(), timeout=10.0)
    cpu_before, start = cpu_seconds(system.process.pid), time.monotonic()
    memory: list[tuple[float, int, int]] = []  # (s since start, VmRSS, RssAnon)
    workers = [threading.Thread(target=stream, daemon=True)]
    workers[0].start()
    # Queries start once there is a scene to answer from.
    assert wait_for(lambda: answered_at, timeout=30.0), system.output_text[-3000:]
    workers.append(threading.Thread(target=ask, daemon=True))
    workers[1].start()
    while time.monotonic() - start < duration:
        memory.append((time.monotonic() - start, system.memory_bytes('VmRSS'),
                       system.memory_bytes('RssAnon')))
        assert system.process.poll() is None, system.output_text[-3000:]
        time.sleep(1.0)
    stop.set()
    for worker in workers:
        worker.join(timeout=30.0)
    elapsed = time.monotonic() - start
    cpu = cpu_seconds(system.process.pid) - cpu_before
    reports = len(system.received['/diagnostics'])
    assert wait_for(lambda: len(system.received['/diagnostics']) >= reports + 2, timeout=10.0)
    after = system.pipeline_status()
    delta = {key: int(after[key]) - int(before[key]) for key in after if key.startswith('frames_')}

    latency = [answered_at[key] - sent_at[key] for key in answered_at if key in sent_at]
    assert latency and query_latency, system.output_text[-3000:]
    settled = [(rss, anon) for t, rss, anon in memory if t >= WARM_UP_S]
    rss_growth = settled[-1][0] - settled[0][0]
    heap_growth = settled[-1][1] - settled[0][1]
    # A leak keeps growing; allocator and DDS pools settle, so the second half tells them apart.
    heap_growth_second_half = settled[-1][1] - settled[len(settled) // 2][1]
    figures = {
        'segmenter': after['segmenter'], 'duration_s': elapsed, 'frames_sent': len(sent_at),
        **delta,
        'frames_answered': len(latency),
        'lost_before_node': len(sent_at) - delta['frames_received'],
        'latency_ms': percentiles(latency), 'node_latency_ms': (
            float(after['latency_median_ms']), float(after['latency_p95_ms'])),
        'queries': len(query_latency), 'queries_failed': len(failed_queries),
        'query_latency_ms': percentiles(query_latency), 'node_cpu_percent': 100 * cpu / elapsed,
        'rss_mib': (memory[0][1] / MiB, max(m[1] for m in memory) / MiB, memory[-1][1] / MiB),
        'rss_growth_mib': rss_growth / MiB, 'heap_growth_mib': heap_growth / MiB,
        'heap_growth_second_half_mib': heap_growth_second_half / MiB,
        'load_average': os.getloadavg(),
    }
    print('soak:', figures)

    assert delta['frames_failed'] == 0 and delta['frames_rejected'] == 0
    # Every frame the node took was segmented or dropped as stale (and counted); the outputs of
    # every segmented one reached the client.
    assert delta['frames_received'] == delta['frames_processed'] + delta['frames_dropped']
    assert len(latency) == delta['frames_processed'] > 0
    # Frames the 5-deep sensor-data queue overflowed on are counted by the node as missed.
    assert figures['lost_before_node'] == delta['frames_missed'] < 0.1 * len(sent_at)
    assert not failed_queries, failed_queries[:5]
    assert len(query_latency) >= QUERY_HZ * (duration - WARM_UP_S) / 2
    # A leak of even one 20k-point frame per second would add ~20 MiB a minute.
    assert heap_growth < 16 * MiB + 4 * MiB * duration / 60, memory
    if soak_seconds:
        write_report(figures, soak_seconds)


def write_report(figures: dict, soak_seconds: float) -> None:
    """Put the long run's figures between the markers of docs/RELIABILITY.md."""
    text = REPORT.read_text()
    assert BEGIN in text and END in text, f'{REPORT} lacks the {BEGIN} / {END} markers'
    f = figures
    rows = [
        ('Duration', f'{f["duration_s"]:.0f} s of 20k-point frames at {FRAME_HZ:.0f} Hz, '
                     f'queries at {QUERY_HZ:.0f} Hz'),
        ('Segmenter (config/segvec3d.yaml)', f['segmenter']),
        ('Frames sent / received by the node', f'{f["frames_sent"]} / {f["frames_received"]}'),
        ('Segmented (all outputs at the client) / dropped as stale (counted)',
         f'{f["frames_processed"]} / {f["frames_dropped"]}'),
        ('Rejected / failed', f'{f["frames_rejected"]} / {f["frames_failed"]}'),
        ('Node crashes (checked every second)', '0'),
        ('Missed before the node (full subscription queue; counted)',
         f'{f["frames_missed"]} ({100 * f["frames_missed"] / f["frames_sent"]:.1f} %)'),
        ('Latency publish -> instances at the client, median / p95',
         '{:.0f} / {:.0f} ms'.format(*f['latency_ms'])),
        ('Node latency (arrival -> published, last 5 s), median / p95',
         '{:.0f} / {:.0f} ms'.format(*f['node_latency_ms'])),
        ('Queries answered / failed', f'{f["queries"]} / {f["queries_failed"]}'),
        ('Query latency under load, median / p95',
         '{:.0f} / {:.0f} ms'.format(*f['query_latency_ms'])),
        ('Node RSS first / peak / last', '{:.0f} / {:.0f} / {:.0f} MiB'.format(*f['rss_mib'])),
        (f'Growth after {WARM_UP_S:.0f} s warm-up: RSS / heap (RssAnon)',
         f'{f["rss_growth_mib"]:+.1f} / {f["heap_growth_mib"]:+.1f} MiB'),
        ('Heap growth in the second half of the run',
         f'{f["heap_growth_second_half_mib"]:+.1f} MiB'),
        ('Node CPU', f'{f["node_cpu_percent"]:.0f} % of one core'),
        ('Machine load average (1, 5, 15 min) at the end',
         ', '.join(f'{load:.1f}' for load in f['load_average'])),
    ]
    table = '\n'.join(['| Figure | Value |', '|---|---|',
                       *(f'| {name} | {value} |' for name, value in rows)])
    command = (f'. scripts/env.sh && python -m pytest -q -s test/test_soak.py '
               f'--soak-seconds {soak_seconds:g}')
    measured = (f'Measured {time.strftime("%Y-%m-%d")} on {os.cpu_count()} cores '
                f'(Python {sys.version.split()[0]}) with:\n\n    {command}\n')
    section = f'{BEGIN}\n{measured}\n{table}\n{END}'
    REPORT.write_text(re.sub(re.escape(BEGIN) + '.*?' + re.escape(END), lambda _: section, text,
                             flags=re.S))
