"""A light video decoder (DISCOVR / VideoMAE style): kept-token features + mask tokens -> features of every token.

The encoder's kept tokens are projected to the decoder width, a learnable mask token fills every masked
position of the `T' x h x w` grid, a fixed 3-D sine-cosine positional embedding is added, and 1-2 pre-norm
transformer blocks produce `B x N x out_dim` features in raster order `(t, h, w)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sonodistill.models.vit import Block


def _sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """`len(positions) x dim` (dim even) sine-cosine embedding of 1-D positions (MAE's formula)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / max(1, dim // 2))
    out = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_pos_embed_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed positional embedding `(t*h*w) x dim` of a `t x h x w` grid, raster order (t, h, w).

    Each axis gets `2 * (dim // 6)` channels (t, then h, then w); the remaining channels are zero.
    """
    t, h, w = (int(v) for v in grid)
    part = 2 * (dim // 6)
    if part == 0:
        raise ValueError(f"sincos_pos_embed_3d: dim must be >= 6, got {dim}")
    gt, gh, gw = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([_sincos_1d(g.reshape(-1), part) for g in (gt, gh, gw)], dim=1)
    pad = dim - emb.shape[1]
    if pad:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], pad)], dim=1)
    return emb.float()


class VideoTokenDecoder(nn.Module):
    """Kept tokens `B x K x in_dim` (+ their indices `B x K`) -> features of all `N = t*h*w` tokens `B x N x out_dim`.

    `keep=None` means no token was masked (`K = N`, tokens already in raster order).
    """

    def __init__(self, in_dim: int, out_dim: int, dim: int = 96, depth: int = 1, heads: int = 3,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"VideoTokenDecoder: depth must be >= 1, got {depth}")
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor | None, grid: tuple[int, int, int]) -> torch.Tensor:
        b, k, _ = tokens.shape
        n = math.prod(grid)
        x = self.embed(tokens)
        if keep is None:
            if k != n:
                raise ValueError(f"VideoTokenDecoder: without keep, expected {n} tokens for grid {grid}, got {k}")
            full = x
        else:
            if keep.shape != (b, k):
                raise ValueError(f"VideoTokenDecoder: keep has shape {tuple(keep.shape)}, tokens {(b, k)}")
            full = self.mask_token.to(x.dtype).expand(b, n, -1).clone()
            full = full.scatter(1, keep.long().unsqueeze(-1).expand(-1, -1, self.dim), x)
        full = full + sincos_pos_embed_3d(grid, self.dim).to(full)
        for blk in self.blocks:
            full = blk(full)
        return self.head(self.norm(full))
