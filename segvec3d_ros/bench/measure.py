"""Benchmark frames and measurements, each configuration in a process of its own.

A fresh process per configuration keeps one configuration's warm caches and allocator state
out of the next one's timings and memory: `run_isolated` starts
`python -m segvec3d_ros.bench.measure TASK.json`.
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from segvec3d_ros.cloud import Cloud
from segvec3d_ros.grounding.query import QueryEngine
from segvec3d_ros.instances import InstanceInfo
from segvec3d_ros.io.pointcloud2 import decode_pointcloud2, encode_pointcloud2

# Stages in frame order: the node's decode and encode around Pipeline.process's own stages
# (a stage the pipeline reports that is not listed here comes before encode).
STAGES = ('decode', 'filter', 'downsample', 'plane', 'features', 'knn', 'network', 'cluster',
          'split', 'occlusion', 'openings', 'instance normals', 'resolve splits', 'join parts',
          'upsample', 'describe', 'encode')
TOTAL = 'total'
VGA_PIXELS = 640 * 480
BENCH_SENSOR = 'kinect_v1'      # a 640 x 480 camera, so that a full frame is exactly VGA


class BenchError(RuntimeError):
    """A measurement process failed; the message says why."""


def bench_frame(num_points: int, seed: int = 0, num_objects: int | None = None) -> Cloud:
    """Organized tabletop frame of about `num_points` pixels, NaN holes included.

    The scene generator's Kinect v1 at the resolution with that many pixels: the same scene,
    seen by a coarser or finer sensor, rather than a subsample of one frame. `num_objects`
    fixes how many objects stand on the table (default: the generator's random count).
    """
    from segvec3d_ros.data.scenes import SceneConfig, generate_scene  # open3d: a slow import

    config = SceneConfig(sensors=(BENCH_SENSOR,), image_scale=math.sqrt(num_points / VGA_PIXELS))
    if num_objects is not None:
        config.num_objects = (num_objects, num_objects)
    return generate_scene(seed, 'tabletop', config).cloud


def save_frame(cloud: Cloud, path: Path) -> None:
    """Write a cloud, organized or not, with or without colour, for `load_frame`."""
    colour = {} if cloud.rgb is None else {'rgb': cloud.rgb}
    np.savez(path, xyz=cloud.xyz, shape=np.array([cloud.height, cloud.width]), **colour)


def load_frame(path: Path) -> Cloud:
    """Load the cloud `save_frame` wrote."""
    with np.load(path) as data:
        height, width = data['shape']
        return Cloud(data['xyz'], data['rgb'] if 'rgb' in data else None, height=int(height),
                     width=int(width))


def measure_pipeline(cloud: Cloud, config: dict[str, Any], warmup: int,
                     repeats: int) -> dict[str, Any]:
    """Seconds per stage and end to end for `repeats` frames after `warmup` frames.

    End to end is the node's path without DDS: decode the sensor's message, process, encode
    the labeled cloud.
    """
    from segvec3d_ros.config import PipelineConfig
    from segvec3d_ros.pipeline import Pipeline

    pipeline = Pipeline(PipelineConfig(**config))
    message = encode_pointcloud2(cloud.xyz, cloud.rgb, height=cloud.height, width=cloud.width)
    rss_before = _rss_bytes()
    _reset_peak_rss()
    seconds: dict[str, list[float]] = {}
    for run in range(warmup + repeats):
        start = perf_counter()
        decoded = decode_pointcloud2(message)
        decoded_at = perf_counter()
        result = pipeline.process(decoded)
        processed_at = perf_counter()
        encode_pointcloud2(decoded.xyz, decoded.rgb, result.labels, height=decoded.height,
                           width=decoded.width)
        done = perf_counter()
        if run < warmup:
            continue
        timings = dict(result.timings, decode=decoded_at - start, encode=done - processed_at)
        timings[TOTAL] = done - start
        for stage, value in timings.items():
            seconds.setdefault(stage, []).append(value)
    return {'seconds': seconds,
            'num_points': len(cloud), 'height': cloud.height, 'width': cloud.width,
            'num_valid': result.num_valid, 'num_working': result.num_working,
            'num_instances': len(result.instances), 'rss_before': rss_before,
            'peak_rss': _peak_rss_bytes(), 'gpu_peak': _gpu_peak_bytes(config['device'])}


def query_texts(count: int) -> list[str]:
    """`count` distinct queries a user might type (up to 252), nouns varying fastest."""
    words = [(size, colour, noun) for size in ('small', 'large', 'medium')
             for colour in ('red', 'green', 'blue', 'yellow', 'orange', 'purple', 'pink',
                            'white', 'black', 'gray', 'brown', 'beige')
             for noun in ('box', 'can', 'bottle', 'bowl', 'mug', 'ball', 'book')]
    if count > len(words):
        raise ValueError(f'at most {len(words)} distinct queries, {count} asked for')
    return [f'the {size} {colour} {noun}' for size, colour, noun in words[:count]]


def measure_query(engine: QueryEngine, instances: Sequence[InstanceInfo],
                  repeats: int) -> dict[str, list[float]]:
    """Seconds per `engine.query` on one scene: each text's first time, then repeated texts.

    A first time may pay for text embeddings; a repeat finds them cached, and the scene's
    instance features came with the scene, so repeats time what a settled scene costs.
    """
    texts = query_texts(min(repeats, 252))
    timed: dict[str, list[float]] = {'first_time': [], 'cached': []}
    for kind, runs in (('first_time', texts),
                       ('cached', [texts[run % len(texts)] for run in range(repeats)])):
        for text in runs:
            start = perf_counter()
            result = engine.query(text, instances, 5)
            timed[kind].append(perf_counter() - start)
            if not result.success:
                raise BenchError(f'query {text!r} failed: {result.message}')
    return timed


def run_isolated(task: dict[str, Any], folder: Path, timeout: float) -> dict[str, Any]:
    """Run one task (see `main`) in a new Python process and return its result.

    Raises BenchError with the end of the process's error output when it fails.
    """
    folder.mkdir(parents=True, exist_ok=True)
    number = len(list(folder.glob('task*.json')))
    spec, out = folder / f'task{number}.json', folder / f'result{number}.json'
    spec.write_text(json.dumps(dict(task, out=str(out))))
    try:
        done = subprocess.run([sys.executable, '-m', __name__, str(spec)], capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise BenchError(f'no result within {timeout:.0f} s') from error
    if done.returncode != 0 or not out.is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise BenchError(lines[-1] if lines else f'exit code {done.returncode}')
    return json.loads(out.read_text())


def main(argv: Sequence[str]) -> int:
    """Run the task in the JSON file argv[0] and write its result where the task says.

    Tasks: {"kind": "pipeline", "frame": NPZ, "config": PipelineConfig fields, "warmup": W,
    "repeats": R} and {"kind": "query", "frame": NPZ, "config": ..., "repeats": R}, which
    queries the instances the pipeline finds in the frame with the query node's engine.
    """
    task = json.loads(Path(argv[0]).read_text())
    if task['kind'] == 'pipeline':
        result = measure_pipeline(load_frame(Path(task['frame'])), task['config'],
                                  task['warmup'], task['repeats'])
    else:
        from segvec3d_ros.config import PipelineConfig
        from segvec3d_ros.grounding.query import make_query_engine
        from segvec3d_ros.pipeline import Pipeline

        instances = Pipeline(PipelineConfig(**task['config'])).process(
            load_frame(Path(task['frame']))).instances
        engine, status = make_query_engine()
        result = dict(measure_query(engine, instances, task['repeats']),
                      instances=len(instances), engine=status)
    Path(task['out']).write_text(json.dumps(result))
    return 0


def _rss_bytes() -> int:
    """Resident memory of this process now (from /proc; elsewhere its peak so far)."""
    try:
        return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _reset_peak_rss() -> None:
    """Restart the peak from the resident memory now (Linux; elsewhere the peak stays)."""
    try:
        Path('/proc/self/clear_refs').write_text('5')
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process since `_reset_peak_rss`.

    Linux's VmHWM, not ru_maxrss: that one keeps the forking parent's resident memory across
    exec, so a child of a process holding torch would report torch's memory as its own.
    """
    try:
        status = Path('/proc/self/status').read_text()
        return int(status.split('VmHWM:')[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == 'darwin' else peak * 1024   # KiB on Linux


def _gpu_peak_bytes(device: str) -> int | None:
    """Peak CUDA memory of torch's allocator, or None off the GPU (or in onnxruntime's arena)."""
    if device == 'cpu' or 'torch' not in sys.modules:
        return None
    import torch
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
