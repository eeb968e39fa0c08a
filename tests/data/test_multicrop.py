"""DINO multi-crop: view count and shapes, crops inside the imaging region, config checks."""

from __future__ import annotations

import pytest
import torch

from sonodistill.data import augment as aug
from sonodistill.data.multicrop import MultiCropAugment, MultiCropConfig, RegionResizedCrop, content_box
from sonodistill.errors import ConfigError


def _padded_frame(size: int = 48) -> torch.Tensor:
    """A frame whose imaging region (rows 10..37, cols 6..41) is bright; the rest is zero padding."""
    x = torch.zeros(1, size, size)
    x[:, 10:38, 6:42] = 0.8
    return x


def test_views_count_shapes_and_range():
    torch.manual_seed(0)
    crops = MultiCropAugment(MultiCropConfig(global_size=32, local_size=16, n_local=3))
    views = crops(torch.rand(1, 48, 48))
    assert crops.n_views == 5 and len(views) == 5
    assert [tuple(v.shape) for v in views] == [(1, 32, 32)] * 2 + [(1, 16, 16)] * 3
    for v in views:
        assert v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1


def test_views_collate_into_a_list_of_batches():
    from torch.utils.data import default_collate

    crops = MultiCropAugment(MultiCropConfig(global_size=16, local_size=8, n_local=2))
    batch = default_collate([{"x": crops(torch.rand(1, 24, 24))} for _ in range(3)])
    assert [tuple(v.shape) for v in batch["x"]] == [(3, 1, 16, 16)] * 2 + [(3, 1, 8, 8)] * 2


def test_content_box_finds_the_imaging_region():
    assert content_box(_padded_frame()) == (10, 6, 28, 36)
    assert content_box(torch.zeros(1, 20, 20)) == (0, 0, 20, 20)  # nothing bright: the whole frame


def test_crops_stay_inside_the_imaging_region():
    torch.manual_seed(1)
    x = _padded_frame()
    region = RegionResizedCrop(16, scale=(0.05, 0.4))
    plain = aug.RandomResizedCrop(16, scale=(0.05, 0.4))
    region_min = min(float(region(x).min()) for _ in range(50))
    plain_min = min(float(plain(x).min()) for _ in range(50))
    assert region_min > 0.79   # every crop lies in the bright region
    assert plain_min < 0.1     # the plain crop does reach the padding (so the test can fail)


def test_config_checks():
    with pytest.raises(ConfigError, match="n_local"):
        MultiCropConfig(n_local=-1)
    with pytest.raises(ConfigError, match="local_scale"):
        MultiCropConfig(local_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="one frame"):
        MultiCropAugment(MultiCropConfig(16, 8, 1))(torch.rand(1, 2, 16, 16))
