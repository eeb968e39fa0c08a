"""The `medivlad` recipe: the supervised stages of MeDiVLAD on top of a DINO-pretrained frame encoder.

- Image data (frames): supervised finetuning of backbone + linear head (the ClassificationRecipe), the backbone
  initialised from `recipe_options.init_from` (a `dino` run directory or a safetensors file; strict loading),
  optionally on a grouped fraction of each training fold (`label_fraction`: few labels).
- Video data: the frame encoder is frozen; `data.num_frames` uniformly spaced frames per video are encoded once
  (cached in RUN/features.npz), and each aggregator of `recipe_options.aggregators` (dual_vlad by default; also
  max, mean, attention_mil, bilstm, netvlad) is trained per fold on the training videos' features
  (`train_aggregator`: `train.epochs`, `optim.lr`, `optim.weight_decay`, `data.batch_size` videos). The exported
  model of fold k (`fold_k/model.safetensors`, first aggregator; `final/` likewise) is a `VideoScorer`:
  `B x 1 x T x H x W` -> encoder per frame -> `B x T x D` -> aggregator -> logits `B x K`.

The folds, the final model and the report are `protocols.medivlad.MeDiVLADProtocol`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.models.aggregators import AGGREGATORS, build_aggregator
from sonodistill.models.pretrained import is_pretrained
from sonodistill.models.stages import StagedBackbone
from sonodistill.models.wrappers import VideoScorer
from sonodistill.recipes.base import ClassificationRecipe
from sonodistill.recipes.frame_features import build_frame_backbone, load_backbone_weights

log = logging.getLogger(__name__)

FEATURES = "features.npz"

#: `sonodistill explain` hooks (see docs/bedside.md): last-block [CLS] attention of the frame ViT.
EXPLAINERS = {"attention": "sonodistill.explain.attention:attention_explainer"}

@dataclass
class MeDiVLADOptions:
    """recipe_options of `medivlad`."""

    init_from: str | None = None       # dino run dir / weights file for the frame backbone (None: model.pretrained)
    label_fraction: float = 1.0        # frames: fraction of each training fold's groups used (grouped, stratified)
    aggregators: list[str] = field(default_factory=lambda: ["dual_vlad"])  # videos: trained on the same features
    aggregator_options: dict[str, Any] = field(default_factory=dict)  # videos: {name: {option: value}}

    def __post_init__(self) -> None:
        bad = [a for a in self.aggregators if a not in AGGREGATORS]
        if bad or not self.aggregators:
            raise ConfigError(f"recipe_options (medivlad).aggregators: unknown {bad} (choose from "
                              f"{sorted(AGGREGATORS)})")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"recipe_options (medivlad).label_fraction must be in (0, 1], got {self.label_fraction}")
        for name, opts in self.aggregator_options.items():
            if name not in AGGREGATORS or not isinstance(opts, dict | None):
                raise ConfigError(f"recipe_options (medivlad).aggregator_options: {name!r} must be an aggregator "
                                  f"({sorted(AGGREGATORS)}) with a mapping of its options, got {opts!r}")


class MeDiVLADRecipe(ClassificationRecipe):
    """Frame finetuning (image data): backbone + head, backbone initialised strictly from `init_from`."""

    Options = MeDiVLADOptions

    def __init__(self, cfg: RunConfig, num_classes: int, steps_per_epoch: int = 1) -> None:
        o = parse_options(MeDiVLADOptions, cfg.recipe_options, "medivlad")
        super().__init__(cfg, num_classes, steps_per_epoch)
        if self.model.backbone.kind != "frame":
            raise ConfigError(f"medivlad: model.backbone {cfg.model.backbone!r} is not a frame backbone")
        if o.init_from:
            load_backbone_weights(self.model.backbone, o.init_from)

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest) -> nn.Module:
        """Untrained model of a run's fold_k/ (or final/) model.safetensors: Classifier (frames) or VideoScorer
        (videos: frame encoder + first aggregator)."""
        from sonodistill.recipes.base import build_classifier

        if manifest.modality == "image":
            return build_classifier(cfg, len(manifest.classes))
        encoder = build_frame_backbone(cfg)
        name = parse_options(MeDiVLADOptions, cfg.recipe_options, "medivlad").aggregators[0]
        return VideoScorer(encoder, build_video_aggregator(cfg, name, encoder.embed_dim, len(manifest.classes)))


# ---------------------------------------------------------------------------------------------- videos


def video_stage_encoder(cfg: RunConfig) -> StagedBackbone:
    """The frozen frame encoder of the video stage: `recipe_options.init_from` (a DINO or finetuning run) if
    given, else `model.pretrained` (e.g. imagenet); a random encoder is allowed but warned about."""
    init_from = parse_options(MeDiVLADOptions, cfg.recipe_options, "medivlad").init_from
    encoder = build_frame_backbone(cfg, start=not init_from)
    if init_from:
        load_backbone_weights(encoder, init_from)
    elif not is_pretrained(cfg.model.pretrained):
        log.warning("medivlad: no recipe_options.init_from and model.pretrained=none: the frame encoder is "
                    "randomly initialised")
    return encoder


def build_video_aggregator(cfg: RunConfig, name: str, dim: int, num_classes: int) -> nn.Module:
    """Aggregator `name` with its `recipe_options.aggregator_options`."""
    o = parse_options(MeDiVLADOptions, cfg.recipe_options, "medivlad")
    return build_aggregator(name, dim, num_classes, **dict(o.aggregator_options.get(name) or {}))


def train_aggregator(agg: nn.Module, feats: np.ndarray, mask: np.ndarray, labels: np.ndarray, epochs: int,
                     lr: float, weight_decay: float, batch_size: int, seed: int) -> nn.Module:
    """Fit an aggregator on video features `N x T x D` (mask `N x T`, labels `N`) with AdamW + cosine LR and CE.

    NetVLAD-type aggregators first get their centroids from k-means on the valid training frames.
    """
    torch.manual_seed(seed)
    if hasattr(agg, "init_centroids"):
        agg.init_centroids(feats[mask], seed=seed)
    x, m = torch.from_numpy(feats).float(), torch.from_numpy(mask)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    opt = torch.optim.AdamW(agg.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * int(np.ceil(len(y) / batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    agg.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(agg(x[idx], m[idx]), y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"aggregator {type(agg).__name__}: non-finite loss {float(loss)}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return agg.eval()


@torch.no_grad()
def predict_aggregator(agg: nn.Module, feats: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax probabilities `N x K` of a trained aggregator."""
    agg.eval()
    logits = agg(torch.from_numpy(feats).float(), torch.from_numpy(mask))
    return torch.softmax(logits.float(), dim=1).numpy()


def load_video_scorer(run_dir: str | Path, fold: int | str = 0, aggregator: str | None = None) -> VideoScorer:
    """The VideoScorer of a finished medivlad video run: fold number, or 'final'; default first aggregator."""
    from sonodistill.config import load_config
    from sonodistill.recipes.trainer import load_weights

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    first = parse_options(MeDiVLADOptions, cfg.recipe_options, "medivlad").aggregators[0]
    name = aggregator or first
    sub = run_dir / ("final" if fold == "final" else f"fold_{fold}")
    manifest = Manifest.from_csv(run_dir / "manifest.csv")
    encoder = build_frame_backbone(cfg)
    scorer = VideoScorer(encoder, build_video_aggregator(cfg, name, encoder.embed_dim, len(manifest.classes)))
    if name == first:
        return load_weights(scorer, sub / "model.safetensors").eval()
    load_weights(scorer.encoder, run_dir / "encoder.safetensors")
    load_weights(scorer.aggregator, sub / f"aggregator_{name}.safetensors")
    return scorer.eval()
