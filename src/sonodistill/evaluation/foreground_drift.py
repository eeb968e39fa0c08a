"""Foreground drift of a semi-supervised segmentation run, read from its training logs (no test labels needed).

The semi-supervised recipes log, per step, the share of unlabelled pixels the student predicts as foreground
(`train/unsup/fg_fraction`) and the labelled masks' share (`train/sup/fg_fraction`). When the unlabelled loss
pulls the student's share far from the labelled one after the consistency ramp, small structures are lost (hc18 at
5 %, HDC with consistency 3: the share fell to 0.36 of the labelled one and 10 of 169 test heads went unfound,
docs/hdc.md) or over-segmented. `foreground_drift_warnings` turns that into report lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

UNLABELLED, LABELLED = "train/unsup/fg_fraction", "train/sup/fg_fraction"
LOW, HIGH = 0.8, 1.25  # unlabelled / labelled share outside [LOW, HIGH] after the ramp: a warning


@dataclass(frozen=True)
class ForegroundDrift:
    """One fold's worst epoch after the ramp: the epoch, its mean unlabelled share, the labelled share, their ratio."""

    epoch: int
    unlabelled: float
    labelled: float

    @property
    def ratio(self) -> float:
        return self.unlabelled / self.labelled if self.labelled > 0 else math.nan


def epoch_foreground_shares(metrics_csv: str | Path) -> tuple[pd.Series, float] | None:
    """(epoch -> mean unlabelled foreground share, labelled share over the run) from a Lightning CSV log; None when
    the log has no foreground columns (a supervised-only run)."""
    df = pd.read_csv(metrics_csv)
    if UNLABELLED not in df.columns or LABELLED not in df.columns:
        return None
    rows = df.dropna(subset=[UNLABELLED])
    if rows.empty or df[LABELLED].dropna().empty:
        return None
    return rows.groupby("epoch")[UNLABELLED].mean(), float(df[LABELLED].dropna().mean())


def worst_drift(metrics_csv: str | Path, first_epoch: int) -> ForegroundDrift | None:
    """The epoch >= `first_epoch` whose unlabelled share is furthest (in ratio) from the labelled share; None when
    the log has no such epoch or no foreground columns."""
    shares = epoch_foreground_shares(metrics_csv)
    if shares is None:
        return None
    by_epoch, labelled = shares
    late = by_epoch[by_epoch.index >= first_epoch]
    if late.empty or labelled <= 0:
        return None
    distance = (late / labelled).map(lambda r: abs(math.log(r)) if r > 0 else math.inf)
    epoch = int(distance.idxmax())
    return ForegroundDrift(epoch, float(late[epoch]), labelled)


def first_epoch_after_ramp(rampup_fraction: float, epochs: int) -> int:
    """The first (0-based) epoch that starts after the consistency ramp of `rampup_fraction` x all steps ends."""
    return min(int(math.ceil(rampup_fraction * epochs - 1e-9)), max(epochs - 1, 0))


def _fold_order(log: Path) -> tuple[int, str]:
    """Sort key of `RUN/<fold>/logs/metrics.csv`: fold_0, fold_1, ..., fold_10, then final/."""
    name = log.parent.parent.name
    return (int(name[5:]), "") if name.startswith("fold_") and name[5:].isdigit() else (1 << 30, name)


def foreground_drift_warnings(run_dir: str | Path, rampup_fraction: float, epochs: int) -> list[str]:
    """One line per fold (`fold_k/logs/metrics.csv`, and `final/`) whose unlabelled foreground share left
    [LOW, HIGH] x the labelled share in an epoch after the ramp; [] when none did or nothing was logged."""
    first = first_epoch_after_ramp(rampup_fraction, epochs)
    lines = []
    for log in sorted(Path(run_dir).glob("*/logs/metrics.csv"), key=_fold_order):
        drift = worst_drift(log, first)
        if drift is None or LOW <= drift.ratio <= HIGH:
            continue
        towards = "background: small structures may be lost" if drift.ratio < LOW else "foreground: over-segmentation"
        lines.append(f"{log.parent.parent.name}: in epoch {drift.epoch} (after the ramp) the student predicted "
                     f"{100 * drift.unlabelled:.1f} % of unlabelled pixels as foreground against "
                     f"{100 * drift.labelled:.1f} % in the labelled masks ({drift.ratio:.2f}x, outside {LOW}-{HIGH}x): "
                     f"drift towards {towards}.")
    return lines
