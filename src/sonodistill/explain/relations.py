"""Frame-relation heat maps (DualDistill Fig. 7): per-stage T x T cosine relations of a video classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from sonodistill.losses.self_distill import frame_relation_matrix


def stage_relation_matrices(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Relation matrices of every backbone stage for one clip window: x `1 x C x T x H x W` -> list of `T_i x T_i`."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or getattr(backbone, "kind", None) != "video":
        raise TypeError("frame relations need a classifier with a staged video backbone")
    model.eval()
    with torch.inference_mode():
        out = backbone(x)
    mats = []
    for s in out.stages:
        if s.dim() != 5:  # masked ViT stages have no frame axis
            continue
        mats.append(frame_relation_matrix(s.float())[0].numpy())
    return mats


def write_relation_comparison(rows: Sequence[tuple[str, list[np.ndarray], np.ndarray | None]],
                              path: str | Path, title: str = "") -> Path:
    """One figure: a row per model (name, stage relation matrices, optional Grad-CAM strip RGB image).

    Relation matrices share the colour scale [-1, 1] so models compare directly.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_stages = max(len(m) for _, m, _ in rows)
    has_strip = any(s is not None for _, _, s in rows)
    cols = n_stages + (1 if has_strip else 0)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.4 * n_stages + (6 if has_strip else 0), 2.6 * len(rows)),
                             squeeze=False, gridspec_kw={"width_ratios": ([3] if has_strip else []) + [1] * n_stages})
    im = None
    for r, (name, mats, strip) in enumerate(rows):
        c0 = 0
        if has_strip:
            ax = axes[r][0]
            if strip is not None:
                ax.imshow(strip)
            ax.set_title(f"{name}: Grad-CAM", fontsize=9)
            ax.axis("off")
            c0 = 1
        for i in range(n_stages):
            ax = axes[r][c0 + i]
            if i < len(mats):
                im = ax.imshow(mats[i], vmin=-1, vmax=1, cmap="RdBu_r")
                ax.set_title(f"{name}\nstage {i + 1} (T={mats[i].shape[0]})", fontsize=8)
                ax.set_xlabel("frame", fontsize=7)
                ax.set_ylabel("frame", fontsize=7)
                ax.tick_params(labelsize=6)
            else:
                ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="cosine relation")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
