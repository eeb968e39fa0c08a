"""Cross-validation of semi-supervised segmentation recipes: labelled/unlabelled split of each fold's training rows,
two-stream training, per-item metrics at the original image resolution, overlays, report (mean ± std over folds).

Run directory (beside run_crossval's config.yaml, manifest.csv, folds.json):
  fold_k/split.json         labelled / unlabelled / test row positions of fold k
  fold_k/predictions.csv    one row per test item: dice, iou, hd95, asd (+ hc_true_mm, hc_pred_mm, hc_abs_err_mm)
  fold_k/overlays/*.png     image with ground truth (green) and prediction (red) outlines
  fold_k/masks/*.png        predicted masks (0/255, original resolution) with recipe_options.save_masks
  final/                    with train.final (or train.cv=false): the model trained on all items, split.json
                            holding its labelled / unlabelled rows (the same labelled_fraction of all items)
  predictions.csv, metrics_per_fold.csv, metrics.json, report.md, timing.json
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, SonoDistillError

log = logging.getLogger(__name__)

SEGMENTATION_CLASSES = 2  # background and foreground: the recipes' output channels

PREDICTIONS = "predictions.csv"
METRICS = ["dice", "iou", "hd95", "asd"]
HC_METRICS = ["hc_abs_err_mm"]


# ------------------------------------------------------------------------------------------------ data
def preprocess_config(cfg: RunConfig) -> Any:
    from sonodistill.data.preprocess import PreprocessConfig

    return PreprocessConfig.from_data(cfg.data)


def clip_cache(cfg: RunConfig) -> Any:
    from sonodistill.data.cache import ClipCache
    from sonodistill.recipes.data import default_cache_dir

    return ClipCache(Path(cfg.data.cache_dir) / "clips" if cfg.data.cache_dir else default_cache_dir() / "clips")


def without_masks(manifest: Manifest) -> Manifest:
    """The same rows with the `mask` column removed: datasets built on it can never read a mask."""
    return Manifest(manifest.table.drop(columns=["mask"], errors="ignore"), list(manifest.classes),
                    manifest.modality, manifest.name)


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
                       options: dict[str, Any], uses_unlabelled: bool, seed: int) -> tuple[Any, int]:
    """Two-stream DataLoader and its iterations per epoch (before `limit_train_batches`)."""
    from sonodistill.data.augment import weak_augment
    from sonodistill.data.datasets import FrameDataset
    from sonodistill.data.two_stream import build_two_stream_loader, default_iterations, strong_photometric_augment
    from sonodistill.recipes.semi_supervised import labelled_batch_size

    pre, cache = preprocess_config(cfg), clip_cache(cfg)
    bs = int(cfg.data.batch_size)
    lbs = labelled_batch_size(options, bs)
    ubs = bs - lbs if uses_unlabelled else 0
    if uses_unlabelled and (ubs < 1 or len(unlabelled) == 0):
        raise ConfigError(f"{cfg.recipe} needs unlabelled images: labelled_bs={lbs} of batch_size={bs}, "
                          f"{len(unlabelled)} unlabelled rows (labelled_fraction={options['labelled_fraction']})")
    weak = weak_augment(cfg.data.size) if cfg.data.augment else None
    lab_ds = FrameDataset(manifest.subset(labelled), pre, cache=cache, augment=weak, seed=seed)
    # Another seed for the unlabelled stream: its item k must not repeat the draws of labelled item k.
    unl_ds = (FrameDataset(without_masks(manifest.subset(unlabelled)), pre, cache=cache, augment=weak,
                           seed=seed + 1_000_003)
              if ubs else None)
    iterations = options["iterations_per_epoch"]
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


# ------------------------------------------------------------------------------------------- training
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
    labelled, unlabelled = split_labelled(manifest, train_rows, float(options["labelled_fraction"]), seed)
    (fold_dir / "split.json").write_text(json.dumps({
        "labelled_fraction": float(options["labelled_fraction"]), "labelled": labelled.tolist(),
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
    if len(test_rows) == 0:  # a final model trained on all items: nothing held out to score
        return pd.DataFrame()
    return predict_segmentation(recipe.inference_model(), cfg, manifest, test_rows, fold, fold_dir, options)


# ----------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_segmentation(model: torch.nn.Module, cfg: RunConfig, manifest: Manifest, rows: np.ndarray, fold: int,
                         fold_dir: Path, options: dict[str, Any] | None = None) -> pd.DataFrame:
    """Predict `rows`, map each prediction back to its original image and score it against the original mask.

    hd95/asd are in mm when the manifest has `pixel_size_mm`, else in original pixels. With `pixel_size_mm` and a
    numeric `target` (HC18), the head circumference of the predicted mask is compared with `target` (mm)."""
    from torch.utils.data import DataLoader

    from sonodistill.data.datasets import FrameDataset
    from sonodistill.data.readers import read_clip, read_mask
    from sonodistill.evaluation.head_circumference import head_circumference_mm, preprocess_geometry
    from sonodistill.evaluation.metrics import segmentation_metrics

    options = options or {}
    rows = np.asarray(rows, dtype=np.int64)
    table = manifest.table
    pre = preprocess_config(cfg)
    dataset = FrameDataset(without_masks(manifest.subset(rows)), pre, cache=clip_cache(cfg), augment=None)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    has_spacing = "pixel_size_mm" in table.columns
    has_hc = has_spacing and "target" in table.columns and pd.api.types.is_numeric_dtype(table["target"])
    n_overlays, save_masks = int(options.get("overlays", 0) or 0), bool(options.get("save_masks", False))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    records = []
    for batch in loader:
        probs = torch.softmax(model(batch["x"].to(device)).float(), dim=1).cpu()
        for p, local in zip(probs, batch["index"].tolist()):
            row = int(rows[local])
            image_path, mask_path = str(table["path"].iloc[row]), str(table["mask"].iloc[row])
            geometry = preprocess_geometry(image_path, pre)
            pred = geometry.to_original(p) == 1
            truth = read_mask(mask_path).astype(bool)
            if truth.shape != pred.shape:
                raise SonoDistillError(f"{mask_path}: mask size {truth.shape} differs from image {image_path} "
                                       f"size {pred.shape}")
            spacing = float(table["pixel_size_mm"].iloc[row]) if has_spacing else 1.0
            rec: dict[str, Any] = {"fold": fold, "index": row, "path": image_path, "group": manifest.groups[row],
                                   **segmentation_metrics(pred, truth, spacing)}
            if has_hc:
                true_hc = float(table["target"].iloc[row])
                pred_hc = head_circumference_mm(pred, spacing)
                rec.update(hc_true_mm=true_hc, hc_pred_mm=pred_hc, hc_abs_err_mm=abs(pred_hc - true_hc))
            records.append(rec)
            stem = Path(image_path).stem
            if len(records) <= n_overlays:
                image = read_clip(image_path, grayscale=True).frames[0]
                save_overlay(image, truth, pred, fold_dir / "overlays" / f"{stem}.png")
            if save_masks:
                _save_png(pred.astype(np.uint8) * 255, fold_dir / "masks" / f"{stem}.png")
    model.train(was_training)
    return pd.DataFrame(records)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


def _save_png(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def save_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: Path) -> None:
    """RGB PNG of a uint8 H x W image with the ground-truth outline in green and the prediction's in red."""
    rgb = np.repeat(np.asarray(image, dtype=np.uint8)[..., None], 3, axis=2)
    rgb[_outline(truth.astype(bool))] = (0, 255, 0)
    rgb[_outline(pred.astype(bool))] = (255, 0, 0)
    _save_png(rgb, path)


