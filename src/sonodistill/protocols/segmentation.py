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


def masked_rows(manifest: Manifest, rows: np.ndarray) -> np.ndarray:
    """Which of `rows` have a mask file (bool, aligned with `rows`); ConfigError without a `mask` column."""
    if "mask" not in manifest.table.columns:
        raise ConfigError(f"manifest '{manifest.name}' has no mask column: segmentation needs masks")
    return manifest.has_mask[np.asarray(rows, dtype=np.int64)]


def split_labelled(manifest: Manifest, train_rows: np.ndarray, fraction: float, seed: int,
                   labelled_rows: str = "fraction") -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled) row positions of `train_rows`: a grouped, seeded `fraction` of them and the rest
    (`labelled_rows="fraction"`; every chosen row must have a mask), or the rows with a mask and those without
    (`"masks"`: a user's own few masks among many images)."""
    from sonodistill.data.splits import grouped_fraction

    train_rows = np.sort(np.asarray(train_rows, dtype=np.int64))
    if labelled_rows == "masks":
        has = masked_rows(manifest, train_rows)
        if not has.any():
            raise ConfigError(f"manifest '{manifest.name}': none of the {len(train_rows)} training rows has a mask "
                              "(labelled_rows: masks labels the rows with a mask)")
        return train_rows[has], train_rows[~has]
    labelled = grouped_fraction(manifest, train_rows, fraction, seed=seed)
    unlabelled = np.setdiff1d(train_rows, labelled)
    has = masked_rows(manifest, labelled)
    if not has.all():
        empty = [int(r) for r in labelled[~has]]
        raise ConfigError(f"manifest '{manifest.name}': labelled row(s) {empty[:5]} have no mask file (with images "
                          "that have no mask, set recipe_options.labelled_rows=masks: they become the unlabelled "
                          "ones)")
    return labelled, unlabelled


def scored_rows(manifest: Manifest, test_rows: np.ndarray, labelled_rows: str) -> np.ndarray:
    """The test rows a fold scores: all of them, or with `labelled_rows="masks"` those with a mask (a row without
    one has nothing to score against)."""
    test_rows = np.asarray(test_rows, dtype=np.int64)
    return test_rows[masked_rows(manifest, test_rows)] if labelled_rows == "masks" else test_rows


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
    labelled, unlabelled = split_labelled(manifest, train_rows, float(options.labelled_fraction), seed,
                                          options.labelled_rows)
    test_rows = scored_rows(manifest, test_rows, options.labelled_rows)
    (fold_dir / "split.json").write_text(json.dumps({
        "labelled_rows": options.labelled_rows, "labelled_fraction": float(options.labelled_fraction),
        "labelled": labelled.tolist(), "unlabelled": unlabelled.tolist(), "test": test_rows.tolist()}))
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
        options = get_recipe(cfg.recipe).resolve_options(cfg.recipe_options)
        has = masked_rows(manifest, np.arange(len(manifest)))  # no mask column: an error before anything is written
        if not has.any():
            raise ConfigError(f"manifest '{manifest.name}': none of its {len(manifest)} rows has a mask; segmentation "
                              "trains and scores on masks")
        if options.labelled_rows == "masks":
            log.info("labelled_rows: masks: %d of %d rows have a mask (labelled, scored), %d have none (unlabelled)",
                     int(has.sum()), len(has), int((~has).sum()))
        if trains_final(cfg):  # the final model's labelled share of all items
            split_labelled(manifest, np.arange(len(manifest)), float(options.labelled_fraction), final_seed(cfg),
                           options.labelled_rows)

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
