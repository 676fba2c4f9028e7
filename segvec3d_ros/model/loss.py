"""The pull-push contrastive loss on instance embeddings (Eq. 8), with sparse labels."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def sparse_labels(instance_ids: Tensor, fraction: float, seed: int) -> Tensor:
    """`instance_ids` with all but a seeded random `fraction` of the points set to 0 (unlabelled).

    The same seed marks the same points, so a scene keeps its labelled points across epochs.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f'label fraction must be in (0, 1], got {fraction}')
    if fraction == 1:
        return instance_ids
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(instance_ids), generator=generator) < fraction
    return torch.where(keep.to(instance_ids.device), instance_ids, 0)


class PullPushLoss(nn.Module):
    """mean d_ij^2 over same-instance pairs + mean max(0, m - d_ij)^2 over cross-instance pairs.

    Pairs are sampled, a fixed number per cloud, so the cost does not grow with N^2. Each pair
    first draws its instance uniformly and then its points, so a small object weighs as much as
    the table. Label 0 (unlabelled or invalid) never enters a pair.
    """

    def __init__(self, margin: float = 1.0, positive_pairs: int = 4096,
                 negative_pairs: int = 4096, label_fraction: float = 1.0,
                 edge_pairs: int = 0) -> None:
        """Push different instances `margin` apart; use only `label_fraction` of the labels.

        edge_pairs > 0 adds pairs drawn from the spatial k-NN edges: graph clustering cuts
        exactly those edges, and uniformly drawn pairs almost never land on the boundary
        between two touching objects, where the cut has to happen.
        """
        super().__init__()
        self.margin = margin
        self.positive_pairs = positive_pairs
        self.negative_pairs = negative_pairs
        self.label_fraction = label_fraction
        self.edge_pairs = edge_pairs

    def forward(self, embeddings: Tensor, instance_ids: Tensor, label_seed: int = 0,
                generator: torch.Generator | None = None,
                knn_index: Tensor | None = None) -> Tensor:
        """Scalar loss of (N, D) embeddings against (N,) int64 ids (0 = unlabelled).

        label_seed picks the labelled fraction (pass a per-scene seed); the CPU `generator`
        draws the pairs; knn_index (N, k) is needed for edge pairs.
        """
        ids = sparse_labels(instance_ids, self.label_fraction, label_seed).cpu()
        points = torch.nonzero(ids > 0).squeeze(1)
        labels, order = torch.sort(ids[points], stable=True)
        points = points[order]
        counts = torch.unique_consecutive(labels, return_counts=True)[1]
        starts = torch.cumsum(counts, dim=0) - counts
        loss = embeddings.sum() * 0.0     # keeps the graph when no pair can be drawn

        several = torch.nonzero(counts >= 2).squeeze(1)
        if len(several) > 0 and self.positive_pairs > 0:
            instance = several[torch.randint(len(several), (self.positive_pairs,),
                                             generator=generator)]
            size = counts[instance]
            first = _uniform_below(size, generator)
            # An offset in [1, size) from the first point guarantees two distinct points.
            second = (first + 1 + _uniform_below(size - 1, generator)) % size
            i, j = points[starts[instance] + first], points[starts[instance] + second]
            diff = embeddings[i.to(embeddings.device)] - embeddings[j.to(embeddings.device)]
            loss = loss + diff.square().sum(dim=1).mean()

        num_instances = len(counts)
        if num_instances >= 2 and self.negative_pairs > 0:
            instance = torch.randint(num_instances, (self.negative_pairs,), generator=generator)
            other = (instance + 1 + torch.randint(num_instances - 1, (self.negative_pairs,),
                                                  generator=generator)) % num_instances
            i = points[starts[instance] + _uniform_below(counts[instance], generator)]
            j = points[starts[other] + _uniform_below(counts[other], generator)]
            diff = embeddings[i.to(embeddings.device)] - embeddings[j.to(embeddings.device)]
            # The epsilon keeps the gradient of the distance finite for coincident embeddings.
            distance = torch.sqrt(diff.square().sum(dim=1) + 1e-12)
            loss = loss + torch.clamp(self.margin - distance, min=0).square().mean()

        if self.edge_pairs > 0 and knn_index is not None and len(points) > 0:
            loss = loss + self._edge_loss(embeddings, ids, knn_index.cpu(), generator)
        return loss

    def _edge_loss(self, embeddings: Tensor, ids: Tensor, knn_index: Tensor,
                   generator: torch.Generator | None) -> Tensor:
        """Pull-push over sampled k-NN edges between labelled points, each side averaged."""
        labelled = ids > 0
        rows = torch.nonzero(labelled).squeeze(1)
        first = rows[torch.randint(len(rows), (self.edge_pairs,), generator=generator)]
        # Column 0 is the point itself.
        column = 1 + torch.randint(knn_index.shape[1] - 1, (self.edge_pairs,),
                                   generator=generator)
        second = knn_index[first, column]
        keep = labelled[second] & (second != first)
        first, second = first[keep], second[keep]
        same = ids[first] == ids[second]
        diff = embeddings[first.to(embeddings.device)] - embeddings[second.to(embeddings.device)]
        distance = torch.sqrt(diff.square().sum(dim=1) + 1e-12)
        same = same.to(embeddings.device)
        loss = embeddings.sum() * 0.0
        if same.any():
            loss = loss + distance[same].square().mean()
        if (~same).any():
            loss = loss + torch.clamp(self.margin - distance[~same], min=0).square().mean()
        return loss


def _uniform_below(counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform random integer in [0, count) for each count (>= 1)."""
    draws = (torch.rand(len(counts), dtype=torch.float64, generator=generator) * counts).long()
    return torch.minimum(draws, counts - 1)
