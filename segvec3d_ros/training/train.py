"""`segvec3d train CONFIG`: the pull-push training of SegVec3D on synthetic depth scenes."""
from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from segvec3d_ros.config import dataclass_from_yaml
from segvec3d_ros.data.scenes import SceneConfig
from segvec3d_ros.model.export import export_onnx
from segvec3d_ros.model.features import input_features
from segvec3d_ros.model.knn import knn_graph
from segvec3d_ros.model.loss import PullPushLoss
from segvec3d_ros.model.segvec3d import SegVec3D, SegVec3DConfig, load_checkpoint, save_checkpoint
from segvec3d_ros.training.dataset import Sample, SceneCache

CHECKPOINT = 'last.pt'


@dataclass
class TrainConfig:
    """Everything a training run depends on; loaded from a plain YAML file in configs/."""

    seed: int = 0
    train_scenes: int = 400             # scene seeds 0..train_scenes-1 (evaluation uses >= 1e6)
    scene_kinds: dict[str, float] = field(default_factory=lambda: {'tabletop': 1.0})
    scene: dict[str, Any] = field(default_factory=dict)    # SceneConfig overrides
    voxel_size: float = 0.01            # the pipeline's working resolution
    max_points: int = 12000             # per training cloud
    scenes_per_step: int = 2
    steps: int = 2000
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    margin: float = 1.0
    positive_pairs: int = 4096
    negative_pairs: int = 4096
    edge_pairs: int = 8192
    label_fraction: float = 1.0         # weak supervision: share of points whose id is used
    augment: bool = True
    texture_prob: float = 0.0           # share of instances given a random blotchy texture
    init_weights: str = ''              # start from this SegVec3D checkpoint (fine-tuning)
    checkpoint_every: int = 200
    cache_dir: str = '.cache/segvec3d/scenes'
    model: dict[str, Any] = field(default_factory=dict)    # SegVec3DConfig fields

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a YAML config; unknown keys are an error naming them."""
        return dataclass_from_yaml(path, cls, 'training')

    def network_config(self) -> SegVec3DConfig:
        """SegVec3DConfig this run trains, recording the resolution it trains at."""
        return SegVec3DConfig(**{**self.model, 'voxel_size': self.voxel_size})


def texture(sample: Sample, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Colours with a random blotchy texture on about `probability` of the instances.

    The generator paints every object in one colour, so a colour edge would always mean an
    instance boundary; real objects carry prints and labels. Random cells of 1-6 cm in
    random colours, blended over the base colour, break that shortcut.
    """
    rgb = sample.rgb.astype(np.float64)
    ids = sample.instance_ids
    chosen = np.flatnonzero(rng.random(int(ids.max(initial=0)) + 1) < probability)
    for instance in chosen[chosen > 0]:
        members = np.flatnonzero(ids == instance)
        cell = rng.uniform(0.01, 0.06)
        keys = np.floor(sample.xyz[members] / cell).astype(np.int64)
        _, cells = np.unique(keys, axis=0, return_inverse=True)
        palette = rng.integers(0, 256, size=(int(cells.max(initial=0)) + 1, 3))
        blend = rng.uniform(0.3, 0.9)
        rgb[members] = (1 - blend) * rgb[members] + blend * palette[cells.reshape(-1)]
    return rgb


def augment(sample: Sample, rng: np.random.Generator, texture_prob: float = 0.0) -> Sample:
    """Small sensor-frame rotations, scale and colour changes, textures, and point dropout.

    Rotations stay small and about the sensor so that normals still face the sensor and the
    support plane stays where a camera would see it.
    """
    roll, tilt, pan = rng.uniform(-0.25, 0.25), rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)
    cr, sr, ct, st, cp, sp = np.cos(roll), np.sin(roll), np.cos(tilt), np.sin(tilt), \
        np.cos(pan), np.sin(pan)
    rotation = (np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
                @ np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
                @ np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]]))
    xyz = (sample.xyz @ rotation.T * rng.uniform(0.92, 1.08)).astype(np.float32)
    gain = rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, size=3)
    rgb = texture(sample, texture_prob, rng) * gain + rng.normal(0.0, 4.0, size=sample.rgb.shape)
    keep = rng.random(len(xyz)) >= rng.uniform(0.0, 0.2)
    return Sample(xyz[keep], np.clip(rgb, 0, 255).astype(np.uint8)[keep],
                  sample.instance_ids[keep])


