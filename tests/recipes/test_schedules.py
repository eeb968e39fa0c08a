"""Schedules against DINO's own functions and torch's MultiStepLR; out-of-range steps raise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sonodistill.errors import ConfigError
from sonodistill.recipes.schedules import (
    Schedule,
    ScheduleRangeError,
    apply_lr,
    apply_weight_decay,
    cosine_schedule,
    linear_warmup_then_constant,
    sigmoid_rampup,
    step_decay,
    teacher_temp_schedule,
)


def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    """Copied from facebookresearch/dino utils.py (the reference)."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


@pytest.mark.parametrize("base,final,epochs,niter,warm,start", [
    (5e-4, 1e-6, 10, 7, 2, 0.0), (0.996, 1.0, 4, 3, 0, 0.0), (0.04, 0.4, 3, 5, 1, 0.01)])
def test_cosine_matches_dino(base, final, epochs, niter, warm, start):
    sched = cosine_schedule(base, final, epochs * niter, warmup_steps=warm * niter, warmup_start=start)
    ref = dino_cosine_scheduler(base, final, epochs, niter, warm, start)
    assert len(sched) == len(ref)
    np.testing.assert_allclose(sched.values, ref, rtol=1e-12)
    assert sched(warm * niter) == pytest.approx(base)  # the cosine starts at base
    assert sched(0) == pytest.approx(start if warm else base)


def test_out_of_range_raises_clearly():
    sched = cosine_schedule(1.0, 0.0, 5)
    with pytest.raises(ScheduleRangeError, match="step 5 is outside the schedule of 5 steps"):
        sched(5)
    with pytest.raises(IndexError):
        sched(-1)
    with pytest.raises(ConfigError):
        sched[100]
    assert isinstance(ScheduleRangeError("x"), ConfigError)


def test_linear_warmup_then_constant():
    sched = linear_warmup_then_constant(0.5, total_steps=6, warmup_steps=3, warmup_start=0.2)
    np.testing.assert_allclose(np.asarray(sched), [0.2, 0.35, 0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ConfigError, match="warmup_steps"):
        linear_warmup_then_constant(0.5, total_steps=2, warmup_steps=3)


def test_teacher_temperature_and_truncation():
    # DINO: np.concatenate((np.linspace(w, t, warm), np.ones(nepochs - warm) * t))
    full = teacher_temp_schedule(0.04, 0.07, warmup_epochs=4, total_epochs=6)
    np.testing.assert_allclose(full.values, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    # a run shorter than the warm-up keeps the ramp's slope and stops early (DINO's code fails here)
    short = teacher_temp_schedule(0.04, 0.07, warmup_epochs=4, total_epochs=2)
    np.testing.assert_allclose(short.values, [0.04, 0.05])
    with pytest.raises(ScheduleRangeError):
        short(2)


def test_sigmoid_rampup_hand_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(25, 10) == 1.0
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(3, 0) == 1.0


def test_step_decay_matches_multistep_lr():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    torch_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 7], gamma=0.5)
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_sched.step()
    np.testing.assert_allclose(step_decay(0.1, [3, 7], 0.5, total_steps=10).values, expected)
    with pytest.raises(ConfigError, match="strictly increasing"):
        step_decay(0.1, [7, 3], 0.5, 10)


def test_apply_lr_and_weight_decay():
    w, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.04},
                             {"params": [b], "weight_decay": 0.0, "lr_scale": 0.1}], lr=1.0)
    apply_lr(opt, 2e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-4])
    apply_weight_decay(opt, 0.0)  # a schedule may pass through 0 ...
    apply_weight_decay(opt, 0.4)  # ... and the decaying group is still remembered as such
    assert [g["weight_decay"] for g in opt.param_groups] == [0.4, 0.0]


def test_schedule_validation():
    with pytest.raises(ConfigError, match="at least one step"):
        Schedule([])
    with pytest.raises(ConfigError, match="total_steps"):
        cosine_schedule(1.0, 0.0, 0)
    assert len(cosine_schedule(1.0, 0.0, 3, warmup_steps=3)) == 3
