"""Where a segmentation run's training ended: the last epoch's mean foreground shares, per seed and fold.

    python benchmarks/seg_train_shares.py runs/bench31/busi10/busi-hdc-10pct runs/bench30/busi10/busi-hdc-10pct

Reads each fold's Lightning `logs/metrics.csv` (no model is loaded) and prints, for the last training epoch, the
mean over its steps of the student's predicted foreground share on the unlabelled images (`unsup/fg_fraction`),
the labelled masks' foreground share (`sup/fg_fraction`) and, for HDC's MI term, the entropy of the soft class
marginal (`hdc/mi/marginal_entropy`, nats) with the foreground share it corresponds to (two classes). A consistency
method whose unlabelled share drifts far from the labelled one under- or over-segments (docs/hdc.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

COLUMNS = {"unsup/fg_fraction": "unlabelled fg", "sup/fg_fraction": "labelled fg",
           "hdc/mi/marginal_entropy": "marginal entropy"}


def binary_share(entropy: float) -> float:
    """The smaller class share p <= 1/2 whose two-class entropy is `entropy` nats (bisection)."""
    lo, hi = 0.0, 0.5
    for _ in range(60):
        mid = (lo + hi) / 2
        h = -(mid * math.log(mid) + (1 - mid) * math.log(1 - mid)) if mid > 0 else 0.0
        lo, hi = (mid, hi) if h < entropy else (lo, mid)
    return (lo + hi) / 2


def last_epoch_shares(metrics_csv: Path) -> dict[str, float]:
    """The last epoch's step means of `COLUMNS` (train/ prefix optional) in one Lightning metrics.csv."""
    d = pd.read_csv(metrics_csv)
    if "epoch" not in d.columns or d.empty:
        raise ValueError(f"{metrics_csv}: no epoch column or no rows (not a finished training log?)")
    last = d[d["epoch"] == d["epoch"].max()]
    row: dict[str, float] = {}
    for key, name in COLUMNS.items():
        col = next((c for c in (f"train/{key}", key) if c in d.columns), None)
        if col is not None:
            row[name] = float(last[col].mean())
    if "marginal entropy" in row:
        row["marginal fg"] = binary_share(row["marginal entropy"])
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="segmentation run directories (with seed_*/fold_* inside)")
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        logs = sorted(run.glob("**/fold_*/logs/metrics.csv"))
        if not logs:
            print(f"error: {run}: no fold_*/logs/metrics.csv inside", file=sys.stderr)
            return 2
        for log in logs:
            where = log.parent.parent.relative_to(run)
            rows.append({"run": str(run), "where": str(where), **last_epoch_shares(log)})
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