def _batch(samples: list[Sample], network: SegVec3DConfig, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[slice]]:
    """Concatenate clouds: features, xyz, k-NN index offset into the batch, batch ids, ranges."""
    features, xyzs, knns, batch, ranges = [], [], [], [], []
    offset = 0
    for index, sample in enumerate(samples):
        xyz = torch.from_numpy(sample.xyz)
        features.append(torch.from_numpy(input_features(sample.xyz, sample.rgb, network)))
        xyzs.append(xyz)
        knns.append(knn_graph(xyz, network.k) + offset)
        batch.append(torch.full((len(xyz),), index, dtype=torch.int64))
        ranges.append(slice(offset, offset + len(xyz)))
        offset += len(xyz)
    return (torch.cat(features).to(device), torch.cat(xyzs).to(device),
            torch.cat(knns).to(device), torch.cat(batch).to(device), ranges)


def _learning_rate_factor(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))
    return factor


def pick_device(device: str) -> torch.device:
    """'auto' is CUDA when torch sees a GPU."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(device)


def train(config: TrainConfig, out_dir: str | Path, device: str = 'auto',
          resume: bool = False, progress: bool = True) -> Path:
    """Train, checkpointing to out_dir/last.pt; write out_dir/segvec3d.pt and .onnx at the end."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_device = pick_device(device)
    torch.manual_seed(config.seed)
    # Fine-tuning keeps the architecture of the checkpoint it starts from.
    model = (load_checkpoint(config.init_weights) if config.init_weights
             else SegVec3D(config.network_config())).to(torch_device).train()
    network = model.config
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _learning_rate_factor(config))
    loss_fn = PullPushLoss(config.margin, config.positive_pairs, config.negative_pairs,
                           config.label_fraction, config.edge_pairs)
    cache = SceneCache(config.cache_dir, SceneConfig(**config.scene), config.scene_kinds,
                       config.voxel_size, config.max_points)
    start_step = 0
    checkpoint_path = out / CHECKPOINT
    if resume and checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=torch_device, weights_only=False)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        schedule.load_state_dict(state['schedule'])
        start_step = state['step']
    (out / 'config.yaml').write_text(yaml.safe_dump(asdict(config), sort_keys=False))

    log_path = out / 'log.csv'
    with log_path.open('a', newline='') as log_file:
        log = csv.writer(log_file)
        if start_step == 0:
            log.writerow(['step', 'loss', 'lr', 'seconds'])
        started = time.monotonic()
        bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
                   disable=not progress, desc='train')
        running = None
        model.train()
        for step in bar:
            # Per-step generators make a resumed run draw what the uninterrupted one would.
            rng = np.random.default_rng([config.seed, step])
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            seeds = rng.integers(0, config.train_scenes, config.scenes_per_step)
            # A camera may see nothing but a wall; such scenes teach nothing about instances.
            drawn = [(int(s), cache.get(int(s))) for s in seeds]
            drawn = [d for d in drawn if len(np.unique(d[1].instance_ids)) > 1] or drawn
            seeds, samples = [d[0] for d in drawn], [d[1] for d in drawn]
            if config.augment:
                samples = [augment(s, rng, config.texture_prob) for s in samples]
            features, xyz, knn, batch, ranges = _batch(samples, network, torch_device)
            embeddings, _ = model(features, xyz, knn, batch)
            loss = sum(
                loss_fn(embeddings[r], torch.from_numpy(s.instance_ids).to(torch_device),
                        label_seed=int(seed), generator=generator, knn_index=knn[r] - r.start)
                for s, r, seed in zip(samples, ranges, seeds)) / len(samples)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            value = loss.item()
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.set_postfix(loss=f'{running:.4f}', lr=f'{schedule.get_last_lr()[0]:.2e}')
            log.writerow([step, f'{value:.5f}', f'{schedule.get_last_lr()[0]:.3e}',
                          f'{time.monotonic() - started:.1f}'])
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                log_file.flush()
                partial = checkpoint_path.with_suffix('.tmp')
                torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                            'schedule': schedule.state_dict(), 'step': step + 1}, partial)
                partial.replace(checkpoint_path)
    model.eval()
    final = out / 'segvec3d.pt'
    save_checkpoint(model.cpu(), final)
    export_onnx(model, out / 'segvec3d.onnx')
    return final
