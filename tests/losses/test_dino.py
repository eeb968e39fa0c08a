"""DINOLoss against a hand-written loop over views and samples; centre update; collapse diagnostics; DDP centre."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

from sonodistill.losses.dino import DINOLoss, dino_collapse_diagnostics, is_collapsed
from sonodistill.models.projection import DINOHead, cancel_last_layer_gradients
from sonodistill.recipes.schedules import ScheduleRangeError, teacher_temp_schedule
from tests.gloo import run_two_processes


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(x - m) for x in row]
    z = sum(e)
    return [x / z for x in e]


def reference_dino(student, teacher, center, n_global, n_views, tau_s, tau_t):
    """The paper's loss, written with explicit loops: views x views (skip same view) x samples x dims."""
    s = student.tolist()
    t = teacher.tolist()
    c = center.reshape(-1).tolist()
    batch = len(t) // n_global
    total, pairs = 0.0, 0
    for iq in range(n_global):
        for v in range(n_views):
            if v == iq:
                continue
            pair = 0.0
            for b in range(batch):
                p_t = _softmax([(x - ci) / tau_t for x, ci in zip(t[iq * batch + b], c)])
                p_s = _softmax([x / tau_s for x in s[v * batch + b]])
                pair += -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
            total += pair / batch
            pairs += 1
    return total / pairs


def reference_center(teacher, center, m):
    rows = teacher.tolist()
    mean = [sum(col) / len(rows) for col in zip(*rows)]
    return [m * ci + (1 - m) * mi for ci, mi in zip(center.reshape(-1).tolist(), mean)]


@pytest.mark.parametrize("n_global,n_local,batch,dim", [(2, 0, 3, 5), (2, 3, 2, 4), (1, 2, 3, 6)])
def test_loss_and_center_match_loop_reference(n_global, n_local, batch, dim):
    g = torch.Generator().manual_seed(n_global * 10 + n_local)
    student = torch.randn((n_global + n_local) * batch, dim, generator=g) * 3
    teacher = torch.randn(n_global * batch, dim, generator=g) * 0.2
    crit = DINOLoss(dim, n_global=n_global, n_local=n_local, student_temp=0.1,
                    teacher_temp_schedule=np.array([0.04, 0.07]), center_momentum=0.9)
    c0 = crit.center.clone()
    loss, parts = crit(student, teacher, epoch=1)
    ref = reference_dino(student, teacher, c0, n_global, n_global + n_local, 0.1, 0.07)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert parts["teacher_temp"].item() == pytest.approx(0.07)
    c1 = reference_center(teacher, c0, 0.9)
    assert crit.center.reshape(-1).tolist() == pytest.approx(c1, rel=1e-5, abs=1e-7)
    # the second call uses the updated centre (the update happens after the loss)
    loss2, _ = crit(student, teacher, epoch=0)
    ref2 = reference_dino(student, teacher, torch.tensor(c1), n_global, n_global + n_local, 0.1, 0.04)
    assert loss2.item() == pytest.approx(ref2, rel=1e-5)
    assert crit.center.reshape(-1).tolist() == pytest.approx(
        reference_center(teacher, torch.tensor(c1), 0.9), rel=1e-5, abs=1e-7)


def test_gradient_reaches_student_only_and_eval_keeps_center():
    crit = DINOLoss(4, n_global=2, n_local=1)
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(4, 4, requires_grad=True)
    loss, parts = crit(student, teacher, epoch=0)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert not any(v.requires_grad for v in parts.values())
    crit.eval()
    before = crit.center.clone()
    crit(student, teacher, epoch=0)
    assert torch.equal(crit.center, before)


def test_shape_and_schedule_errors():
    crit = DINOLoss(4, n_global=2, n_local=2, teacher_temp_schedule=teacher_temp_schedule(0.04, 0.07, 2, 3))
    with pytest.raises(ValueError, match="expected"):
        crit(torch.randn(6, 4), torch.randn(4, 4), epoch=0)
    with pytest.raises(ValueError, match="out_dim"):
        crit(torch.randn(8, 5), torch.randn(4, 5), epoch=0)
    with pytest.raises(ScheduleRangeError, match="outside the schedule of 3 steps"):
        crit(torch.randn(8, 4), torch.randn(4, 4), epoch=3)
    with pytest.raises(IndexError, match="outside the teacher-temperature schedule"):
        DINOLoss(4, teacher_temp_schedule=np.array([0.04]))(torch.randn(4, 4), torch.randn(4, 4), epoch=1)


