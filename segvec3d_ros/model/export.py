"""ONNX export of SegVec3D with a dynamic point count."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import onnx
import torch

from segvec3d_ros.model.knn import knn_graph
from segvec3d_ros.model.segvec3d import SegVec3D

# ONNX metadata key holding the SegVec3DConfig as JSON, which inference needs to build inputs.
CONFIG_KEY = 'segvec3d_config'
INPUTS = ('features', 'xyz', 'knn_index')
OUTPUTS = ('embeddings', 'point_features')
OPSET = 17


def export_onnx(model: SegVec3D, path: str | Path, example_n: int = 2048) -> None:
    """Write `model` as ONNX; N is dynamic, the config is metadata.

    Inputs features (N, Cin), xyz (N, 3), knn_index (N, k) int64; outputs embeddings (N, D),
    point_features (N, C).
    """
    cfg = model.config
    if cfg.recompute_knn_per_layer:
        raise ValueError('export needs the static k-NN graph: recompute_knn_per_layer would put '
                         'a feature-space neighbour search inside the ONNX graph')
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    xyz = torch.rand(example_n, 3, generator=generator).to(device)
    features = torch.rand(example_n, cfg.in_channels, generator=generator).to(device)
    knn_index = knn_graph(xyz, cfg.k)
    was_training = model.training
    model.eval()
    try:
        # The TorchScript exporter: the dynamo one needs onnxscript, which is not a dependency.
        torch.onnx.export(model, (features, xyz, knn_index), str(path), dynamo=False,
                          input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes={name: {0: 'points'} for name in INPUTS + OUTPUTS},
                          opset_version=OPSET)
    finally:
        model.train(was_training)
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = CONFIG_KEY, json.dumps(asdict(cfg))
    onnx.save(graph, str(path))
