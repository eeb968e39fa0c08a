"""`linear_probe`: the cheap CPU baseline of a pretrained encoder. Frozen features are extracted once (cached in
the run directory), then per fold a logistic regression is fitted, its strength C chosen on a grouped validation
split inside the fold's training rows (never on the test fold).

`--set train.on_validation=true` scores a validation split of each fold's training rows instead of its test fold
(C then chosen on a split of the remaining rows): the way to choose settings (size, crop, pooling) without reading
a test fold. The protocol is `protocols.linear_probe` (the one fold loop).

Images: the pooled embedding of each image. Videos: `data.num_frames` uniformly spaced frames through the frame
encoder, pooled over time (`recipe_options.pool`: mean, or mean and max concatenated). The encoder is
`model.backbone` (a frame backbone) started from `model.pretrained` (imagenet, or a PATH of our own pretraining).

Writes the same run directory as the supervised fold loop (predictions.csv, report.md, metrics.json), so
`sonodistill eval` and `sonodistill compare` work on it; each fold (and `final/` with train.final or --final-only)
keeps its model: the frozen encoder + the probe as a PyTorch head (`models.probe_head`), which predict, serve and
export load like any classifier.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from torch import nn

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError

log = logging.getLogger(__name__)

# recipe_options.class_weight -> the scikit-learn class weights it tries (choose: both, on the validation split)
CLASS_WEIGHTS: dict[str, list[str | None]] = {"none": [None], "balanced": ["balanced"], "choose": [None, "balanced"]}


@dataclass
class LinearProbeOptions:
    """recipe_options of `linear_probe`."""

    C_grid: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])  # 1/L2 strengths
    val_fraction: float = 0.2   # grouped share of each fold's training rows used to choose C
    pool: str = "mean"          # videos: mean | meanmax over frames
    class_weight: str = "none"  # none | balanced (classes weighed inversely to their frequency) | choose (the better
                                # of the two on the same validation split that chooses C)

    def __post_init__(self) -> None:
        if not 0.0 < float(self.val_fraction) < 0.5:
            raise ConfigError(f"recipe_options (linear_probe).val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.pool not in ("mean", "meanmax"):
            raise ConfigError(f"recipe_options (linear_probe).pool must be mean or meanmax, got {self.pool!r}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ConfigError(f"recipe_options (linear_probe).class_weight must be one of {sorted(CLASS_WEIGHTS)}, "
                              f"got {self.class_weight!r}")
        if not self.C_grid or any(float(c) <= 0 for c in self.C_grid):
            raise ConfigError(f"recipe_options (linear_probe).C_grid needs positive values, got {self.C_grid}")


def probe_options(cfg: RunConfig) -> LinearProbeOptions:
    """`recipe_options` parsed (unknown keys, wrong types and bad values are ConfigErrors naming the field)."""
    return parse_options(LinearProbeOptions, cfg.recipe_options, "linear_probe")


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

    from sonodistill.models.frozen_engine import frozen_encoder

    backbone = build_frame_backbone(cfg, start=True).eval()
    log.info("linear_probe: encoder %s, started from %s, features by %s", cfg.model.backbone,
             backbone.pretrained_from, cfg.train.feature_engine)
    encoder = frozen_encoder(backbone, cfg.train.feature_engine)
    with torch.inference_mode():
        if manifest.modality == "video":
            feats, mask = video_frame_features(encoder, manifest, cfg.data, int(cfg.data.num_frames))
            return pool_frames(feats, mask, probe_options(cfg).pool)
        feats, index = extract_features(encoder, frame_loader(manifest, cfg.data))
    out = np.zeros_like(feats)
    out[index] = feats
    return out


_ENCODER_FIELDS = ("backbone", "width", "norm", "kwargs", "pretrained")  # what changes the frozen features


def cached_features(cfg: RunConfig, manifest: Manifest) -> np.ndarray:
    """`encode_manifest`, stored once per (model, data settings, rows) in `SONODISTILL_CACHE/features/` (or
    `data.cache_dir/features/`), so a validation run and the test run of the same settings encode once."""
    import hashlib

    from sonodistill.data.cache import cache_root

    model = {k: v for k, v in cfg.to_dict()["model"].items() if k in _ENCODER_FIELDS}
    if model["pretrained"] not in ("none", "imagenet", ""):  # a path: key on the file's content, not its name
        from sonodistill.models.pretrained import resolve_weights, sha256_file

        model["pretrained_sha256"] = sha256_file(resolve_weights(model["pretrained"]))
    key = json.dumps({"model": model, "size": cfg.data.size, "num_frames": cfg.data.num_frames,
                      "crop_region": cfg.data.crop_region, "remove_overlay": cfg.data.remove_overlay,
                      "pool": probe_options(cfg).pool, "paths": manifest.paths,
                      "engine": cfg.train.feature_engine}, sort_keys=True)
    root = cache_root(cfg.data.cache_dir)
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


class LinearProbeRecipe:
    """Frozen pretrained encoder + logistic regression (no SGD training: `protocols.linear_probe` fits the probes)."""

    task: ClassVar[str] = "classification"
    Options = LinearProbeOptions

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest) -> nn.Module:
        """The frozen encoder + probe head with the run's shapes (weights loaded after): images `B x 1 x S x S`,
        videos `B x 1 x T x S x S` (frames encoded one by one, pooled over time) -> logits `B x K`."""
        from sonodistill.models.probe_head import LinearProbeHead
        from sonodistill.models.stages import Classifier
        from sonodistill.models.wrappers import VideoScorer
        from sonodistill.recipes.frame_features import build_frame_backbone

        encoder = build_frame_backbone(cfg)
        head = LinearProbeHead(encoder.embed_dim, len(manifest.classes), probe_options(cfg).pool)
        return VideoScorer(encoder, head) if manifest.modality == "video" else Classifier(encoder, head)