def test_collapse_diagnostics_hand_values():
    tau = 0.5
    # logits giving p = (1/4, 3/4) and its mirror; the batch mean is uniform
    a = tau * math.log(3.0)
    teacher = torch.tensor([[0.0, a], [a, 0.0]])
    diag = dino_collapse_diagnostics(teacher, torch.zeros(2), tau)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert diag["teacher_entropy"].item() == pytest.approx(h, rel=1e-5)
    assert diag["teacher_kl_to_mean"].item() == pytest.approx(math.log(2) - h, rel=1e-4)
    assert diag["teacher_mean_entropy"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert is_collapsed(diag, 2, rel_tol=0.01) is None
    # same output for every input: KL 0
    same = dino_collapse_diagnostics(torch.tensor([[1.0, 2.0, 3.0]] * 4), torch.zeros(3), 1.0)
    assert same["teacher_kl_to_mean"].item() == pytest.approx(0.0, abs=1e-6)
    # one-hot and uniform collapse
    one_hot = dino_collapse_diagnostics(torch.tensor([[100.0, 0, 0, 0]] * 3), torch.zeros(4), 0.04)
    assert is_collapsed(one_hot, 4).startswith("one-hot collapse")
    centred = torch.randn(3, 4) * 1e-4
    uniform = dino_collapse_diagnostics(centred + 5.0, torch.full((1, 4), 5.0), 1.0)
    assert uniform["teacher_entropy"].item() == pytest.approx(math.log(4), rel=1e-4)
    assert is_collapsed(uniform, 4).startswith("uniform collapse")


def test_dino_head_with_loss_and_last_layer_freeze():
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=6, nlayers=3)
    gain = head.last_layer.parametrizations.weight.original0
    assert torch.all(gain == 1) and not gain.requires_grad
    x = torch.randn(6, 8)
    out = head(x)
    # weight-normalised last layer on an L2-normalised bottleneck: each row has |out_k| <= 1
    assert out.shape == (6, 16) and out.abs().max() <= 1 + 1e-5
    crit = DINOLoss(16, n_global=2, n_local=1)
    loss, _ = crit(out, head(x[:4]).detach(), epoch=0)
    loss.backward()
    v = head.last_layer.parametrizations.weight.original1
    assert v.grad is not None and head.mlp[0].weight.grad is not None
    assert cancel_last_layer_gradients(head, epoch=0, freeze_last_layer_epochs=1) is True
    assert v.grad is None and head.mlp[0].weight.grad is not None
    assert cancel_last_layer_gradients(head, epoch=1, freeze_last_layer_epochs=1) is False
    free = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=6, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    with pytest.raises(ValueError, match="no DINOHead"):
        cancel_last_layer_gradients(torch.nn.Linear(2, 2), 0, 1)


# -- two gloo processes, each with half the batch: same centre as one process on the full batch ---------
def _ddp_center_worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=world)
    try:
        data = torch.load(f"{tmp}/inputs.pt")
        n_global, batch = data["n_global"], data["batch"]
        half = batch // world
        views_t = data["teacher"].chunk(n_global)
        views_s = data["student"].chunk(data["n_views"])
        teacher = torch.cat([v[rank * half:(rank + 1) * half] for v in views_t])
        student = torch.cat([v[rank * half:(rank + 1) * half] for v in views_s])
        crit = DINOLoss(teacher.shape[1], n_global=n_global, n_local=data["n_views"] - n_global)
        crit.center.copy_(data["center"])
        loss, _ = crit(student, teacher, epoch=0)
        torch.save({"center": crit.center, "loss": loss.detach()}, f"{tmp}/out{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_center_all_reduced_over_two_processes(tmp_path):
    torch.manual_seed(1)
    n_global, n_views, batch, dim = 2, 3, 4, 5
    data = {"n_global": n_global, "n_views": n_views, "batch": batch,
            "student": torch.randn(n_views * batch, dim), "teacher": torch.randn(n_global * batch, dim),
            "center": torch.randn(1, dim)}
    torch.save(data, tmp_path / "inputs.pt")
    full = DINOLoss(dim, n_global=n_global, n_local=n_views - n_global)
    full.center.copy_(data["center"])
    full_loss, _ = full(data["student"], data["teacher"], epoch=0)
    start = time.perf_counter()
    run_two_processes(_ddp_center_worker, str(tmp_path))
    outs = [torch.load(tmp_path / f"out{r}.pt") for r in range(2)]
    for out in outs:
        torch.testing.assert_close(out["center"], full.center, rtol=1e-6, atol=1e-6)
    # per-process losses are per-sample means: their average is the full-batch loss
    assert (outs[0]["loss"] + outs[1]["loss"]).item() / 2 == pytest.approx(full_loss.item(), rel=1e-5)
    # the locally-updated centre (no all-reduce) would differ: the test can fail
    local = torch.cat([data["teacher"][0:2], data["teacher"][4:6]]).mean(0, keepdim=True)
    assert not torch.allclose(outs[0]["center"], data["center"] * 0.9 + 0.1 * local, atol=1e-3)
    assert time.perf_counter() - start < 10