# --------------------------------------------------------------------------------------------- report
def _metric_columns(predictions: pd.DataFrame) -> list[str]:
    return METRICS + [c for c in HC_METRICS if c in predictions.columns]


def _fold_rows(predictions: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    rows = []
    for fold, part in predictions.groupby("fold", sort=True):
        row: dict[str, Any] = {"fold": int(fold), "n_items": int(len(part))}
        for c in columns:
            values = part[c].to_numpy(dtype=np.float64)
            finite = values[~np.isnan(values)]
            row[c] = float(finite.mean()) if finite.size else math.nan
            row[f"{c}_undefined"] = int(values.size - finite.size)
        rows.append(row)
    return rows


def _json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_segmentation_report(run_dir: str | Path, predictions: pd.DataFrame, title: str,
                              units: str = "px") -> dict[str, Any]:
    """metrics_per_fold.csv, metrics.json and report.md from per-item predictions; returns metric -> MeanStd."""
    from sonodistill.evaluation.metrics import MeanStd, summarise
    from sonodistill.evaluation.report import markdown_table

    run_dir = Path(run_dir)
    if predictions.empty:
        raise SonoDistillError(f"{run_dir}: no segmentation predictions to report")
    missing = [c for c in ["fold", "index", *METRICS] if c not in predictions.columns]
    if missing:
        raise SonoDistillError(f"{run_dir / PREDICTIONS}: missing column(s) {missing}")
    columns = _metric_columns(predictions)
    per_fold = _fold_rows(predictions, columns)
    pd.DataFrame(per_fold).to_csv(run_dir / "metrics_per_fold.csv", index=False)
    summary = summarise(per_fold, columns)
    items: dict[str, MeanStd] = {}
    for c in columns:
        v = predictions[c].to_numpy(dtype=np.float64)
        f = v[~np.isnan(v)]
        items[c] = MeanStd(float(f.mean()) if f.size else math.nan, float(f.std(ddof=1)) if f.size > 1 else 0.0,
                           int(f.size), int(v.size - f.size))
    n_folds = len(per_fold)
    table = markdown_table({f"mean over {n_folds} fold(s)": summary, f"all {len(predictions)} test items": items},
                           columns, index_name="")
    lines = [f"# {title}\n",
             f"{len(predictions)} test items over {n_folds} fold(s), scored at the original image resolution. "
             "First row: mean ± std over folds of each fold's mean (std ddof=1, 0 for one fold); second row: "
             f"mean ± std over items. hd95 and asd in {units}; '(k n/a)' counts folds/items where a surface "
             "distance was undefined (exactly one mask empty) and left out.\n",
             table]
    if "hc_abs_err_mm" in columns:
        lines.append("hc_abs_err_mm: |HC of the least-squares ellipse fitted to the predicted mask's outer contour "
                     "- hc_mm|; an image with no head predicted is a failure (NaN), counted in n_nan.\n")
    (run_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    payload = {"title": title, "n_folds": n_folds, "n_items": int(len(predictions)), "units": units,
               "summary": {k: {"mean": v.mean, "std": v.std, "n": v.n, "n_nan": v.n_nan} for k, v in summary.items()},
               "items": {k: {"mean": v.mean, "std": v.std, "n": v.n, "n_nan": v.n_nan} for k, v in items.items()},
               "per_fold": per_fold}
    (run_dir / "metrics.json").write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=False),
                                          encoding="utf-8")
    return summary


