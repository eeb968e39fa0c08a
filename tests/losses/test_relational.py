"""Response and relational KD against explicit loops over pairs and triplets of hand-made embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from sonodistill.losses.relational import (
    MutualDistillLoss,
    RelationalKD,
    ResponseKD,
    RKDAngleLoss,
    RKDDistanceLoss,
)

# four points in 2-D (a kite) and three in 3-D, both hand-made
STUDENT = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.5, 1.5]])
TEACHER = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def ref_distance(s: torch.Tensor, t: torch.Tensor) -> float:
    n = len(s)

    def dists(e):
        e = e.tolist()
        d = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(e[i], e[j]))) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mean for j in range(n)] for i in range(n)]

    ds, dt = dists(s), dists(t)
    return sum(_huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2


def ref_angle(s: torch.Tensor, t: torch.Tensor) -> float:
    n = len(s)

    def cos_at(e, i, j, k):  # angle at e_j between e_i - e_j and e_k - e_j; degenerate -> 0
        if i == j or k == j:
            return 0.0
        u = [a - b for a, b in zip(e[i], e[j])]
        v = [a - b for a, b in zip(e[k], e[j])]
        return sum(a * b for a, b in zip(u, v)) / (math.hypot(*u) * math.hypot(*v))

    es, et = s.tolist(), t.tolist()
    total = sum(_huber(cos_at(es, i, j, k) - cos_at(et, i, j, k))
                for i in range(n) for j in range(n) for k in range(n))
    return total / n**3


def ref_response_kd(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps = [math.exp(x / tau) for x in srow]
        pt = [math.exp(x / tau) for x in trow]
        ps = [x / sum(ps) for x in ps]
        pt = [x / sum(pt) for x in pt]
        total += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    return tau**2 * total / len(s)


def test_distance_matches_pair_loop():
    loss, parts = RKDDistanceLoss()(STUDENT, TEACHER)
    assert loss.item() == pytest.approx(ref_distance(STUDENT, TEACHER), rel=1e-5)
    assert loss.item() > 1e-3  # the two shapes differ, the reference is not trivially 0
    assert parts["rkd_distance"].item() == pytest.approx(loss.item())


def test_angle_matches_triplet_loop():
    loss, _ = RKDAngleLoss()(STUDENT, TEACHER)
    assert loss.item() == pytest.approx(ref_angle(STUDENT, TEACHER), rel=1e-5)
    assert loss.item() > 1e-3
    # three points: one non-degenerate triangle, hand check of one angle (right angle at the origin)
    tri = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert RKDAngleLoss()(tri, tri)[0].item() == pytest.approx(0.0)


def test_relations_are_invariant_to_scale_rotation_and_translation():
    c, s = math.cos(0.7), math.sin(0.7)
    rot = torch.tensor([[c, -s], [s, c]])
    moved = 3.0 * STUDENT @ rot.t() + torch.tensor([5.0, -2.0])
    assert RKDDistanceLoss()(moved, STUDENT)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert RKDAngleLoss()(moved, STUDENT)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_response_kd_matches_loop_and_is_zero_for_equal_logits():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    loss, _ = ResponseKD(temperature=2.0)(s, t)
    assert loss.item() == pytest.approx(ref_response_kd(s, t, 2.0), rel=1e-5)
    assert ResponseKD(3.0)(t, t)[0].item() == pytest.approx(0.0, abs=1e-6)


def test_combined_losses():
    s_log = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 2.0], [3.0, 0.0]])
    t_log = torch.tensor([[0.5, 0.5], [1.0, 0.0], [2.0, 1.0], [0.0, 0.0]])
    rd = ref_distance(STUDENT, TEACHER) + 2.5 * ref_angle(STUDENT, TEACHER)
    loss, parts = RelationalKD(b1=2.5)(STUDENT, TEACHER)
    assert loss.item() == pytest.approx(rd, rel=1e-5)
    loss, parts = MutualDistillLoss(b1=2.5, b2=0.3, temperature=4.0)(STUDENT, TEACHER, s_log, t_log)
    assert loss.item() == pytest.approx(rd + 0.3 * ref_response_kd(s_log, t_log, 4.0), rel=1e-5)
    assert set(parts) == {"mutual", "rd/relational", "rd/distance", "rd/angle", "kl"}


@pytest.mark.parametrize("detach", [True, False])
def test_teacher_gradient_switch(detach):
    s = STUDENT.clone().requires_grad_(True)
    t = (TEACHER[:, :2] * 1.3).requires_grad_(True)
    s_log = torch.randn(4, 3, requires_grad=True)
    t_log = torch.randn(4, 3, requires_grad=True)
    loss, _ = MutualDistillLoss(detach_teacher=detach)(s, t, s_log, t_log)
    loss.backward()
    assert s.grad is not None and s_log.grad is not None
    assert (t.grad is None) == detach and (t_log.grad is None) == detach


def test_input_errors():
    with pytest.raises(ValueError, match="same B"):
        RKDDistanceLoss()(torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="at least 3"):
        RKDAngleLoss()(torch.randn(2, 2), torch.randn(2, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        ResponseKD()(torch.randn(2, 3), torch.randn(2, 4))
