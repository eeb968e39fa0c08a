"""The staged-backbone contract: every backbone returns its stage features and a pooled embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class StageOutputs:
    """Output of a staged backbone.

    stages: one feature map per stage, shallow to deep. Video backbones: `B x C_i x T_i x H_i x W_i`;
        frame backbones: `B x C_i x H_i x W_i` (ViTs reshape patch tokens to that grid).
    pooled: `B x D` embedding of the deepest stage (what the classification head consumes).
    tokens: optional `B x (1 + N) x D` token sequence of transformer backbones ([CLS] first).
    """

    stages: list[torch.Tensor]
    pooled: torch.Tensor
    tokens: torch.Tensor | None = None


class StagedBackbone(nn.Module):
    """Base class: subclasses set `stage_channels`, `embed_dim`, `kind` and implement `forward`."""

    kind: Literal["video", "frame"] = "video"
    stage_channels: list[int]
    embed_dim: int

    def forward(self, x: torch.Tensor) -> StageOutputs:  # pragma: no cover - abstract
        raise NotImplementedError


class Classifier(nn.Module):
    """The inference model of every classification recipe: backbone + final head, logits out.

    x: `B x C x T x H x W` (video) or `B x C x H x W` (frame) -> logits `B x num_classes`.
    """

    def __init__(self, backbone: StagedBackbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward_features(self, x: torch.Tensor) -> StageOutputs:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).pooled)
