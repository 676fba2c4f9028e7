"""SegVec3D network, loss, clustering, export and learned segmenter (no ROS, CPU, small clouds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segvec3d_ros.config import PipelineConfig
from segvec3d_ros.model.export import export_onnx
from segvec3d_ros.model import features
from segvec3d_ros.model.features import estimate_normals, input_features
from segvec3d_ros.model.knn import knn_graph
from segvec3d_ros.model.layers import GraphAttentionLayer, relative_geometry
from segvec3d_ros.model.loss import PullPushLoss, sparse_labels
from segvec3d_ros.model.segvec3d import SegVec3D, SegVec3DConfig, save_checkpoint
from segvec3d_ros.segmentation.clustering import absorb_fragments, graph_clusters
from segvec3d_ros.segmentation.learned import LearnedSegmenter, cluster_edges, load_network
from segvec3d_ros.segmentation.split import MIN_SPLIT_POINTS, propose_splits


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the two labelings group the points identically, up to renumbering."""
    pairs = np.unique(np.column_stack([a, b]), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def random_cloud(num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, xyz and k-NN index of a random cloud for the default config."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-0.5, 0.5, (num, 3)).astype(np.float32) + [0, 0, 1.5]
    rgb = rng.integers(0, 256, (num, 3), dtype=np.uint8)
    features = input_features(xyz, rgb, SegVec3DConfig())
    points = torch.from_numpy(xyz.astype(np.float32))
    return torch.from_numpy(features), points, knn_graph(points, SegVec3DConfig().k)


def boxes_scene(per_box: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyz, rgb and instance ids 1..3 of three coloured 10 cm boxes 1 cm apart, 1 m ahead."""
    rng = np.random.default_rng(seed)
    xyz = np.concatenate([rng.uniform(0, 0.1, (per_box, 3)) + [0.11 * i, 0, 1] for i in range(3)])
    rgb = np.repeat(np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8), per_box,
                    axis=0)
    return xyz.astype(np.float32), rgb, np.repeat(np.arange(1, 4), per_box)


# ---- k-NN ------------------------------------------------------------------------------------

def brute_force_knn(points: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cdist(points.double(), points.double()).argsort(dim=1)[:, :k]


@pytest.mark.parametrize('backend', ['auto', 'scipy', 'torch'])
def test_knn_backends_match_brute_force(backend: str) -> None:
    points = torch.rand(1500, 3, generator=torch.Generator().manual_seed(1)) * 2 + 10
    index = knn_graph(points, 16, backend)
    assert index.shape == (1500, 16) and index.dtype == torch.int64
    reference = brute_force_knn(points, 16)
    assert torch.equal(index.sort(dim=1).values, reference.sort(dim=1).values)
    assert torch.equal(index[:, 0], torch.arange(1500))     # self first, at distance 0


def test_knn_torch_cluster_matches_brute_force() -> None:
    pytest.importorskip('torch_cluster')
    points = torch.rand(800, 3, generator=torch.Generator().manual_seed(2))
    index = knn_graph(points, 16, 'torch_cluster')
    assert torch.equal(index.sort(dim=1).values, brute_force_knn(points, 16).sort(dim=1).values)


def test_knn_pads_small_clouds_with_self_and_rejects_unknown_backend() -> None:
    points = torch.rand(5, 3)
    index = knn_graph(points, 8)
    assert index.shape == (5, 8)
    assert all(set(row.tolist()) == set(range(5)) for row in index)
    assert torch.equal(index[:, 5:], torch.arange(5)[:, None].expand(5, 3))
    with pytest.raises(ValueError, match='backend'):
        knn_graph(points, 4, 'faiss')


# ---- network ---------------------------------------------------------------------------------

def test_forward_shapes_and_unit_embeddings() -> None:
    torch.manual_seed(0)
    features, xyz, knn_index = random_cloud(700)
    cfg = SegVec3DConfig()
    embeddings, point_features = SegVec3D(cfg)(features, xyz, knn_index)
    assert embeddings.shape == (700, cfg.embed_dim)
    assert point_features.shape == (700, cfg.channels)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(700), atol=1e-5)
    with pytest.raises(ValueError, match='k must be > 0'):
        SegVec3DConfig(k=0)


def test_attention_weights_are_a_distribution_over_neighbours() -> None:
    torch.manual_seed(0)
    _, xyz, knn_index = random_cloud(600)
    layer = GraphAttentionLayer(32)
    features = torch.randn(600, 32) * 3
    alpha = layer.attention(features, relative_geometry(xyz, knn_index, 0.05), knn_index)
    assert alpha.shape == knn_index.shape
    assert (alpha >= 0).all()
    assert torch.allclose(alpha.sum(dim=1), torch.ones(600), atol=1e-5)
    assert alpha.std() > 0.01     # not uniform: it depends on features and geometry


def test_permuting_points_permutes_outputs() -> None:
    torch.manual_seed(0)
    features, xyz, knn_index = random_cloud(600)
    model = SegVec3D(SegVec3DConfig()).eval()
    perm = torch.randperm(600)
    inverse = torch.argsort(perm)
    with torch.no_grad():
        embeddings, point_features = model(features, xyz, knn_index)
        permuted = model(features[perm], xyz[perm], inverse[knn_index[perm]])
    assert torch.allclose(permuted[0], embeddings[perm], atol=1e-5)
    assert torch.allclose(permuted[1], point_features[perm], atol=1e-4)


def test_embeddings_are_translation_invariant() -> None:
    torch.manual_seed(0)
    cfg = SegVec3DConfig()
    xyz, rgb, _ = boxes_scene()
    model = SegVec3D(cfg).eval()
    knn_index = knn_graph(torch.from_numpy(xyz), cfg.k)

    def embed(points: np.ndarray) -> torch.Tensor:
        features = torch.from_numpy(input_features(points, rgb, cfg))
        with torch.no_grad():
            return model(features, torch.from_numpy(points), knn_index)[0]

    moved = (xyz + np.array([5.0, -3.0, 2.0])).astype(np.float32)
    assert torch.allclose(embed(moved), embed(xyz), atol=1e-4)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    features, xyz, knn_index = random_cloud(500)
    model = SegVec3D(SegVec3DConfig())
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 4, 500))
    PullPushLoss()(model(features, xyz, knn_index)[0], ids).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize('recompute', [False, True])
def test_batched_clouds_match_separate_clouds(recompute: bool) -> None:
    torch.manual_seed(0)
    model = SegVec3D(SegVec3DConfig(recompute_knn_per_layer=recompute)).eval()
    first, second = random_cloud(400, seed=1), random_cloud(300, seed=2)
    batch = torch.cat([torch.zeros(400, dtype=torch.int64), torch.ones(300, dtype=torch.int64)])
    with torch.no_grad():
        together = model(torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]]),
                         torch.cat([first[2], second[2] + 400]), batch)[0]
        apart = torch.cat([model(*first)[0], model(*second)[0]])
    assert torch.allclose(together, apart, atol=1e-5)


# ---- loss ------------------------------------------------------------------------------------

def test_loss_is_zero_for_separated_instances_and_positive_otherwise() -> None:
    ids = torch.arange(1, 4).repeat_interleave(50)
    separated = torch.eye(3)[ids - 1]         # unit vectors sqrt(2) > margin 1 apart
    assert PullPushLoss(margin=1.0)(separated, ids) == 0
    close = separated * 0.5 / 2 ** 0.5          # 0.5 apart: push (1 - 0.5)^2, no pull
    assert PullPushLoss(margin=1.0)(close, ids).item() == pytest.approx(0.25, abs=1e-5)
    spread = separated + 0.1 * torch.randn(150, 3, generator=torch.Generator().manual_seed(0))
    assert PullPushLoss(margin=1.0)(spread, ids) > 0


def test_loss_ignores_unlabelled_points() -> None:
    ids = torch.tensor([1, 1, 0, 2, 2, 0])
    embeddings = torch.eye(4)[[0, 0, 2, 1, 1, 3]]
    loss = PullPushLoss()

    def value(emb: torch.Tensor) -> float:
        return loss(emb, ids, generator=torch.Generator().manual_seed(0)).item()

    assert value(embeddings) == 0
    unlabelled_moved = embeddings.clone()
    unlabelled_moved[[2, 5]] = embeddings[[0, 3]] + 0.3
    assert value(unlabelled_moved) == 0
    labelled_moved = embeddings.clone()
    labelled_moved[0] = embeddings[3]
    assert value(labelled_moved) > 0


def test_label_fraction_uses_only_the_seeded_labelled_points() -> None:
    rng = torch.Generator().manual_seed(0)
    ids = torch.arange(1, 5).repeat_interleave(250)
    embeddings = torch.randn(1000, 8, generator=rng)
    kept = sparse_labels(ids, 0.2, seed=7)
    assert 0.15 < (kept > 0).float().mean() < 0.25
    assert torch.equal(kept, sparse_labels(ids, 0.2, seed=7))
    sparse = PullPushLoss(label_fraction=0.2)

    def value(emb: torch.Tensor, loss: PullPushLoss, labels: torch.Tensor) -> float:
        return loss(emb, labels, label_seed=7, generator=torch.Generator().manual_seed(1)).item()

    full = value(embeddings, sparse, ids)
    assert full == value(embeddings, PullPushLoss(), kept)
    dropped = embeddings.clone()
    dropped[kept == 0] = 0
    assert full == value(dropped, sparse, ids)
    assert full != value(dropped, PullPushLoss(), ids)
    with pytest.raises(ValueError, match='fraction'):
        sparse_labels(ids, 0.0, seed=0)


def test_overfitting_a_toy_scene_recovers_its_instances() -> None:
    torch.manual_seed(0)
    cfg = SegVec3DConfig()
    xyz, rgb, ids = boxes_scene()
    points = torch.from_numpy(xyz)
    knn_index = knn_graph(points, cfg.k)
    # The boxes touch in the k-NN graph, so only the embeddings can separate them.
    assert (ids[knn_index.numpy()] != ids[:, None]).any()
    features = torch.from_numpy(input_features(xyz, rgb, cfg))
    model = SegVec3D(cfg)
    loss_fn = PullPushLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = loss_fn(model(features, points, knn_index)[0], torch.from_numpy(ids),
                       generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        embeddings = model.eval()(features, points, knn_index)[0]
    assert same_partition(graph_clusters(embeddings, knn_index, radius=0.4), ids)


# ---- clustering ------------------------------------------------------------------------------

def separated_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters of 100 and one of 5 points on well-apart unit directions."""
    rng = np.random.default_rng(0)
    truth = np.repeat([1, 2, 3, 4], [100, 100, 100, 5])
    embeddings = np.eye(8)[truth] + rng.normal(0, 0.02, (len(truth), 8))
    return embeddings.astype(np.float32), truth


def test_graph_clusters_cut_far_edges_and_respect_min_size() -> None:
    embeddings, truth = separated_embeddings()
    jitter = 0.5 * torch.rand(305, 8, generator=torch.Generator().manual_seed(0))
    knn_index = knn_graph(torch.from_numpy(embeddings) + jitter, 12)
    # Cross-cluster edges exist, so the embedding radius does the cutting.
    assert (truth[knn_index.numpy()] != truth[:, None]).any()
    labels = graph_clusters(embeddings, knn_index, radius=0.5)
    assert same_partition(labels, truth)
    small = graph_clusters(embeddings, knn_index, radius=0.5, min_size=10)
    assert (small[truth == 4] == 0).all() and same_partition(small[truth < 4], truth[truth < 4])
    cut = knn_index.clone()
    cut[torch.from_numpy(truth == 4)] = -1     # no edge leaves the small cluster's points
    cut[torch.from_numpy(np.isin(cut.numpy(), np.flatnonzero(truth == 4)))] = -1  # nor reaches
    assert len(np.unique(graph_clusters(embeddings, cut, 0.5)[truth == 4])) == 5


# ---- export and learned segmenter ------------------------------------------------------------

def test_onnx_export_matches_torch_for_two_point_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SegVec3D(SegVec3DConfig()).eval()
    path = tmp_path / 'segvec3d.onnx'
    export_onnx(model, path, example_n=1024)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for num in (700, 1900):
        features, xyz, knn_index = random_cloud(num, seed=num)
        with torch.no_grad():
            expected = model(features, xyz, knn_index)
        outputs = session.run(None, {'features': features.numpy(), 'xyz': xyz.numpy(),
                                     'knn_index': knn_index.numpy()})
        for got, want in zip(outputs, expected):
            assert got.shape == tuple(want.shape)
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match='recompute_knn_per_layer'):
        export_onnx(SegVec3D(SegVec3DConfig(recompute_knn_per_layer=True)), tmp_path / 'x.onnx')


def tabletop(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1 m table 1 m below the sensor with two boxes on it, as working points and colours."""
    rng = np.random.default_rng(seed)
    table = np.column_stack([rng.uniform(-0.5, 0.5, (1500, 2)), np.full(1500, 1.0)])
    box, _, _ = boxes_scene(per_box=150, seed=seed)
    xyz = np.concatenate([table, box[:300] - [0, 0, 0.12]]).astype(np.float32)
    return xyz, rng.integers(0, 256, (len(xyz), 3), dtype=np.uint8)


def test_learned_segmenter_runs_end_to_end_from_torch_and_onnx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SegVec3D(SegVec3DConfig())
    save_checkpoint(model, tmp_path / 'model.pt')
    export_onnx(model, tmp_path / 'model.onnx', example_n=512)
    xyz, rgb = tabletop()
    results = []
    for name in ('model.pt', 'model.onnx'):
        # The boxes are sampled sparser than a 1 cm voxel grid: widen the spatial edge cutoff.
        segmenter = LearnedSegmenter(PipelineConfig(model_path=str(tmp_path / name),
                                                    device='cpu',
                                                    cluster_tolerance=0.1).learned())
        assert segmenter.name == 'segvec3d'
        seg = segmenter.segment(xyz, rgb)
        assert seg.instance_ids.shape == (len(xyz),) and seg.instance_ids.dtype == np.int64
        assert seg.support_mask.shape == (len(xyz),)
        assert seg.features.shape == (len(xyz), 64) and seg.features.dtype == np.float32
        assert set(seg.timings) == {'features', 'knn', 'network', 'plane', 'cluster', 'split',
                                    'occlusion', 'openings'}
        assert seg.split_proposals.shape == (len(xyz),)
        assert seg.support_mask[:1500].mean() > 0.95 and not seg.support_mask[1500:].any()
        assert (seg.instance_ids[seg.support_mask] == 0).all()
        assert (seg.instance_ids[1500:] > 0).all()
        # The network runs on the points in front of the support only.
        assert not seg.features[seg.support_mask].any() and seg.features[1500:].any(axis=1).all()
        results.append(seg)
        empty = segmenter.segment(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
        table_only = segmenter.segment(xyz[:1500], rgb[:1500])
        assert table_only.support_mask.all() and not table_only.instance_ids.any()
        assert not table_only.split_proposals.any()
        assert 'network' not in table_only.timings and not table_only.features.any()
        assert empty.instance_ids.shape == (0,) and empty.features.shape == (0, 64)
    np.testing.assert_allclose(results[0].features, results[1].features, atol=1e-4)
    assert np.array_equal(results[0].instance_ids, results[1].instance_ids)
    colourless = segmenter.segment(xyz, None)
    assert colourless.instance_ids.shape == (len(xyz),)


def test_missing_or_corrupt_model_files_raise_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / 'absent.pt'
    with pytest.raises(FileNotFoundError, match='absent.pt'):
        LearnedSegmenter(PipelineConfig(model_path=str(missing)).learned())
    with pytest.raises(FileNotFoundError, match="''"):
        load_network('')
    with pytest.raises(IsADirectoryError, match='is a directory'):
        load_network(tmp_path)
    for name in ('corrupt.pt', 'corrupt.onnx', 'weights.bin'):
        path = tmp_path / name
        path.write_bytes(b'\x80\x02not a model at all' * 10)
        with pytest.raises(ValueError, match=name):
            load_network(path, 'cpu')
    foreign = tmp_path / 'foreign.pt'
    torch.save({'weights': torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match='foreign.pt'):
        load_network(foreign, 'cpu')


def test_fragments_join_the_instance_they_touch_and_isolated_ones_stay_alone() -> None:
    # a chain 0-1-2-3-4 (cluster 1 = points 0..2, a 2-point sliver = 3..4) and point 5 alone
    labels = np.array([1, 1, 1, 2, 2, 3])
    knn_index = np.array([[0, 1], [1, 0], [2, 1], [3, 2], [4, 3], [5, -1]])
    out = absorb_fragments(labels, knn_index, min_size=3)
    np.testing.assert_array_equal(out, [1, 1, 1, 1, 1, 2])


# ---- split proposals -------------------------------------------------------------------------

def sphere_fronts(centres: list[tuple[float, float, float]], radius: float, per_sphere: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyz, normals (facing the sensor at the origin) and sphere index of the halves of
    spheres that face the sensor, as a depth camera sees them."""
    rng = np.random.default_rng(seed)
    xyz, normals, owner = [], [], []
    for index, centre in enumerate(centres):
        directions = rng.normal(size=(4 * per_sphere, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        facing = directions[directions[:, 2] < 0][:per_sphere]
        xyz.append(np.asarray(centre) + radius * facing)
        normals.append(facing)
        owner.append(np.full(len(facing), index))
    return (np.concatenate(xyz).astype(np.float32), np.concatenate(normals),
            np.concatenate(owner))


def split_inputs(xyz: np.ndarray, sides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings that shade from one direction (side 0) to another (side 1) over the
    2 cm around x = 0, as the boundary points between two touching objects do, and the k-NN
    edges of `xyz` no longer than 2 cm."""
    blend = np.clip(xyz[:, 0] / 0.02 + 0.5, 0, 1)[:, None] if sides is None else \
        sides[:, None].astype(float)
    embeddings = (1 - blend) * np.eye(16)[0] + blend * np.eye(16)[1]
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    knn = knn_graph(torch.from_numpy(xyz), 16).numpy()
    return embeddings, cluster_edges(xyz, knn, 0.02)


def test_touching_objects_merged_into_one_instance_are_proposed_for_a_split() -> None:
    # two 5 cm balls side by side, touching at x = 0: one instance, a valley between them
    xyz, normals, owner = sphere_fronts([(-0.05, 0, 1), (0.05, 0, 1)], 0.05, 1500)
    embeddings, edges = split_inputs(xyz, None)
    ids = np.ones(len(xyz), dtype=np.int64)
    proposals = propose_splits(ids, embeddings, edges, xyz, normals, 0.3)
    assert set(np.unique(proposals)) == {0, 1}
    leaving = proposals == 1
    agree = max(np.mean(leaving == (owner == 0)), np.mean(leaving == (owner == 1)))
    assert agree > 0.95


def test_faces_of_one_object_and_small_instances_are_not_proposed() -> None:
    # one 8 cm ball whose embeddings differ between its halves (a weak cut, as a box's two
    # faces may give): the halves meet convexly, so no split
    xyz, normals, _ = sphere_fronts([(0, 0, 1)], 0.08, 3000)
    embeddings, edges = split_inputs(xyz, xyz[:, 0] > 0)
    ids = np.ones(len(xyz), dtype=np.int64)
    assert not propose_splits(ids, embeddings, edges, xyz, normals, 0.3).any()
    # two touching balls too small to be worth splitting, and points of no instance
    xyz, normals, _ = sphere_fronts([(-0.05, 0, 1), (0.05, 0, 1)], 0.05, MIN_SPLIT_POINTS)
    embeddings, edges = split_inputs(xyz, None)
    for ids in (np.ones(len(xyz), dtype=np.int64), np.zeros(len(xyz), dtype=np.int64)):
        assert not propose_splits(ids, embeddings, edges, xyz, normals, 0.3).any()


def test_a_model_refuses_a_pipeline_at_another_resolution() -> None:
    from segvec3d_ros.names import bundled_model_path
    if not bundled_model_path().is_file():
        pytest.skip('models/segvec3d.onnx is absent')
    assert load_network(bundled_model_path(), 'cpu').config.voxel_size == 0.01
    LearnedSegmenter(PipelineConfig(device='cpu').learned())
    with pytest.raises(ValueError, match='trained at voxel_size 0.01 m but the pipeline runs '
                                         'at voxel_size 0.02 m'):
        LearnedSegmenter(PipelineConfig(device='cpu', voxel_size=0.02,
                                        cluster_tolerance=0.04).learned())


def test_a_training_run_records_its_resolution() -> None:
    from segvec3d_ros.training.train import TrainConfig
    assert TrainConfig(voxel_size=0.02).network_config().voxel_size == 0.02


def test_normals_without_open3d_are_open3d_s(monkeypatch):
    rng = np.random.default_rng(0)
    plane = np.column_stack([rng.uniform(-0.5, 0.5, (4000, 2)), rng.normal(1.0, 0.002, 4000)])
    sphere = rng.normal(size=(3000, 3))
    sphere = 0.1 * sphere / np.linalg.norm(sphere, axis=1, keepdims=True) + [0.2, 0.0, 0.8]
    lone = np.array([[3.0, 3.0, 3.0], [3.0, 3.0, 3.01]])     # under 3 neighbours
    xyz = np.vstack([plane, sphere, lone])
    with_open3d = estimate_normals(xyz, 0.05, 30)
    monkeypatch.setattr(features, '_open3d', lambda: None)
    without = estimate_normals(xyz, 0.05, 30)
    angle = np.degrees(np.arccos(np.clip((with_open3d * without).sum(axis=1), -1.0, 1.0)))
    assert np.percentile(angle, 99.9) < 0.01 and angle.max() < 1.0
    np.testing.assert_allclose(np.linalg.norm(without, axis=1), 1.0, atol=1e-9)
    assert (np.einsum('mk,mk->m', without, -xyz) >= 0).all()    # facing the sensor
    assert len(estimate_normals(np.zeros((0, 3)), 0.05, 30)) == 0
