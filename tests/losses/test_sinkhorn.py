"""Sinkhorn-Knopp against SwAV's loop and hand cases; the cluster distillation loss and its gradient path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sonodistill.losses.sinkhorn import SemanticClusterDistillationLoss, sinkhorn_knopp
from sonodistill.models.projection import PrototypeHead


def swav_reference(out: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn for one process, in float64, written out as in the paper's code."""
    Q = torch.exp(out.double() / epsilon).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iters):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def test_matches_swav_reference():
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(12, 4), dim=1) @ F.normalize(torch.randn(7, 4), dim=1).t()
    for iters in (1, 3, 10):
        q = sinkhorn_knopp(scores, epsilon=0.05, n_iters=iters)
        torch.testing.assert_close(q.double(), swav_reference(scores, 0.05, iters), rtol=1e-4, atol=1e-6)


def test_symmetric_two_by_two_is_row_softmax():
    # rows and columns already balanced: Sinkhorn keeps softmax(scores / eps) per row
    q = sinkhorn_knopp(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0, n_iters=3)
    e = math.e
    expected = torch.tensor([[e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]])
    torch.testing.assert_close(q, expected)


def test_identical_samples_are_spread_equally():
    # every sample prefers prototype 0, but the equal-partition constraint splits each one 1/K per prototype
    scores = torch.tensor([[0.9, 0.1, -0.5]] * 6)
    q = sinkhorn_knopp(scores, epsilon=0.05, n_iters=1)
    torch.testing.assert_close(q, torch.full((6, 3), 1 / 3))


def test_converges_to_doubly_stochastic():
    torch.manual_seed(1)
    B, K = 10, 5
    q = sinkhorn_knopp(torch.randn(B, K) * 0.3, epsilon=0.05, n_iters=500)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(B))  # rows: exact after the last step
    torch.testing.assert_close(q.sum(dim=0), torch.full((K,), B / K), rtol=1e-4, atol=1e-4)
    assert bool((q >= 0).all())
    # few iterations: rows still exact, columns only approximately balanced
    q3 = sinkhorn_knopp(torch.randn(B, K) * 3, epsilon=0.05, n_iters=3)
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(B))


def test_stable_for_large_scores_and_shift_invariant():
    torch.manual_seed(2)
    scores = torch.randn(6, 4)
    big = scores * 50 + 1000  # exp(1000 / 0.05) overflows without subtracting the max
    q = sinkhorn_knopp(big, epsilon=0.05, n_iters=3)
    assert bool(torch.isfinite(q).all())
    torch.testing.assert_close(q.sum(dim=1), torch.ones(6))
    torch.testing.assert_close(sinkhorn_knopp(scores + 7.0, 0.05, 3), sinkhorn_knopp(scores, 0.05, 3))
    # cosine scores with epsilon 0.01: exp(100) overflows float32 but not the float64 reference
    cos = F.normalize(torch.randn(8, 3), dim=1) @ F.normalize(torch.randn(5, 3), dim=1).t()
    torch.testing.assert_close(sinkhorn_knopp(cos, 0.01, 3).double(), swav_reference(cos, 0.01, 3),
                               rtol=1e-4, atol=1e-6)


def test_no_gradient_and_errors():
    s = torch.randn(4, 3, requires_grad=True)
    q = sinkhorn_knopp(s)
    assert not q.requires_grad and q.grad_fn is None
    with pytest.raises(ValueError, match="B x K"):
        sinkhorn_knopp(torch.randn(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        sinkhorn_knopp(torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="n_iters >= 1"):
        sinkhorn_knopp(torch.randn(2, 2), n_iters=0)


def test_cluster_distillation_loss_value_and_gradient_path():
    torch.manual_seed(3)
    B, K, tau = 6, 4, 0.1
    sv = torch.randn(B, K, requires_grad=True)
    si = torch.randn(B, K, requires_grad=True)
    crit = SemanticClusterDistillationLoss(temperature=tau, epsilon=0.05, n_iters=3)
    loss, parts = crit(sv, si)
    qv = swav_reference(sv.detach(), 0.05, 3).float()
    qi = swav_reference(si.detach(), 0.05, 3).float()

    def ce(scores, target):  # explicit loop over samples and prototypes
        total = 0.0
        for b in range(B):
            logits = [x / tau for x in scores[b].tolist()]
            m = max(logits)
            lse = m + math.log(sum(math.exp(x - m) for x in logits))
            total += -sum(t * (x - lse) for t, x in zip(target[b].tolist(), logits))
        return total / B

    assert loss.item() == pytest.approx(ce(sv, qi) + ce(si, qv), rel=1e-4)
    assert parts["ce_video_to_image_codes"].item() == pytest.approx(ce(sv, qi), rel=1e-4)
    loss.backward()
    # with q a constant, dCE(s_v, q_i)/ds_v = (softmax(s_v / tau) - q_i) / (tau B); any gradient through
    # q_v (which depends on s_v) would add to this
    torch.testing.assert_close(sv.grad, (torch.softmax(sv.detach() / tau, 1) - qi) / (tau * B), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(si.grad, (torch.softmax(si.detach() / tau, 1) - qv) / (tau * B), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        crit(torch.randn(3, 4), torch.randn(3, 5))


def test_prototype_head_cosine_scores():
    head = PrototypeHead(3, 5)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[2.0, 0, 0], [0, 3, 0], [0, 0, 1], [1, 1, 0], [-1, 0, 0]]))
    scores = head(torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 0, 0, r, -1], [0, r, r, 0.5, 0]])
    torch.testing.assert_close(scores, expected)
    scores.sum().backward()
    assert head.prototypes.grad is not None
