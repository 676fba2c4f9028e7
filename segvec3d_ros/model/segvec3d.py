"""The SegVec3D instance-embedding network (arXiv 2507.09459, sections 3.1-3.3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from segvec3d_ros.model.knn import knn_graph
from segvec3d_ros.model.layers import (EmbeddingHead, GlobalContext, GraphAttentionLayer, mlp,
                                       relative_geometry)


@dataclass
class SegVec3DConfig:
    """Plain-data network settings, saved with the weights; the inputs fix in_channels."""

    use_rgb: bool = True                # colour in [0, 1] as 3 input channels
    use_normals: bool = False           # normals towards the sensor as 3 input channels
    normal_radius: float = 0.05         # m, neighbourhood of the normal estimate
    normal_max_nn: int = 30             # at most this many neighbours per normal estimate
    channels: int = 64                  # C, feature width of every attention layer
    layers: int = 3                     # L, number of graph attention layers
    k: int = 16                         # neighbours per point
    embed_dim: int = 16                 # D, instance embedding size
    hidden: int = 64                    # width of the fusion, context and head MLPs
    relative_scale: float = 0.05        # m, edge offsets are divided by this
    recompute_knn_per_layer: bool = False   # layers after the first attend over feature-space k-NN
    # m, the working resolution of the clouds it was trained on, which inference must use too
    # (the point spacing is part of what the edge offsets encode); None: not recorded.
    voxel_size: float | None = None

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == 'voxel_size':
                if value is not None and not value >= 0:
                    raise ValueError(f'SegVec3DConfig.voxel_size must be >= 0, got {value}')
            elif type(value) in (int, float) and not value > 0:
                raise ValueError(f'SegVec3DConfig.{spec.name} must be > 0, got {value}')

    @property
    def in_channels(self) -> int:
        """Input feature channels: centred xyz, then rgb and normals when enabled."""
        return 3 + 3 * self.use_rgb + 3 * self.use_normals


class SegVec3D(nn.Module):
    """SegVec3D network: points to unit instance embeddings.

    Input MLP -> L graph attention layers -> fusion of all layers (Eq. 4) -> global context ->
    unit instance embeddings.

    The k-NN index is an input so that exported graphs take any point count and hold no
    neighbour search; several clouds go through at once as one concatenated cloud whose
    k-NN indices are offset into it, with `batch` naming each point's cloud.
    """

    def __init__(self, config: SegVec3DConfig) -> None:
        """Build the network `config` describes, with freshly initialised weights."""
        super().__init__()
        self.config = config
        channels = config.channels
        self.input_mlp = mlp(config.in_channels, channels, channels)
        self.layers = nn.ModuleList(GraphAttentionLayer(channels) for _ in range(config.layers))
        self.fusion_mlp = mlp(config.layers * channels, config.hidden, channels)
        self.context = GlobalContext(channels, config.hidden)
        self.head = EmbeddingHead(channels, config.hidden, config.embed_dim)

    def forward(self, features: Tensor, xyz: Tensor, knn_index: Tensor,
                batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(N, D) embeddings and (N, C) point features F of one or more concatenated clouds.

        features: (N, in_channels) from `input_features`; xyz: (N, 3) positions, any origin;
        knn_index: (N, k) int64 spatial neighbours (`knn_graph`); batch: (N,) cloud ids or None.
        """
        cfg = self.config
        features = self.input_mlp(features)
        relative = relative_geometry(xyz, knn_index, cfg.relative_scale)
        outputs = []
        for depth, layer in enumerate(self.layers):
            if cfg.recompute_knn_per_layer and depth > 0:
                knn_index = _feature_knn(features, cfg.k, batch)
                relative = relative_geometry(xyz, knn_index, cfg.relative_scale)
            features = layer(features, relative, knn_index)
            outputs.append(features)
        point_features = self.context(self.fusion_mlp(torch.cat(outputs, dim=1)), batch)
        return self.head(point_features), point_features


def _feature_knn(features: Tensor, k: int, batch: Tensor | None) -> Tensor:
    """k-NN in feature space, within each cloud of `batch`."""
    if batch is None:
        return knn_graph(features, k)
    index = torch.empty((len(features), k), dtype=torch.int64, device=features.device)
    for cloud in torch.unique(batch):
        members = torch.nonzero(batch == cloud).squeeze(1)
        index[members] = members[knn_graph(features[members], k)]
    return index


def save_checkpoint(model: SegVec3D, path: str | Path) -> None:
    """Save the weights with the config that rebuilds the network."""
    torch.save({'config': asdict(model.config), 'state_dict': model.state_dict()}, path)


def load_checkpoint(path: str | Path, device: str | torch.device = 'cpu') -> SegVec3D:
    """Load the model `save_checkpoint` wrote, in eval mode on `device`.

    Raises FileNotFoundError for a missing file and ValueError naming the file for any other.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'SegVec3D checkpoint {path} does not exist')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
        model = SegVec3D(SegVec3DConfig(**checkpoint['config']))
        model.load_state_dict(checkpoint['state_dict'])
    # Truncated, foreign or mismatched files fail in many ways (unpickling, key, type, shape).
    except Exception as error:
        raise ValueError(f'{path} is not a SegVec3D checkpoint: {error}') from error
    return model.to(device).eval()
