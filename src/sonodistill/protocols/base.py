"""What a method gives the one fold loop (`protocols.folds`): a `Protocol` with `fit(run, fold) -> FoldResult`.

The loop owns the run directory, fold folders, resume, seeds, validation-only scoring, the final model on all items
and the report's place; a protocol says how one fold (or the final model) is trained and judged, and how the
folds' results become the run's report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError

PREDICTIONS = "predictions.csv"
FOLD_RECORD = "fold.json"


@dataclass
class Fold:
    """One fit of a run: fold `index` (its seed is `train.seed + index`), or the final model (`final`, no test)."""

    index: int
    train: np.ndarray
    test: np.ndarray
    dir: Path
    seed: int
    final: bool = False


@dataclass
class FoldResult:
    """What one fold gives back: per-test-item predictions (the run's predictions.csv is their union), optional
    embeddings (`n x D`, rows as `predictions`), extra tables written as `<name>.csv`, a JSON-ready record
    (metrics, counts) written as fold.json, and its training seconds."""

    predictions: pd.DataFrame | None = None
    embeddings: np.ndarray | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None


@dataclass
class Run:
    """The state of one run handed to a protocol: the resolved config, the items the folds are made over (a
    protocol's `prepare` may replace them, e.g. DILBERT's sequences), resume, Lightning trainer overrides, and
    whatever `prepare` keeps in `state`."""

    cfg: RunConfig
    manifest: Manifest
    resume: bool = False
    trainer_overrides: dict[str, Any] = field(default_factory=dict)
    state: Any = None

    @property
    def dir(self) -> Path:
        return self.cfg.run_dir


def wanted_folds(cfg: RunConfig, n: int) -> list[int]:
    """Every fold, or `train.fold` alone (ConfigError when it does not exist)."""
    if cfg.train.fold is None:
        return list(range(n))
    if not 0 <= cfg.train.fold < n:
        raise ConfigError(f"train.fold={cfg.train.fold} but there are {n} folds (0 to {n - 1})")
    return [int(cfg.train.fold)]


class Protocol:
    """How a method is run and judged. Subclasses implement `fit` and `report`; the rest has defaults."""

    #: False: the method trains one model on every item and no folds (DINO pretraining): the loop runs `fit` once
    #: on the final fold and `report` on its result.
    cross_validates: bool = True
    #: False when `prepare` replaces `run.manifest` (the folds are then made over its items, after `prepare`).
    folds_over_manifest: bool = True
    #: what `train.on_validation` can score: True when `fit` returns predictions of its test rows.
    scores_validation: bool = True
    #: whether `train.calibrate` (temperature scaling of class probabilities) applies to the method's models.
    calibrates: bool = False

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        """Method-specific checks before anything is written (build the model once, options, data needs)."""

    def final_refusal(self, cfg: RunConfig, manifest: Manifest) -> str | None:
        """Why this config cannot train a final model on all items; None when it can."""
        return None

    def folds_to_run(self, run: Run, n_folds: int) -> list[int]:
        """The folds this run fits: every fold, or `train.fold` alone (ConfigError when it does not exist)."""
        return wanted_folds(run.cfg, n_folds)

    def prepare(self, run: Run) -> None:
        """Once per run, before the folds (decode and cache data, pretrain a shared encoder, ...)."""

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        """Train on `fold.train` into `fold.dir` and score `fold.test` (empty for the final model)."""
        raise NotImplementedError

    def load_finished(self, run: Run, fold: Fold) -> FoldResult | None:
        """On resume: the saved result of a finished fold, or None to (re)train it."""
        pred = fold.dir / PREDICTIONS
        if not pred.is_file():
            return None
        record_file = fold.dir / FOLD_RECORD
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        return FoldResult(predictions=pd.read_csv(pred), record=record)

    def save_fold(self, run: Run, fold: Fold, result: FoldResult) -> None:
        """Write a fold's result into its folder (predictions.csv last: it marks the fold finished)."""
        fold.dir.mkdir(parents=True, exist_ok=True)
        for name, table in result.tables.items():
            table.to_csv(fold.dir / f"{name}.csv", index=False)
        if result.embeddings is not None:
            np.save(fold.dir / "embeddings.npy", result.embeddings)
        if result.record:
            (fold.dir / FOLD_RECORD).write_text(json.dumps(result.record, indent=1, default=float))
        predictions = result.predictions if result.predictions is not None else pd.DataFrame()
        # float32 columns (softmax outputs) widened first: float64 text reads back to the same value, so the report
        # made from this frame equals what `eval` recomputes from predictions.csv (Brier score and ECE depend on the
        # values themselves, not only on their order as accuracy and ROC-AUC do)
        wide = {c: np.float64 for c, t in predictions.dtypes.items() if t == np.float32}
        if wide:
            predictions = result.predictions = predictions.astype(wide)
        predictions.to_csv(fold.dir / PREDICTIONS, index=False)

    def title(self, run: Run) -> str:
        return f"{run.cfg.name}: {run.cfg.recipe} on {run.cfg.data.spec}"

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        """Join the folds' results into the run's report (report.md, metrics.json, ...); returns the summary."""
        raise NotImplementedError
