"""Score a run per group (patient, subject) instead of per item: each group's probabilities are averaged over its
items (all in one test fold), for labels that belong to the patient, e.g. lus-blues `covid` (PCR per patient)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from sonodistill.errors import ConfigError


def per_group_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per (fold, group): mean of `prob_*` over the group's items, its (single) `y_true`, item count.

    A group whose items carry different labels, or that appears in two folds, is an error naming the group.
    """
    folds = predictions.groupby("group")["fold"].nunique()
    if (folds > 1).any():
        raise ConfigError(f"group {folds[folds > 1].index[0]!r} is in several test folds: not a grouped run")
    labels = predictions.groupby("group")["y_true"].nunique()
    if (labels > 1).any():
        raise ConfigError(f"group {labels[labels > 1].index[0]!r} has items with different labels: the label is "
                          "not a per-group label, so a per-group score is meaningless")
    probs = [c for c in predictions.columns if c.startswith("prob_")]
    agg = {"y_true": "first", **{c: "mean" for c in probs}, "index": "size"}
    out = predictions.groupby(["fold", "group"], sort=True).agg(agg).reset_index()
    out = out.rename(columns={"index": "n_items"})
    out.insert(2, "index", range(len(out)))
    out.insert(3, "path", out["group"].astype(str))
    return out


def per_group_report(run_dir: str | Path, name: str = "per_group") -> dict[str, Any]:
    """Write RUN/<name>/ (predictions.csv, report.md, metrics) scored per group; returns the summary."""
    from sonodistill.evaluation.report import write_cv_report
    from sonodistill.evaluation.run_dir import read_run_dir

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    out = per_group_predictions(predictions)
    target = run_dir / name
    target.mkdir(exist_ok=True)
    out.to_csv(target / "predictions.csv", index=False)
    return write_cv_report(target, out, manifest.classes,
                           title=f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}, scored per group "
                                 f"({len(out)} groups, probabilities averaged over each group's items)")
