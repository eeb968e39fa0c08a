"""The MeDiVLAD protocol, on the one fold loop.

- Frames (image manifests): per fold, supervised finetuning (`recipes.trainer.fit_fold`) on a grouped, stratified
  `recipe_options.label_fraction` of the fold's training rows (few labels; seeded by the fold's seed), scored on
  its test rows. Each fold folder keeps `labelled.json` (counts and the labelled rows), the run `labelled.json`
  (per-fold counts). The final model (train.final / --final-only) is the same finetuning on a grouped
  `label_fraction` of all rows: `final/model.safetensors`, a Classifier.
- Videos: `prepare` encodes every video once with the frozen encoder (RUN/features.npz, reused on resume); per
  fold every aggregator of `recipe_options.aggregators` is trained on the training videos' features and scored on
  the test videos (`fold_k/predictions_<name>.csv`, `fold_k/aggregator_<name>.safetensors`; predictions get a
  `model` column when several aggregators are compared). The deployable model of a fold, and of `final/` (the
  first aggregator trained on all items), is `model.safetensors`: a VideoScorer of encoder + first aggregator.

The report is the engine's CV report (`write_cv_report`), one section per aggregator when several are compared.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from sonodistill.config import SEED_DIR_PREFIX, RunConfig, parse_options
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run
from sonodistill.recipes.medivlad import (
    MeDiVLADOptions,
    build_video_aggregator,
    predict_aggregator,
    train_aggregator,
    video_stage_encoder,
)

log = logging.getLogger(__name__)

FEATURES = "features.npz"
LABELLED = "labelled.json"
ENCODER = "encoder.safetensors"


def _options(cfg: RunConfig) -> MeDiVLADOptions:
    return parse_options(MeDiVLADOptions, cfg.recipe_options, "medivlad")


# ---------------------------------------------------------------------------------------------- frames
def labelled_rows(manifest: Manifest, train_rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The grouped, stratified, seeded `fraction` of `train_rows` a fold finetunes on."""
    from sonodistill.data.splits import grouped_fraction

    return grouped_fraction(manifest, train_rows, fraction, seed=seed)


def fit_frames(run: Run, fold: Fold) -> FoldResult:
    """Finetune on the fold's labelled share of its training rows; predict its test rows."""
    from sonodistill.recipes.trainer import fit_fold

    manifest = run.manifest
    labelled = labelled_rows(manifest, fold.train, _options(run.cfg).label_fraction, fold.seed)
    record = {"train_rows": int(len(fold.train)), "labelled_rows": int(len(labelled)),
              "labelled_groups": int(len(set(manifest.groups[labelled])))}
    fold.dir.mkdir(parents=True, exist_ok=True)
    (fold.dir / LABELLED).write_text(json.dumps({**record, "label_fraction": _options(run.cfg).label_fraction,
                                                 "labelled": labelled.tolist()}))
    pred = fit_fold(run.cfg, manifest, labelled, fold.test, fold.index, fold.dir, resume=run.resume,
                    **run.trainer_overrides)
    log.info("medivlad %s: %d labelled of %d training frames", fold.dir.name, len(labelled), len(fold.train))
    return FoldResult(predictions=pred, record={"fold": fold.index, **record})


# ---------------------------------------------------------------------------------------------- videos
@dataclass
class VideoFeatures:
    """Every video's frame features (`N x T x D`, mask `N x T`) and the frozen encoder (built when first needed)."""

    feats: np.ndarray
    mask: np.ndarray
    encoder: nn.Module | None = None

    def encoder_of(self, cfg: RunConfig) -> nn.Module:
        """The encoder that computed the features: in memory, else RUN/encoder.safetensors (a resumed run)."""
        if self.encoder is None:
            from sonodistill.recipes.frame_features import build_frame_backbone
            from sonodistill.recipes.trainer import load_weights

            saved = cfg.run_dir / ENCODER
            self.encoder = (load_weights(build_frame_backbone(cfg), saved).eval() if saved.is_file()
                            else video_stage_encoder(cfg))
        return self.encoder


