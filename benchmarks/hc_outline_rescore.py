"""Head-circumference error of finished hc18 runs, raw and with the masks' outline offset removed.

    python benchmarks/hc_outline_rescore.py runs/bench20/hdc-val/hc18-val-hdc-*-10pct

For a run scored before the outline correction existed (no fold_k/hc_calibration.json), each fold's offset is
measured now on that fold's labelled training masks (fold_k/split.json) exactly as the protocol does, and the
predicted HC of its test items is shortened by 2 pi x offset x pixel size. Runs scored with the correction are
reported as they are. Prints one Markdown row per run: raw and corrected HC MAE, median signed error, failures.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from sonodistill.data.manifest import Manifest
from sonodistill.evaluation.segmentation_report import fold_outline_calibration


def rescore(run: Path) -> dict[str, float]:
    """Raw and corrected HC errors of one run directory (pooled over its folds)."""
    manifest = Manifest.from_csv(run / "manifest.csv")
    pred = pd.read_csv(run / "predictions.csv")
    raw = pred["hc_pred_uncorrected_mm"] if "hc_pred_uncorrected_mm" in pred.columns else pred["hc_pred_mm"]
    corrected = pred["hc_pred_mm"].copy() if "hc_pred_uncorrected_mm" in pred.columns else None
    offsets = {int(fold): fold_outline_calibration(manifest, run / f"fold_{fold}")["outline_offset_px"]
               for fold in sorted(pred["fold"].unique())}
    if corrected is None:
        size = manifest.table["pixel_size_mm"].to_numpy()[pred["index"].to_numpy()]
        shift = np.array([offsets[int(f)] for f in pred["fold"]])
        corrected = raw - 2 * math.pi * shift * size
    truth = pred["hc_true_mm"]
    return {"raw_mae": float((raw - truth).abs().mean()), "raw_median_signed": float((raw - truth).median()),
            "mae": float((corrected - truth).abs().mean()), "median_signed": float((corrected - truth).median()),
            "failures": int(raw.isna().sum()), "n": int(len(pred)), "offset_px": float(np.mean(list(offsets.values())))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    print("| run | items | no head | outline offset (px) | HC MAE raw (mm) | median signed raw | HC MAE corrected | "
          "median signed corrected |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        r = rescore(run)
        print(f"| {run.name} | {r['n']} | {r['failures']} | {r['offset_px']:.3f} | {r['raw_mae']:.2f} | "
              f"{r['raw_median_signed']:+.2f} | {r['mae']:.2f} | {r['median_signed']:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
