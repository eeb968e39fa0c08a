"""Scoring of segmentation models: predictions mapped back to each original image and scored against its mask
(Dice, IoU, HD95, ASD, head circumference), outline overlays, and the report (mean ± std over folds). No training:
the segmentation protocol (`protocols.segmentation`) trains the folds and calls these.

Run directory (beside the fold loop's config.yaml, manifest.csv, folds.json):
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
from sonodistill.errors import SonoDistillError

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
    from sonodistill.data.cache import ClipCache, cache_root

    return ClipCache(cache_root(cfg.data.cache_dir) / "clips")


# ----------------------------------------------------------------------------------------- evaluation
def has_head_circumference(manifest: Manifest) -> bool:
    """Whether the items carry `pixel_size_mm` and a numeric `target` in mm (HC18): HC is then scored."""
    table = manifest.table
    return ("pixel_size_mm" in table.columns and "target" in table.columns
            and pd.api.types.is_numeric_dtype(table["target"]))


def hc_outline_calibration(manifest: Manifest, rows: np.ndarray) -> dict[str, Any]:
    """The median outline offset (pixels) of the masks of `rows` (labelled training items) against their HC
    `target`, measured at the original resolution: `{"outline_offset_px", "n_masks", "iqr_px"}`."""
    from sonodistill.data.readers import read_mask
    from sonodistill.evaluation.head_circumference import outline_offset_px

    table = manifest.table
    values = np.array([outline_offset_px(read_mask(str(table["mask"].iloc[r])).astype(bool),
                                         float(table["pixel_size_mm"].iloc[r]), float(table["target"].iloc[r]))
                       for r in np.asarray(rows, dtype=np.int64)])
    values = values[np.isfinite(values)]
    if not values.size:
        raise SonoDistillError(f"no ellipse fits any of the {len(rows)} labelled masks (e.g. "
                               f"{table['mask'].iloc[int(rows[0])] if len(rows) else 'none given'}): cannot measure "
                               "how far their outline lies from the head circumference")
    q1, q3 = np.percentile(values, [25, 75])
    return {"outline_offset_px": float(np.median(values)), "n_masks": int(values.size), "iqr_px": [float(q1), float(q3)]}


def fold_outline_calibration(manifest: Manifest, fold_dir: Path) -> dict[str, Any]:
    """A finished fold's outline calibration: its `hc_calibration.json`, or (a run scored before that file existed)
    measured now on the labelled rows of its `split.json`, exactly as the protocol does."""
    saved = Path(fold_dir) / "hc_calibration.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    labelled = np.asarray(json.loads((Path(fold_dir) / "split.json").read_text())["labelled"], dtype=np.int64)
    return hc_outline_calibration(manifest, labelled)


@torch.no_grad()
def predict_segmentation(model: torch.nn.Module, cfg: RunConfig, manifest: Manifest, rows: np.ndarray, fold: int,
                         fold_dir: Path, overlays: int = 0, save_masks: bool = False,
                         hc_outline_offset_px: float = 0.0, flip_tta: bool = False,
                         mask_postprocess: str = "none") -> pd.DataFrame:
    """Predict `rows`, map each prediction back to its original image and score it against the original mask.

    hd95/asd are in mm when the manifest has `pixel_size_mm`, else in original pixels. With `pixel_size_mm` and a
    numeric `target` (HC18), the head circumference of the predicted mask, less the masks' outline offset
    `hc_outline_offset_px` (`hc_outline_calibration`), is compared with `target` (mm); `hc_pred_uncorrected_mm`
    keeps the value without that correction. `flip_tta`: class probabilities averaged with those of the mirrored
    image (`models.segmentation.flip_averaged`). `mask_postprocess`: `evaluation.mask_postprocess` (none, largest,
    largest_nonempty, ellipse), on the probabilities mapped back to the original image."""
    from torch.utils.data import DataLoader

    from sonodistill.data.datasets import FrameDataset
    from sonodistill.data.readers import read_clip, read_mask
    from sonodistill.evaluation.head_circumference import hc_scores, preprocess_geometry
    from sonodistill.evaluation.mask_postprocess import check_mask_postprocess, postprocess_mask
    from sonodistill.evaluation.metrics import segmentation_metrics
    from sonodistill.models.segmentation import flip_averaged

    check_mask_postprocess(mask_postprocess)
    rows = np.asarray(rows, dtype=np.int64)
    table = manifest.table
    pre = preprocess_config(cfg)
    dataset = FrameDataset(manifest.subset(rows).without_masks(), pre, cache=clip_cache(cfg), augment=None)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    has_spacing = "pixel_size_mm" in table.columns
    has_hc = has_head_circumference(manifest)
    n_overlays = int(overlays)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def softmax_of(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x).float(), dim=1)

    records = []
    for batch in loader:
        x = batch["x"].to(device)
        probs = (flip_averaged(softmax_of, x) if flip_tta else softmax_of(x)).cpu()
        for p, local in zip(probs, batch["index"].tolist()):
            row = int(rows[local])
            image_path, mask_path = str(table["path"].iloc[row]), str(table["mask"].iloc[row])
            geometry = preprocess_geometry(image_path, pre)
            original = geometry.probabilities_to_original(p)
            pred = postprocess_mask(original.argmax(axis=0) == 1, original[1], mask_postprocess)
            truth = read_mask(mask_path).astype(bool)
            if truth.shape != pred.shape:
                raise SonoDistillError(f"{mask_path}: mask size {truth.shape} differs from image {image_path} "
                                       f"size {pred.shape}")
            spacing = float(table["pixel_size_mm"].iloc[row]) if has_spacing else 1.0
            rec: dict[str, Any] = {"fold": fold, "index": row, "path": image_path, "group": manifest.groups[row],
                                   **segmentation_metrics(pred, truth, spacing)}
            if has_hc:
                rec.update(hc_scores(pred, spacing, float(table["target"].iloc[row]), hc_outline_offset_px))
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


def training_warnings(run_dir: str | Path, cfg: RunConfig) -> list[str]:
    """Report lines on what the training logs show went wrong without test labels: the folds whose unlabelled
    foreground share drifted from the labelled one after the consistency ramp (`cfg` with resolved options; [] for
    recipes without a ramp)."""
    from sonodistill.evaluation.foreground_drift import foreground_drift_warnings

    ramp = cfg.recipe_options.get("rampup_fraction")
    return [] if ramp is None else foreground_drift_warnings(run_dir, float(ramp), int(cfg.train.epochs))


def write_segmentation_report(run_dir: str | Path, predictions: pd.DataFrame, title: str,
                              units: str = "px", warnings: list[str] | None = None) -> dict[str, Any]:
    """metrics_per_fold.csv, metrics.json and report.md from per-item predictions, with `warnings` (training_warnings)
    under their own heading and in metrics.json; returns metric -> MeanStd."""
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
                     "- hc_mm|, the contour taken the masks' outline offset inside (measured per fold on its labelled "
                     "training masks: fold_k/hc_calibration.json; predictions.csv keeps hc_pred_uncorrected_mm); an "
                     "image with no head predicted is a failure (NaN), counted in n_nan.\n")
    warnings = list(warnings or [])
    if warnings:
        lines += ["## Training warnings\n", *[f"- {w}" for w in warnings], ""]
    (run_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    payload = {"title": title, "n_folds": n_folds, "n_items": int(len(predictions)), "units": units,
               "summary": {k: {"mean": v.mean, "std": v.std, "n": v.n, "n_nan": v.n_nan} for k, v in summary.items()},
               "items": {k: {"mean": v.mean, "std": v.std, "n": v.n, "n_nan": v.n_nan} for k, v in items.items()},
               "per_fold": per_fold, "warnings": warnings}
    (run_dir / "metrics.json").write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=False),
                                          encoding="utf-8")
    return summary


def segmentation_units(manifest: Manifest) -> str:
    return "mm" if "pixel_size_mm" in manifest.table.columns else "px (original image pixels)"


def segmentation_title(cfg: RunConfig) -> str:
    frac = cfg.recipe_options.get("labelled_fraction")
    label = f", {100 * float(frac):g} % labelled" if frac is not None else ""
    if cfg.recipe_options.get("labelled_rows") == "masks":
        label = ", labelled: the items with a mask"
    return f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}{label}"


def segmentation_report_from_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild report.md / metrics.json / metrics_per_fold.csv from a run directory alone."""
    from sonodistill.evaluation.run_dir import read_run_dir

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    return write_segmentation_report(run_dir, predictions, segmentation_title(cfg), segmentation_units(manifest),
                                     training_warnings(run_dir, cfg))
