"""The segmentation protocol (seg_supervised, mean_teacher, fixmatch, cps, hdc): each fold's training rows split
into a labelled share and unlabelled rest, two-stream training, per-item scoring at the original resolution
(`evaluation.segmentation_report`), report as mean ± std over folds."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.evaluation.segmentation_report import (
    SEGMENTATION_CLASSES,
    clip_cache,
    has_head_circumference,
    hc_outline_calibration,
    predict_segmentation,
    preprocess_config,
    segmentation_title,
    segmentation_units,
    training_warnings,
    write_segmentation_report,
)
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run

log = logging.getLogger(__name__)


def split_labelled(manifest: Manifest, train_rows: np.ndarray, fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled) row positions: a grouped, seeded `fraction` of `train_rows` and the rest."""
    from sonodistill.data.splits import grouped_fraction

    train_rows = np.sort(np.asarray(train_rows, dtype=np.int64))
    labelled = grouped_fraction(manifest, train_rows, fraction, seed=seed)
    unlabelled = np.setdiff1d(train_rows, labelled)
    if "mask" not in manifest.table.columns:
        raise ConfigError(f"manifest '{manifest.name}' has no mask column: segmentation needs masks")
    masks = manifest.table["mask"].iloc[labelled]
    empty = [int(r) for r, m in zip(labelled, masks) if pd.isna(m) or str(m) == ""]
    if empty:
        raise ConfigError(f"manifest '{manifest.name}': labelled row(s) {empty[:5]} have no mask file")
    return labelled, unlabelled


def build_train_loader(cfg: RunConfig, manifest: Manifest, labelled: np.ndarray, unlabelled: np.ndarray,
                       options: Any, uses_unlabelled: bool, seed: int) -> tuple[Any, int]:
    """Two-stream DataLoader and its iterations per epoch (before `limit_train_batches`)."""
    from sonodistill.data.datasets import FrameDataset
    from sonodistill.data.two_stream import build_two_stream_loader, default_iterations, strong_photometric_augment
    from sonodistill.recipes.data import train_augment
    from sonodistill.recipes.semi_supervised import labelled_batch_size

    pre, cache = preprocess_config(cfg), clip_cache(cfg)
    bs = int(cfg.data.batch_size)
    lbs = labelled_batch_size(options, bs)
    ubs = bs - lbs if uses_unlabelled else 0
    if uses_unlabelled and (ubs < 1 or len(unlabelled) == 0):
        raise ConfigError(f"{cfg.recipe} needs unlabelled images: labelled_bs={lbs} of batch_size={bs}, "
                          f"{len(unlabelled)} unlabelled rows (labelled_fraction={options.labelled_fraction})")
    weak = train_augment(cfg.data, "image")
    lab_ds = FrameDataset(manifest.subset(labelled), pre, cache=cache, augment=weak, seed=seed)
    # Another seed for the unlabelled stream: its item k must not repeat the draws of labelled item k.
    unl_ds = (FrameDataset(manifest.subset(unlabelled).without_masks(), pre, cache=cache, augment=weak,
                           seed=seed + 1_000_003)
              if ubs else None)
    iterations = options.iterations_per_epoch
    iterations = int(iterations) if iterations else default_iterations(len(labelled), len(unlabelled), lbs, ubs)
    strong = strong_photometric_augment() if cfg.data.augment else None
    loader = build_two_stream_loader(lab_ds, unl_ds, lbs, ubs, iterations, seed, cfg.data.num_workers, strong)
    return loader, iterations


def _steps_per_epoch(cfg: RunConfig, iterations: int) -> int:
    limit = cfg.train.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        return max(1, min(iterations, limit))
    if isinstance(limit, float) and limit < 1.0:
        return max(1, int(iterations * limit))
    return iterations


