"""Occlusion sensitivity (explain/occlusion.py) on hand-made models whose answers are computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sonodistill.errors import ConfigError
from sonodistill.explain.occlusion import (ClassProbability, EmbeddingSimilarity, OutputProbability,
                                           RegionProbability, occlusion_explainer, occlusion_map)

ROWS, COLS = slice(8, 16), slice(16, 24)  # the 8 x 8 region the hand-made models look at, on 8-pixel tiles


class RegionClassifier(nn.Module):
    """Logits [5 * mean of the region, 0]: only the region matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 5.0 * x[..., ROWS, COLS].flatten(1).mean(1, keepdim=True)
        return torch.cat([s, torch.zeros_like(s)], dim=1)


class PixelSegmenter(nn.Module):
    """Per-pixel logits [-4x, 4x] on a `B x 1 x H x W` image: foreground where the image is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-4.0 * x, 4.0 * x], dim=1)


def _image(frames: int | None = None) -> torch.Tensor:
    """1 x 1 x [T x] 32 x 32 zeros with the region set to 1 (image mean 1/16)."""
    x = torch.zeros(1, 1, *([frames] if frames else []), 32, 32)
    x[..., ROWS, COLS] = 1.0
    return x


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_class_probability_drop_is_the_hand_computed_one_inside_the_region_and_zero_outside():
    # tiles of 8 (overlap 0): hiding the region's tile sets it to the image mean 1/16, so the class-0 probability
    # falls from sigmoid(5) to sigmoid(5/16); hiding any other tile changes nothing the model looks at
    heat = occlusion_map(ClassProbability(RegionClassifier()), _image(), target=0, mask=8, overlap=0.0)
    assert heat.shape == (32, 32)
    inside = _sigmoid(5.0) - _sigmoid(5.0 / 16)
    torch.testing.assert_close(heat[ROWS, COLS], torch.full((8, 8), inside), atol=1e-6, rtol=0)
    outside = heat.clone()
    outside[ROWS, COLS] = 0
    assert float(outside.abs().max()) == 0.0
    # class 1 gains when the region is hidden: its drop is negative, clipped to 0
    assert float(occlusion_map(ClassProbability(RegionClassifier()), _image(), 1, mask=8, overlap=0.0).max()) == 0


def test_overlapping_patches_still_localise_the_region():
    heat = occlusion_map(ClassProbability(RegionClassifier()), _image(), target=0, mask=8, overlap=0.5)
    peak = divmod(int(heat.argmax()), 32)
    assert ROWS.start <= peak[0] < ROWS.stop and COLS.start <= peak[1] < COLS.stop
    assert float(heat[:4, :].max()) == 0.0 and float(heat[:, :8].max()) == 0.0  # tiles far from the region


def test_video_windows_are_hidden_in_all_frames_at_once():
    heat = occlusion_map(ClassProbability(RegionClassifier()), _image(frames=4), target=0, mask=8, overlap=0.0)
    assert heat.shape == (4, 32, 32)
    for t in range(1, 4):
        torch.testing.assert_close(heat[t], heat[0], atol=0, rtol=0)
    assert float(heat[0, ROWS, COLS].min()) > 0.3


def test_region_probability_is_the_reference_weighted_mean_of_each_class():
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    seg = PixelSegmenter()
    score = RegionProbability(seg, x)
    p1 = torch.sigmoid(8.0 * x).flatten()  # softmax of [-4x, 4x]: class 1 = sigmoid(8x)
    expected = torch.stack([((1 - p1) * (1 - p1)).sum() / (1 - p1).sum(), (p1 * p1).sum() / p1.sum()])
    torch.testing.assert_close(score(x)[0], expected)
    y = torch.zeros_like(x)  # everything dark: the foreground region's probability falls to sigmoid(0) = 0.5
    torch.testing.assert_close(score(y)[0, 1], torch.tensor(0.5))


def test_segmentation_occlusion_shows_the_predicted_object():
    # foreground weights: sigmoid(8) on the 64 region pixels, sigmoid(0) = 1/2 on the 960 dark ones; hiding the
    # region's tile (value 1/16) lowers its foreground probability from sigmoid(8) to sigmoid(1/2)
    x = _image()
    heat = occlusion_map(RegionProbability(PixelSegmenter(), x), x, target=1, mask=8, overlap=0.0)
    bright, dark = _sigmoid(8.0), 0.5
    inside = 64 * bright * (bright - _sigmoid(0.5)) / (64 * bright + 960 * dark)
    torch.testing.assert_close(heat[ROWS, COLS], torch.full((8, 8), inside), atol=1e-6, rtol=0)
    outside = heat.clone()
    outside[ROWS, COLS] = 0
    assert float(outside.max()) == 0.0  # hiding dark tiles brightens them: the foreground gains, clipped to 0


def test_embedding_similarity_is_one_on_the_reference_and_blind_where_the_encoder_is():
    class RegionEncoder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            r = x[..., ROWS, COLS]
            return torch.stack([r.flatten(1).mean(1), r[..., :4, :].flatten(1).mean(1) + 0.1], dim=1)

    x = _image()
    x[..., 8:12, 16:24] = 0.5
    score = EmbeddingSimilarity(RegionEncoder(), x)
    torch.testing.assert_close(score(x), torch.ones(1, 1))
    heat = occlusion_map(score, x, target=0, mask=8, overlap=0.0)
    assert float(heat[ROWS, COLS].min()) > 0
    outside = heat.clone()
    outside[ROWS, COLS] = 0
    assert float(outside.max()) == 0.0


def test_explainer_keeps_gradcams_shapes_and_scales_each_sample():
    frames = torch.cat([_image(), 0.5 * _image()])          # B = 2 images
    videos = torch.cat([_image(frames=3), _image(frames=3)])  # B = 2 clips
    explain = occlusion_explainer(ClassProbability, mask=8, overlap=0.0)
    maps = explain(RegionClassifier(), frames, 0)
    assert maps.shape == (2, 1, 32, 32) and torch.allclose(maps.flatten(1).max(1).values, torch.ones(2))
    raw = explain(RegionClassifier(), frames, 0, normalize=False)
    assert float(raw[0].max()) > float(raw[1].max()) > 0  # the brighter region loses more
    assert explain(RegionClassifier(), videos, 0).shape == (2, 3, 32, 32)


def test_bad_arguments_are_config_errors():
    score = OutputProbability(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3), nn.Softmax(dim=1)))
    with pytest.raises(ConfigError, match="target 3"):
        occlusion_map(score, _image(), target=3)
    with pytest.raises(ConfigError, match="overlap"):
        occlusion_map(score, _image(), target=0, overlap=1.0)
    with pytest.raises(ConfigError, match="mask 40 px"):
        occlusion_map(score, _image(), target=0, mask=40)
    with pytest.raises(ValueError, match="1 x C x H x W"):
        occlusion_map(score, torch.zeros(2, 1, 32, 32), target=0)
