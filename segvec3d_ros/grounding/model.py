"""The shared 3D-text space of the paper's section 4 (Eq. 9-12): W3D, Wtxt and InfoNCE.

The paper's instance descriptor is u_X = mean_i F_i over the instance's point features,
L2-normalised (Eq. 9); v_X = W3D u_X (Eq. 10); a text with the frozen sentence embedding t has
v_T = Wtxt t (Eq. 11); both are L2-normalised, and the symmetric InfoNCE of Eq. 12 over all
instance-caption pairs of a batch pulls true pairs together.

Here u_X = normalise(mean_i phi(F_i, g_i)) ++ b_X. phi is a trainable point-wise layer over
the frozen backbone features F_i and each point's place g_i in its instance's box (the cheap
stand-in for fine-tuning the backbone's last layers: the backbone is trained to separate
instances, and its mean feature alone tells categories apart poorly); b_X is the box term,
the log sorted box extents and the mean colour in CIE L*a*b* / 100, which size and colour
words name directly. With phi the identity on F_i and no box term, this is Eq. 9.

Beyond the paper, an optional Objectness direction in the shared space scores whether v_X is
one whole object rather than a fragment or a merge of several, which the segmenter also
produces: the query engine weighs instances by it, so that a sliver does not answer "the
smallest box".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from torch import Tensor, nn

from segvec3d_ros.colors import srgb_to_lab
from segvec3d_ros.instances import InstanceInfo

BOX_CHANNELS = 6        # log sorted box extents (3) and mean colour in L*a*b* / 100 (3)
GEOMETRY_CHANNELS = 9   # a point's place in its instance's box and its surface's facing
_MIN_EXTENT = 1e-3      # m; keeps the log of a degenerate (flat) box finite
POOLS = {'mean': 1, 'mean_max': 2}   # pooling -> descriptors per instance, each phi-wide


@dataclass
class GroundingConfig:
    """Shapes of the grounding head, saved with its weights."""

    feature_dim: int = 64       # C, the backbone's point feature width
    use_backbone: bool = True   # phi sees F_i
    use_geometry: bool = True   # phi sees g_i
    point_hidden: int = 128     # phi: hidden and output width
    pool: str = 'mean'          # over an instance's phi rows: mean (Eq. 9) or mean_max
    draw_points: int = 64       # inference pools draws of this many rows per instance, as
    draws: int = 8              # training pools points_per_step rows; 0 = all rows, once
    use_box: bool = True        # append the box term b_X to u_X
    hidden: int = 256           # W3D hidden width; 0 = W3D is one linear map
    embed_dim: int = 128        # the shared space
    text_dim: int = 384         # all-MiniLM-L6-v2
    temperature: float = 0.07   # tau, the initial value when learnable
    learn_temperature: bool = True
    objectness: bool = False    # an Objectness layer on v_X

    def __post_init__(self) -> None:
        if not (self.use_backbone or self.use_geometry):
            raise ValueError('GroundingConfig: phi needs use_backbone or use_geometry')
        if self.pool not in POOLS:
            raise ValueError(f'GroundingConfig: pool must be one of {tuple(POOLS)}, '
                             f'got {self.pool!r}')
        if self.draw_points < 0 or self.draws < 1:
            raise ValueError('GroundingConfig: draw_points must be >= 0 and draws >= 1')

    @property
    def input_dim(self) -> int:
        """Width of u_X as W3D sees it."""
        return self.point_hidden * POOLS[self.pool] + BOX_CHANNELS * self.use_box


class W3D(nn.Module):
    """Projects instance descriptors u_X into the shared space (Eq. 10)."""

    def __init__(self, input_dim: int, embed_dim: int, hidden: int) -> None:
        """Linear map, or a one-hidden-layer MLP when `hidden` > 0."""
        super().__init__()
        self.net = (nn.Linear(input_dim, embed_dim) if hidden == 0 else
                    nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(),
                                  nn.Linear(hidden, embed_dim)))

    def forward(self, u: Tensor) -> Tensor:
        """(B, embed_dim) unit vectors v_X."""
        return F.normalize(self.net(u), dim=-1)


class Wtxt(nn.Module):
    """Projects frozen sentence embeddings t into the shared space (Eq. 11)."""

    def __init__(self, text_dim: int, embed_dim: int) -> None:
        """One linear map, as in the paper."""
        super().__init__()
        self.linear = nn.Linear(text_dim, embed_dim)

    def forward(self, t: Tensor) -> Tensor:
        """(B, embed_dim) unit vectors v_T of (B, text_dim) embeddings (normalised here)."""
        return F.normalize(self.linear(F.normalize(t, dim=-1)), dim=-1)


class Objectness(nn.Module):
    """Logit that v_X is one whole object: a direction (and offset) in the shared space.

    Being in that space, it is computed from the embeddings the instance messages carry.
    """

    def __init__(self, embed_dim: int) -> None:
        """One linear map to a logit."""
        super().__init__()
        self.linear = nn.Linear(embed_dim, 1)

    def forward(self, v3d: Tensor) -> Tensor:
        """(B,) logits of (B, embed_dim) v_X."""
        return self.linear(v3d).squeeze(-1)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE over all instance-text pairs of a batch (Eq. 12), multi-positive.

    `positives[i, j]` says caption j is true of instance i. Several instances of a batch can
    share a true caption ("a mug" of every mug), so each direction maximises the softmax mass
    on all positives; rows without any positive (negative captions) only act as negatives.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = True) -> None:
        """Temperature tau starts at `temperature`; learned in log space when `learnable`."""
        super().__init__()
        log_tau = torch.tensor(float(np.log(temperature)))
        if learnable:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer('log_tau', log_tau)

    @property
    def temperature(self) -> float:
        """Current tau."""
        return float(self.log_tau.detach().exp())

    def forward(self, v3d: Tensor, vtxt: Tensor, positives: Tensor) -> Tensor:
        """Mean of the instance-to-text and text-to-instance losses."""
        # tau below 0.01 makes logits of 100 and the softmax a hard max: no gradient left.
        logits = v3d @ vtxt.T / self.log_tau.clamp(min=np.log(0.01)).exp()
        return 0.5 * (_multi_positive_nll(logits, positives)
                      + _multi_positive_nll(logits.T, positives.T))


def _multi_positive_nll(logits: Tensor, positives: Tensor) -> Tensor:
    """Mean over rows with a positive of -log(softmax mass on the row's positives)."""
    has = positives.any(dim=1)
    if not has.any():
        return logits.sum() * 0.0
    logits, positives = logits[has], positives[has]
    positive = torch.logsumexp(logits.masked_fill(~positives, float('-inf')), dim=1)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def point_geometry(xyz: np.ndarray, normals: np.ndarray, index: np.ndarray,
                   instances: list[InstanceInfo]) -> np.ndarray:
    """(M, GEOMETRY_CHANNELS) float32 geometry of each point in the box of instances[index].

    Where the point lies in the box, and how its surface (unit `normals`, either sign) faces.
    Box coordinates x, y, z (z is the support normal when the box stands on a plane) as
    |x|/hx, |y|/hy, z/hz, |x|, |y|, z in metres and the distance from the box's z axis over
    the half footprint diagonal; the normal's |z| and its |component| along the horizontal
    direction from the box's axis (1 on a cylinder's side, varying on a cuboid's). All are
    invariant to the box's yaw, its mirror symmetry and the normals' orientation.
    """
    if len(xyz) == 0:
        return np.zeros((0, GEOMETRY_CHANNELS), np.float32)
    axes = Rotation.from_quat(np.array([i.bbox_quaternion for i in instances])).as_matrix()
    centres = np.array([i.bbox_center for i in instances], dtype=np.float64)
    half = np.maximum(np.array([i.bbox_size for i in instances]) / 2, _MIN_EXTENT)[index]
    local = np.einsum('mk,mkj->mj', np.asarray(xyz, np.float64) - centres[index], axes[index])
    facing = np.einsum('mk,mkj->mj', np.asarray(normals, np.float64), axes[index])
    distance = np.hypot(local[:, 0], local[:, 1])
    outward = np.abs(np.einsum('mj,mj->m', facing[:, :2], local[:, :2])) \
        / np.maximum(distance, 1e-6)
    folded = np.column_stack([np.abs(local[:, :2]), local[:, 2]])
    return np.column_stack([folded / half, folded, distance / np.hypot(half[:, 0], half[:, 1]),
                            np.abs(facing[:, 2]), outward]).astype(np.float32)


def sample_rows(point_index: np.ndarray, count: int, size: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Instances (of `count`) that have rows in `point_index`, and `size` rows of each.

    The rows are (len(kept), size) indices, drawn uniformly with repeats.
    """
    order = np.argsort(point_index, kind='stable')
    sizes = np.bincount(point_index, minlength=count)
    ends = np.cumsum(sizes)
    kept = np.flatnonzero(sizes)
    picks = rng.integers((ends - sizes)[kept, None], ends[kept, None], (len(kept), size))
    return kept, order[picks]


def box_term(instances: list[InstanceInfo]) -> np.ndarray:
    """(K, BOX_CHANNELS) float32: log sorted box extents and mean colour in L*a*b* / 100."""
    if not instances:
        return np.zeros((0, BOX_CHANNELS), np.float32)
    extents = np.sort(np.array([i.bbox_size for i in instances], dtype=np.float64), axis=1)
    colours = np.array([i.mean_color[:3] for i in instances], dtype=np.float64)
    return np.column_stack([np.log(np.maximum(extents, _MIN_EXTENT)),
                            srgb_to_lab(colours) / 100.0]).astype(np.float32)


class GroundingHead(nn.Module):
    """phi, W3D, Wtxt and the InfoNCE temperature: the trained part of the grounding."""

    def __init__(self, config: GroundingConfig) -> None:
        """Freshly initialised weights of the shapes `config` gives."""
        super().__init__()
        self.config = config
        columns = (list(range(config.feature_dim)) * config.use_backbone
                   + list(range(config.feature_dim, config.feature_dim + GEOMETRY_CHANNELS))
                   * config.use_geometry)
        self.register_buffer('columns', torch.tensor(columns, dtype=torch.int64),
                             persistent=False)
        self.phi = nn.Sequential(nn.Linear(len(columns), config.point_hidden), nn.GELU(),
                                 nn.Linear(config.point_hidden, config.point_hidden), nn.GELU())
        self.w3d = W3D(config.input_dim, config.embed_dim, config.hidden)
        self.wtxt = Wtxt(config.text_dim, config.embed_dim)
        self.loss = InfoNCELoss(config.temperature, config.learn_temperature)
        self.objectness = Objectness(config.embed_dim) if config.objectness else None

    def instance_vectors(self, point_inputs: Tensor, point_index: Tensor, box: Tensor) -> Tensor:
        """(K, embed_dim) v_X from (P, C + GEOMETRY_CHANNELS) point rows of K instances.

        point_index (P,) names each row's instance; box is the (K, BOX_CHANNELS) box term.
        """
        return self.pool(self.phi(point_inputs[:, self.columns]), point_index, box)

    def pool(self, per_point: Tensor, point_index: Tensor, box: Tensor) -> Tensor:
        """(K, embed_dim) v_X from (P, point_hidden) phi rows of K instances.

        See `instance_vectors`.
        """
        empty = torch.zeros((len(box), per_point.shape[1]), dtype=per_point.dtype,
                            device=per_point.device)
        counts = torch.bincount(point_index, minlength=len(box)).clamp(min=1)
        u = F.normalize(empty.index_add(0, point_index, per_point) / counts[:, None], dim=-1)
        if self.config.pool == 'mean_max':
            # The extremes of the local descriptors (a handle, a rim) that a mean dilutes.
            peak = empty.scatter_reduce(0, point_index[:, None].expand_as(per_point), per_point,
                                        'amax', include_self=False)
            u = torch.cat([u, F.normalize(peak, dim=-1)], dim=1)
        if self.config.use_box:
            u = torch.cat([u, box], dim=1)
        return self.w3d(u)

    def embed_instances(self, point_inputs: np.ndarray, point_index: np.ndarray,
                        instances: list[InstanceInfo]) -> np.ndarray:
        """(K, embed_dim) float32 v_X of `instances` from their points' rows (see `embed_rows`)."""
        return self.embed_rows(point_inputs, point_index, box_term(instances))

    def embed_rows(self, point_inputs: np.ndarray, point_index: np.ndarray,
                   box: np.ndarray) -> np.ndarray:
        """(K, embed_dim) float32 v_X from point rows and the (K, BOX_CHANNELS) box terms.

        See `instance_vectors`. With `draw_points`, each v_X is the normalised mean over `draws`
        random samples of that many rows of the instance, as training pools a fixed number of
        points: the max of phi grows with the number of rows pooled. The seed is fixed, so that
        a frame always gets the same vectors.
        """
        index = np.asarray(point_index, np.int64)
        count = len(box)
        draws = self.config.draws if self.config.draw_points else 1
        inputs = torch.from_numpy(np.asarray(point_inputs, np.float32))
        with torch.inference_mode():
            if self.config.draw_points:
                kept, rows = sample_rows(index, count, self.config.draw_points * draws,
                                         np.random.default_rng(0))
                rows = rows.reshape(len(kept), draws, self.config.draw_points).transpose(1, 0, 2)
                # phi is point-wise: once per row drawn, however many draws pool it; a large
                # instance's other rows are never pooled.
                drawn, slots = np.unique(rows, return_inverse=True)
                per_point = self.phi(inputs[torch.from_numpy(drawn)][:, self.columns])
                per_point = per_point[torch.from_numpy(slots.ravel())]
                index = (np.arange(draws)[:, None, None] * count
                         + kept[None, :, None]).repeat(rows.shape[2], axis=2).ravel()
                box = np.tile(box, (draws, 1))
            else:
                per_point = self.phi(inputs[:, self.columns])
            vectors = self.pool(per_point, torch.from_numpy(index),
                                torch.from_numpy(np.asarray(box, np.float32))).numpy()
        mean = vectors.reshape(draws, count, vectors.shape[1]).mean(axis=0)
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def log_objectness(self, embeddings: np.ndarray) -> np.ndarray:
        """(K,) float64 log-probability that each v_X is one whole object.

        0 without an Objectness layer.
        """
        if self.objectness is None:
            return np.zeros(len(embeddings))
        # In numpy: one dot product per instance, called for every phrase of every query.
        linear = self.objectness.linear
        logits = np.asarray(embeddings, np.float64) @ linear.weight.detach().double().numpy()[0] \
            + float(linear.bias.detach())
        return -np.logaddexp(0.0, -logits)

    def embed_texts(self, text_embeddings: np.ndarray) -> np.ndarray:
        """(M, embed_dim) float32 v_T of (M, text_dim) sentence embeddings."""
        with torch.inference_mode():
            return self.wtxt(torch.from_numpy(np.asarray(text_embeddings, np.float32))).numpy()


def save_grounding(head: GroundingHead, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the config, the state dict and `metadata` (backbone fingerprint, training run)."""
    torch.save({'config': asdict(head.config), 'state_dict': head.state_dict(),
                'metadata': metadata}, path)


def load_grounding(path: str | Path) -> tuple[GroundingHead, dict[str, Any]]:
    """Load the head and metadata `save_grounding` wrote, in eval mode.

    Raises FileNotFoundError for a missing file and ValueError naming the file for any other.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'grounding model {path} does not exist')
    try:
        stored = torch.load(path, map_location='cpu', weights_only=True)
        head = GroundingHead(GroundingConfig(**stored['config']))
        head.load_state_dict(stored['state_dict'])
        metadata = dict(stored.get('metadata', {}))
    # Truncated, foreign or mismatched files fail in many ways (unpickling, key, type, shape).
    except Exception as error:
        raise ValueError(f'{path} is not a grounding model: {error}') from error
    return head.eval(), metadata