def fit_segmentation_fold(cfg: RunConfig, manifest: Manifest, train_rows: np.ndarray, test_rows: np.ndarray,
                          fold: int, fold_dir: Path, resume: bool = False, extra_callbacks: list | None = None,
                          **trainer_overrides: Any) -> pd.DataFrame | None:
    """Train one fold and score its test rows; None on non-zero ranks (only rank 0 evaluates)."""
    import lightning as L

    from sonodistill.recipes import get_recipe
    from sonodistill.recipes.trainer import build_trainer, fit

    fold_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.train.seed + fold
    L.seed_everything(seed, workers=True, verbose=False)
    recipe_cls = get_recipe(cfg.recipe)
    options = recipe_cls.resolve_options(cfg.recipe_options)
    labelled, unlabelled = split_labelled(manifest, train_rows, float(options.labelled_fraction), seed)
    (fold_dir / "split.json").write_text(json.dumps({
        "labelled_fraction": float(options.labelled_fraction), "labelled": labelled.tolist(),
        "unlabelled": unlabelled.tolist(), "test": np.asarray(test_rows).tolist()}))
    log.info("fold %d: %d labelled, %d unlabelled, %d test rows", fold, len(labelled), len(unlabelled), len(test_rows))
    loader, iterations = build_train_loader(cfg, manifest, labelled, unlabelled, options,
                                            recipe_cls.uses_unlabelled, seed)
    recipe = recipe_cls(cfg, num_classes=SEGMENTATION_CLASSES, steps_per_epoch=_steps_per_epoch(cfg, iterations))
    overrides = {"use_distributed_sampler": False, **trainer_overrides}  # the two-stream sampler shards by rank
    trainer = build_trainer(cfg, fold_dir, extra_callbacks, **overrides)
    fit(trainer, recipe, loader, fold_dir, resume, fold)
    if not trainer.is_global_zero:
        return None
    offset = 0.0
    if has_head_circumference(manifest):  # the masks' outline convention, from the labelled training masks only
        calibration = hc_outline_calibration(manifest, labelled)  # (the final model's too: `predict` reports HC)
        (fold_dir / "hc_calibration.json").write_text(json.dumps(calibration))
        offset = calibration["outline_offset_px"]
        log.info("fold %d: labelled masks lie %.3f px outside their HC ellipse (median of %d)", fold, offset,
                 calibration["n_masks"])
    if len(test_rows) == 0:  # a final model trained on all items: nothing held out to score
        return pd.DataFrame()
    return predict_segmentation(recipe.inference_model(), cfg, manifest, test_rows, fold, fold_dir,
                                hc_outline_offset_px=offset, **scoring_options(options))


def scoring_options(options: Any) -> dict[str, Any]:
    """The inference settings of a recipe's resolved options (`SegmentationOptions`) as `predict_segmentation`'s
    keyword arguments: the one place training-time scoring and rescoring read them from."""
    return {"overlays": int(options.overlays), "save_masks": bool(options.save_masks),
            "flip_tta": bool(options.flip_tta), "mask_postprocess": str(options.mask_postprocess)}


class SegmentationProtocol(Protocol):
    """Semi-supervised segmentation: `recipe_options.labelled_fraction` of each fold's training rows keep masks."""

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        from sonodistill.protocols.folds import build_once, final_seed, trains_final
        from sonodistill.recipes import get_recipe

        build_once(cfg, SEGMENTATION_CLASSES)
        if trains_final(cfg):  # the final model's labelled share of all items
            options = get_recipe(cfg.recipe).resolve_options(cfg.recipe_options)
            split_labelled(manifest, np.arange(len(manifest)), float(options.labelled_fraction), final_seed(cfg))

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        pred = fit_segmentation_fold(run.cfg, run.manifest, fold.train, fold.test, fold.index, fold.dir,
                                     resume=run.resume, **run.trainer_overrides)
        return FoldResult(predictions=pred)

    def title(self, run: Run) -> str:
        return segmentation_title(run.cfg)

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        predictions = pd.concat([r.predictions for r in results if r.predictions is not None], ignore_index=True)
        from sonodistill.protocols.folds import with_resolved_options

        warnings = training_warnings(run.dir, with_resolved_options(run.cfg))
        for line in warnings:
            log.warning("%s: %s", run.dir, line)
        return write_segmentation_report(run.dir, predictions, title, segmentation_units(run.manifest), warnings)
