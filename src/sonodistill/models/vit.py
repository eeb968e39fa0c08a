"""Small Vision Transformers: a frame ViT (patch tokens) and a video ViT (tubelet tokens), both staged.

Pre-norm blocks with `scaled_dot_product_attention`; a learnable positional embedding interpolated to the
input's token grid, so any input whose size is divisible by the patch (tubelet) works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.models.stages import StagedBackbone, StageOutputs

VIT_CONFIGS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3},
    "small": {"dim": 384, "depth": 12, "heads": 6},
}


def scaled_dim(dim: int, heads: int, width: float) -> int:
    """`dim * width` rounded to a multiple of `heads` (at least `heads`)."""
    return max(heads, int(round(dim * width / heads)) * heads)


def stage_block_indices(depth: int, num_stages: int = 4) -> list[int]:
    """Indices of `num_stages` evenly spaced blocks ending at the last (repeats when depth < num_stages)."""
    return [math.ceil((k + 1) * depth / num_stages) - 1 for k in range(num_stages)]


class Attention(nn.Module):
    """Multi-head self-attention: `B x N x D` -> `B x N x D` (and `B x heads x N x N` weights on request)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if return_attention:  # explicit softmax path, so the weights can be returned
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            out = attn @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        return (out, attn) if return_attention else out


class Block(nn.Module):
    """Pre-norm transformer block: `x + attn(norm(x))`, then `x + mlp(norm(x))`; `B x N x D` in and out."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
            x = x + y
            return x + self.mlp(self.norm2(x)), attn
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _select_tokens(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Gather kept tokens: `B x N x D`, keep `B x K` (indices, or a bool `B x N` mask with K per row) -> `B x K x D`."""
    b, n, d = tokens.shape
    if keep.dtype == torch.bool:
        if keep.shape != (b, n):
            raise ValueError(f"keep mask has shape {tuple(keep.shape)}, expected {(b, n)}")
        counts = keep.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"keep mask must keep the same number of tokens per sample, got {counts.tolist()}")
        keep = keep.nonzero()[:, 1].view(b, -1)
    if keep.dim() != 2 or keep.shape[0] != b:
        raise ValueError(f"keep must be B x K token indices with B={b}, got shape {tuple(keep.shape)}")
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
        raise ValueError(f"keep indices must lie in [0, {n}), got [{int(keep.min())}, {int(keep.max())}]")
    return torch.gather(tokens, 1, keep.long().unsqueeze(-1).expand(-1, -1, d))


class _TokenBackbone(StagedBackbone):
    """Shared transformer trunk: [CLS] + tokens through blocks; stages from 4 evenly spaced blocks."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"ViT depth must be >= 1, got {depth}")
        self.embed_dim = dim
        self.depth = depth
        self.num_heads = heads
        self.stage_channels = [dim] * 4
        self.stage_blocks = stage_block_indices(depth)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def _init_weights(self) -> None:
        for p in (self.cls_token, self.cls_pos, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:  # pragma: no cover - abstract
        """Patch tokens with positional embedding `B x N x D` and their grid shape."""
        raise NotImplementedError

    def _prepare(self, x: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, ...]]:
        tokens, grid = self.embed(x)
        if keep is not None:
            tokens = _select_tokens(tokens, keep)
        cls = (self.cls_token + self.cls_pos).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1), grid

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> StageOutputs:
        """Stages `B x D x grid` (`B x D x K` with `keep`); pooled final-norm [CLS] `B x D`; tokens `B x (1+N) x D`."""
        h, grid = self._prepare(x, keep)
        wanted = set(self.stage_blocks)
        outs: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            if i in wanted:
                outs[i] = h
        b, _, d = h.shape
        shape = grid if keep is None else (-1,)
        stages = [outs[i][:, 1:].transpose(1, 2).reshape(b, d, *shape) for i in self.stage_blocks]
        tokens = self.norm(h)
        return StageOutputs(stages=stages, pooled=tokens[:, 0], tokens=tokens)

    def get_last_selfattention(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention weights of the last block: `B x heads x (1+N) x (1+N)` ([CLS] first)."""
        h, _ = self._prepare(x, keep)
        for blk in self.blocks[:-1]:
            h = blk(h)
        _, attn = self.blocks[-1](h, return_attention=True)
        return attn


