"""`linear_probe`: the cheap CPU baseline of a pretrained encoder. Frozen features are extracted once (cached in
the run directory), then per fold a logistic regression is fitted, its strength C chosen on a grouped validation
split inside the fold's training rows (never on the test fold).

`recipe_options.on_validation: true` scores each fold's validation split instead of its test fold: the way to
choose settings (size, crop, pooling) without reading a test fold.

Images: the pooled embedding of each image. Videos: `data.num_frames` uniformly spaced frames through the frame
encoder, pooled over time (`recipe_options.pool`: mean, or mean and max concatenated). The encoder is
`model.backbone` (a frame backbone) started from `model.pretrained` (imagenet, or a PATH of our own pretraining).

Writes the same run directory as the supervised fold loop (predictions.csv, report.md, metrics.json), so
`sonodistill eval` and `sonodistill compare` work on it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_OPTIONS: dict[str, Any] = {
    "C_grid": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],  # inverse L2 strengths tried on the validation split
    "val_fraction": 0.2,                   # grouped share of each fold's training rows used to choose C
    "pool": "mean",                        # videos: mean | meanmax over frames
    "on_validation": False,                # score the validation split instead of the test fold (for choosing
                                           # settings: the test fold is never read)
}


def probe_options(cfg: RunConfig) -> dict[str, Any]:
    """Defaults overridden by `recipe_options`; unknown keys and bad values raise ConfigError."""
    unknown = sorted(set(cfg.recipe_options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ConfigError(f"recipe_options: unknown key(s) {unknown} for linear_probe; known: {sorted(DEFAULT_OPTIONS)}")
    o = {**DEFAULT_OPTIONS, **cfg.recipe_options}
    if not 0.0 < float(o["val_fraction"]) < 0.5:
        raise ConfigError(f"recipe_options.val_fraction must be in (0, 0.5), got {o['val_fraction']}")
    if o["pool"] not in ("mean", "meanmax"):
        raise ConfigError(f"recipe_options.pool must be mean or meanmax, got {o['pool']!r}")
    if not o["C_grid"] or any(float(c) <= 0 for c in o["C_grid"]):
        raise ConfigError(f"recipe_options.C_grid needs positive values, got {o['C_grid']}")
    return o


def pool_frames(feats: np.ndarray, mask: np.ndarray, pool: str) -> np.ndarray:
    """Video features `N x T x D` with valid-frame mask `N x T` -> `N x D` (mean) or `N x 2D` (mean, max)."""
    m = mask[..., None].astype(np.float32)
    mean = (feats * m).sum(1) / np.maximum(m.sum(1), 1.0)
    if pool == "mean":
        return mean
    big = np.where(mask[..., None], feats, -np.inf).max(1)
    return np.concatenate([mean, np.where(np.isfinite(big), big, 0.0)], axis=1).astype(np.float32)


def encode_manifest(cfg: RunConfig, manifest: Manifest) -> np.ndarray:
    """Frozen pooled features `N x D` of every manifest row (images: embedding; videos: pooled frame features)."""
    import torch

    from sonodistill.recipes.frame_features import build_frame_backbone, frame_loader, video_frame_features
    from sonodistill.evaluation.probes import extract_features

    encoder = build_frame_backbone(cfg, start=True).eval()
    log.info("linear_probe: encoder %s, started from %s", cfg.model.backbone, encoder.pretrained_from)
    with torch.inference_mode():
        if manifest.modality == "video":
            feats, mask = video_frame_features(encoder, manifest, cfg.data, int(cfg.data.num_frames))
            return pool_frames(feats, mask, probe_options(cfg)["pool"])
        feats, index = extract_features(encoder, frame_loader(manifest, cfg.data))
    out = np.zeros_like(feats)
    out[index] = feats
    return out


_ENCODER_FIELDS = ("backbone", "width", "norm", "kwargs", "pretrained")  # what changes the frozen features


def cached_features(cfg: RunConfig, manifest: Manifest) -> np.ndarray:
    """`encode_manifest`, stored once per (model, data settings, rows) in `SONODISTILL_CACHE/features/` (or
    `data.cache_dir/features/`), so a validation run and the test run of the same settings encode once."""
    import hashlib

    from sonodistill.recipes.data import default_cache_dir

    model = {k: v for k, v in cfg.to_dict()["model"].items() if k in _ENCODER_FIELDS}
    if model["pretrained"] not in ("none", "imagenet", ""):  # a path: key on the file's content, not its name
        from sonodistill.models.pretrained import resolve_weights, sha256_file

        model["pretrained_sha256"] = sha256_file(resolve_weights(model["pretrained"]))
    key = json.dumps({"model": model, "size": cfg.data.size, "num_frames": cfg.data.num_frames,
                      "crop_region": cfg.data.crop_region, "remove_overlay": cfg.data.remove_overlay,
                      "pool": probe_options(cfg)["pool"], "paths": manifest.paths}, sort_keys=True)
    root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    path = root / "features" / f"{hashlib.sha1(key.encode()).hexdigest()}.npz"
    (cfg.run_dir / "features.json").write_text(json.dumps({"file": str(path), "key": json.loads(key)}, indent=1))
    if path.is_file():
        try:
            z = np.load(path)
            if str(z["key"]) == key:
                return z["feats"]
        except Exception as exc:  # a damaged cache entry is recomputed, and said so
            log.warning("%s: unreadable features cache entry (%s); recomputing", path, exc)
    t0 = time.perf_counter()
    feats = encode_manifest(cfg, manifest)
    log.info("linear_probe: encoded %d items in %.0f s", len(manifest), time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, feats=feats, key=np.array(key))
    tmp.replace(path)
    return feats


def choose_C(feats: np.ndarray, labels: np.ndarray, fit: np.ndarray, val: np.ndarray, grid: list[float],
             num_classes: int, seed: int) -> tuple[float, dict[str, float]]:
    """The C of `grid` with the best validation balanced accuracy (ties: the smaller C); all scores."""
    from sonodistill.evaluation.probes import linear_probe

    scores = {}
    for c in sorted(float(x) for x in grid):
        probs = linear_probe(feats[fit], labels[fit], feats[val], C=c, num_classes=num_classes, seed=seed)
        scores[str(c)] = float(balanced_accuracy_score(labels[val], probs.argmax(1)))
    best = max(scores, key=lambda c: (scores[c], -float(c)))
    return float(best), scores


class LinearProbeRecipe:
    """Frozen pretrained encoder + logistic regression (its protocol is `run_experiment`; nothing to train by SGD)."""

    task: ClassVar[str] = "classification"

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest) -> Any:
        raise ConfigError("linear_probe runs are evaluation baselines (scikit-learn probes on frozen features); "
                          "they have no PyTorch inference model to predict or export")

    @staticmethod
    def run_experiment(cfg: RunConfig, manifest: Manifest, resume: bool = False, **_: Any) -> dict:
        """Features once, then per fold: C on a grouped validation split of the training rows, refit, predict."""
        from sonodistill.evaluation.run_dir import PREDICTIONS
        from sonodistill.data.folds import cv_folds
        from sonodistill.evaluation.probes import linear_probe
        from sonodistill.evaluation.report import write_cv_report

        from sonodistill.data.splits import validation_rows

        o = probe_options(cfg)
        on_validation = bool(o["on_validation"] or cfg.train.on_validation)
        if not manifest.has_labels:
            raise ConfigError(f"linear_probe: manifest {manifest.name} has no labels to score")
        run_dir: Path = cfg.run_dir
        t0 = time.perf_counter()
        feats = cached_features(cfg, manifest)
        encode_s = time.perf_counter() - t0
        labels, groups = manifest.labels, manifest.groups
        folds = cv_folds(cfg, manifest, resume)
        wanted = range(len(folds)) if cfg.train.fold is None else [int(cfg.train.fold)]
        rows, choices = [], {}
        for k in wanted:
            train, test = folds[k]
            seed = cfg.train.seed + k
            fit, val = validation_rows(manifest, train, float(o["val_fraction"]), seed)
            c, scores = choose_C(feats, labels, fit, val, list(o["C_grid"]), len(manifest.classes), seed)
            choices[f"fold_{k}"] = {"C": c, "validation_balanced_accuracy": scores, "fit_rows": len(fit),
                                    "validation_rows": len(val)}
            if on_validation:  # choosing settings: fit on the fit rows, score the validation rows
                train, test = fit, val
            probs = linear_probe(feats[train], labels[train], feats[test], C=c, num_classes=len(manifest.classes),
                                 seed=seed)
            frame = pd.DataFrame({"fold": k, "index": test, "path": [manifest.paths[i] for i in test],
                                  "group": groups[test], "y_true": labels[test]})
            for j, cls in enumerate(manifest.classes):
                frame[f"prob_{cls}"] = probs[:, j]
            rows.append(frame)
            log.info("linear_probe fold %d: C=%g (validation balanced accuracy %.3f)", k, c, scores[str(c)])
        predictions = pd.concat(rows, ignore_index=True)
        predictions.to_csv(run_dir / PREDICTIONS, index=False)
        (run_dir / "probe_choices.json").write_text(json.dumps(choices, indent=1))
        (run_dir / "timing.json").write_text(json.dumps({"encode_s": encode_s,
                                                         "total_s": time.perf_counter() - t0}, indent=1))
        scored = "VALIDATION splits of the training rows (test folds not read)" if on_validation else "test folds"
        return write_cv_report(run_dir, predictions, manifest.classes,
                               title=f"{cfg.name}: linear probe on frozen {cfg.model.backbone} "
                                     f"({cfg.model.pretrained}) features, {cfg.data.spec}, scored on {scored}")
