"""DINO self-distillation loss (Caron et al. 2021) with its centre, the paper's collapse diagnostics, and DISCOVR's
masked-view form of it (one teacher view against V masked student views)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.losses.base import LossOutput
from sonodistill.losses.distributed import all_reduce_sum

TempSchedule = np.ndarray | Sequence[float] | Callable[[int], float]


def _entropy_and_kl_to_mean(p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row entropy and KL(p_n || mean_n p_n) of probabilities `p` (`N x D`), averaged over rows."""
    p = p.float()
    logp = torch.log(p.clamp_min(1e-30))
    entropy = -(p * logp).sum(dim=-1).mean()
    mean = p.mean(dim=0, keepdim=True)
    kl = (p * (logp - torch.log(mean.clamp_min(1e-30)))).sum(dim=-1).mean()
    mean_entropy = -(mean * torch.log(mean.clamp_min(1e-30))).sum()
    return {"teacher_entropy": entropy.detach(), "teacher_kl_to_mean": kl.detach().clamp_min(0.0),
            "teacher_mean_entropy": mean_entropy.detach()}


@torch.no_grad()
def dino_collapse_diagnostics(teacher_out: torch.Tensor, center: torch.Tensor,
                              teacher_temp: float) -> dict[str, torch.Tensor]:
    """Collapse diagnostics of the centred, sharpened teacher `p = softmax((t - C) / tau)`.

    teacher_out: `N x D` raw teacher outputs; center: `1 x D` or `D`. Returns (this process's batch):
    `teacher_entropy` mean_n H(p_n) (nats; 0 = one-hot, log D = uniform), `teacher_kl_to_mean`
    mean_n KL(p_n || mean p) (0 = every input gets the same output), `teacher_mean_entropy` H(mean p).
    """
    p = F.softmax((teacher_out.float() - center.float().reshape(1, -1)) / teacher_temp, dim=-1)
    return _entropy_and_kl_to_mean(p)


def is_collapsed(diag: dict[str, torch.Tensor | float], out_dim: int, rel_tol: float = 0.01) -> str | None:
    """Reason string when the teacher entropy is within `rel_tol * log(out_dim)` of 0 (one-hot collapse)
    or of `log(out_dim)` (uniform collapse); None otherwise."""
    h = float(diag["teacher_entropy"])
    h_max = math.log(out_dim)
    if h <= rel_tol * h_max:
        return (f"one-hot collapse: teacher entropy {h:.4g} nats is ~0 "
                f"(<= {rel_tol:g} x log({out_dim}) = {rel_tol * h_max:.4g})")
    if h >= (1.0 - rel_tol) * h_max:
        return (f"uniform collapse: teacher entropy {h:.4g} nats is ~log({out_dim}) = {h_max:.4g} "
                f"(>= {1 - rel_tol:g} x log({out_dim}))")
    return None


