"""The learned segmenter and its stages.

RANSAC support surface, SegVec3D embeddings, graph clustering, split proposals, occlusion
reasoning, support seen through openings.
"""
from __future__ import annotations

import json
from pathlib import Path
from time import perf_counter
from typing import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import torch

from segvec3d_ros.config import LearnedConfig
from segvec3d_ros.model.export import CONFIG_KEY, INPUTS, OUTPUTS
from segvec3d_ros.model.features import estimate_normals, input_features
from segvec3d_ros.model.knn import knn_graph
from segvec3d_ros.model.segvec3d import SegVec3DConfig, load_checkpoint
from segvec3d_ros.names import bundled_model_path, resolve_path
from segvec3d_ros.segmentation.base import Segmentation, peel_support
from segvec3d_ros.segmentation.clustering import Array, absorb_fragments, graph_clusters
from segvec3d_ros.segmentation.occlusion import join_occluded
from segvec3d_ros.segmentation.openings import claim_seen_through
from segvec3d_ros.segmentation.split import propose_splits

ONNX_SUFFIXES = ('.onnx',)
# Clusters of fewer working points are boundary slivers, merged into a neighbouring instance.
FRAGMENT_POINTS = 15
TORCH_SUFFIXES = ('.pt', '.pth')
_NUMPY_TYPES = {torch.float32: np.float32, torch.int64: np.int64}
_KINDS = ', '.join(TORCH_SUFFIXES + ONNX_SUFFIXES)


