"""DualDistill losses against hand-computed values (pure-Python references with `math`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sonodistill.errors import ConfigError
from sonodistill.losses.base import LossOutput, frobenius_distance
from sonodistill.losses.self_distill import (
    AttentionDistillationLoss,
    DualDistillLoss,
    RelationDistillationLoss,
    SelfDistillationLoss,
    frame_relation_matrix,
    resample_maps,
    resample_time,
    resampled_relation_matrix,
    time_resample_matrix,
)
from sonodistill.models.stage_heads import AuxiliaryHeads, StageAttentionModules
from sonodistill.stage_indices import validate_student_stages

# ------------------------------------------------------------------------------------------ pure-Python refs


def _softmax(row: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def _ce(row: list[float], label: int) -> float:
    return -math.log(_softmax(row)[label])


def _kl(teacher: list[float], student: list[float], tau: float) -> float:
    pt, ps = _softmax(teacher, tau), _softmax(student, tau)
    return sum(a * math.log(a / b) for a, b in zip(pt, ps))


STUDENT = [[1.0, 2.0, 0.0], [0.0, 0.5, -1.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 3.0, 0.0]]
LABELS = [1, 0]


# ------------------------------------------------------------------------------------------------------- SD


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_sd_matches_hand_computed_ce_and_kl(tau: float, alpha: float) -> None:
    ce = sum(_ce(r, y) for r, y in zip(STUDENT, LABELS)) / 2 + sum(_ce(r, y) for r, y in zip(TEACHER, LABELS)) / 2
    kl = tau**2 * sum(_kl(t, s, tau) for t, s in zip(TEACHER, STUDENT)) / 2
    crit = SelfDistillationLoss(alpha=alpha, temperature=tau)
    out = crit([torch.tensor(STUDENT), torch.tensor(TEACHER)], torch.tensor(LABELS))
    assert isinstance(out, LossOutput)
    loss, parts = out
    assert loss.item() == pytest.approx(ce + alpha * kl, abs=1e-6)
    assert parts["ce"].item() == pytest.approx(ce, abs=1e-6)
    assert parts["kl"].item() == pytest.approx(kl, abs=1e-6)
    assert parts["kl/0"].item() == pytest.approx(kl, abs=1e-6)
    assert set(parts) == {"ce/0", "ce/1", "kl/0", "ce", "kl", "total"}
    assert all(not p.requires_grad and p.dim() == 0 for p in parts.values())


def test_sd_uniform_logits_give_log3_and_zero_kl() -> None:
    zeros = torch.zeros(2, 3)
    loss, parts = SelfDistillationLoss(alpha=1.0)([zeros, zeros.clone(), zeros.clone()], torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(3 * math.log(3), abs=1e-6)
    assert parts["kl"].item() == pytest.approx(0.0, abs=1e-7)


def test_sd_kl_direction_is_teacher_to_student() -> None:
    """KL(p_K || p_i) = sum p_K log(p_K / p_i), not the reverse (asymmetric on this case)."""
    forward_kl = sum(_kl(t, s, 1.0) for t, s in zip(TEACHER, STUDENT)) / 2
    reverse_kl = sum(_kl(s, t, 1.0) for t, s in zip(TEACHER, STUDENT)) / 2
    assert abs(forward_kl - reverse_kl) > 1e-2
    crit = SelfDistillationLoss(alpha=1.0, temperature=1.0)
    _, parts = crit([torch.tensor(STUDENT), torch.tensor(TEACHER)], torch.tensor(LABELS))
    assert parts["kl"].item() == pytest.approx(forward_kl, abs=1e-6)


def test_sd_temperature_scales_kl_by_tau_squared() -> None:
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    _, p1 = SelfDistillationLoss(temperature=3.0)([student, teacher], torch.tensor(LABELS))
    # Same softened distributions at tau=1 after dividing the logits by 3: KL differs exactly by the tau^2 factor.
    _, p2 = SelfDistillationLoss(temperature=1.0)([student / 3, teacher / 3], torch.tensor(LABELS))
    assert p1["kl"].item() == pytest.approx(9.0 * p2["kl"].item(), rel=1e-6)


def test_sd_teacher_detached_gets_only_ce_gradient() -> None:
    y = torch.tensor(LABELS)
    expected = (F.softmax(torch.tensor(TEACHER), dim=1) - F.one_hot(y, 3)) / 2  # d mean CE / d logits
    grads = {}
    for detach in (True, False):
        s = torch.tensor(STUDENT, requires_grad=True)
        t = torch.tensor(TEACHER, requires_grad=True)
        loss, _ = SelfDistillationLoss(alpha=1.0, temperature=2.0, detach_teacher=detach)([s, t], y)
        loss.backward()
        grads[detach] = t.grad
        assert s.grad is not None and s.grad.abs().sum() > 0
    torch.testing.assert_close(grads[True], expected)
    assert not torch.allclose(grads[False], expected)


def test_sd_rejects_bad_inputs() -> None:
    with pytest.raises(ConfigError):
        SelfDistillationLoss(temperature=0.0)
    with pytest.raises(ConfigError):
        SelfDistillationLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="B x K"):
        SelfDistillationLoss()([torch.zeros(2, 3), torch.zeros(2, 4)], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="y must have shape"):
        SelfDistillationLoss()([torch.zeros(2, 3)], torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------------------------------- RGSD


def _frames(vectors: list[list[float]]) -> torch.Tensor:
    """Frame vectors `T x C` -> a `1 x C x T x 1 x 1` stage feature."""
    return torch.tensor(vectors, dtype=torch.float32).t().reshape(1, len(vectors[0]), len(vectors), 1, 1)


def test_relation_matrix_orthogonal_and_parallel_frames() -> None:
    torch.testing.assert_close(frame_relation_matrix(_frames([[1, 0], [0, 1]])), torch.eye(2)[None])
    torch.testing.assert_close(frame_relation_matrix(_frames([[1, 0], [2, 0]])), torch.ones(1, 2, 2))
    # cos(45 deg) with spatial extent: each frame flattened over C*H*W.
    feat = torch.zeros(1, 1, 2, 1, 2)
    feat[0, 0, 0, 0] = torch.tensor([1.0, 0.0])
    feat[0, 0, 1, 0] = torch.tensor([3.0, 3.0])
    r = frame_relation_matrix(feat)
    assert r[0, 0, 1].item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_rgsd_frobenius_distance_hand_value() -> None:
    student = torch.cat([_frames([[1, 0], [0, 1]]), _frames([[1, 0], [5, 0]])])  # R = I, R = ones
    teacher = torch.cat([_frames([[1, 0], [2, 0]]), _frames([[0, 3], [0, 1]])])  # R = ones, R = ones
    loss, parts = RelationDistillationLoss()([student, teacher])
    assert loss.item() == pytest.approx((math.sqrt(2) + 0.0) / 2, abs=1e-6)
    assert parts["0"].item() == pytest.approx(math.sqrt(2) / 2, abs=1e-6)
    assert set(parts) == {"0", "total"}


def test_rgsd_temporal_resampling_averages_pairs() -> None:
    # T=8 student, T=4 teacher: area resampling averages frames (0,1), (2,3), (4,5), (6,7).
    student = _frames([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [1, 1], [2, 0], [0, 2]])  # means: e1, e2, 1+1, 1+1
    teacher = _frames([[1, 0]] * 4)  # R_K = ones
    s = 1 / math.sqrt(2)
    expected_r = torch.tensor([[1, 0, s, s], [0, 1, s, s], [s, s, 1, 1], [s, s, 1, 1]])
    torch.testing.assert_close(frame_relation_matrix(resample_time(student, 4))[0], expected_r)
    loss, _ = RelationDistillationLoss()([student, teacher])
    assert loss.item() == pytest.approx(math.sqrt(2 + 8 * (1 - s) ** 2), abs=1e-6)


def test_resample_time_modes_on_hand_case() -> None:
    x = torch.tensor([0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]).reshape(1, 1, 8, 1, 1)
    torch.testing.assert_close(resample_time(x, 2, "area").flatten(), torch.tensor([1.0, 0.0]))
    # linear (align_corners=False) samples positions 1.5 and 5.5: means of frames (1, 2) and (5, 6).
    torch.testing.assert_close(resample_time(x, 2, "linear").flatten(), torch.tensor([0.0, 0.0]))
    # Non-integer ratio 3 -> 2: adaptive windows [0, 1] and [1, 2].
    y = torch.tensor([0.0, 2.0, 6.0]).reshape(1, 1, 3, 1, 1)
    torch.testing.assert_close(resample_time(y, 2, "area").flatten(), torch.tensor([1.0, 4.0]))
    assert resample_time(x, 8) is x


@pytest.mark.parametrize("mode", ["area", "linear"])
@pytest.mark.parametrize(("t_in", "t_out"), [(8, 4), (7, 3), (3, 5), (4, 4)])
def test_gram_path_equals_resampling_the_feature(mode: str, t_in: int, t_out: int) -> None:
    g = torch.Generator().manual_seed(t_in * 10 + t_out)
    feat = torch.randn(2, 3, t_in, 4, 5, generator=g, dtype=torch.float64)
    expected = frame_relation_matrix(resample_time(feat, t_out, mode))
    torch.testing.assert_close(resampled_relation_matrix(feat, t_out, mode), expected)
    a = time_resample_matrix(t_in, t_out, mode, dtype=torch.float64)
    assert a.shape == (t_out, t_in)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(t_out, dtype=torch.float64))  # weights of a mean


def test_relation_matrix_zero_frame_gives_zero_row() -> None:
    r = frame_relation_matrix(_frames([[0, 0], [1, 0], [2, 0]]))[0]
    torch.testing.assert_close(r, torch.tensor([[0.0, 0, 0], [0, 1, 1], [0, 1, 1]]))


def test_rgsd_refuses_single_frame_teacher() -> None:
    with pytest.raises(ValueError, match="T=1"):
        RelationDistillationLoss()([torch.rand(1, 2, 4, 2, 2), torch.rand(1, 2, 1, 2, 2)])
    with pytest.raises(ConfigError):
        RelationDistillationLoss(common_t=1)
    loss, _ = RelationDistillationLoss(common_t=2)([_frames([[1, 0], [0, 1]]), _frames([[1, 0]])])
    assert loss.item() == pytest.approx(math.sqrt(2), abs=1e-6)  # teacher repeated: R_K = ones


def test_rgsd_fixed_common_t_resamples_teacher_too() -> None:
    student = _frames([[1, 0], [1, 0], [0, 1], [0, 1]])  # -> e1, e2
    teacher = _frames([[1, 0], [0, 1], [0, 1], [1, 0]])  # -> (1,1), (1,1): R = ones
    loss, _ = RelationDistillationLoss(common_t=2)([student, teacher])
    assert loss.item() == pytest.approx(math.sqrt(2), abs=1e-6)
    with pytest.raises(ConfigError):
        RelationDistillationLoss(common_t=0)


def test_rgsd_teacher_detach_and_finite_grad_at_zero_distance() -> None:
    torch.manual_seed(0)
    for detach in (True, False):
        s = torch.randn(2, 3, 4, 2, 2, requires_grad=True)
        t = torch.randn(2, 5, 4, 1, 1, requires_grad=True)
        loss, _ = RelationDistillationLoss(detach_teacher=detach)([s, t])
        loss.backward()
        assert s.grad.abs().sum() > 0
        assert (t.grad is None) == detach
    same = torch.randn(2, 3, 4, 2, 2, requires_grad=True)
    loss, _ = RelationDistillationLoss()([same, same.detach().clone()])
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(same.grad).all()


# ----------------------------------------------------------------------------------------------------- AGSD


def test_resample_maps_sizes_and_modes() -> None:
    m = torch.rand(2, 8, 16, 16)
    assert resample_maps(m, (2, 4, 4)).shape == (2, 2, 4, 4)
    torch.testing.assert_close(resample_maps(m, (2, 4, 4), "area"), F.avg_pool3d(m[:, None], 4)[:, 0])
    assert resample_maps(m, (4, 32, 32), "linear").shape == (2, 4, 32, 32)
    t = torch.tensor([0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0]).reshape(1, 8, 1, 1).expand(1, 8, 3, 3)
    torch.testing.assert_close(resample_maps(t, (2, 3, 3), "area")[0, :, 0, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(resample_maps(t, (2, 3, 3), "linear")[0, :, 0, 0], torch.tensor([0.0, 0.0]))


def test_agsd_hand_value_with_resampling() -> None:
    student = torch.zeros(2, 4, 4, 4)
    student[0] = 1.0  # sample 0: resampled map all ones; sample 1: all zeros
    teacher = torch.full((2, 2, 2, 2), 0.5)
    loss, parts = AttentionDistillationLoss()([student, teacher])
    per_sample = math.sqrt(8 * 0.25)  # 8 cells, each differing by 0.5
    assert loss.item() == pytest.approx(per_sample, abs=1e-6)
    assert set(parts) == {"0", "total"}
    loss_fixed, _ = AttentionDistillationLoss(size=(1, 1, 1))([student, teacher])
    assert loss_fixed.item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ConfigError):
        AttentionDistillationLoss(size=(1, 2))


def test_agsd_teacher_detach() -> None:
    for detach in (True, False):
        s = torch.rand(2, 4, 6, 6, requires_grad=True)
        t = torch.rand(2, 2, 3, 3, requires_grad=True)
        loss, _ = AttentionDistillationLoss(detach_teacher=detach)([s, t])
        loss.backward()
        assert s.grad.abs().sum() > 0
        assert (t.grad is None) == detach


# ------------------------------------------------------------------------------------ stage modules, stages


def test_validate_student_stages() -> None:
    for ok in [(1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3), (3, 1)]:
        assert validate_student_stages(ok, 4) == tuple(sorted(ok))
    for bad in [(), (0,), (4,), (5,), (-1,), (1, 1), (1.0,), (True,)]:
        with pytest.raises(ConfigError):
            validate_student_stages(bad, 4)
    with pytest.raises(ConfigError):
        validate_student_stages((1,), 1)
    with pytest.raises(ConfigError):
        DualDistillLoss(student_stages=(4,))
    with pytest.raises(ConfigError):
        AuxiliaryHeads([2, 3, 4], num_classes=2, stages=(3,))


# ---------------------------------------------------------------------------------------------------- total


def _toy_batch(seed: int = 0, b: int = 2):
    g = torch.Generator().manual_seed(seed)
    stages = [torch.randn(b, 4 * 2**i, 16 // 2**i, 16 // 2**i, 16 // 2**i, generator=g) for i in range(4)]
    logits = [torch.randn(b, 3, generator=g) for _ in range(3)]
    final = torch.randn(b, 3, generator=g)
    maps = StageAttentionModules(4, (1, 2, 3))(stages)
    y = torch.arange(b) % 3
    return logits, final, stages, maps, y


def test_total_is_weighted_sum_of_terms() -> None:
    logits, final, stages, maps, y = _toy_batch()
    crit = DualDistillLoss(alpha=0.7, beta=2.0, gamma=3.0, temperature=2.0)
    loss, parts = crit(logits, final, stages, maps, y)
    sd, _ = SelfDistillationLoss(0.7, 2.0)([*logits, final], y)
    rgsd, _ = RelationDistillationLoss()(stages)
    agsd, _ = AttentionDistillationLoss()(maps)
    assert loss.item() == pytest.approx((sd + 2.0 * rgsd + 3.0 * agsd).item(), rel=1e-6)
    assert parts["total"].item() == pytest.approx(loss.item())
    assert parts["ce_final"].item() == pytest.approx(F.cross_entropy(final, y).item(), rel=1e-6)
    expected_keys = {"ce_final", "sd", "sd/ce", "sd/kl", "rgsd", "agsd", "total"}
    expected_keys |= {f"sd/ce/s{i}" for i in (1, 2, 3, 4)} | {f"sd/kl/s{i}" for i in (1, 2, 3)}
    expected_keys |= {f"rgsd/s{i}" for i in (1, 2, 3)} | {f"agsd/s{i}" for i in (1, 2, 3)}
    assert set(parts) == expected_keys


def test_switches_change_terms_and_parts() -> None:
    logits, final, stages, maps, y = _toy_batch()
    ce = F.cross_entropy(final, y).item()
    loss, parts = DualDistillLoss(use_sd=False, use_rgsd=False, use_agsd=False)([], final, None, None, y)
    assert loss.item() == pytest.approx(ce, rel=1e-6)
    assert set(parts) == {"ce_final", "total"}
    rgsd, _ = RelationDistillationLoss()(stages)
    loss, parts = DualDistillLoss(use_sd=False, use_agsd=False, beta=0.5)([], final, stages, None, y)
    assert loss.item() == pytest.approx(ce + 0.5 * rgsd.item(), rel=1e-6)
    assert "sd" not in parts and "agsd" not in parts and "rgsd/s1" in parts
    _, parts = DualDistillLoss(use_rgsd=False)(logits, final, None, maps, y)
    assert "rgsd" not in parts and "sd/kl/s3" in parts and "agsd/s2" in parts


def test_student_stage_subset_uses_the_right_stages() -> None:
    _, final, stages, _, y = _toy_batch()
    maps = StageAttentionModules(4, (2,))(stages)
    logits = [torch.randn(2, 3)]
    loss, parts = DualDistillLoss(student_stages=(2,))(logits, final, stages, maps, y)
    rgsd, _ = RelationDistillationLoss()([stages[1], stages[3]])
    assert parts["rgsd/s2"].item() == pytest.approx(rgsd.item(), rel=1e-6)
    assert "rgsd/s1" not in parts and "sd/ce/s4" in parts
    with pytest.raises(ValueError, match="attention maps"):
        DualDistillLoss(student_stages=(2,))(logits, final, stages, maps[:1], y)
    with pytest.raises(ValueError, match="stage logits"):
        DualDistillLoss(student_stages=(2,))([], final, stages, maps, y)


def test_per_sample_mean_is_data_parallel_consistent() -> None:
    """Full-batch loss = mean of the two half-batch losses (what DDP's gradient averaging assumes)."""
    logits, final, stages, maps, y = _toy_batch(seed=1, b=4)
    crit = DualDistillLoss()
    full, _ = crit(logits, final, stages, maps, y)
    halves = [
        crit([c[sl] for c in logits], final[sl], [s[sl] for s in stages], [m[sl] for m in maps], y[sl])[0]
        for sl in (slice(0, 2), slice(2, 4))
    ]
    assert full.item() == pytest.approx((halves[0] + halves[1]).item() / 2, rel=1e-5)


def test_backward_reaches_backbone_features_and_attention_convs() -> None:
    logits, final, stages, _, y = _toy_batch()
    stages = [s.requires_grad_() for s in stages]
    mods = StageAttentionModules(4, (1, 2, 3))
    loss, _ = DualDistillLoss()(logits, final, stages, mods(stages), y)
    loss.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in stages[:3])
    assert all(m.conv.weight.grad.abs().sum() > 0 for m in mods.attention[:3])
    assert mods.attention[3].conv.weight.grad is None  # the teacher map is detached: its conv gets no gradient


