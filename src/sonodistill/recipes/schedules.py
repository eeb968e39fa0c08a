"""Schedules built for the actual run length: per-step (or per-epoch) value arrays that refuse to run out.

A `Schedule` holds one value per step. Asking for a step outside `[0, len)` raises `ScheduleRangeError`
(never clamps silently): build the schedule with the run's real `epochs * steps_per_epoch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from sonodistill.errors import ConfigError


class ScheduleRangeError(ConfigError, IndexError):
    """A step index outside the schedule: the schedule was built for a shorter run than the one asking."""


class Schedule:
    """One float per step; `schedule(step)` -> float, `len(schedule)` steps, `schedule.values` the array."""

    def __init__(self, values: Sequence[float] | np.ndarray, name: str = "schedule") -> None:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.size == 0:
            raise ConfigError(f"{name}: a schedule needs at least one step")
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"{name}: schedule values must be finite")
        self.values = arr
        self.name = name

    def __len__(self) -> int:
        return int(self.values.size)

    def __call__(self, step: int) -> float:
        i = int(step)
        if i != step or i < 0 or i >= len(self):
            raise ScheduleRangeError(
                f"{self.name}: step {step} is outside the schedule of {len(self)} steps (valid: 0..{len(self) - 1}); "
                "build the schedule with the run's real number of epochs and steps per epoch"
            )
        return float(self.values[i])

    def __getitem__(self, step: int) -> float:
        return self(step)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.values if dtype is None else self.values.astype(dtype)

    def __repr__(self) -> str:
        return f"Schedule({self.name}, {len(self)} steps, first={self.values[0]:.6g}, last={self.values[-1]:.6g})"


def _check_steps(name: str, total_steps: int, warmup_steps: int = 0) -> None:
    if int(total_steps) != total_steps or total_steps < 1:
        raise ConfigError(f"{name}: total_steps must be a positive integer, got {total_steps}")
    if int(warmup_steps) != warmup_steps or warmup_steps < 0 or warmup_steps > total_steps:
        raise ConfigError(f"{name}: warmup_steps must be in 0..total_steps={total_steps}, got {warmup_steps}")


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> Schedule:
    """DINO's `cosine_scheduler`: linear warm-up `warmup_start -> base` over `warmup_steps` steps, then
    `final + (base - final)(1 + cos(pi i / n)) / 2` for `i = 0..n-1`, `n = total_steps - warmup_steps`."""
    _check_steps("cosine_schedule", total_steps, warmup_steps)
    warm = np.linspace(warmup_start, base, warmup_steps) if warmup_steps > 0 else np.zeros(0)
    n = total_steps - warmup_steps
    i = np.arange(n)
    cos = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * i / n)) if n > 0 else np.zeros(0)
    return Schedule(np.concatenate([warm, cos]), name="cosine_schedule")


def linear_warmup_then_constant(value: float, total_steps: int, warmup_steps: int = 0,
                                warmup_start: float = 0.0) -> Schedule:
    """Linear `warmup_start -> value` over `warmup_steps` steps (inclusive ends), then `value`."""
    _check_steps("linear_warmup_then_constant", total_steps, warmup_steps)
    warm = np.linspace(warmup_start, value, warmup_steps) if warmup_steps > 0 else np.zeros(0)
    return Schedule(np.concatenate([warm, np.full(total_steps - warmup_steps, value, dtype=np.float64)]),
                    name="linear_warmup_then_constant")


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, total_epochs: int) -> Schedule:
    """DINO's per-epoch teacher temperature: `linspace(warmup_temp, temp, warmup_epochs)` then `temp`.

    If `total_epochs < warmup_epochs`, the ramp is truncated (same slope, it just ends early).
    """
    if int(total_epochs) != total_epochs or total_epochs < 1:
        raise ConfigError(f"teacher_temp_schedule: total_epochs must be a positive integer, got {total_epochs}")
    if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
        raise ConfigError(f"teacher_temp_schedule: warmup_epochs must be >= 0, got {warmup_epochs}")
    if warmup_temp <= 0 or temp <= 0:
        raise ConfigError(f"teacher_temp_schedule: temperatures must be > 0, got {warmup_temp}, {temp}")
    ramp = np.linspace(warmup_temp, temp, warmup_epochs) if warmup_epochs > 0 else np.zeros(0)
    rest = np.full(max(0, total_epochs - warmup_epochs), temp, dtype=np.float64)
    return Schedule(np.concatenate([ramp, rest])[:total_epochs], name="teacher_temp_schedule")


def sigmoid_rampup(step: float, rampup_length: float) -> float:
    """Laine & Aila / mean-teacher ramp-up `exp(-5 (1 - t)^2)`, `t = clip(step / rampup_length, 0, 1)`.

    Reaches 1 at `step >= rampup_length` and stays there by definition; `rampup_length == 0` gives 1.
    """
    if rampup_length < 0:
        raise ConfigError(f"sigmoid_rampup: rampup_length must be >= 0, got {rampup_length}")
    if rampup_length == 0:
        return 1.0
    t = min(max(float(step), 0.0), float(rampup_length)) / float(rampup_length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def step_decay(base: float, milestones: Sequence[int], gamma: float, total_steps: int) -> Schedule:
    """`base * gamma ** (number of milestones <= step)` for `step = 0..total_steps-1` (as `MultiStepLR`)."""
    _check_steps("step_decay", total_steps)
    ms = [int(m) for m in milestones]
    if any(b <= a for a, b in zip(ms, ms[1:])) or any(m < 0 for m in ms):
        raise ConfigError(
            f"step_decay: milestones must be non-negative and strictly increasing, got {list(milestones)}")
    steps = np.arange(total_steps)
    count = np.searchsorted(np.asarray(ms, dtype=np.int64), steps, side="right")
    return Schedule(base * np.power(float(gamma), count), name="step_decay")


# -- applying a value to a torch optimiser ------------------------------------------------------------
_NO_DECAY_KEY = "sonodistill_no_decay"


def apply_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set `lr = value * group.get("lr_scale", 1)` in every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = float(value) * float(group.get("lr_scale", 1.0))


def apply_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set `weight_decay = value` in the groups that decay.

    A group decays unless its `weight_decay` was 0 the first time this was called (biases and norms, as in
    DINO); that choice is remembered in the group under `"sonodistill_no_decay"`.
    """
    for group in optimizer.param_groups:
        if _NO_DECAY_KEY not in group:
            group[_NO_DECAY_KEY] = float(group.get("weight_decay", 0.0)) == 0.0
        if not group[_NO_DECAY_KEY]:
            group["weight_decay"] = float(value)
