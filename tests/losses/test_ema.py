"""EMA teachers: frozen copy, hand-computed averaging of parameters and buffers, name/shape checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sonodistill.losses.ema import EMATeacher, make_teacher, update_ema
from sonodistill.models.projection import DINOHead


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))


def _fill(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.fill_(value)
            else:
                b.fill_(int(value))


def test_make_teacher_is_frozen_independent_copy():
    student = _net()
    teacher = make_teacher(student)
    for (n, p), (_, q) in zip(student.named_parameters(), teacher.named_parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), n
        assert p.requires_grad and not q.requires_grad
    assert teacher.training == student.training
    student.eval()
    assert make_teacher(student).training is False


@pytest.mark.parametrize("mode", ["ema", "copy", "none"])
def test_update_matches_hand_values(mode):
    student, teacher = _net(), _net()
    _fill(teacher, 1.0)
    _fill(student, 3.0)
    update_ema(teacher, student, momentum=0.75, buffers=mode)
    for p in teacher.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.75 * 1.0 + 0.25 * 3.0))
    bn = teacher[1]
    expected_running = {"ema": 1.5, "copy": 3.0, "none": 1.0}[mode]
    torch.testing.assert_close(bn.running_mean, torch.full((3,), expected_running))
    torch.testing.assert_close(bn.running_var, torch.full((3,), expected_running))
    # integer counters cannot be averaged: copied under "ema" and "copy"
    assert int(bn.num_batches_tracked) == {"ema": 3, "copy": 3, "none": 1}[mode]
    # the student is never touched
    assert all(torch.all(p == 3.0) for p in student.parameters())


def test_momentum_limits_and_repeated_updates():
    student, teacher = _net(), _net()
    _fill(teacher, 0.0)
    _fill(student, 1.0)
    update_ema(teacher, student, momentum=1.0)
    assert all(torch.all(p == 0.0) for p in teacher.parameters())
    for _ in range(3):
        update_ema(teacher, student, momentum=0.5)
    assert all(torch.allclose(p, torch.full_like(p, 1 - 0.5**3)) for p in teacher.parameters())
    update_ema(teacher, student, momentum=0.0)
    assert all(torch.all(p == 1.0) for p in teacher.parameters())
    with pytest.raises(ValueError, match="momentum"):
        update_ema(teacher, student, momentum=1.5)
    with pytest.raises(ValueError, match="buffers"):
        update_ema(teacher, student, momentum=0.5, buffers="mean")  # type: ignore[arg-type]


def test_mismatched_structure_is_a_clear_error():
    with pytest.raises(ValueError, match=r"do not match by name.*in student only: \['3.bias', '3.weight'\]"):
        update_ema(_net(), nn.Sequential(*_net(), nn.Linear(1, 1)), 0.9)
    with pytest.raises(ValueError, match=r"parameter '0.weight' has shape \(3, 2\) in the teacher but \(4, 2\)"):
        update_ema(_net(), nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(3), nn.Linear(3, 1)), 0.9)


def test_ema_teacher_wraps_dino_head():
    torch.manual_seed(0)
    student = DINOHead(4, out_dim=8, hidden_dim=6, bottleneck_dim=3)
    ema = EMATeacher(student, buffers="none")
    assert not any(p.requires_grad for p in ema.parameters())
    x = torch.randn(2, 4)
    torch.testing.assert_close(ema(x), student(x))
    before = {n: p.clone() for n, p in ema.module.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema.update(student, momentum=0.9)
    for n, p in ema.module.named_parameters():
        s = dict(student.named_parameters())[n]
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * s)
    # the weight-norm gain (a parametrization parameter) is matched by name and averaged too: 0.9 * 1 + 0.1 * 2
    assert torch.allclose(ema.module.last_layer.parametrizations.weight.original0, torch.full((8, 1), 1.1))
