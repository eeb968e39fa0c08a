"""Temporal shift (Lin et al., "TSM: Temporal Shift Module", ICCV 2019) for 2D CNNs applied per frame."""

from __future__ import annotations

import torch
from torch import nn


def temporal_shift(x: torch.Tensor, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """Shift channel slices in time: `(B*T) x C x H x W` -> same shape, zero-padded at the clip ends.

    With `fold = C // fold_div`: channels `[0, fold)` at frame t take frame t+1 (shift backward in time),
    channels `[fold, 2*fold)` take frame t-1 (shift forward in time), the rest are unchanged.
    """
    bt, c, h, w = x.shape
    if bt % num_frames:
        raise ValueError(f"temporal_shift: batch*frames {bt} is not divisible by num_frames {num_frames}")
    x = x.view(bt // num_frames, num_frames, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(bt, c, h, w)


class TemporalShift(nn.Module):
    """Residual-branch temporal shift: shifts its input in time, then applies `net` (the block's first conv).

    `num_frames` is set by the owning backbone before each forward (frames are folded into the batch).
    """

    def __init__(self, net: nn.Module, fold_div: int = 8) -> None:
        super().__init__()
        self.net = net
        self.fold_div = fold_div
        self.num_frames = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(x, self.num_frames, self.fold_div))
