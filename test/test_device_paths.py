"""The pieces the learned segmenter runs on a GPU, checked on the CPU against the CPU path.

No CUDA device is needed: the GPU branches are written against torch tensors wherever they
are, so CPU tensors take the same code; the onnxruntime graph rewrite is device-independent.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from segvec3d_ros.model.export import INPUTS, export_onnx
from segvec3d_ros.model.knn import knn_graph
from segvec3d_ros.model.segvec3d import SegVec3D, SegVec3DConfig
from segvec3d_ros.segmentation.clustering import graph_clusters
from segvec3d_ros.segmentation.learned import _einsums_as_matmuls, cluster_edges


def random_graph(num: int = 2000, k: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """Points, their k-NN index and embeddings of five noisy directions."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0, 0.3, (num, 3)).astype(np.float32)
    knn_index = knn_graph(torch.from_numpy(xyz), k).numpy()
    directions = rng.normal(size=(5, 16))
    embeddings = directions[rng.integers(0, 5, num)] + rng.normal(0, 0.3, (num, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return xyz, knn_index, embeddings.astype(np.float32)


def test_graph_clusters_agree_for_numpy_arrays_and_torch_tensors() -> None:
    _, knn_index, embeddings = random_graph()
    knn_index[::7, 3] = -1
    on_numpy = graph_clusters(embeddings, knn_index, radius=0.5)
    on_torch = graph_clusters(torch.from_numpy(embeddings), torch.from_numpy(knn_index), 0.5)
    assert 1 < on_numpy.max() < len(embeddings) / 2    # neither all joined nor all apart
    assert np.array_equal(on_numpy, on_torch)


def test_cluster_edges_agree_for_numpy_arrays_and_torch_tensors() -> None:
    xyz, knn_index, _ = random_graph()
    on_numpy = cluster_edges(xyz, knn_index, 0.02)
    on_torch = cluster_edges(torch.from_numpy(xyz), torch.from_numpy(knn_index), 0.02)
    assert np.array_equal(on_numpy, on_torch.numpy())
    kept = on_numpy >= 0
    assert 0 < kept.mean() < 1
    # Exactly the edges up to the tolerance are kept, and the input index is left alone.
    lengths = np.linalg.norm(xyz[knn_index] - xyz[:, None], axis=2)
    assert np.array_equal(kept, lengths <= 0.02)
    assert np.array_equal(on_numpy[kept], knn_index[kept])
    assert (knn_index >= 0).all()


def test_einsums_rewritten_as_matmuls_give_the_same_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    export_onnx(SegVec3D(SegVec3DConfig()), tmp_path / 'model.onnx', example_n=256)
    model = onnx.load(str(tmp_path / 'model.onnx'))
    rewritten = onnx.load(str(tmp_path / 'model.onnx'))
    _einsums_as_matmuls(rewritten)
    assert any(node.op_type == 'Einsum' for node in model.graph.node)
    assert not any(node.op_type == 'Einsum' for node in rewritten.graph.node)
    xyz, knn_index, _ = random_graph(num=3000, k=16)
    features = np.random.default_rng(2).uniform(size=(len(xyz), 6)).astype(np.float32)
    feed = dict(zip(INPUTS, (features, xyz, knn_index)))
    outputs = [ort.InferenceSession(m.SerializeToString(),
                                    providers=['CPUExecutionProvider']).run(None, feed)
               for m in (model, rewritten)]
    for before, after in zip(*outputs):
        np.testing.assert_allclose(after, before, atol=1e-5)
