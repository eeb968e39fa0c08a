"""Trainable modules on a staged backbone's stages used by DualDistill's training (not by its inference model):
per-stage auxiliary classifiers (SD) and per-stage spatio-temporal attention (AGSD). The losses that read their
outputs are in `losses.self_distill`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import ConfigError
from sonodistill.stage_indices import validate_student_stages


def spatiotemporal_attention_map(
    feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Spatio-temporal attention map: `B x C x T x H x W` -> `B x T x H x W` in (0, 1).

    Channel-wise mean and max (2 channels) -> per-frame spatial conv (weight `1 x 2 x 1 x k x k`, 'same'
    padding) -> sigmoid.
    """
    if feat.dim() != 5:
        raise ValueError("spatiotemporal_attention_map: expected a video stage feature B x C x T x H x W, "
                         f"got shape {tuple(feat.shape)}")
    if weight.dim() != 5 or weight.shape[:3] != (1, 2, 1) or weight.shape[3] % 2 == 0:
        raise ValueError(
            f"spatiotemporal_attention_map: weight must be 1 x 2 x 1 x k x k, k odd, got {tuple(weight.shape)}"
        )
    # sum-then-scale and max-with-indices: their backward passes are a broadcast view and a scatter, cheaper
    # than mean's / amax's full-size elementwise backward on the large shallow-stage features.
    mean = feat.sum(dim=1, keepdim=True) / feat.shape[1]
    pooled = torch.cat([mean, feat.max(dim=1, keepdim=True).values], dim=1)
    pad = (0, weight.shape[3] // 2, weight.shape[4] // 2)
    return torch.sigmoid(F.conv3d(pooled, weight, bias, padding=pad)).squeeze(1)


class StageAttention(nn.Module):
    """Learnable attention of one stage (2*k*k + 1 parameters; 99 for k=7): `B x C x T x H x W` -> `B x T x H x W`."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"StageAttention kernel_size must be a positive odd integer, got {kernel_size!r}")
        pad = kernel_size // 2
        self.conv = nn.Conv3d(2, 1, kernel_size=(1, kernel_size, kernel_size), padding=(0, pad, pad))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return spatiotemporal_attention_map(feat, self.conv.weight, self.conv.bias)


def _global_avg_pool(feat: torch.Tensor) -> torch.Tensor:
    """Mean over every axis after the channel one: `B x C x ...` -> `B x C` (sum-then-scale: cheap backward)."""
    flat = feat.flatten(2)
    return flat.sum(dim=2) / flat.shape[2]


class AuxiliaryHeads(nn.Module):
    """Auxiliary classifiers g_i (global average pool over T, H, W + linear) on the selected student stages.

    stage_channels: channels of every backbone stage; stages: 1-based student indices (the deepest stage uses the
    model's own final head). forward(list of all stage features) -> list of `B x num_classes`, in `stages` order.
    """

    def __init__(self, stage_channels: Sequence[int], num_classes: int, stages: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        self.num_stages = len(stage_channels)
        self.stages = validate_student_stages(stages, self.num_stages)
        self.heads = nn.ModuleList(nn.Linear(stage_channels[s - 1], num_classes) for s in self.stages)

    def forward(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(stages) != self.num_stages:
            raise ValueError(f"AuxiliaryHeads: built for {self.num_stages} stages, got {len(stages)}")
        return [head(_global_avg_pool(stages[s - 1])) for s, head in zip(self.stages, self.heads)]


class StageAttentionModules(nn.Module):
    """One `StageAttention` per stage used by AGSD: the students, then the deepest (teacher) stage.

    forward(list of all `num_stages` stage features) -> maps `B x T_i x H_i x W_i` for student_stages + (deepest,).
    """

    def __init__(self, num_stages: int, student_stages: Sequence[int] = (1, 2, 3), kernel_size: int = 7) -> None:
        super().__init__()
        self.num_stages = num_stages
        self.stages = validate_student_stages(student_stages, num_stages) + (num_stages,)
        self.attention = nn.ModuleList(StageAttention(kernel_size) for _ in self.stages)

    def forward(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(stages) != self.num_stages:
            raise ValueError(f"StageAttentionModules: built for {self.num_stages} stages, got {len(stages)}")
        return [att(stages[s - 1]) for s, att in zip(self.stages, self.attention)]
