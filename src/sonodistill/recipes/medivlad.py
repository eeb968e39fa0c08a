"""The `medivlad` recipe: the supervised stages of MeDiVLAD on top of a DINO-pretrained frame encoder.

- Image data (frames): supervised finetuning of backbone + linear head (the ClassificationRecipe), the backbone
  initialised from `recipe_options.init_from` (a `dino` run directory or a safetensors file; strict loading),
  optionally on a grouped fraction of each training fold (`label_fraction`: few labels).
- Video data: the frame encoder is frozen; `data.num_frames` uniformly spaced frames per video are encoded once
  (cached in RUN/features.npz), and each aggregator of `recipe_options.aggregators` (dual_vlad by default; also
  max, mean, attention_mil, bilstm, netvlad) is trained per fold on the training videos' features
  (`train.epochs`, `optim.lr`, `optim.weight_decay`, `data.batch_size` videos). predictions.csv has the engine's
  layout (plus a `model` column when several aggregators are compared), so `write_cv_report` and
  `sonodistill eval` work. The exported model of fold k (`fold_k/model.safetensors`, first aggregator) is a
  `VideoScorer`: `B x 1 x T x H x W` -> encoder per frame -> `B x T x D` -> aggregator -> logits `B x K`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.models.aggregators import AGGREGATORS, build_aggregator
from sonodistill.models.stages import StagedBackbone
from sonodistill.models.wrappers import VideoScorer
from sonodistill.recipes.base import ClassificationRecipe
from sonodistill.recipes.frame_features import build_frame_backbone, load_backbone_weights, video_frame_features

log = logging.getLogger(__name__)

FEATURES = "features.npz"

#: `sonodistill explain` hooks (see docs/bedside.md): last-block [CLS] attention of the frame ViT.
EXPLAINERS = {"attention": "sonodistill.explain.attention:attention_explainer"}

#: recipe_options understood by this recipe, with their defaults.
DEFAULTS: dict[str, Any] = {
    "init_from": None,            # dino run dir / weights file for the frame backbone (None: random init)
    "label_fraction": 1.0,        # frames: fraction of each training fold's groups used (grouped, stratified)
    "aggregators": ["dual_vlad"],  # videos: aggregators trained on the same cached features and folds
    "aggregator_options": {},     # videos: {name: {option: value}}, e.g. {dual_vlad: {temperature: 0.5}}
}


def medivlad_options(cfg: RunConfig) -> dict[str, Any]:
    """recipe_options merged over DEFAULTS; unknown keys and unknown aggregators are errors."""
    unknown = set(cfg.recipe_options) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"recipe_options: unknown key(s) {sorted(unknown)} for medivlad; known {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **cfg.recipe_options}
    if isinstance(o["aggregators"], str):
        o["aggregators"] = [a for a in o["aggregators"].split(",") if a]
    bad = [a for a in o["aggregators"] if a not in AGGREGATORS]
    if bad or not o["aggregators"]:
        raise ConfigError(f"recipe_options.aggregators: unknown {bad} (choose from {sorted(AGGREGATORS)})")
    if not 0.0 < float(o["label_fraction"]) <= 1.0:
        raise ConfigError(f"recipe_options.label_fraction must be in (0, 1], got {o['label_fraction']}")
    return o


class MeDiVLADRecipe(ClassificationRecipe):
    """Frame finetuning (image data): backbone + head, backbone initialised strictly from `init_from`."""

    def __init__(self, cfg: RunConfig, num_classes: int, steps_per_epoch: int = 1) -> None:
        o = medivlad_options(cfg)
        super().__init__(cfg, num_classes, steps_per_epoch)
        if self.model.backbone.kind != "frame":
            raise ConfigError(f"medivlad: model.backbone {cfg.model.backbone!r} is not a frame backbone")
        if o["init_from"]:
            load_backbone_weights(self.model.backbone, o["init_from"])

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest) -> nn.Module:
        """Untrained model of a run's fold_k/model.safetensors: Classifier (frames) or VideoScorer (videos)."""
        from sonodistill.recipes.base import build_classifier

        if manifest.modality == "image":
            return build_classifier(cfg, len(manifest.classes))
        encoder = build_frame_backbone(cfg)
        name = medivlad_options(cfg)["aggregators"][0]
        return VideoScorer(encoder, _aggregator(cfg, name, encoder.embed_dim, len(manifest.classes)))

    @staticmethod
    def run_experiment(cfg: RunConfig, manifest: Manifest, resume: bool = False, **trainer_overrides: Any) -> dict:
        """Frames: few-label finetuning cross-validation. Videos: cached features + aggregators per fold."""
        if manifest.modality == "image":
            return frame_crossval(cfg, manifest, resume, **trainer_overrides)
        if trainer_overrides:
            raise ConfigError(f"medivlad on videos trains its aggregators without Lightning; "
                              f"trainer options {sorted(trainer_overrides)} do not apply")
        return video_crossval(cfg, manifest, resume)


