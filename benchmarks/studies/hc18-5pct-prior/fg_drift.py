"""Per epoch, the student's foreground share on unlabelled images against the labelled masks' share (HDC runs).

Usage: python benchmarks/studies/hc18-5pct-prior/fg_drift.py RUN_DIR [RUN_DIR ...]
Reads every `fold_*/logs/metrics.csv` under each run directory (seed folders included) and prints one line per
fold: the epoch means of `train/unsup/fg_fraction`, the labelled share (mean of `train/sup/fg_fraction` over the
run) and the drift guard of rule.txt: min over epochs >= FIRST (after the ramp) of unlabelled / labelled share.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sonodistill.evaluation.foreground_drift import epoch_foreground_shares, first_epoch_after_ramp

FIRST_GUARDED_EPOCH = first_epoch_after_ramp(0.4, 8)  # 4: the ramp (0.4 of 8 epochs) ends inside epoch 3


def epoch_shares(metrics_csv: Path) -> tuple[pd.Series, float]:
    """(epoch -> mean unlabelled foreground share, labelled share) of one fold's Lightning CSV log."""
    shares = epoch_foreground_shares(metrics_csv)
    if shares is None:
        raise SystemExit(f"{metrics_csv}: no foreground-share columns (not an HDC / consistency run?)")
    return shares


def guard_ratio(by_epoch: pd.Series, labelled: float) -> float:
    """rule.txt's drift guard: the lowest unlabelled share in an epoch >= FIRST_GUARDED_EPOCH over the labelled share."""
    late = by_epoch[by_epoch.index >= FIRST_GUARDED_EPOCH]
    return float(late.min() / labelled) if len(late) else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    for run in args.runs:
        logs = sorted(run.glob("**/fold_*/logs/metrics.csv"))
        if not logs:
            raise SystemExit(f"{run}: no fold_*/logs/metrics.csv under it")
        for log in logs:
            unsup, labelled = epoch_shares(log)
            guard = guard_ratio(unsup, labelled)
            shares = " ".join(f"{v:.3f}" for v in unsup.to_numpy())
            print(f"{log.parent.parent.relative_to(run.parent)}: labelled {labelled:.3f}; unlabelled by epoch {shares}; "
                  f"guard (min epoch>={FIRST_GUARDED_EPOCH} / labelled) {guard:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
