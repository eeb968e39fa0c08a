"""Occlusion sensitivity for any served model: classifiers, segmentation networks, encoders and annotators.

A patch of the input is replaced by the input's mean intensity (MONAI `OcclusionSensitivity`, mode `mean_img`,
sliding over the image with `overlap`); the map at a pixel is the drop of one *score* when the patches covering it
are hidden: `score(x)[target] - score(occluded x)[target]`, negative drops clipped to 0. Zeiler & Fergus, ECCV 2014.
Video windows are occluded in all T frames at once (mask T x m x m): one spatial map per window.

What the score is depends on the model (a *score module* maps the input to `B x N` numbers, N = the targets):
- `ClassProbability`: softmax of a classifier's logits (N = classes).
- `RegionProbability`: a segmentation network's probability of each class, averaged over where the un-occluded
  image predicts that class (soft region: weighted by the reference probability; N = classes).
- `EmbeddingSimilarity`: cosine similarity of an encoder's pooled embedding to the un-occluded input's (N = 1):
  the map shows what the embedding depends on.
- `OutputProbability`: a model that already outputs probabilities (DILBERT annotators: a sigmoid per finding).
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import ConfigError

#: (member, reference input `1 x C x ...`) -> score module mapping `B x C x ...` to `B x N`
ScoreFactory = Callable[[nn.Module, torch.Tensor], nn.Module]


def _logits(out: object) -> torch.Tensor:
    """A model's output tensor (a `logits` or `pooled` field when the output is a container)."""
    for name in ("logits", "pooled"):
        if hasattr(out, name):
            return getattr(out, name)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"occlusion: the model returned a {type(out).__name__}, not a tensor")
    return out


class ClassProbability(nn.Module):
    """Softmax of a classifier's logits: `B x C x ...` -> `B x K`."""

    def __init__(self, model: nn.Module, reference: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(_logits(self.model(x)).float(), dim=1)


class OutputProbability(nn.Module):
    """A model whose output is already `B x N` probabilities (no activation added)."""

    def __init__(self, model: nn.Module, reference: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(x)).float()


class RegionProbability(nn.Module):
    """Mean probability of each class over the region the un-occluded `reference` assigns to it.

    `x` `B x C x H x W` -> `B x K`: `sum_p r_k(p) P_k(x)(p) / sum_p r_k(p)`, with `r_k` the reference's softmax
    probability of class k (a soft region, never empty) and `P_k(x)` the softmax of the network's logits on x.
    """

    def __init__(self, model: nn.Module, reference: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("region", torch.softmax(_logits(model(reference)).float(), dim=1)[:1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(_logits(self.model(x)).float(), dim=1)
        if probs.shape[1:] != self.region.shape[1:]:
            raise ConfigError(f"occlusion: segmentation output {tuple(probs.shape)} differs from the reference's "
                              f"{tuple(self.region.shape)}")
        weight = self.region.flatten(2)
        return (probs.flatten(2) * weight).sum(-1) / weight.sum(-1).clamp_min(1e-12)


class EmbeddingSimilarity(nn.Module):
    """Cosine similarity of the pooled embedding of `x` to the reference's: `B x C x ...` -> `B x 1`."""

    def __init__(self, model: nn.Module, reference: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():
            self.register_buffer("anchor", _logits(model(reference)).float()[:1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(_logits(self.model(x)).float(), self.anchor, dim=1)[:, None]


def default_mask(size: int) -> int:
    """Occluding patch side for an S x S input: S / 8, at least 4 pixels (16 px at 128)."""
    return max(4, int(size) // 8)


def occlusion_map(score: nn.Module, x: torch.Tensor, target: int, mask: int | None = None, overlap: float = 0.5,
                  batch_size: int = 16) -> torch.Tensor:
    """Drop of `score(.)[:, target]` when each patch is hidden: `x` `1 x C x [T x] H x W` -> `[T x] H x W`, >= 0.

    mask: patch side in pixels (default `default_mask(H)`); video inputs are hidden in all T frames at once.
    """
    from monai.visualize import OcclusionSensitivity

    if x.ndim not in (4, 5) or x.shape[0] != 1:
        raise ValueError(f"occlusion_map expects 1 x C x H x W or 1 x C x T x H x W, got {tuple(x.shape)}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"occlusion overlap must be in [0, 1), got {overlap}")
    side = default_mask(x.shape[-1]) if mask is None else int(mask)
    if not 1 <= side <= min(x.shape[-2:]):
        raise ConfigError(f"occlusion mask {side} px must be between 1 and the input size {tuple(x.shape[-2:])}")
    sizes: Sequence[int] = (x.shape[2], side, side) if x.ndim == 5 else (side, side)
    was_training = score.training
    score.eval()
    try:
        with torch.no_grad():
            base = score(x)
            if not 0 <= target < base.shape[1]:
                raise ConfigError(f"occlusion target {target} is not one of the model's {base.shape[1]} scores")
            with warnings.catch_warnings():  # MONAI 1.6 indexes with lists, which torch warns about
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
                occluded, _ = OcclusionSensitivity(score, mask_size=sizes, n_batch=batch_size, verbose=False,
                                                   mode="mean_img", overlap=overlap, activate=False)(x)
    finally:
        score.train(was_training)
    occluded = occluded.as_tensor() if hasattr(occluded, "as_tensor") else occluded  # MONAI MetaTensor
    return (base[0, target] - occluded[0, target]).clamp_min(0).float()


def occlusion_explainer(score_factory: ScoreFactory, mask: int | None = None, overlap: float = 0.5,
                        batch_size: int = 16) -> Callable[..., torch.Tensor]:
    """An explainer with Grad-CAM's signature, `(model, x, target, normalize=True)`, for `clip_heatmaps`.

    x `B x C x T x H x W` -> `B x T x H x W`; `B x C x H x W` -> `B x 1 x H x W`; each sample scaled to [0, 1]
    unless normalize=False (the raw score drops).
    """
    from sonodistill.explain.gradcam import normalise_maps

    def explain(model: nn.Module, x: torch.Tensor, target: int, normalize: bool = True) -> torch.Tensor:
        maps = []
        for b in range(x.shape[0]):
            one = x[b : b + 1]
            drop = occlusion_map(score_factory(model, one), one, int(target), mask, overlap, batch_size)
            maps.append(drop if x.ndim == 5 else drop[None])
        out = torch.stack(maps)
        return normalise_maps(out) if normalize else out

    return explain
