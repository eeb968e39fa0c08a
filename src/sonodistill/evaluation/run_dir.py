"""A finished run directory read back: its config, manifest and out-of-fold predictions, the report rebuilt from
them alone, and re-scoring with merged classes. Pure reading and scoring: no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig, load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, SonoDistillError

PREDICTIONS = "predictions.csv"
NO_CV_ESTIMATE = "NO_CV_ESTIMATE"


def check_has_cv_estimate(run_dir: str | Path) -> None:
    """SonoDistillError when the run is final-only (train.cv=false): it has no CV predictions to score."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if config.is_file() and not load_config(config).train.cv:
        raise SonoDistillError(f"{run_dir} holds a final model only (trained with --final-only, train.cv=false): "
                               "there is no cross-validation estimate to report, re-score or merge. Score its "
                               "final/ model on labelled data with `sonodistill predict` and `sonodistill score`, "
                               "or run the CV with the same config (without --final-only)")


def read_run_dir(run_dir: str | Path) -> tuple[RunConfig, Manifest, pd.DataFrame]:
    """(config, manifest, predictions) of a finished run directory; SonoDistillError naming a missing file, or
    saying that a final-only run has no CV estimate."""
    run_dir = Path(run_dir)
    check_has_cv_estimate(run_dir)
    for name in ("config.yaml", "manifest.csv", PREDICTIONS):
        if not (run_dir / name).is_file():
            raise SonoDistillError(f"{run_dir} is not a complete run directory: {name} is missing")
    return load_config(run_dir / "config.yaml"), Manifest.from_csv(run_dir / "manifest.csv"), \
        pd.read_csv(run_dir / PREDICTIONS)


def classification_title(cfg: RunConfig) -> str:
    """A classification run's report title; it says when the probabilities are temperature-scaled."""
    title = f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}"
    if cfg.train.calibrate == "temperature":
        title += (f", probabilities temperature-scaled (one T a fold, fitted on {100 * cfg.train.val_fraction:g} % "
                  "of its training rows held out from training)")
    return title


def report_from_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild the report from a run directory alone (config.yaml, manifest.csv, predictions.csv)."""
    from sonodistill.evaluation.report import write_cv_report

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    return write_cv_report(run_dir, predictions, manifest.classes, title=classification_title(cfg))


def parse_merge(specs: list[str]) -> dict[str, list[str]]:
    """['0=0', '1-2=1,2', '3=3'] -> {'0': ['0'], '1-2': ['1', '2'], '3': ['3']} (new class -> old classes)."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        new, sep, old = spec.partition("=")
        if not sep or not new or not old:
            raise ConfigError(f"--merge {spec!r}: expected NEW=OLD1,OLD2")
        out[new] = [c for c in old.split(",") if c]
    return out


def merge_probabilities(classes: list[str], probs: np.ndarray,
                        merge: dict[str, list[str]]) -> tuple[list[str], np.ndarray]:
    """Probabilities N x C summed into the merged classes N x C' (ConfigError unless each class of `classes` goes
    to exactly one new class). Returns (new classes, N x C')."""
    olds = [c for cs in merge.values() for c in cs]
    if sorted(olds) != sorted(classes):
        raise ConfigError(f"--merge {merge} must use each class of {classes} exactly once")
    new = list(merge)
    return new, np.stack([probs[:, [classes.index(c) for c in merge[n]]].sum(axis=1) for n in new], axis=1)


def merge_classes(predictions: pd.DataFrame, classes: list[str],
                  merge: dict[str, list[str]]) -> tuple[pd.DataFrame, list[str]]:
    """Predictions with classes merged: y_true mapped, prob_<new> = sum of its old classes' probabilities
    (`merge_probabilities`). Returns (table, new classes)."""
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(np.float64)
    new_classes, merged = merge_probabilities(classes, probs, merge)
    to_new = {classes.index(c): new_classes.index(n) for n, cs in merge.items() for c in cs}
    out = predictions[[c for c in predictions.columns if not c.startswith("prob_")]].copy()
    out["y_true"] = predictions["y_true"].map(to_new)
    for k, n in enumerate(new_classes):
        out[f"prob_{n}"] = merged[:, k]
    return out, new_classes


def merged_report(run_dir: str | Path, merge: dict[str, list[str]], name: str = "merged") -> dict[str, Any]:
    """Re-score a run's predictions with classes merged (probabilities summed), e.g. severity 0 / 1-2 / 3.

    Writes RUN/<name>/report.md etc. Every original class must go to exactly one new class.
    """
    from sonodistill.evaluation.report import write_cv_report

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    out, new_classes = merge_classes(predictions, list(manifest.classes), merge)
    target = run_dir / name
    target.mkdir(exist_ok=True)
    out.to_csv(target / PREDICTIONS, index=False)
    return write_cv_report(target, out, new_classes,
                           title=f"{classification_title(cfg)}, classes merged as {merge}")