# ---------------------------------------------------------------------------------------------- frames


def _wanted(cfg: RunConfig, n: int) -> list[int]:
    if cfg.train.fold is None:
        return list(range(n))
    if not 0 <= cfg.train.fold < n:
        raise ConfigError(f"train.fold={cfg.train.fold} is outside 0..{n - 1}")
    return [cfg.train.fold]


def frame_crossval(cfg: RunConfig, manifest: Manifest, resume: bool = False, **trainer_overrides: Any) -> dict:
    """Grouped k-fold finetuning; with label_fraction < 1 each fold trains on a grouped subset of its training rows."""
    from sonodistill.data.splits import grouped_fraction
    from sonodistill.evaluation.run_dir import PREDICTIONS
    from sonodistill.data.folds import cv_folds
    from sonodistill.evaluation.report import write_cv_report
    from sonodistill.recipes.trainer import fit_fold

    o = medivlad_options(cfg)
    run_dir = cfg.run_dir
    folds = cv_folds(cfg, manifest, resume)
    frames, used = [], {}
    for k in _wanted(cfg, len(folds)):
        fold_dir = run_dir / f"fold_{k}"
        pred_file = fold_dir / PREDICTIONS
        train_rows, test_rows = folds[k]
        labelled = grouped_fraction(manifest, train_rows, float(o["label_fraction"]), seed=cfg.train.seed + k)
        used[k] = {"train_rows": int(len(train_rows)), "labelled_rows": int(len(labelled)),
                   "labelled_groups": int(len(set(manifest.groups[labelled])))}
        if resume and pred_file.exists():
            frames.append(pd.read_csv(pred_file))
            continue
        t0 = time.perf_counter()
        pred = fit_fold(cfg, manifest, labelled, test_rows, k, fold_dir, resume=resume, **trainer_overrides)
        used[k]["seconds"] = time.perf_counter() - t0
        pred.to_csv(pred_file, index=False)
        frames.append(pred)
        log.info("medivlad fold %d: %d labelled of %d training frames, done in %.0f s", k, len(labelled),
                 len(train_rows), used[k]["seconds"])
    (run_dir / "labelled.json").write_text(json.dumps(used, indent=1))
    predictions = pd.concat(frames, ignore_index=True)
    predictions.to_csv(run_dir / PREDICTIONS, index=False)
    init = o["init_from"] or "random init"
    return write_cv_report(run_dir, predictions, manifest.classes,
                           title=f"{cfg.name}: medivlad frame finetuning ({init}) on {cfg.data.spec}")


# ---------------------------------------------------------------------------------------------- videos


def video_stage_encoder(cfg: RunConfig) -> StagedBackbone:
    """The frozen frame encoder of the video stage: `recipe_options.init_from` (a DINO or finetuning run) if
    given, else `model.pretrained` (e.g. imagenet); a random encoder is allowed but warned about."""
    init_from = medivlad_options(cfg)["init_from"]
    encoder = build_frame_backbone(cfg, start=not init_from)
    if init_from:
        load_backbone_weights(encoder, init_from)
    elif cfg.model.pretrained in ("none", ""):
        log.warning("medivlad: no recipe_options.init_from and model.pretrained=none: the frame encoder is "
                    "randomly initialised")
    return encoder