class DINOLoss(nn.Module):
    """Cross-entropy between centred/sharpened teacher (global views) and student (all views), same view skipped.

    forward(student_out `(n_global + n_local) * B x D`, teacher_out `n_global * B x D`, epoch) -> (loss, parts).
    Views are stacked in chunks of B (view 0 first), as in the official code; the first `n_global` student
    chunks are the global views seen by the teacher. In training mode the centre is updated after the loss
    (momentum, from the raw teacher outputs, all-reduced over processes); in eval mode it is left alone.
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, n_global: int = 2, n_local: int = 0, student_temp: float = 0.1,
                 teacher_temp_schedule: TempSchedule | None = None, center_momentum: float = 0.9,
                 teacher_temp: float = 0.04) -> None:
        super().__init__()
        if n_global < 1 or n_local < 0:
            raise ValueError(f"DINOLoss: need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        if n_global + n_local < 2:
            raise ValueError("DINOLoss: need at least 2 views in total (same-view pairs are skipped)")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"DINOLoss: center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.n_global = n_global
        self.n_local = n_local
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.teacher_temp = teacher_temp
        self.teacher_temp_schedule = teacher_temp_schedule
        self.register_buffer("center", torch.zeros(1, out_dim))

    @property
    def n_views(self) -> int:
        return self.n_global + self.n_local

    def temperature(self, epoch: int) -> float:
        """Teacher temperature at `epoch`; an epoch past the end of the schedule is an error."""
        sched = self.teacher_temp_schedule
        if sched is None:
            return float(self.teacher_temp)
        if callable(sched):
            return float(sched(epoch))
        values = np.asarray(sched, dtype=np.float64).reshape(-1)
        if not 0 <= epoch < values.size:
            raise IndexError(f"DINOLoss: epoch {epoch} is outside the teacher-temperature schedule of "
                             f"{values.size} epochs; build it for the run's real number of epochs")
        return float(values[epoch])

    def _check_shapes(self, student_out: torch.Tensor, teacher_out: torch.Tensor) -> int:
        if student_out.ndim != 2 or teacher_out.ndim != 2:
            raise ValueError(f"DINOLoss: expected 2-D outputs, got student {tuple(student_out.shape)}, "
                             f"teacher {tuple(teacher_out.shape)}")
        if student_out.shape[1] != self.out_dim or teacher_out.shape[1] != self.out_dim:
            raise ValueError(f"DINOLoss: out_dim is {self.out_dim} but got student {student_out.shape[1]}, "
                             f"teacher {teacher_out.shape[1]}")
        if teacher_out.shape[0] % self.n_global:
            raise ValueError(f"DINOLoss: teacher rows {teacher_out.shape[0]} not divisible by n_global={self.n_global}")
        batch = teacher_out.shape[0] // self.n_global
        if student_out.shape[0] != batch * self.n_views:
            raise ValueError(f"DINOLoss: student has {student_out.shape[0]} rows, expected (n_global + n_local) x B = "
                             f"{self.n_views} x {batch} = {self.n_views * batch}")
        return batch

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int) -> LossOutput:
        self._check_shapes(student_out, teacher_out)
        temp = self.temperature(epoch)
        student_logp = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(self.n_views)
        teacher_p = F.softmax((teacher_out.float().detach() - self.center) / temp, dim=-1)
        teacher_chunks = teacher_p.chunk(self.n_global)
        total = student_out.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for iq, q in enumerate(teacher_chunks):
            for v, logp in enumerate(student_logp):
                if v == iq:
                    continue
                total = total + torch.sum(-q * logp, dim=-1).mean()
                n_terms += 1
        loss = total / n_terms
        parts = {"dino": loss.detach(), "teacher_temp": loss.new_tensor(temp),
                 **_entropy_and_kl_to_mean(teacher_p)}
        if self.training:
            self.update_center(teacher_out)
        return LossOutput(loss, parts)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """`C <- m C + (1 - m) mean(teacher_out)`, the mean over all rows of all processes."""
        t = teacher_out.detach().float()
        stats = torch.cat([t.sum(dim=0), t.new_tensor([t.shape[0]])])
        stats = all_reduce_sum(stats)
        batch_center = (stats[:-1] / stats[-1]).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype), alpha=1 - self.center_momentum)


class MaskedViewDINOLoss(nn.Module):
    """`1/V sum_v H(P_t, P_s^v)`: one teacher view (full input) against V masked student views.

    A thin wrapper of `DINOLoss(n_global=1, n_local=V)` (its centring, sharpening, temperature schedule and
    diagnostics): the student chunk paired with the teacher's own view, which DINOLoss skips, is filled
    with the detached teacher output. forward(student `V*B x D`, teacher `B x D`, epoch) -> (loss, parts).
    """

    def __init__(self, n_views: int, **dino_kwargs: Any) -> None:
        super().__init__()
        self.dino = DINOLoss(n_global=1, n_local=n_views, **dino_kwargs)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, epoch: int) -> LossOutput:
        filler = teacher_out.detach().to(student_out.dtype)
        return self.dino(torch.cat([filler, student_out]), teacher_out, epoch)