class _TorchNetwork:
    """A SegVec3D checkpoint run by torch on one device; on CUDA in float16 autocast."""

    def __init__(self, path: Path, device: str) -> None:
        if device == 'cuda' and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
        use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
        self.device = torch.device('cuda' if use_cuda else 'cpu')
        self.model = load_checkpoint(path, self.device)
        self.config = self.model.config

    def __call__(self, features: torch.Tensor, xyz: torch.Tensor,
                 knn_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (N, D) embeddings and (N, C) point features, on the network's device."""
        # CPUs gain nothing from float16 matrix products, GPUs about twice the speed.
        with torch.inference_mode(), torch.autocast(self.device.type, torch.float16,
                                                    enabled=self.device.type == 'cuda'):
            embeddings, point_features = self.model(features, xyz, knn_index)
        return embeddings.float(), point_features.float()


class _OnnxNetwork:
    """An exported SegVec3D run by onnxruntime, on CUDA when allowed and available."""

    def __init__(self, path: Path, device: str) -> None:
        has_cuda = 'CUDAExecutionProvider' in ort.get_available_providers()
        if device == 'cuda' and not has_cuda:
            raise ValueError("device 'cuda' was asked for but onnxruntime has no CUDA provider")
        use_cuda = device != 'cpu' and has_cuda
        providers = ['CPUExecutionProvider']
        if use_cuda:
            providers.insert(0, 'CUDAExecutionProvider')
        # Inputs and outputs stay in GPU memory when torch can hold them there; otherwise
        # onnxruntime copies them in and out.
        self.device = torch.device('cuda' if use_cuda and torch.cuda.is_available() else 'cpu')
        try:
            model = onnx.load(str(path))
            _einsums_as_matmuls(model)
            self.session = ort.InferenceSession(model.SerializeToString(), providers=providers)
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.config = SegVec3DConfig(**json.loads(metadata[CONFIG_KEY]))
        # onnx and onnxruntime report unreadable graphs with their own exception types.
        except Exception as error:
            raise ValueError(f'{path} is not an exported SegVec3D model: {error}') from error

    def __call__(self, features: torch.Tensor, xyz: torch.Tensor,
                 knn_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (N, D) embeddings and (N, C) point features, on `self.device`."""
        inputs = (features.contiguous(), xyz.contiguous(), knn_index.contiguous())
        if self.device.type == 'cpu':
            outputs = self.session.run(None, {name: value.numpy()
                                              for name, value in zip(INPUTS, inputs)})
            return torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1])
        # onnxruntime reads and writes torch's GPU buffers in place; torch's queued kernels
        # must be done before it reads, and run_with_iobinding returns once its own are.
        torch.cuda.synchronize(self.device)
        outputs = tuple(torch.empty((len(xyz), width), dtype=torch.float32, device=self.device)
                        for width in (self.config.embed_dim, self.config.channels))
        binding = self.session.io_binding()
        for name, tensor in zip(INPUTS + OUTPUTS, inputs + outputs):
            bind = binding.bind_input if name in INPUTS else binding.bind_output
            bind(name, 'cuda', self.device.index or 0, _NUMPY_TYPES[tensor.dtype],
                 tuple(tensor.shape), tensor.data_ptr())
        self.session.run_with_iobinding(binding)
        return outputs


def _einsums_as_matmuls(model: onnx.ModelProto) -> None:
    """Rewrite the attention layers' Einsum nodes as the equivalent batched MatMuls, in place.

    onnxruntime runs Einsum 'nc,nkc->nk' (and 'nk,nkc->nc') two to three times slower than
    MatMul (N, k, C) @ (N, C, 1) (and (N, 1, k) @ (N, k, C)), which computes the same sums.
    Other equations, and graphs older than opset 13 (axes as attributes), are left alone.
    """
    graph = model.graph
    if max((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')),
           default=0) < 13:
        return
    nodes = []
    for node in graph.node:
        equation = next((a.s.decode() for a in node.attribute if a.name == 'equation'), '')
        operands, _, out = equation.replace(' ', '').partition('->')
        first, _, second = operands.partition(',')
        if node.op_type != 'Einsum' or (len(first), len(second), len(out)) != (2, 3, 2):
            nodes.append(node)
            continue
        a, b = node.input
        name, result = node.name or node.output[0], node.output[0]
        if second == first[0] + out[1] + first[1] and out == first[0] + second[1]:
            axis, factors = 2, (b, f'{name}/unsqueezed')    # 'nc,nkc->nk'
        elif second[:2] == first and out == first[0] + second[2]:
            axis, factors = 1, (f'{name}/unsqueezed', b)    # 'nk,nkc->nc'
        else:
            nodes.append(node)
            continue
        axes = f'{name}/axes'
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([axis], np.int64), axes))
        nodes += [onnx.helper.make_node('Unsqueeze', [a, axes], [f'{name}/unsqueezed']),
                  onnx.helper.make_node('MatMul', list(factors), [f'{name}/product']),
                  onnx.helper.make_node('Squeeze', [f'{name}/product', axes], [result])]
    del graph.node[:]
    graph.node.extend(nodes)


def cluster_edges(xyz: Array, knn_index: Array, tolerance: float) -> Array:
    """(N, k) k-NN index with -1 for every edge longer than `tolerance`.

    Embeddings split what is spatially connected, and never join what a gap separates.
    numpy arrays or torch tensors (one kind for both), computed where they are.
    """
    edges = knn_index.copy() if isinstance(knn_index, np.ndarray) else knn_index.clone()
    # Near float32's limit an offset overflows to inf: a gap too long to join, as it should be.
    with np.errstate(over='ignore'):
        offsets = xyz[knn_index] - xyz[:, None]
        edges[(offsets * offsets).sum(-1) ** 0.5 > tolerance] = -1
    return edges


def load_network(path: str | Path, device: str = 'auto') -> _TorchNetwork | _OnnxNetwork:
    """Network in a .pt/.pth checkpoint or .onnx export; raises naming `path` if unusable.

    `path` may be a package:// URL (package://segvec3d_ros/models/segvec3d_lidar.onnx).
    """
    if device not in ('auto', 'cpu', 'cuda'):
        raise ValueError(f'device must be auto, cpu or cuda; got {device!r}')
    file = resolve_path(path)
    if str(path) and file.is_dir():   # Path('') is '.', yet names no file at all
        raise IsADirectoryError(f'SegVec3D model path {str(path)!r} is a directory; model_path '
                                f'must name a {_KINDS} file')
    if not file.is_file():
        raise FileNotFoundError(f'SegVec3D model file {str(path)!r} does not exist; model_path '
                                f'must name a {_KINDS} file')
    suffix = file.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return _OnnxNetwork(file, device)
    if suffix in TORCH_SUFFIXES:
        return _TorchNetwork(file, device)
    raise ValueError(f'model file {file}: expected a {_KINDS} file')


class LearnedSegmenter:
    """SegVec3D: support surfaces peeled off, the network's embeddings clustered on the rest.

    RANSAC support surfaces are peeled off, the network runs on the points in front of them,
    and the instances are the connected components of the spatial k-NN edges whose embeddings
    are closer than `embedding_radius`; then the pieces of objects that a nearer object splits
    are joined again (`occlusion_gap`), and the support points seen through an object's
    opening are given to it (`claim_openings`). With `split_touching`, instances that look like
    two touching objects come with a proposed split (`propose_splits`), which the pipeline's
    grounding step takes or leaves.

    The support surfaces are found as in the geometric baseline, so the table is one region
    however embeddings would split it, and the network, the costly stage, runs only on what
    may be objects. No k-NN edge spans an occluder, so without the last step an object seen on
    both sides of one stays two instances.
    """

    name = 'segvec3d'
    sees_colour = True

    def __init__(self, config: LearnedConfig) -> None:
        """Load `config.model_path` (empty: the bundled model) on `config.device`."""
        self.config = config
        path = config.model_path or bundled_model_path()
        self.model_file = resolve_path(path)
        self.network = load_network(path, config.device)
        trained_at = self.network.config.voxel_size
        if trained_at is not None and abs(trained_at - config.voxel_size) > 1e-9:
            raise ValueError(f'{path} was trained at voxel_size {trained_at} m but the pipeline '
                             f'runs at voxel_size {config.voxel_size} m; set voxel_size to '
                             f'{trained_at} or train a model at {config.voxel_size}')

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None) -> Segmentation:
        """Label each finite point: support (mask), instance 1..K by size, or 0; F per point.

        F is zeros where the network did not run (support surfaces and what lies beyond them).
        """
        cfg = self.config
        pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
        timings: dict[str, float] = {}
        tick = perf_counter()

        def lap(stage: str) -> None:
            nonlocal tick
            if self.network.device.type == 'cuda':
                # GPU work is queued, not done: without waiting, its time would show up in
                # whichever later stage first waits for it.
                torch.cuda.synchronize(self.network.device)
            now = perf_counter()
            timings[stage], tick = now - tick, now

        support, rest = peel_support(pts, cfg.support)
        lap('plane')
        ids = np.zeros(len(pts), dtype=np.int64)
        features = np.zeros((len(pts), self.network.config.channels), dtype=np.float32)
        splits = np.zeros(len(pts), dtype=np.int64)
        if rest.any():
            # The network sees only what may be objects: the support surfaces, often most of a
            # tabletop frame, cost it nothing. Weights trained on whole clouds lose little here
            # (models/MODEL_CARD.md).
            ids[rest], features[rest], splits[rest] = self._embed_and_cluster(
                pts[rest], None if rgb is None else np.asarray(rgb).reshape(-1, 3)[rest], lap)
        # The spacing of the working points, which both view-ray steps resolve.
        spacing = cfg.voxel_size or cfg.cluster_tolerance / 2
        limits: list[str] = []
        if cfg.occlusion_gap > 0:
            ids = join_occluded(pts, ids, spacing, cfg.cluster_tolerance, cfg.occlusion_gap,
                                limits=limits)
            lap('occlusion')
        if cfg.claim_openings:
            ids, support = claim_seen_through(pts, ids, support, spacing)
            lap('openings')
        return Segmentation(ids, support, features, timings,
                            split_proposals=splits if cfg.split_touching else None,
                            limits_hit=limits)

    def _embed_and_cluster(self, pts: np.ndarray, rgb: np.ndarray | None,
                           lap: Callable[[str], None]
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M,) instance ids 1..K, (M, C) point features and (M,) proposed splits of M >= 1 points.

        The points lie in front of the support; the instances are connected components of the
        short k-NN edges with close embeddings, the splits those of `propose_splits`.
        """
        cfg, net_cfg, device = self.config, self.network.config, self.network.device
        features = torch.from_numpy(input_features(pts, rgb, net_cfg)).to(device)
        lap('features')
        points = torch.from_numpy(pts).to(device)
        knn_index = knn_graph(points, net_cfg.k)
        lap('knn')
        embeddings, point_features = self.network(features, points, knn_index)
        lap('network')
        if device.type == 'cpu':
            # numpy: on a busy CPU torch's threaded small indexing ops take several times
            # longer than the work in them.
            edges = cluster_edges(pts, knn_index.numpy(), cfg.cluster_tolerance)
            clusters = graph_clusters(embeddings.numpy(), edges, cfg.embedding_radius)
        else:
            # torch where the network ran: only the kept edges come to the host.
            edges = cluster_edges(points, knn_index, cfg.cluster_tolerance)
            clusters = graph_clusters(embeddings, edges, cfg.embedding_radius)
            edges = edges.cpu().numpy()
        # Size filtering of whole instances is the caller's: it counts input points.
        ids = absorb_fragments(clusters, edges, FRAGMENT_POINTS)
        lap('cluster')
        splits = np.zeros(len(pts), dtype=np.int64)
        if cfg.split_touching:
            normals = (features[:, 3 + 3 * net_cfg.use_rgb:].cpu().numpy() if net_cfg.use_normals
                       else estimate_normals(pts, net_cfg.normal_radius, net_cfg.normal_max_nn))
            splits = propose_splits(ids, embeddings.cpu().numpy(), edges, pts, normals,
                                    cfg.embedding_radius)
            lap('split')
        return ids, point_features.cpu().numpy(), splits
