"""Tube masking and random patch masking: shapes, ratios, tube structure, determinism, use with the ViTs."""

from __future__ import annotations

import pytest
import torch

from sonodistill.data.masking import keep_to_mask, num_kept, random_patch_mask, tube_mask
from sonodistill.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n, ratio, expected", [(64, 0.9, 6), (64, 0.5, 32), (64, 0.0, 64), (4, 0.99, 1), (10, 0.75, 2)])
def test_num_kept(n, ratio, expected):
    assert num_kept(n, ratio) == expected


def test_tube_mask_same_spatial_positions_at_every_time_step():
    g = torch.Generator().manual_seed(0)
    keep = tube_mask(3, (4, 8, 8), 0.9, g)
    assert keep.shape == (3, 4 * 6) and keep.dtype == torch.int64
    per_t = keep.view(3, 4, 6)
    assert torch.equal(per_t // 64, torch.arange(4).view(1, 4, 1).expand(3, 4, 6))  # time index
    spatial = per_t % 64
    assert torch.equal(spatial, spatial[:, :1].expand_as(spatial))  # a tube: same (h, w) at every t
    assert (keep.diff(dim=1) > 0).all()  # sorted, distinct
    assert not torch.equal(spatial[0, 0], spatial[1, 0])  # different clips, different masks (p ~ 1)
    masked = keep_to_mask(keep, 256)
    assert masked.shape == (3, 256) and int(masked.sum(dim=1)[0]) == 256 - 24
    assert not masked.gather(1, keep).any()


def test_random_patch_mask_ratio_and_uniformity():
    g = torch.Generator().manual_seed(1)
    keep = random_patch_mask(4000, (4, 4), 0.5, g)
    assert keep.shape == (4000, 8)
    assert ((keep >= 0) & (keep < 16)).all() and (keep.diff(dim=1) > 0).all()
    freq = torch.bincount(keep.flatten(), minlength=16).float() / 4000
    assert torch.allclose(freq, torch.full((16,), 0.5), atol=0.04)  # every position kept half the time


def test_masks_are_deterministic_given_the_generator():
    a = tube_mask(2, (2, 4, 4), 0.75, torch.Generator().manual_seed(7))
    b = tube_mask(2, (2, 4, 4), 0.75, torch.Generator().manual_seed(7))
    c = tube_mask(2, (2, 4, 4), 0.75, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_patch_mask(2, (4, 4), 0.5, torch.Generator().manual_seed(3)),
                       random_patch_mask(2, (4, 4), 0.5, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_ratio_is_an_error(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        tube_mask(1, (2, 2, 2), ratio)


def test_masks_drive_the_vit_backbones():
    from sonodistill.models.backbones import build_backbone

    video = build_backbone("video_vit", dim=24, depth=1, heads=2, tubelet=(2, 8, 8), num_frames=4, img_size=32)
    keep = tube_mask(2, (2, 4, 4), 0.75)
    out = video(torch.randn(2, 1, 4, 32, 32), keep=keep)
    assert out.tokens.shape == (2, 1 + 8, 24) and out.stages[-1].shape == (2, 24, 8)
    frame = build_backbone("vit_tiny_p8", dim=24, depth=1, heads=2, img_size=32)
    out = frame(torch.randn(2, 1, 32, 32), keep=random_patch_mask(2, (4, 4), 0.5))
    assert out.tokens.shape == (2, 1 + 8, 24)
