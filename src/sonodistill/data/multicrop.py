"""DINO multi-crop for ultrasound frames: 2 global + N local views cropped inside the imaging region.

No colour jitter: each view gets a random resized crop (inside the content box, i.e. the non-padded imaging
region after `preprocess_clip`), a horizontal flip, gain, gamma, multiplicative speckle and Gaussian blur
(DINO's asymmetric blur: always on global view 1, rarely on global view 2, often on local views).
Input and output intensities are in [0, 1]; views are `C x H x W` float tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sonodistill.data import augment as aug
from sonodistill.errors import ConfigError

Tensor = torch.Tensor


def content_box(x: Tensor, threshold: float = 0.02, min_side: int = 8) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the rows/columns of `x` (`C x H x W`) with any pixel above `threshold`.

    This is the imaging region left after `preprocess_clip` (crop to the region, then zero padding). Falls back to
    the whole frame when the content is smaller than `min_side` pixels on a side (e.g. an almost black frame).
    """
    if x.ndim != 3:
        raise ValueError(f"content_box expects C x H x W, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    on = (x > threshold).any(dim=0)
    rows = torch.nonzero(on.any(dim=1)).flatten()
    cols = torch.nonzero(on.any(dim=0)).flatten()
    if rows.numel() == 0 or cols.numel() == 0:
        return 0, 0, h, w
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    if bottom - top < min_side or right - left < min_side:
        return 0, 0, h, w
    return top, left, bottom - top, right - left


class RegionResizedCrop(aug.RandomResizedCrop):
    """`RandomResizedCrop` whose box is drawn inside `content_box(x)` rather than the whole (padded) frame."""

    def __init__(self, size: int, scale: tuple[float, float], threshold: float = 0.02,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(size, scale=scale, generator=generator)
        self.threshold = threshold

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        top, left, h, w = content_box(x if x.ndim == 3 else x[:, 0], self.threshold)
        t, l, ch, cw = self.box(h, w)
        t, l = t + top, l + left
        x = aug._resize(x[..., t:t + ch, l:l + cw], self.size, "bilinear")
        if mask is not None:
            mask = aug._resize(mask[..., t:t + ch, l:l + cw].float(), self.size, "nearest").to(mask.dtype)
        return x, mask


@dataclass
class MultiCropConfig:
    """Sizes and scales of DINO's views (the official defaults are 224/96 px, scales (0.4, 1) and (0.05, 0.4))."""

    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)

    def __post_init__(self) -> None:
        if self.n_local < 0:
            raise ConfigError(f"multi-crop: n_local must be >= 0, got {self.n_local}")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ConfigError(f"multi-crop: {name} must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        if self.global_size < 1 or self.local_size < 1:
            raise ConfigError(f"multi-crop: sizes must be >= 1, got {self.global_size}, {self.local_size}")


def _photometric(blur_p: float, generator: torch.Generator | None) -> list[aug.Transform]:
    return [
        aug.HorizontalFlip(0.5, generator=generator),
        aug.Gain((0.7, 1.4), p=0.8, generator=generator),
        aug.Gamma((0.6, 1.6), p=0.8, generator=generator),
        aug.SpeckleNoise((0.05, 0.25), p=0.5, generator=generator),
        aug.GaussianBlur((0.1, 2.0), p=blur_p, generator=generator),
    ]


class MultiCropAugment:
    """`x` (`C x H x W` in [0, 1]) -> list of `2 + n_local` views: 2 global `C x G x G`, then local `C x L x L`."""

    n_global = 2

    def __init__(self, cfg: MultiCropConfig, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        g = generator
        self.global1 = aug.Compose([RegionResizedCrop(cfg.global_size, cfg.global_scale, generator=g),
                                    *_photometric(1.0, g)])
        self.global2 = aug.Compose([RegionResizedCrop(cfg.global_size, cfg.global_scale, generator=g),
                                    *_photometric(0.1, g)])
        self.local = aug.Compose([RegionResizedCrop(cfg.local_size, cfg.local_scale, generator=g),
                                  *_photometric(0.5, g)])

    @property
    def n_views(self) -> int:
        return self.n_global + self.cfg.n_local

    def __call__(self, x: Tensor) -> list[Tensor]:
        if x.ndim != 3:
            raise ValueError(f"MultiCropAugment expects one frame C x H x W, got shape {tuple(x.shape)}")
        views = [self.global1(x), self.global2(x)]
        views += [self.local(x) for _ in range(self.cfg.n_local)]
        return views  # type: ignore[return-value]

    def __repr__(self) -> str:
        c = self.cfg
        return (f"MultiCropAugment(2 x {c.global_size}px scale {c.global_scale}, "
                f"{c.n_local} x {c.local_size}px scale {c.local_scale})")
