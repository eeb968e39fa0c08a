"""Sinkhorn-Knopp equal-partition assignments (SwAV) and DISCOVR's semantic cluster distillation loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.losses.base import LossOutput
from sonodistill.losses.distributed import all_reduce_logsumexp, world_size


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, n_iters: int = 10) -> torch.Tensor:
    """SwAV's `distributed_sinkhorn`: soft assignments `B x K` of samples to prototypes, no gradient.

    scores: `B x K` (this process's rows). Q = exp(scores / epsilon)^T is normalised to total 1; each
    iteration scales every prototype's mass (summed over all processes) to 1/K, then every sample's to
    1/B_global; finally Q * B_global. Computed in the log domain: every normalisation is a log-sum-exp,
    which subtracts the maximum before exponentiating, so no score range or epsilon overflows or
    underflows (plain `exp(scores / epsilon)` does beyond a range of about 88 * epsilon).
    Returned rows sum to 1; column sums over all processes approach B_global / K as `n_iters` grows.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp: scores must be B x K, got {tuple(scores.shape)}")
    if epsilon <= 0 or n_iters < 1:
        raise ValueError(f"sinkhorn_knopp: need epsilon > 0 and n_iters >= 1, got {epsilon}, {n_iters}")
    s = scores.detach().float()
    if not bool(torch.isfinite(s).all()):
        raise ValueError("sinkhorn_knopp: scores contain NaN or inf")
    log_q = (s / epsilon).t()  # K x B
    k = log_q.shape[0]
    log_b = math.log(log_q.shape[1] * world_size())
    log_q = log_q - all_reduce_logsumexp(torch.logsumexp(log_q.flatten(), dim=0))
    for _ in range(n_iters):
        log_q = log_q - all_reduce_logsumexp(torch.logsumexp(log_q, dim=1, keepdim=True)) - math.log(k)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b
    return torch.exp(log_q + log_b).t()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of `-sum_k target_k log softmax(logits / temperature)_k`; `B x K` -> scalar."""
    return -(target * F.log_softmax(logits / temperature, dim=-1)).sum(dim=-1).mean()


class SemanticClusterDistillationLoss(nn.Module):
    """Symmetric swapped prediction `CE(s_v, sg(q_i)) + CE(s_i, sg(q_v))` between video and image prototype scores.

    forward(video_scores `B x K`, image_scores `B x K`) -> (loss, parts). q = Sinkhorn assignments of the
    detached scores (no gradient path); s = softmax(scores / temperature) carries the gradient.
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, n_iters: int = 10) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SemanticClusterDistillationLoss: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.epsilon = epsilon
        self.n_iters = n_iters

    def forward(self, video_scores: torch.Tensor, image_scores: torch.Tensor) -> LossOutput:
        if video_scores.shape != image_scores.shape or video_scores.ndim != 2:
            raise ValueError(f"SemanticClusterDistillationLoss: need two B x K score tensors of one shape, got "
                             f"{tuple(video_scores.shape)} and {tuple(image_scores.shape)}")
        q_video = sinkhorn_knopp(video_scores.detach(), self.epsilon, self.n_iters)
        q_image = sinkhorn_knopp(image_scores.detach(), self.epsilon, self.n_iters)
        ce_v = soft_cross_entropy(video_scores.float(), q_image, self.temperature)
        ce_i = soft_cross_entropy(image_scores.float(), q_video, self.temperature)
        loss = ce_v + ce_i
        used = torch.unique(torch.cat([q_video.argmax(dim=1), q_image.argmax(dim=1)])).numel()
        parts = {"scd": loss.detach(), "ce_video_to_image_codes": ce_v.detach(),
                 "ce_image_to_video_codes": ce_i.detach(),
                 "clusters_used": loss.new_tensor(float(used))}
        return LossOutput(loss, parts)