def _units(manifest: Manifest) -> str:
    return "mm" if "pixel_size_mm" in manifest.table.columns else "px (original image pixels)"


def _title(cfg: RunConfig) -> str:
    frac = cfg.recipe_options.get("labelled_fraction")
    label = f", {100 * float(frac):g} % labelled" if frac is not None else ""
    return f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}{label}"


def run_segmentation_cv(cfg: RunConfig, manifest: Manifest, folds: list[tuple[np.ndarray, np.ndarray]],
                        resume: bool = False, extra_callbacks: list | None = None,
                        **trainer_overrides: Any) -> dict[str, Any] | None:
    """Train and score every fold (or `cfg.train.fold`), the final model with train.final, then write the report;
    called by `run_crossval`."""
    from sonodistill.evaluation.crossval import fit_folds, process_rank, save_predictions, train_final_model

    def fit(k: int, train_rows: np.ndarray, test_rows: np.ndarray, fold_dir: Path) -> pd.DataFrame | None:
        return fit_segmentation_fold(cfg, manifest, train_rows, test_rows, k, fold_dir, resume=resume,
                                     extra_callbacks=extra_callbacks, **trainer_overrides)

    frames, times = fit_folds(cfg, folds, resume, fit)
    if cfg.train.final and cfg.train.fold is None:
        train_final_model(cfg, manifest, resume, extra_callbacks=extra_callbacks, **trainer_overrides)
    if process_rank() != 0:
        return None
    run_dir = cfg.run_dir
    predictions = save_predictions(run_dir, frames, times)
    return write_segmentation_report(run_dir, predictions, _title(cfg), _units(manifest))


def segmentation_report_from_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild report.md / metrics.json / metrics_per_fold.csv from a run directory alone."""
    from sonodistill.evaluation.crossval import read_run_dir

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    return write_segmentation_report(run_dir, predictions, _title(cfg), _units(manifest))
