"""A backbone composed with heads or aggregators, as the self-supervised and video recipes train and export them.

`MultiCropWrapper` (DINO student/teacher over multi-crop views), `Branch` (DISCOVR: an encoder and its DINO
head), `DISCOVREncoders` (DISCOVR's exported video + image encoders), `VideoScorer` (MeDiVLAD: frame encoder +
aggregator). Attribute names are the state-dict prefixes of saved checkpoints: do not rename them.
"""

from __future__ import annotations

import torch
from torch import nn

from sonodistill.models.stages import StageOutputs


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of views: views of equal size go through the backbone together.

    forward(views: list of `B x C x h_i x w_i`) -> (head outputs `(V*B) x out_dim`, pooled features `(V*B) x D`),
    rows stacked view by view (view 0 first), as DINOLoss expects.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: list[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(views, torch.Tensor):
            views = [views]
        feats, start = [], 0
        while start < len(views):  # consecutive runs of the same resolution
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(views[start:end])).pooled)
            start = end
        pooled = torch.cat(feats)
        return self.head(pooled), pooled


class Branch(nn.Module):
    """An encoder and its DINO head (what the EMA teacher copies)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head


def frame_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A frame encoder applied to every frame of `B x C x T x H x W`: pooled features `B x T x D`."""
    if x.ndim != 5:
        raise ValueError(f"expected B x C x T x H x W, got shape {tuple(x.shape)}")
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    return encoder(frames).pooled.reshape(b, t, -1)


class DISCOVREncoders(nn.Module):
    """The exported model: the video encoder and, when trained, the image encoder. `forward` embeds a clip
    `B x 1 x T x H x W` with the `embed` branch: the video encoder's StageOutputs, or ("image") the image encoder
    per frame with its pooled features averaged over the clip (`pooled` `B x D`, no stages)."""

    def __init__(self, video: nn.Module, image: nn.Module | None = None, embed: str = "video") -> None:
        super().__init__()
        if embed not in ("video", "image") or (embed == "image" and image is None):
            raise ValueError(f"DISCOVREncoders: cannot embed with {embed!r} (image encoder: {image is not None})")
        self.video = video
        self.image = image
        self.embed = embed

    def forward(self, x: torch.Tensor) -> StageOutputs:
        if self.embed == "video":
            return self.video(x)
        return StageOutputs(stages=[], pooled=frame_features(self.image, x).mean(dim=1))


class VideoScorer(nn.Module):
    """Frame encoder + aggregator: `x` `B x 1 x T x H x W` (mask `B x T` optional) -> logits `B x K`."""

    kind = "video"

    def __init__(self, encoder: nn.Module, aggregator: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.aggregator = aggregator

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        return frame_features(self.encoder, x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.aggregator(self.frame_features(x), mask)