class VisionTransformer(_TokenBackbone):
    """Frame ViT: `B x C x H x W` -> stages `B x D x H/p x W/p` (4 evenly spaced blocks), pooled [CLS] `B x D`."""

    kind = "frame"

    def __init__(
        self,
        in_channels: int = 1,
        patch_size: int = 16,
        img_size: int = 224,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(dim, depth, heads, mlp_ratio, qkv_bias)
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        self._init_weights()

    def interpolate_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding resized (bicubic) to an `h x w` token grid: `1 x (h*w) x D`."""
        if (h, w) == self.grid:
            return self.pos_embed
        d = self.embed_dim
        pos = self.pos_embed.reshape(1, *self.grid, d).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.permute(0, 2, 3, 1).reshape(1, h * w, d)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects B x C x H x W, got shape {tuple(x.shape)}")
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not divisible by the patch size {p}")
        t = self.patch_embed(x)
        h, w = t.shape[-2:]
        return t.flatten(2).transpose(1, 2) + self.interpolate_pos_embed(h, w), (h, w)


class VideoVisionTransformer(_TokenBackbone):
    """Video ViT with tubelet tokens: `B x C x T x H x W` -> stages `B x D x T' x h x w`, pooled [CLS] `B x D`.

    `forward(x, keep)`: `keep` (`B x K` indices into the `T'*h*w` tokens, or an equal-count bool mask) drops
    masked tubelets before the blocks (tube masking, DISCOVR/VideoMAE); stages are then `B x D x K`.
    """

    kind = "video"

    def __init__(
        self,
        in_channels: int = 1,
        tubelet: tuple[int, int, int] = (2, 16, 16),
        num_frames: int = 16,
        img_size: int = 112,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(dim, depth, heads, mlp_ratio, qkv_bias)
        tubelet = tuple(int(v) for v in tubelet)
        if len(tubelet) != 3:
            raise ValueError(f"tubelet must be (t, h, w), got {tubelet}")
        if num_frames % tubelet[0] or img_size % tubelet[1] or img_size % tubelet[2]:
            raise ValueError(f"default input {num_frames}x{img_size}x{img_size} is not divisible by {tubelet}")
        self.tubelet = tubelet
        self.grid = (num_frames // tubelet[0], img_size // tubelet[1], img_size // tubelet[2])
        self.patch_embed = nn.Conv3d(in_channels, dim, kernel_size=tubelet, stride=tubelet)
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.grid), dim))
        self._init_weights()

    def interpolate_pos_embed(self, t: int, h: int, w: int) -> torch.Tensor:
        """Positional embedding resized (trilinear) to a `t x h x w` token grid: `1 x (t*h*w) x D`."""
        if (t, h, w) == self.grid:
            return self.pos_embed
        d = self.embed_dim
        pos = self.pos_embed.reshape(1, *self.grid, d).permute(0, 4, 1, 2, 3)
        pos = F.interpolate(pos, size=(t, h, w), mode="trilinear", align_corners=False)
        return pos.permute(0, 2, 3, 4, 1).reshape(1, t * h * w, d)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects B x C x T x H x W, got shape {tuple(x.shape)}")
        if any(s % k for s, k in zip(x.shape[2:], self.tubelet)):
            raise ValueError(f"input size {tuple(x.shape[2:])} is not divisible by the tubelet {self.tubelet}")
        tok = self.patch_embed(x)
        t, h, w = tok.shape[2:]
        return tok.flatten(2).transpose(1, 2) + self.interpolate_pos_embed(t, h, w), (t, h, w)
