"""Exponential-moving-average (mean-teacher / DINO) teachers: build a frozen copy, update it by name."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

BufferMode = Literal["ema", "copy", "none"]


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of `student` with every parameter `requires_grad=False`.

    The copy keeps the student's train/eval mode; the recipe decides the teacher's mode (DINO keeps it in
    train mode, mean teachers often use eval).
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _matched(kind: str, teacher: dict[str, torch.Tensor],
             student: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    missing = sorted(set(student) - set(teacher))
    unexpected = sorted(set(teacher) - set(student))
    if missing or unexpected:
        raise ValueError(
            f"update_ema: teacher and student {kind} do not match by name; "
            f"in student only: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"in teacher only: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
            "(is one of them wrapped, e.g. DDP's 'module.' prefix?)"
        )
    pairs = []
    for name, s in student.items():
        t = teacher[name]
        if t.shape != s.shape:
            raise ValueError(f"update_ema: {kind[:-1]} '{name}' has shape {tuple(t.shape)} in the teacher "
                             f"but {tuple(s.shape)} in the student")
        pairs.append((t, s))
    return pairs


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float, buffers: BufferMode = "copy") -> None:
    """`theta_t <- m theta_t + (1 - m) theta_s` for every parameter, matched by name.

    buffers: "ema" averages floating-point buffers the same way (integer buffers such as BatchNorm's
    `num_batches_tracked` are copied), "copy" copies every buffer, "none" leaves the teacher's buffers alone
    (DINO: the teacher's BatchNorm keeps its own statistics). Mismatched names or shapes raise `ValueError`.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"update_ema: momentum must be in [0, 1], got {momentum}")
    if buffers not in ("ema", "copy", "none"):
        raise ValueError(f"update_ema: buffers must be 'ema', 'copy' or 'none', got {buffers!r}")
    params = _matched("parameters", dict(teacher.named_parameters()), dict(student.named_parameters()))
    for t, s in params:
        t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)
    if buffers == "none":
        return
    for t, s in _matched("buffers", dict(teacher.named_buffers()), dict(student.named_buffers())):
        if buffers == "ema" and t.is_floating_point():
            t.lerp_(s.to(t.dtype), 1.0 - momentum)
        else:
            t.copy_(s)


class EMATeacher(nn.Module):
    """A frozen EMA copy of a student: `forward` runs the copy, `update(student, momentum)` averages into it."""

    def __init__(self, student: nn.Module, buffers: BufferMode = "copy") -> None:
        super().__init__()
        if buffers not in ("ema", "copy", "none"):
            raise ValueError(f"EMATeacher: buffers must be 'ema', 'copy' or 'none', got {buffers!r}")
        self.module = make_teacher(student)
        self.buffers_mode: BufferMode = buffers

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def update(self, student: nn.Module, momentum: float) -> None:
        """EMA step from `student` (same structure as the one this teacher was made from)."""
        update_ema(self.module, student, momentum, buffers=self.buffers_mode)
