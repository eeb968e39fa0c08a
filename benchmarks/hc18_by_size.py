"""HC18 segmentation scores by head size: Dice and HC MAE per band of the true head circumference.

    python benchmarks/hc18_by_size.py runs/bench27/hc18-10/hc18-seg_supervised-10pct runs/bench27/hc18-10/hc18-hdc-10pct

Each RUN is a finished hc18 segmentation run (one seed, or `seed_<s>/` folders: an image's scores are first averaged
over the seeds). Prints a Markdown table: images, mean Dice (%) and HC MAE (mm) per band, and the overall Dice if
the smallest band scored the mean Dice of the others (how much of the mean Dice the small heads cost).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sonodistill.config import seed_run_dirs

BANDS = [0.0, 80.0, 120.0, 160.0, 200.0, 400.0]  # true HC, mm (HC18: 44-346 mm)


def seed_averaged(run: Path) -> pd.DataFrame:
    """One row per test image: path, hc_true_mm, dice, hc_abs_err_mm (means over the run's seeds)."""
    folders = list(seed_run_dirs(run).values()) or [run]
    frames = [pd.read_csv(f / "predictions.csv").set_index("path")[["hc_true_mm", "dice", "hc_abs_err_mm"]]
              for f in folders]
    if any(not f.index.equals(frames[0].index) for f in frames):
        raise SystemExit(f"{run}: the seeds score different images; cannot average them image by image")
    return sum(frames) / len(frames)


def by_size(scores: pd.DataFrame) -> pd.DataFrame:
    band = pd.cut(scores["hc_true_mm"], BANDS)
    return scores.groupby(band, observed=True).agg(images=("dice", "size"), dice=("dice", "mean"),
                                                   hc_mae=("hc_abs_err_mm", "mean"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    print("| run | true HC band (mm) | images | Dice (%) | HC MAE (mm) |")
    print("|---|---|---:|---:|---:|")
    for run in args.runs:
        scores = seed_averaged(run)
        for band, row in by_size(scores).iterrows():
            print(f"| {run.name} | {band.left:g}-{band.right:g} | {int(row.images)} | {100 * row.dice:.2f} | "
                  f"{row.hc_mae:.2f} |")
        small = scores["hc_true_mm"] <= BANDS[1]
        lifted = scores["dice"].where(~small, scores.loc[~small, "dice"].mean())
        print(f"| {run.name} | all | {len(scores)} | {100 * scores['dice'].mean():.2f} "
              f"(smallest band at the others' mean: {100 * lifted.mean():.2f}) | {scores['hc_abs_err_mm'].mean():.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
