"""The learned segmenter: SegVec3D embeddings, RANSAC support surface, graph clustering."""
from __future__ import annotations

import json
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import torch

from segvec3d_ros.model.clustering import graph_clusters
from segvec3d_ros.model.export import CONFIG_KEY, INPUTS
from segvec3d_ros.model.features import input_features
from segvec3d_ros.model.knn import knn_graph
from segvec3d_ros.model.segvec3d import SegVec3DConfig, load_checkpoint
from segvec3d_ros.segmentation.base import Segmentation
from segvec3d_ros.segmentation.geometry import support_surfaces

if TYPE_CHECKING:
    from segvec3d_ros.pipeline import PipelineConfig

ONNX_SUFFIXES = ('.onnx',)
BUNDLED_MODEL = 'segvec3d.onnx'
TORCH_SUFFIXES = ('.pt', '.pth')
_KINDS = ', '.join(TORCH_SUFFIXES + ONNX_SUFFIXES)


class _TorchNetwork:
    """A SegVec3D checkpoint run by torch on one device."""

    def __init__(self, path: Path, device: str) -> None:
        if device == 'cuda' and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
        use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
        self.device = torch.device('cuda' if use_cuda else 'cpu')
        self.model = load_checkpoint(path, self.device)
        self.config = self.model.config

    def __call__(self, features: np.ndarray, xyz: torch.Tensor,
                 knn_index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            embeddings, point_features = self.model(
                torch.from_numpy(features).to(self.device), xyz, knn_index)
        return embeddings.cpu().numpy(), point_features.cpu().numpy()


class _OnnxNetwork:
    """An exported SegVec3D run by onnxruntime, on CUDA when allowed and available."""

    device = torch.device('cpu')    # where its inputs are prepared

    def __init__(self, path: Path, device: str) -> None:
        has_cuda = 'CUDAExecutionProvider' in ort.get_available_providers()
        if device == 'cuda' and not has_cuda:
            raise ValueError("device 'cuda' was asked for but onnxruntime has no CUDA provider")
        providers = ['CPUExecutionProvider']
        if device != 'cpu' and has_cuda:
            providers.insert(0, 'CUDAExecutionProvider')
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.config = SegVec3DConfig(**json.loads(metadata[CONFIG_KEY]))
        # onnxruntime reports unreadable graphs with its own exception types.
        except Exception as error:
            raise ValueError(f'{path} is not an exported SegVec3D model: {error}') from error

    def __call__(self, features: np.ndarray, xyz: torch.Tensor,
                 knn_index: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        feed = dict(zip(INPUTS, (features, xyz.numpy(), knn_index.numpy())))
        embeddings, point_features = self.session.run(None, feed)
        return embeddings, point_features


def bundled_model_path() -> Path:
    """models/segvec3d.onnx of the source tree, else of the installed package's share folder."""
    source_tree = Path(__file__).resolve().parents[2] / 'models' / BUNDLED_MODEL
    if source_tree.is_file():
        return source_tree
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('segvec3d_ros')) / 'models' / BUNDLED_MODEL
    except (ImportError, LookupError):
        return source_tree


def load_network(path: str | Path, device: str = 'auto') -> _TorchNetwork | _OnnxNetwork:
    """The network in a .pt/.pth checkpoint or .onnx export; raises naming `path` if unusable."""
    if device not in ('auto', 'cpu', 'cuda'):
        raise ValueError(f'device must be auto, cpu or cuda; got {device!r}')
    file = Path(path)
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
    """SegVec3D: RANSAC support surfaces, then connected components of the spatial k-NN edges
    whose embeddings are closer than `embedding_radius`.

    The support surfaces are found as in the geometric baseline, so the table is one region
    however the embeddings split it; the instances are the clusters of the points in front.
    """

    name = 'segvec3d'

    def __init__(self, config: PipelineConfig, up: np.ndarray | None = None,
                 seed: int = 0) -> None:
        """Load `config.model_path` (empty: the bundled model) on `config.device`; `up`, when
        known, limits the plane tilt.
        """
        self.config = config
        self.up = up
        self.seed = seed
        self.network = load_network(config.model_path or bundled_model_path(), config.device)

    def segment(self, xyz: np.ndarray, rgb: np.ndarray | None) -> Segmentation:
        """Label each finite point: support (mask), instance 1..K by size, or 0; F per point."""
        cfg = self.config
        pts = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
        net_cfg = self.network.config
        start = perf_counter()
        if len(pts) == 0:
            return Segmentation(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool),
                                np.zeros((0, net_cfg.channels), dtype=np.float32), {})
        features = input_features(pts, rgb, net_cfg)
        featured = perf_counter()
        points = torch.from_numpy(pts).to(self.network.device)
        knn_index = knn_graph(points, net_cfg.k)
        searched = perf_counter()
        embeddings, point_features = self.network(features, points, knn_index)
        embedded = perf_counter()

        # A fresh generator per frame keeps the result a function of the frame alone.
        support, rest = support_surfaces(pts, cfg.plane_distance, cfg.plane_iterations,
                                         cfg.min_support_fraction, cfg.drop_below_support,
                                         np.random.default_rng(self.seed), self.up)
        planed = perf_counter()

        # Edges leaving the clustered points become -1, which graph_clusters skips.
        local = np.full(len(pts), -1, dtype=np.int64)
        local[rest] = np.arange(int(rest.sum()))
        ids = np.zeros(len(pts), dtype=np.int64)
        # Size filtering is the caller's: it counts input points, not these working points.
        ids[rest] = graph_clusters(embeddings[rest], local[knn_index.cpu().numpy()[rest]],
                                   cfg.embedding_radius)
        return Segmentation(ids, support, point_features.astype(np.float32),
                            {'features': featured - start, 'knn': searched - featured,
                             'network': embedded - searched, 'plane': planed - embedded,
                             'cluster': perf_counter() - planed})
