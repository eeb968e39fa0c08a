"""Video aggregators: shapes, masking, dual-VLAD normalisation and frame weights, k-means initialisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sonodistill.errors import ConfigError
from sonodistill.models.aggregators import AGGREGATORS, DualVLAD, NetVLAD, build_aggregator

B, T, D, K = 3, 6, 8, 4


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False  # a one-frame video
    return x, mask


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_shapes_and_padding_is_ignored(name):
    torch.manual_seed(0)
    agg = build_aggregator(name, D, K).eval()
    x, mask = _inputs()
    out = agg(x, mask)
    assert out.shape == (B, K) and torch.isfinite(out).all()
    assert agg(x).shape == (B, K)  # no mask: every frame valid
    # garbage (even NaN) in padded frames changes nothing
    y = x.clone()
    y[~mask] = float("nan")
    torch.testing.assert_close(agg(y, mask), out)
    # a video with its padding cut off gives the same output as padded
    torch.testing.assert_close(agg(x[1:2, :4]), out[1:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(agg(x[2:3, :1]), out[2:3], rtol=1e-5, atol=1e-6)


def test_padding_position_does_not_matter_for_bilstm():
    torch.manual_seed(0)
    agg = build_aggregator("bilstm", D, K).eval()
    x, _ = _inputs()
    m = torch.tensor([[True, True, False, True, False, False]])
    compact = x[:1, [0, 1, 3]]
    torch.testing.assert_close(agg(x[:1], m), agg(compact), rtol=1e-5, atol=1e-6)


def test_mask_without_valid_frame_is_an_error():
    agg = build_aggregator("dual_vlad", D, K)
    x, mask = _inputs()
    mask[0] = False
    with pytest.raises(ValueError, match="video 0 .*no valid frame"):
        agg(x, mask)


def test_dual_vlad_descriptor_is_l2_normalised_and_intra_normalised():
    torch.manual_seed(1)
    agg = DualVLAD(D, num_classes=3, clusters=K).eval()
    x, mask = _inputs()
    v = agg.embed(x, mask)
    assert v.shape == (B, K * D)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(B))
    # every cluster block has the same norm 1/sqrt(K) (intra-normalised, then the global L2)
    blocks = v.view(B, K, D).norm(dim=2)
    torch.testing.assert_close(blocks, torch.full((B, K), K ** -0.5), rtol=1e-4, atol=1e-5)
    # the classifier sees exactly this descriptor
    torch.testing.assert_close(agg(x, mask), agg.fc(v))


def test_dual_vlad_frame_weights_sum_to_one_over_valid_frames():
    torch.manual_seed(2)
    agg = DualVLAD(D, K, temperature=0.5)
    x, mask = _inputs()
    w = agg.frame_weights(x, mask)
    assert w.shape == (B, T)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(B))
    assert (w[~mask] == 0).all() and (w[mask] > 0).all()
    # the temperature sharpens: same scores at a lower temperature are further from uniform
    sharp = DualVLAD(D, K, temperature=0.05)
    sharp.load_state_dict(agg.state_dict())
    ws = sharp.frame_weights(x, mask)
    assert ws[0].max() > w[0].max()


def test_netvlad_matches_loop_reference():
    torch.manual_seed(3)
    agg = NetVLAD(D, num_classes=2, clusters=3, normalize_input=False).eval()
    x, mask = _inputs()
    got = agg.embed(x, mask)
    for b in range(B):
        xs = x[b][mask[b]]
        a = torch.softmax(xs @ agg.assign.weight.T + agg.assign.bias, dim=1)
        v = torch.stack([(a[:, k:k + 1] * (xs - agg.centroids[k])).sum(0) for k in range(3)])
        v = F.normalize(F.normalize(v, dim=1).flatten(), dim=0)
        torch.testing.assert_close(got[b], v, rtol=1e-5, atol=1e-6)


def test_dual_vlad_weights_residuals_by_frame_assignment():
    torch.manual_seed(4)
    agg = DualVLAD(D, num_classes=2, clusters=2, normalize_input=False).eval()
    x, mask = _inputs()
    got = agg.embed(x, mask)
    s = agg.frame_weights(x, mask)
    for b in range(B):
        xs, sb = x[b][mask[b]], s[b][mask[b]]
        a = torch.softmax(xs @ agg.assign.weight.T + agg.assign.bias, dim=1) * sb[:, None]
        v = torch.stack([(a[:, k:k + 1] * (xs - agg.centroids[k])).sum(0) for k in range(2)])
        v = F.normalize(F.normalize(v, dim=1).flatten(), dim=0)
        torch.testing.assert_close(got[b], v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [NetVLAD, DualVLAD])
def test_kmeans_initialises_centroids(cls):
    rng = np.random.default_rng(0)
    centres = np.eye(D)[:3] * 5.0
    feats = np.concatenate([c + 0.05 * rng.standard_normal((40, D)) for c in centres]).astype(np.float32)
    agg = cls(D, num_classes=3, normalize_input=False)  # clusters = number of classes by default
    assert agg.clusters == 3 and not bool(agg.centroids_initialised)
    agg.init_centroids(feats, seed=0)
    got = agg.centroids.detach().numpy()
    # each true centre has a learned centroid within the noise level (order is arbitrary)
    dist = np.linalg.norm(got[:, None] - centres[None], axis=2)
    assert np.allclose(np.sort(dist.min(axis=0)), 0, atol=0.1)
    assert bool(agg.centroids_initialised)
    torch.testing.assert_close(agg.assign.weight, 2 * agg.alpha * agg.centroids)
    # with the NetVLAD initialisation a frame is assigned to its nearest centroid
    a = agg.cluster_assignment(torch.from_numpy(feats[:1]))
    assert int(a.argmax()) == int(np.argmin(np.linalg.norm(got - feats[0], axis=1)))


def test_build_aggregator_rejects_unknown():
    with pytest.raises(ConfigError, match="unknown aggregator"):
        build_aggregator("transformer", D, K)
    with pytest.raises(ConfigError, match="unknown option"):
        build_aggregator("mean", D, K, clusters=3)