def _encoder_start(cfg: RunConfig) -> str | None:
    """Where the frozen encoder's weights come from: `recipe_options.init_from`, else a pretrained `model.pretrained`;
    None for random weights."""
    from sonodistill.models.pretrained import is_pretrained

    return _options(cfg).init_from or (cfg.model.pretrained if is_pretrained(cfg.model.pretrained) else None)


def _sibling_seed_features(cfg: RunConfig, key: str) -> Path | None:
    """features.npz of another seed of the same multi-seed run (RUN/seed_<s>/, `train --seeds`) made with the same
    settings, when the frozen encoder does not depend on the seed (it has a pretrained start)."""
    if _encoder_start(cfg) is None or not cfg.run_dir.name.startswith(SEED_DIR_PREFIX):
        return None
    for other in sorted(cfg.run_dir.parent.glob(f"{SEED_DIR_PREFIX}*/{FEATURES}")):
        if other.parent != cfg.run_dir and (other.parent / ENCODER).is_file() and str(np.load(other)["key"]) == key:
            return other
    return None


def cached_video_features(cfg: RunConfig, manifest: Manifest, resume: bool = False) -> VideoFeatures:
    """Encode every video once with the frozen encoder (RUN/features.npz and RUN/encoder.safetensors; the
    features are reused on resume when computed with the same settings, and by the other seeds of a multi-seed
    run when the encoder is pretrained)."""
    from sonodistill.recipes.frame_features import video_frame_features
    from sonodistill.recipes.trainer import save_weights

    path = cfg.run_dir / FEATURES
    key = json.dumps({"init_from": str(_options(cfg).init_from), "num_frames": cfg.data.num_frames,
                      "size": cfg.data.size, "model": cfg.to_dict()["model"], "n": len(manifest)}, sort_keys=True)
    if resume and path.is_file():
        z = np.load(path)
        if str(z["key"]) == key:
            return VideoFeatures(z["feats"], z["mask"])
        log.warning("%s was computed with other settings; recomputing", path)
    sibling = _sibling_seed_features(cfg, key)
    if sibling is not None:  # another seed of this run encoded the same videos with the same frozen encoder
        z = np.load(sibling)
        np.savez(path, feats=z["feats"], mask=z["mask"], key=np.array(key))
        shutil.copyfile(sibling.parent / ENCODER, cfg.run_dir / ENCODER)
        log.info("medivlad: features of %s reused (the same frozen encoder and settings)", sibling.parent.name)
        return VideoFeatures(z["feats"], z["mask"])
    encoder = video_stage_encoder(cfg)
    t0 = time.perf_counter()
    feats, mask = video_frame_features(encoder, manifest, cfg.data, int(cfg.data.num_frames))
    log.info("medivlad: encoded %d videos (%d frames) in %.0f s", len(manifest), int(mask.sum()),
             time.perf_counter() - t0)
    np.savez(path, feats=feats, mask=mask, key=np.array(key))
    save_weights(encoder, cfg.run_dir / ENCODER)
    return VideoFeatures(feats, mask, encoder)


