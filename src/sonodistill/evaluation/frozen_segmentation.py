"""Frozen-feature segmentation: a linear (1x1 convolution) head on a frozen encoder's patch tokens, Dice.

Features are extracted once (`patch_token_maps`), standardised per channel with training statistics, and a
1x1 convolution is trained with BCE + soft Dice on logits bilinearly upsampled to the mask size. The encoder
never changes, so the score measures how linearly decodable the mask is from its patch tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.models.stages import patch_maps


@torch.no_grad()
def patch_token_maps(encoder: nn.Module, loader: Any, stage: int | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       np.ndarray]:
    """Patch features as maps `N x D x h x w`, masks `N x 1 x H x W`, dataset indices `N`: a frame ViT's
    final-norm patch tokens (grid read from its last stage), or a CNN's `stage` map (e.g. 3: EfficientNet's
    stride 16, what DISCOVR's CNN image branch gives as tokens).

    Batches are dicts with "x" (`B x C x H x W`), "mask" and "index" (a `FrameDataset` with masks).
    """
    was_training = encoder.training
    encoder.eval()
    feats, masks, index = [], [], []
    try:
        for batch in loader:
            feats.append(patch_maps(encoder(batch["x"]), stage).float())
            masks.append(batch["mask"].float())
            index.append(torch.as_tensor(batch["index"]).reshape(-1))
    finally:
        encoder.train(was_training)
    return torch.cat(feats), torch.cat(masks), torch.cat(index).numpy()


class LinearSegmentationHead(nn.Module):
    """Per-channel standardisation (fixed, from training features) + 1x1 conv: `B x D x h x w` -> logits
    `B x 1 x H x W` (bilinear upsampling to `out_size`)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", (mean if mean is not None else torch.zeros(dim)).reshape(1, dim, 1, 1).float())
        self.register_buffer("std", (std if std is not None else torch.ones(dim)).reshape(1, dim, 1, 1).float())
        self.conv = nn.Conv2d(dim, 1, kernel_size=1)

    def forward(self, feats: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        logits = self.conv((feats - self.mean) / self.std)
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


def fit_linear_segmentation(feats: torch.Tensor, masks: torch.Tensor, epochs: int = 100, lr: float = 1e-2,
                            weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0) -> LinearSegmentationHead:
    """Train the linear head on frozen features `N x D x h x w` against binary masks `N x 1 x H x W`."""
    from monai.losses import DiceLoss

    if feats.shape[0] != masks.shape[0] or feats.shape[0] == 0:
        raise ValueError(f"need as many masks as feature maps (> 0), got {feats.shape[0]} and {masks.shape[0]}")
    dims = (0, 2, 3)
    head = LinearSegmentationHead(feats.shape[1], feats.mean(dim=dims), feats.std(dim=dims).clamp_min(1e-6))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    dice = DiceLoss(sigmoid=True)
    g = torch.Generator().manual_seed(seed)
    size = tuple(masks.shape[-2:])
    for _ in range(epochs):
        for rows in torch.randperm(feats.shape[0], generator=g).split(batch_size):
            logits = head(feats[rows], size)
            loss = F.binary_cross_entropy_with_logits(logits, masks[rows]) + dice(logits, masks[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head


@torch.no_grad()
def predict_masks(head: LinearSegmentationHead, feats: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Binary masks `N x H x W` (bool): sigmoid(logit) >= 0.5."""
    return head(feats, out_size)[:, 0] >= 0.0


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    """Dice and IoU of each binary mask pair `N x H x W` (vectorised; the conventions of
    `metrics.segmentation_metrics`: both masks empty -> 1, exactly one empty -> 0)."""
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(pred.shape[0], -1).bool()
    inter = (p & t).sum(dim=1).double()
    total = p.sum(dim=1).double() + t.sum(dim=1).double()
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(total), 2 * inter / total.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(total), inter / (total - inter).clamp_min(1))
    return {"dice": dice.numpy(), "iou": iou.numpy()}


def frozen_segmentation_fold(train_feats: torch.Tensor, train_masks: torch.Tensor, test_feats: torch.Tensor,
                             test_masks: torch.Tensor, **fit_options: Any) -> dict[str, Any]:
    """Fit on the training items, score the test items: mean Dice / IoU (and per-image Dice)."""
    head = fit_linear_segmentation(train_feats, train_masks, **fit_options)
    test = dice_per_image(predict_masks(head, test_feats, tuple(test_masks.shape[-2:])), test_masks)
    train = dice_per_image(predict_masks(head, train_feats, tuple(train_masks.shape[-2:])), train_masks)
    return {"dice": float(test["dice"].mean()), "iou": float(test["iou"].mean()),
            "train_dice": float(train["dice"].mean()), "n_test": int(test["dice"].size),
            "per_image_dice": test["dice"].tolist()}
