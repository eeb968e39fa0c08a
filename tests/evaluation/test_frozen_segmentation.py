"""Frozen-feature segmentation: a 1x1 linear head recovers a mask that is linearly decodable from the tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sonodistill.evaluation.frozen_segmentation import (
    dice_per_image,
    fit_linear_segmentation,
    frozen_segmentation_fold,
    patch_token_maps,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Discs on an 8 x 8 token grid (upsampled to 16 x 16 masks); token channel 2 is +-2 inside/outside + noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    centre = torch.rand(n, 2, 1, 1, generator=g) * 4 + 2
    radius = torch.rand(n, 1, 1, generator=g) * 1.5 + 1.5
    inside = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 <= radius ** 2).float()  # n x 8 x 8
    feats = torch.randn(n, 8, 8, 8, generator=g)
    feats[:, 2] = 4 * (inside - 0.5) + 0.3 * feats[:, 2]
    return feats, F.interpolate(inside[:, None], scale_factor=2, mode="nearest")


def test_linear_head_decodes_a_linearly_decodable_mask():
    train_f, train_m = _toy(32, 0)
    test_f, test_m = _toy(16, 1)
    res = frozen_segmentation_fold(train_f, train_m, test_f, test_m, epochs=30, lr=5e-2)
    assert res["n_test"] == 16
    assert res["dice"] > 0.85, res["dice"]  # bilinear upsampling blurs only the patch borders
    # and a mask unrelated to the features is not decodable
    shuffled = test_m[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
    assert frozen_segmentation_fold(train_f, train_m[torch.randperm(32)], test_f, shuffled, epochs=10)["dice"] < 0.6


def test_dice_per_image_hand_case_and_project_conventions():
    from sonodistill.evaluation.metrics import segmentation_metrics

    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    target = torch.zeros(3, 4, 4)
    pred[0, :2] = True  # 8 pixels
    target[0, 1:3] = 1  # 8 pixels, 4 shared -> dice 1/2, iou 1/3
    pred[2, 0, 0] = True  # image 1: both empty; image 2: only the prediction
    out = dice_per_image(pred, target)
    assert out["dice"].tolist() == [0.5, 1.0, 0.0]
    for i in range(3):
        ref = segmentation_metrics(pred[i].numpy(), target[i].numpy().astype(bool))
        assert out["dice"][i] == ref["dice"] and abs(out["iou"][i] - ref["iou"]) < 1e-12


def test_patch_token_maps_from_a_frame_vit():
    from sonodistill.models.backbones import build_backbone

    vit = build_backbone("vit_tiny_p8", dim=24, depth=1, heads=2, img_size=32)
    batches = [{"x": torch.randn(3, 1, 32, 32), "mask": torch.ones(3, 1, 32, 32), "index": torch.arange(3)},
               {"x": torch.randn(2, 1, 32, 32), "mask": torch.zeros(2, 1, 32, 32), "index": torch.arange(3, 5)}]
    feats, masks, index = patch_token_maps(vit, batches)
    assert feats.shape == (5, 24, 4, 4) and masks.shape == (5, 1, 32, 32) and index.tolist() == [0, 1, 2, 3, 4]
    out = vit(batches[0]["x"])
    torch.testing.assert_close(feats[0, :, 0, 1], out.tokens[0, 2])  # token (0, 1) = 2nd patch token
    assert vit.training  # mode restored
    head = fit_linear_segmentation(feats, masks, epochs=2)
    assert head(feats, (32, 32)).shape == (5, 1, 32, 32)


def test_patch_token_maps_from_a_cnn_stage():
    """A CNN has no tokens: its named stage map is the patch grid (EfficientNet stride 16: 2x2 at 32 px)."""
    from sonodistill.models.backbones import build_backbone

    cnn = build_backbone("efficientnet_lite0").eval()
    batches = [{"x": torch.rand(2, 1, 32, 32), "mask": torch.ones(2, 1, 32, 32), "index": torch.arange(2)}]
    feats, _, _ = patch_token_maps(cnn, batches, stage=3)
    assert feats.shape == (2, 112, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(feats, cnn(batches[0]["x"]).stages[3])
    with pytest.raises(ValueError, match="name the stage map"):
        patch_token_maps(cnn, batches)
