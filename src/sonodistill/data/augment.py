"""Ultrasound augmentations on float tensors `C x H x W` (frames) or `C x T x H x W` (clips), intensities in [0, 1].

No colour jitter: gain, gamma, multiplicative speckle, blur, cutout and geometric crops/flips only. Geometric
transforms draw one set of parameters per call, shared by every frame of a clip and by the mask
(`H x W` or `1 x H x W`, resampled with nearest neighbour). Every transform takes an optional
`torch.Generator`; without one it uses torch's global RNG (a fixed generator would be copied into every
DataLoader worker and repeat the same draws there). The datasets run augmentations inside
`seeded_rng(seed, epoch, index)`, so an item's draws depend only on that key: the same after a resume, with any
number of workers.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@contextlib.contextmanager
def seeded_rng(*key: int) -> Iterator[None]:
    """Run the block with torch's global CPU RNG seeded from `key` (e.g. seed, epoch, item index), then restore it.

    Draws inside depend only on the key, and the caller's random stream is left as it was."""
    entropy = [int(k) % 2**64 for k in key]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check(x: Tensor) -> None:
    if x.ndim not in (3, 4) or not x.is_floating_point():
        raise ValueError(f"augmentations expect a float tensor C x H x W or C x T x H x W, got {tuple(x.shape)} {x.dtype}")


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _coin(p: float, g: torch.Generator | None) -> bool:
    return p >= 1.0 or (p > 0.0 and float(torch.rand((), generator=g)) < p)


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize the last two dims of any-rank tensor x."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    if mode == "nearest":
        out = F.interpolate(flat, size=size, mode="nearest")
    else:
        out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, *size)


class Transform:
    """Base: `__call__(x, mask=None)` returns x, or (x, mask) when a mask is given."""

    def __init__(self, p: float = 1.0, generator: torch.Generator | None = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, x: Tensor, mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        _check(x)
        if _coin(self.p, self.generator):
            x, mask = self.apply(x, mask)
        return x if mask is None else (x, mask)

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


class Compose:
    """Apply transforms in order, threading the mask through."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        for t in self.transforms:
            out = t(x, mask)
            x, mask = out if isinstance(out, tuple) else (out, None)
        return x if mask is None else (x, mask)

    def __repr__(self) -> str:
        return f"Compose({[type(t).__name__ for t in self.transforms]})"


class RandomResizedCrop(Transform):
    """Crop a random area fraction in `scale` with aspect ratio in `ratio`, resize to `size` (same box for all frames)."""

    def __init__(self, size: int | tuple[int, int], scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio = scale, ratio

    def box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop: the sampling rule of torchvision's RandomResizedCrop (10 tries,
        then centre crop), written here because torchvision does not import with this project's CPU torch build and
        MONAI has no area-and-aspect-ratio crop."""
        g = self.generator
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale, g)
            ar = math.exp(_uniform(*log_r, g))
            cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=g))
                left = int(torch.randint(0, w - cw + 1, (), generator=g))
                return top, left, ch, cw
        s = min(h, w)
        return (h - s) // 2, (w - s) // 2, s, s

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        t, l, ch, cw = self.box(*x.shape[-2:])
        x = _resize(x[..., t:t + ch, l:l + cw], self.size, "bilinear")
        if mask is not None:
            mask = _resize(mask[..., t:t + ch, l:l + cw].float(), self.size, "nearest").to(mask.dtype)
        return x, mask


class Resize(Transform):
    """Deterministic resize of the last two dims to `size` (mask: nearest)."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        super().__init__(1.0, None)
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if tuple(x.shape[-2:]) != self.size:
            x = _resize(x, self.size, "bilinear")
            if mask is not None:
                mask = _resize(mask.float(), self.size, "nearest").to(mask.dtype)
        return x, mask


class RandomRotateZoom(Transform):
    """Rotate by an angle drawn in +-`degrees` and zoom by a factor drawn log-uniformly in `zoom` about the centre
    (same for every frame and the mask); a factor < 1 shrinks the content and pads with zeros (black, as outside
    the ultrasound sector). Image bilinear, mask nearest; the output keeps the input's size."""

    def __init__(self, degrees: float = 0.0, zoom: tuple[float, float] = (1.0, 1.0), p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        if degrees < 0 or len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
            raise ValueError(f"RandomRotateZoom needs degrees >= 0 and a zoom range (low, high) with 0 < low <= high, "
                             f"got {degrees}, {zoom}")
        self.degrees, self.zoom = float(degrees), (float(zoom[0]), float(zoom[1]))

    def theta(self, h: int, w: int, angle: float, factor: float) -> Tensor:
        """The 2 x 3 `affine_grid` matrix (output -> input, normalised coordinates) rotating the content by `angle`
        radians counter-clockwise on screen and scaling it by `factor`, with square pixels on any H x W."""
        c, s = math.cos(angle), math.sin(angle)
        # pixel offsets from the centre: in = R(angle)^T out / factor; normalised x = 2 px / W, y = 2 py / H
        a = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) / factor
        to_px = torch.diag(torch.tensor([w / 2.0, h / 2.0], dtype=torch.float64))
        to_norm = torch.diag(torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64))
        return torch.cat([to_norm @ a @ to_px, torch.zeros(2, 1, dtype=torch.float64)], dim=1)

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        g = self.generator
        angle = math.radians(_uniform(-self.degrees, self.degrees, g))
        factor = math.exp(_uniform(math.log(self.zoom[0]), math.log(self.zoom[1]), g))
        h, w = x.shape[-2:]
        grid = F.affine_grid(self.theta(h, w, angle, factor).to(x.dtype).unsqueeze(0), [1, 1, h, w],
                             align_corners=False)

        def warp(t: Tensor, mode: str) -> Tensor:
            flat = t.reshape(1, -1, h, w)
            return F.grid_sample(flat, grid.to(flat.dtype), mode=mode, padding_mode="zeros",
                                 align_corners=False).reshape(t.shape)

        x = warp(x, "bilinear")
        if mask is not None:
            mask = warp(mask.float(), "nearest").to(mask.dtype)
        return x, mask


