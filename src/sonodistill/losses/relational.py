"""Response and relational knowledge distillation (Hinton et al. 2015; Park et al. 2019 RKD) for DILBERT.

Every loss takes `(student, teacher)` tensors; the teacher side is detached unless `detach_teacher=False`
(then one loss sends gradients to both models). Under DDP the relations span the global batch (the processes'
embeddings gathered with their gradients, `all_gather_with_grad`) and the response KD averages over every process's
rows (`global_mean`), so DDP's gradient averaging gives the gradient of the one-process loss on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.losses.base import LossOutput, prefixed
from sonodistill.losses.distributed import all_gather_with_grad, global_mean


def _check_pair(name: str, student: torch.Tensor, teacher: torch.Tensor, min_rows: int) -> None:
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: need student B x D_s and teacher B x D_t with the same B, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] < min_rows:
        raise ValueError(f"{name}: needs a batch of at least {min_rows} samples, got {student.shape[0]}")


def _global_batch(student: torch.Tensor, teacher: torch.Tensor, name: str, min_rows: int, detach_teacher: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher embeddings of every process (this one's alone without a process group), the teacher's
    detached when asked; checked (`_check_pair`) before gathering and to hold `min_rows` rows after."""
    _check_pair(name, student, teacher, 1)
    student = all_gather_with_grad(student)
    teacher = all_gather_with_grad(teacher.detach() if detach_teacher else teacher)
    _check_pair(name, student, teacher, min_rows)
    return student, teacher


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances `B x B` between the rows of `e` (`B x D`), zero diagonal (RKD's `pdist`)."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d.masked_fill(eye, 0.0)


def triplet_angles(e: torch.Tensor) -> torch.Tensor:
    """`A[j, i, k] = cos` of the angle at e_j between `e_i - e_j` and `e_k - e_j`; `B x D` -> `B x B x B`.

    Degenerate triplets (i == j or k == j) give 0 (zero vector after normalisation), as in the RKD code.
    """
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = e_i - e_j
    return torch.bmm(diff, diff.transpose(1, 2))


class ResponseKD(nn.Module):
    """`T^2 KL(softmax(t / T) || softmax(s / T))`, averaged over the batch (every process's rows under DDP);
    logits `B x C` -> (loss, parts)."""

    def __init__(self, temperature: float = 4.0, detach_teacher: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"ResponseKD: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.detach_teacher = detach_teacher

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> LossOutput:
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(f"ResponseKD: logits shapes differ, {tuple(student_logits.shape)} vs "
                             f"{tuple(teacher_logits.shape)}")
        loss = global_mean(self.kl_sum(student_logits, teacher_logits), student_logits.shape[0])
        return LossOutput(loss, {"kl": loss.detach()})

    def kl_sum(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """`T^2 KL` summed over this process's rows (`B x C` logits; 0 with the graph for no rows)."""
        t = teacher_logits.detach() if self.detach_teacher else teacher_logits
        tau = self.temperature
        log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
        log_p_t = F.log_softmax(t.float() / tau, dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * tau**2


class RKDDistanceLoss(nn.Module):
    """RKD-D: smooth-L1 between teacher and student pairwise distances, each divided by its mean over i != j.

    Embeddings `B x D_s`, `B x D_t` -> (loss, parts); the mean runs over all `B^2` entries (diagonal zeros
    included), as in the authors' code.
    """

    def __init__(self, detach_teacher: bool = True) -> None:
        super().__init__()
        self.detach_teacher = detach_teacher

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> LossOutput:
        student, t = _global_batch(student, teacher, "RKDDistanceLoss", 2, self.detach_teacher)
        off = ~torch.eye(student.shape[0], dtype=torch.bool, device=student.device)
        t_d = pairwise_distances(t.float())
        t_d = t_d / t_d[off].mean().clamp_min(1e-12)
        s_d = pairwise_distances(student.float())
        s_d = s_d / s_d[off].mean().clamp_min(1e-12)
        loss = F.smooth_l1_loss(s_d, t_d, reduction="mean")
        return LossOutput(loss, {"rkd_distance": loss.detach()})


class RKDAngleLoss(nn.Module):
    """RKD-A: smooth-L1 between teacher and student triplet-angle cosines (all `B^3` triplets, as in the code)."""

    def __init__(self, detach_teacher: bool = True) -> None:
        super().__init__()
        self.detach_teacher = detach_teacher

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> LossOutput:
        student, t = _global_batch(student, teacher, "RKDAngleLoss", 3, self.detach_teacher)
        loss = F.smooth_l1_loss(triplet_angles(student.float()), triplet_angles(t.float()), reduction="mean")
        return LossOutput(loss, {"rkd_angle": loss.detach()})


class RelationalKD(nn.Module):
    """`L_RD = L_DD + b1 * L_AD` (RKD distance + angle) on embeddings `B x D_s`, `B x D_t`."""

    def __init__(self, b1: float = 2.0, detach_teacher: bool = True) -> None:
        super().__init__()
        self.b1 = b1
        self.distance = RKDDistanceLoss(detach_teacher)
        self.angle = RKDAngleLoss(detach_teacher)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> LossOutput:
        l_dd, _ = self.distance(student, teacher)
        l_ad, _ = self.angle(student, teacher)
        loss = l_dd + self.b1 * l_ad
        return LossOutput(loss, {"relational": loss.detach(), "distance": l_dd.detach(), "angle": l_ad.detach()})


class MutualDistillLoss(nn.Module):
    """`L_RD + b2 * L_KL`: relational KD on embeddings plus response KD on logits (DILBERT).

    forward(student_emb, teacher_emb, student_logits, teacher_logits) -> (loss, parts). For mutual
    learning, call it once per direction with the roles swapped (teacher detached by default).
    """

    def __init__(self, b1: float = 2.0, b2: float = 1.0, temperature: float = 4.0,
                 detach_teacher: bool = True) -> None:
        super().__init__()
        self.b2 = b2
        self.relational = RelationalKD(b1, detach_teacher)
        self.response = ResponseKD(temperature, detach_teacher)

    def forward(self, student_emb: torch.Tensor, teacher_emb: torch.Tensor, student_logits: torch.Tensor,
                teacher_logits: torch.Tensor) -> LossOutput:
        l_rd, rd_parts = self.relational(student_emb, teacher_emb)
        l_kl, _ = self.response(student_logits, teacher_logits)
        loss = l_rd + self.b2 * l_kl
        parts = {"mutual": loss.detach(), **prefixed(rd_parts, "rd"), "kl": l_kl.detach()}
        return LossOutput(loss, parts)
