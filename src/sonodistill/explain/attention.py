"""Self-attention maps of a frame ViT's last block ([CLS] query, one map per head) and overlay PNGs (DINO Fig.)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from sonodistill.errors import ConfigError


@torch.no_grad()
def cls_attention_maps(vit: nn.Module, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """[CLS]-to-patch attention of the last block: `x` `B x C x H x W` -> `B x heads x h x w` (token grid).

    Each head's map is renormalised to sum to 1 over the patches (the [CLS]->[CLS] weight is dropped).
    With `size=(H, W)` the maps are upsampled bilinearly to that size (then they no longer sum to 1).
    """
    if not hasattr(vit, "get_last_selfattention"):
        raise ConfigError(f"{type(vit).__name__} has no get_last_selfattention: attention maps need a ViT backbone")
    if x.ndim != 4:
        raise ValueError(f"cls_attention_maps expects B x C x H x W frames, got shape {tuple(x.shape)}")
    was_training = vit.training
    vit.eval()
    try:
        attn = vit.get_last_selfattention(x)                           # B x heads x (1+N) x (1+N)
    finally:
        vit.train(was_training)
    p = vit.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    cls = attn[:, :, 0, 1:]
    if cls.shape[-1] != h * w:
        raise ValueError(f"attention has {cls.shape[-1]} patch tokens, expected {h} x {w}")
    cls = cls / cls.sum(dim=-1, keepdim=True)
    maps = cls.reshape(x.shape[0], -1, h, w)
    if size is not None:
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps


@torch.no_grad()
def attention_explainer(model: nn.Module, x: torch.Tensor, target_class: int | None = None,
                        normalize: bool = True) -> torch.Tensor:
    """`sonodistill explain` hook: head-averaged [CLS] attention of the frame ViT, class-independent.

    model: a Classifier with a ViT backbone (`x` `B x 1 x H x W` -> `B x 1 x H x W`) or a VideoScorer
    (`x` `B x 1 x T x H x W` -> `B x T x H x W`, frame by frame). normalize: each map scaled to [0, 1].
    """
    vit = getattr(model, "backbone", None) or getattr(model, "encoder", None) or model
    if x.ndim == 5:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        maps = cls_attention_maps(vit, frames, size=(h, w)).mean(dim=1).reshape(b, t, h, w)
    elif x.ndim == 4:
        maps = cls_attention_maps(vit, x, size=tuple(x.shape[-2:])).mean(dim=1, keepdim=True)
    else:
        raise ValueError(f"attention_explainer expects B x 1 x H x W or B x 1 x T x H x W, got {tuple(x.shape)}")
    maps = maps.clamp_min(0)
    if normalize:
        flat = maps.flatten(-2)
        lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        maps = ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)
    return maps


def write_overlay_png(image: np.ndarray, maps: np.ndarray, path: str | Path, title: str = "") -> Path:
    """One PNG: the frame, then each head's map overlaid (and the head mean). image `H x W`, maps `heads x H x W`."""
    image = np.asarray(image, dtype=np.float32)
    maps = np.asarray(maps, dtype=np.float32)
    if image.ndim != 2 or maps.ndim != 3 or maps.shape[1:] != image.shape:
        raise ValueError(f"write_overlay_png: image H x W and maps heads x H x W, got {image.shape}, {maps.shape}")
    panels = [("frame", None)] + [(f"head {i}", maps[i]) for i in range(maps.shape[0])] + [("mean", maps.mean(0))]
    fig = Figure(figsize=(2.2 * len(panels), 2.6))
    FigureCanvasAgg(fig)
    for i, (name, m) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(image, cmap="gray")
        if m is not None:
            lo, hi = float(m.min()), float(m.max())
            ax.imshow((m - lo) / (hi - lo + 1e-12), cmap="inferno", alpha=0.55)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _load_inputs(inputs: torch.Tensor | Sequence[str | Path], cfg) -> tuple[torch.Tensor, list[str]]:  # noqa: ANN001
    """Frames `B x 1 x S x S` and names, from a tensor or from image/video paths (first frame, run's preprocessing)."""
    if isinstance(inputs, torch.Tensor):
        x = inputs if inputs.ndim == 4 else inputs[:, :, 0]            # B x 1 x T x H x W -> first frame
        return x.float(), [f"frame_{i:03d}" for i in range(x.shape[0])]
    from sonodistill.data.cache import produce_clip
    from sonodistill.recipes.frame_features import preprocess_config

    pre = preprocess_config(cfg.data)
    frames, names = [], []
    for p in inputs:
        clip = produce_clip(p, pre)                                     # uint8 T x S x S
        frames.append(torch.from_numpy(np.array(clip[len(clip) // 2], dtype=np.float32) / 255.0)[None])
        names.append(Path(p).stem)
    return torch.stack(frames), names


def write_attention_overlays(run_dir: str | Path, inputs: torch.Tensor | Sequence[str | Path],
                             out_dir: str | Path) -> list[Path]:
    """Overlay PNGs of the run's frame ViT ([CLS] attention of the last block, every head) for each input.

    run_dir: a `dino` run (teacher weights) or any run whose config.yaml names a frame ViT;
    inputs: frames `B x 1 x H x W` (or clips `B x 1 x T x H x W`, first frame) or image/video paths
    (middle frame, the run's preprocessing). Returns the written paths (one PNG per input).
    """
    from sonodistill.recipes.frame_features import load_run_backbone

    vit, cfg = load_run_backbone(run_dir)
    x, names = _load_inputs(inputs, cfg)
    p = getattr(vit, "patch_size", None)
    if p is None:
        raise ConfigError(f"{run_dir}: model.backbone {cfg.model.backbone!r} is not a ViT; attention maps need one")
    h, w = (x.shape[-2] // p) * p, (x.shape[-1] // p) * p
    x = x[..., :h, :w]
    maps = cls_attention_maps(vit, x, size=(h, w)).numpy()
    out = []
    for i, name in enumerate(names):
        out.append(write_overlay_png(x[i, 0].numpy(), maps[i], Path(out_dir) / f"attention_{i:03d}_{name}.png",
                                     title=f"{Path(run_dir).name}: last-block [CLS] attention"))
    return out