def cached_video_features(cfg: RunConfig, manifest: Manifest, resume: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Encode every video once with the frozen encoder (RUN/features.npz, reused on resume)."""
    o = medivlad_options(cfg)
    path = cfg.run_dir / FEATURES
    key = json.dumps({"init_from": str(o["init_from"]), "num_frames": cfg.data.num_frames, "size": cfg.data.size,
                      "model": cfg.to_dict()["model"], "n": len(manifest)}, sort_keys=True)
    if resume and path.is_file():
        z = np.load(path)
        if str(z["key"]) == key:
            return z["feats"], z["mask"]
        log.warning("%s was computed with other settings; recomputing", path)
    encoder = video_stage_encoder(cfg)
    t0 = time.perf_counter()
    feats, mask = video_frame_features(encoder, manifest, cfg.data, int(cfg.data.num_frames))
    log.info("medivlad: encoded %d videos (%d frames) in %.0f s", len(manifest), int(mask.sum()),
             time.perf_counter() - t0)
    np.savez(path, feats=feats, mask=mask, key=np.array(key))
    from sonodistill.recipes.trainer import save_weights

    save_weights(encoder, cfg.run_dir / "encoder.safetensors")
    return feats, mask


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


def _aggregator(cfg: RunConfig, name: str, dim: int, num_classes: int) -> nn.Module:
    opts = dict(medivlad_options(cfg)["aggregator_options"].get(name, {}) or {})
    return build_aggregator(name, dim, num_classes, **opts)


def video_crossval(cfg: RunConfig, manifest: Manifest, resume: bool = False) -> dict:
    """Frozen-encoder features, then every aggregator on the same grouped folds; writes predictions and the report."""
    from sonodistill.evaluation.run_dir import PREDICTIONS
    from sonodistill.evaluation.report import write_cv_report
    from sonodistill.data.folds import cv_folds
    from sonodistill.recipes.trainer import save_weights

    o = medivlad_options(cfg)
    run_dir = cfg.run_dir
    if not manifest.has_labels:
        raise ConfigError(f"medivlad: manifest {manifest.name} has no labels to score")
    feats, mask = cached_video_features(cfg, manifest, resume)
    labels = manifest.labels
    folds = cv_folds(cfg, manifest, resume)
    names = list(o["aggregators"])
    encoder = None
    rows, times = [], {}
    for k in _wanted(cfg, len(folds)):
        train, test = folds[k]
        fold_dir = run_dir / f"fold_{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            seed = cfg.train.seed + k
            t0 = time.perf_counter()
            agg = _aggregator(cfg, name, feats.shape[-1], len(manifest.classes))
            train_aggregator(agg, feats[train], mask[train], labels[train], int(cfg.train.epochs),
                             float(cfg.optim.lr), float(cfg.optim.weight_decay), int(cfg.data.batch_size), seed)
            probs = predict_aggregator(agg, feats[test], mask[test])
            times[f"{k}/{name}"] = time.perf_counter() - t0
            save_weights(agg, fold_dir / f"aggregator_{name}.safetensors")
            if j == 0:  # the exported model of this fold: encoder + first aggregator
                if encoder is None:
                    encoder = video_stage_encoder(cfg)
                save_weights(VideoScorer(encoder, agg), fold_dir / "model.safetensors")
            frame = pd.DataFrame({"fold": k, "index": test, "path": [manifest.paths[i] for i in test],
                                  "group": manifest.groups[test], "y_true": labels[test]})
            if len(names) > 1:
                frame.insert(0, "model", name)
            for c, cls in enumerate(manifest.classes):
                frame[f"prob_{cls}"] = probs[:, c]
            frame.to_csv(fold_dir / f"predictions_{name}.csv", index=False)
            rows.append(frame)
        log.info("medivlad fold %d: %s trained", k, ", ".join(names))
    if cfg.train.final and cfg.train.fold is None:
        final = run_dir / "final"
        final.mkdir(parents=True, exist_ok=True)
        agg = _aggregator(cfg, names[0], feats.shape[-1], len(manifest.classes))
        train_aggregator(agg, feats, mask, labels, int(cfg.train.epochs), float(cfg.optim.lr),
                         float(cfg.optim.weight_decay), int(cfg.data.batch_size), cfg.train.seed)
        if encoder is None:
            encoder = video_stage_encoder(cfg)
        save_weights(VideoScorer(encoder, agg), final / "model.safetensors")
    predictions = pd.concat(rows, ignore_index=True)
    predictions.to_csv(run_dir / PREDICTIONS, index=False)
    (run_dir / "timing.json").write_text(json.dumps(times, indent=1))
    title = f"{cfg.name}: medivlad ({', '.join(names)}) on {cfg.data.spec}, frozen encoder {o['init_from'] or 'random init'}"
    return write_cv_report(run_dir, predictions, manifest.classes, title=title)


def load_video_scorer(run_dir: str | Path, fold: int | str = 0, aggregator: str | None = None) -> VideoScorer:
    """The VideoScorer of a finished medivlad video run: fold number, or 'final'; default first aggregator."""
    from sonodistill.config import load_config
    from sonodistill.recipes.trainer import load_weights

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    o = medivlad_options(cfg)
    name = aggregator or o["aggregators"][0]
    sub = run_dir / ("final" if fold == "final" else f"fold_{fold}")
    manifest = Manifest.from_csv(run_dir / "manifest.csv")
    encoder = build_frame_backbone(cfg)
    scorer = VideoScorer(encoder, _aggregator(cfg, name, encoder.embed_dim, len(manifest.classes)))
    if name == o["aggregators"][0]:
        return load_weights(scorer, sub / "model.safetensors").eval()
    load_weights(scorer.encoder, run_dir / "encoder.safetensors")
    load_weights(scorer.aggregator, sub / f"aggregator_{name}.safetensors")
    return scorer.eval()