class HorizontalFlip(Transform):
    """Mirror left-right with probability p (image and mask)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return x.flip(-1), (None if mask is None else mask.flip(-1))


class Gain(Transform):
    """Multiply intensities by a factor drawn in `gain` (overall receiver gain), clamped to [0, 1]."""

    def __init__(self, gain: tuple[float, float] = (0.8, 1.25), p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.gain = gain

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return (x * _uniform(*self.gain, self.generator)).clamp(0.0, 1.0), mask


class Gamma(Transform):
    """x ** gamma with gamma drawn log-uniformly in `gamma` (input clamped to [0, 1] first)."""

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.gamma = gamma

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        gm = math.exp(_uniform(math.log(self.gamma[0]), math.log(self.gamma[1]), self.generator))
        return x.clamp(0.0, 1.0).pow(gm), mask


class SpeckleNoise(Transform):
    """Multiplicative noise x * (1 + sigma * n), n ~ N(0, 1) per pixel, sigma drawn in `sigma`; clamped to [0, 1]."""

    def __init__(self, sigma: tuple[float, float] = (0.05, 0.2), p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.sigma = sigma

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        s = _uniform(*self.sigma, self.generator)
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        return (x * (1.0 + s * noise)).clamp(0.0, 1.0), mask


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Normalised 1-D Gaussian, radius ceil(3 sigma)."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


class GaussianBlur(Transform):
    """Separable Gaussian blur of every frame, sigma (pixels) drawn in `sigma`, reflect padding."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 1.5), p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.sigma = sigma

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        k = gaussian_kernel1d(_uniform(*self.sigma, self.generator), x.dtype).to(x.device)
        r = len(k) // 2
        h, w = x.shape[-2:]
        flat = x.reshape(-1, 1, h, w)
        mode = "reflect" if r < min(h, w) else "replicate"
        flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
        return flat.reshape(x.shape), mask


class Cutout(Transform):
    """Zero `holes` rectangles with sides up to `max_frac` of the image (same place in every frame); mask untouched."""

    def __init__(self, holes: int = 1, max_frac: float = 0.3, p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.holes, self.max_frac = holes, max_frac

    def apply(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        g = self.generator
        h, w = x.shape[-2:]
        x = x.clone()
        for _ in range(self.holes):
            ch = max(1, int(round(_uniform(0.1, 1.0, g) * self.max_frac * h)))
            cw = max(1, int(round(_uniform(0.1, 1.0, g) * self.max_frac * w)))
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            x[..., top:top + ch, left:left + cw] = 0.0
        return x, mask


# -- builders ---------------------------------------------------------------------------------------
def _rotate_zoom(degrees: float, zoom: Sequence[float], generator: torch.Generator | None) -> list[Transform]:
    """[RandomRotateZoom] when it would change anything, else [] (the builders' draws stay as they were)."""
    if degrees == 0 and tuple(float(z) for z in zoom) == (1.0, 1.0):
        return []
    return [RandomRotateZoom(degrees, tuple(zoom), generator=generator)]


def weak_augment(size: int, generator: torch.Generator | None = None, rotate_degrees: float = 0.0,
                 zoom: Sequence[float] = (1.0, 1.0)) -> Compose:
    """Mild: large crops, flips, small gain changes (e.g. the teacher view in FixMatch-style training); with
    `rotate_degrees` > 0 or a `zoom` range other than (1, 1), a random rotation / zoom after the crop."""
    return Compose([
        RandomResizedCrop(size, scale=(0.8, 1.0), generator=generator),
        *_rotate_zoom(rotate_degrees, zoom, generator),
        HorizontalFlip(0.5, generator=generator),
        Gain((0.9, 1.1), generator=generator),
    ])


def strong_augment(size: int, generator: torch.Generator | None = None) -> Compose:
    """Strong: smaller crops, gain, gamma, speckle, blur and cutout (student view / self-supervised views)."""
    return Compose([
        RandomResizedCrop(size, scale=(0.3, 1.0), generator=generator),
        HorizontalFlip(0.5, generator=generator),
        Gain((0.7, 1.4), p=0.8, generator=generator),
        Gamma((0.6, 1.6), p=0.8, generator=generator),
        SpeckleNoise((0.05, 0.25), p=0.5, generator=generator),
        GaussianBlur((0.1, 1.5), p=0.5, generator=generator),
        Cutout(1, 0.3, p=0.5, generator=generator),
    ])


def video_train_augment(size: int, generator: torch.Generator | None = None, rotate_degrees: float = 0.0,
                        zoom: Sequence[float] = (1.0, 1.0)) -> Compose:
    """Clip training: one crop/flip for all frames, gain/gamma, light speckle; rotation / zoom as in `weak_augment`."""
    return Compose([
        RandomResizedCrop(size, scale=(0.6, 1.0), generator=generator),
        *_rotate_zoom(rotate_degrees, zoom, generator),
        HorizontalFlip(0.5, generator=generator),
        Gain((0.8, 1.25), p=0.8, generator=generator),
        Gamma((0.7, 1.4), p=0.5, generator=generator),
        SpeckleNoise((0.02, 0.1), p=0.3, generator=generator),
    ])


RandomHorizontalFlip = HorizontalFlip