def fit_videos(run: Run, fold: Fold) -> FoldResult:
    """Every aggregator on the fold's training videos, scored on its test videos; the final model trains the
    first aggregator only. `model.safetensors`: encoder + first aggregator."""
    from sonodistill.models.wrappers import VideoScorer
    from sonodistill.recipes.trainer import save_weights

    cfg, manifest, data = run.cfg, run.manifest, run.state
    names = _options(cfg).aggregators[:1] if fold.final else _options(cfg).aggregators
    labels = manifest.labels
    train, test = fold.train, fold.test
    fold.dir.mkdir(parents=True, exist_ok=True)
    frames, tables, seconds = [], {}, {}
    for j, name in enumerate(names):
        t0 = time.perf_counter()
        torch.manual_seed(fold.seed)  # the aggregator's initial weights: the same in a CV run and a final-only run
        agg = build_video_aggregator(cfg, name, data.feats.shape[-1], len(manifest.classes))
        train_aggregator(agg, data.feats[train], data.mask[train], labels[train], int(cfg.train.epochs),
                         float(cfg.optim.lr), float(cfg.optim.weight_decay), int(cfg.data.batch_size), fold.seed)
        seconds[name] = time.perf_counter() - t0
        save_weights(agg, fold.dir / f"aggregator_{name}.safetensors")
        if j == 0:  # the deployable model of this fold: encoder + first aggregator
            save_weights(VideoScorer(data.encoder_of(cfg), agg), fold.dir / "model.safetensors")
        if fold.final:
            continue
        probs = predict_aggregator(agg, data.feats[test], data.mask[test])
        frame = pd.DataFrame({"fold": fold.index, "index": test, "path": [manifest.paths[i] for i in test],
                              "group": manifest.groups[test], "y_true": labels[test]})
        if len(names) > 1:
            frame.insert(0, "model", name)
        for c, cls in enumerate(manifest.classes):
            frame[f"prob_{cls}"] = probs[:, c]
        tables[f"predictions_{name}"] = frame
        frames.append(frame)
    log.info("medivlad %s: %s trained", fold.dir.name, ", ".join(names))
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return FoldResult(predictions=predictions, tables=tables, record={"fold": fold.index, "seconds": seconds})


# --------------------------------------------------------------------------------------------- protocol
class MeDiVLADProtocol(Protocol):
    """Frames: few-label finetuning per fold. Videos: cached frozen-encoder features, every aggregator per fold."""

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        from sonodistill.protocols.folds import build_once, final_seed, trains_final
        from sonodistill.recipes.frame_features import build_frame_backbone, load_backbone_weights

        o = _options(cfg)
        if not manifest.has_labels:
            raise ConfigError(f"medivlad: manifest {manifest.name} has no labels to train and score on")
        if manifest.modality == "image":
            build_once(cfg, len(manifest.classes))  # the backbone, init_from loaded strictly, the optimiser
            if trains_final(cfg):  # the final model's labelled share of all items
                labelled_rows(manifest, np.arange(len(manifest)), o.label_fraction, final_seed(cfg))
            return
        encoder = build_frame_backbone(cfg)
        if o.init_from:
            load_backbone_weights(encoder, o.init_from)
        for name in o.aggregators:
            build_video_aggregator(cfg, name, encoder.embed_dim, len(manifest.classes))

    def prepare(self, run: Run) -> None:
        if run.manifest.modality == "image":
            return
        if run.trainer_overrides:
            raise ConfigError(f"medivlad on videos trains its aggregators without Lightning; "
                              f"trainer options {sorted(run.trainer_overrides)} do not apply")
        run.state = cached_video_features(run.cfg, run.manifest, run.resume)

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        return fit_frames(run, fold) if run.manifest.modality == "image" else fit_videos(run, fold)

    def title(self, run: Run) -> str:
        cfg, o = run.cfg, _options(run.cfg)
        init = _encoder_start(cfg) or "random init"
        if run.manifest.modality == "image":
            return f"{cfg.name}: medivlad frame finetuning ({init}) on {cfg.data.spec}"
        return f"{cfg.name}: medivlad ({', '.join(o.aggregators)}) on {cfg.data.spec}, frozen encoder {init}"

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        from sonodistill.evaluation.report import write_cv_report

        if run.manifest.modality == "image":  # per-fold labelled counts (the benchmarks read them)
            used = {}
            for r in results:
                if "fold" in r.record:
                    counts = {k: v for k, v in r.record.items() if k != "fold"}
                    used[str(r.record["fold"])] = counts if r.seconds is None else {**counts, "seconds": r.seconds}
            (run.dir / LABELLED).write_text(json.dumps(used, indent=1))
        predictions = pd.concat([r.predictions for r in results if r.predictions is not None], ignore_index=True)
        return write_cv_report(run.dir, predictions, run.manifest.classes, title=title)
