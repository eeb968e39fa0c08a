"""The staged-backbone contract: every backbone returns its stage features and a pooled embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

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


def patch_maps(out: StageOutputs, stage: int | None = None) -> torch.Tensor:
    """A frame encoder's patch features as maps `N x D x h x w`: a ViT's patch tokens (after [CLS], on its last
    stage's grid), or, for a CNN (no tokens), its `stage` map. A CNN without `stage` is a ValueError."""
    if out.tokens is not None:
        n, _, d = out.tokens.shape
        h, w = out.stages[-1].shape[-2:]
        return out.tokens[:, 1:].transpose(1, 2).reshape(n, d, h, w)
    if stage is None:
        raise ValueError("the encoder returns no tokens: name the stage map to take patch features from (stage=...), "
                         "or use a ViT")
    return out.stages[stage]


def per_frame_stages(x: torch.Tensor, trunk: "Callable[[torch.Tensor], list[torch.Tensor]]") -> StageOutputs:
    """Apply a 2D `trunk` (`N x C x H x W` -> stage maps) to every frame of `B x C x T x H x W`; the maps come back
    as `B x C_i x T x H_i x W_i` and pooled is their last stage averaged over T, H, W."""
    if x.dim() != 5:
        raise ValueError(f"per-frame video backbone expects B x C x T x H x W, got shape {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    stages = [s.view(b, t, *s.shape[1:]).transpose(1, 2) for s in trunk(frames)]
    return StageOutputs(stages=stages, pooled=stages[-1].flatten(2).mean(dim=2))


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

    def forward_from_prefix(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the backbone's frozen-prefix output (`backbone.frozen_prefix(x)`): equal to `forward(x)`."""
        return self.head(self.backbone.forward_from_prefix(h).pooled)
