"""Token masking for masked self-distillation: tube masking of video tubelets and random patch masking.

Both return the *kept* token indices `B x K` (sorted, int64) in the raster order of the backbone's token grid
(`(t, h, w)` for video, `(h, w)` for frames), which is what `VideoVisionTransformer.forward(x, keep=...)` and
`VisionTransformer.forward(x, keep=...)` take. Randomness comes only from the `generator` argument.
"""

from __future__ import annotations

import math

import torch

from sonodistill.errors import ConfigError


def num_kept(n: int, ratio: float) -> int:
    """Tokens kept out of `n` at masking `ratio` in [0, 1): `round(n * (1 - ratio))`, at least 1."""
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"masking ratio must be in [0, 1), got {ratio}")
    if n < 1:
        raise ConfigError(f"cannot mask a grid of {n} tokens")
    return max(1, int(round(n * (1.0 - float(ratio)))))


def _random_subset(batch: int, n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """`batch x k` sorted distinct indices in [0, n), uniform per row (CPU)."""
    noise = torch.rand(batch, n, generator=generator)
    return noise.argsort(dim=1)[:, :k].sort(dim=1).values


def random_patch_mask(batch: int, grid: tuple[int, int], ratio: float,
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Random patch masking of an `h x w` token grid: kept indices `B x K`, `K = num_kept(h*w, ratio)`."""
    if len(grid) != 2:
        raise ConfigError(f"random_patch_mask: grid must be (h, w), got {tuple(grid)}")
    n = math.prod(grid)
    return _random_subset(batch, n, num_kept(n, ratio), generator).to(device or "cpu")


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Tube masking (VideoMAE) of a `T' x h x w` tubelet grid: one random spatial mask per clip, the same at
    every time step. Kept indices `B x (T' * K_s)` with `K_s = num_kept(h*w, ratio)`, raster order `(t, h, w)`."""
    if len(grid) != 3:
        raise ConfigError(f"tube_mask: grid must be (t, h, w), got {tuple(grid)}")
    t, h, w = (int(v) for v in grid)
    spatial = _random_subset(batch, h * w, num_kept(h * w, ratio), generator)  # B x K_s
    offsets = torch.arange(t).mul(h * w).view(1, t, 1)
    return (offsets + spatial.unsqueeze(1)).reshape(batch, -1).to(device or "cpu")


def keep_to_mask(keep: torch.Tensor, n: int) -> torch.Tensor:
    """Bool `B x n`, True at *masked* positions, from kept indices `B x K`."""
    masked = torch.ones(keep.shape[0], n, dtype=torch.bool, device=keep.device)
    masked.scatter_(1, keep.long(), False)
    return masked


def mask_pixel_patches(x: torch.Tensor, patch: int, ratio: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Random patch masking for a CNN: `x` `N x C x H x W` with a random `ratio` of its `patch x patch` squares
    (the grid `ceil(H/patch) x ceil(W/patch)`, per image) set to 0 (black: the ultrasound background)."""
    if x.dim() != 4:
        raise ValueError(f"mask_pixel_patches expects N x C x H x W, got shape {tuple(x.shape)}")
    if patch < 1:
        raise ConfigError(f"mask_pixel_patches: patch must be >= 1, got {patch}")
    n, _, h, w = x.shape
    grid = (math.ceil(h / patch), math.ceil(w / patch))
    masked = keep_to_mask(random_patch_mask(n, grid, ratio, generator), grid[0] * grid[1])
    pixels = masked.view(n, *grid).repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w]
    return x.masked_fill(pixels[:, None].to(x.device), 0.0)
