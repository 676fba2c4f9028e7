"""The building blocks of SegVec3D (arXiv 2507.09459, Eqs. 1-7), each a small nn.Module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Relative geometry per edge: the offset p_j - p_i (3) and its length (1).
RELATIVE_CHANNELS = 4


def mlp(*sizes: int) -> nn.Sequential:
    """Linear layers of the given sizes, with LayerNorm + ReLU between them (not after the last).

    LayerNorm rather than BatchNorm: per-point statistics behave the same in training and
    inference, for one scene or several, and are unaffected by point order.
    """
    modules: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        modules.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            modules += [nn.LayerNorm(fan_out), nn.ReLU()]
    return nn.Sequential(*modules)


def gather_neighbours(values: Tensor, knn_index: Tensor) -> Tensor:
    """(N, k, C) rows of the (M, C) `values` at each point's (N, k) neighbour indices."""
    # index_select on the flat index is about twice as fast on CPU as values[knn_index].
    return values.index_select(0, knn_index.reshape(-1)).view(
        knn_index.shape[0], knn_index.shape[1], values.shape[1])


def relative_geometry(xyz: Tensor, knn_index: Tensor, scale: float) -> Tensor:
    """(N, k, 4) edge geometry [p_j - p_i, |p_j - p_i|] / scale for the (N, k) neighbours.

    Only differences of positions enter, so the edges are translation invariant; the fixed
    `scale` (m) brings k-NN offsets to O(1) without a per-cloud scale that would change what a
    centimetre gap means from one cloud to the next.
    """
    offsets = (gather_neighbours(xyz, knn_index) - xyz.unsqueeze(1)) / scale
    return torch.cat([offsets, offsets.norm(dim=2, keepdim=True)], dim=2)


class GraphAttentionLayer(nn.Module):
    """Attention over each point's k neighbours with a residual update (Eqs. 1-3).

    alpha_ij = softmax_j(phi(f_i) . psi(f_j, r_ij) / sqrt(C)),
    h_i = sum_j alpha_ij gamma(f_j, r_ij), f_i' = f_i + ReLU(LayerNorm(h_i)),
    where r_ij is the relative geometry of edge (i, j).

    psi and gamma are single linear maps of [f_j, r_ij]. Being linear, their f_j part is computed
    once per point before gathering, and their r_ij part is contracted with phi(f_i) (for psi) or
    with alpha (for gamma) before it is projected, so no (N, k, C) tensor is spent on geometry.
    """

    def __init__(self, channels: int) -> None:
        """Layer keeping `channels` feature channels."""
        super().__init__()
        self.channels = channels
        self.phi = nn.Linear(channels, channels, bias=False)
        # A key bias would add the same term to all of a point's logits; softmax ignores it.
        self.psi = nn.Linear(channels + RELATIVE_CHANNELS, channels, bias=False)
        self.gamma = nn.Linear(channels + RELATIVE_CHANNELS, channels)
        self.norm = nn.LayerNorm(channels)
        self.act = nn.ReLU()

    def attention(self, features: Tensor, relative: Tensor, knn_index: Tensor) -> Tensor:
        """(N, k) attention weights alpha_ij of Eq. 1; each row sums to 1."""
        psi_f, psi_r = self.psi.weight.split([self.channels, RELATIVE_CHANNELS], dim=1)
        query = self.phi(features)
        keys = gather_neighbours(F.linear(features, psi_f), knn_index)
        logits = (torch.einsum('nc,nkc->nk', query, keys)
                  + torch.einsum('nr,nkr->nk', query @ psi_r, relative))
        return torch.softmax(logits * self.channels**-0.5, dim=1)

    def forward(self, features: Tensor, relative: Tensor, knn_index: Tensor) -> Tensor:
        """(N, C) features updated from (N, C) features, (N, k, 4) geometry, (N, k) index."""
        alpha = self.attention(features, relative, knn_index)
        gamma_f, gamma_r = self.gamma.weight.split([self.channels, RELATIVE_CHANNELS], dim=1)
        # The bias passes through unchanged because each row of alpha sums to 1.
        values = gather_neighbours(F.linear(features, gamma_f, self.gamma.bias), knn_index)
        message = (torch.einsum('nk,nkc->nc', alpha, values)
                   + torch.einsum('nk,nkr->nr', alpha, relative) @ gamma_r.t())
        return features + self.act(self.norm(message))


class GlobalContext(nn.Module):
    """Scene context z = MLP(max_i H_i) fused into each point: F_i = H_i + MLP([H_i; z]), Eqs. 5-6.

    Max pooling makes z independent of point order and count.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        """Context of `channels` channels through MLPs of width `hidden`."""
        super().__init__()
        self.pool_mlp = mlp(channels, hidden, channels)
        self.fuse_mlp = mlp(2 * channels, hidden, channels)

    def forward(self, point_features: Tensor, batch: Tensor | None = None) -> Tensor:
        """(N, C) F from (N, C) H; `batch` (N,) cloud ids in [0, B) pools per cloud."""
        if batch is None:
            pooled = point_features.max(dim=0, keepdim=True).values
            context = self.pool_mlp(pooled).expand_as(point_features)
        else:
            num_clouds = int(batch.max()) + 1
            pooled = point_features.new_zeros(num_clouds, point_features.shape[1]).scatter_reduce(
                0, batch.unsqueeze(1).expand_as(point_features), point_features, 'amax',
                include_self=False)
            context = self.pool_mlp(pooled)[batch]
        return point_features + self.fuse_mlp(torch.cat([point_features, context], dim=1))


class EmbeddingHead(nn.Module):
    """Instance embedding e_i = MLP(F_i) on the unit sphere (Eq. 7).

    Unit length bounds embedding distances to [0, 2], so the loss margin and the clustering
    radius mean the same thing for every model instead of scaling with the embedding norm.
    """

    def __init__(self, channels: int, hidden: int, embed_dim: int) -> None:
        """Map `channels` features through width `hidden` to `embed_dim` dimensions."""
        super().__init__()
        self.mlp = mlp(channels, hidden, embed_dim)

    def forward(self, point_features: Tensor) -> Tensor:
        """(N, D) unit embeddings from (N, C) point features."""
        return F.normalize(self.mlp(point_features), dim=1)