def test_non_finite_inputs_stay_non_finite() -> None:
    logits, final, stages, maps, y = _toy_batch()
    bad = [s.clone() for s in stages]
    bad[0][0, 0, 0, 0, 0] = float("nan")
    loss, parts = DualDistillLoss(use_sd=False, use_agsd=False)([], final, bad, None, y)
    assert torch.isnan(loss) and torch.isnan(parts["rgsd/s1"])
    inf_logits = [logits[0].clone(), *logits[1:]]
    inf_logits[0][0, 0] = float("inf")
    loss, _ = DualDistillLoss(use_rgsd=False)(inf_logits, final, None, maps, y)
    assert not torch.isfinite(loss)
    bad_maps = [maps[0].detach().clone(), *maps[1:]]
    bad_maps[0][0, 0, 0, 0] = float("inf")
    loss, _ = AttentionDistillationLoss()(bad_maps)
    assert not torch.isfinite(loss)


def test_frobenius_distance_shape_check() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        frobenius_distance(torch.zeros(2, 3), torch.zeros(2, 4))
    assert frobenius_distance(torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [0.0, 0.0]])).item() == pytest.approx(2.5)


def test_half_precision_features_reduce_in_float32() -> None:
    logits, final, stages, maps, y = _toy_batch()
    ref, _ = DualDistillLoss(use_sd=False)([], final, stages, maps, y)
    half, _ = DualDistillLoss(use_sd=False)(
        [], final, [s.bfloat16() for s in stages], [m.detach().bfloat16() for m in maps], y
    )
    assert half.dtype == torch.float32
    assert frame_relation_matrix(stages[0].bfloat16()).dtype == torch.float32
    assert half.item() == pytest.approx(ref.item(), rel=2e-2)
