"""A run's cross-validation folds: grouped, stratified, checked for leakage, saved in RUN/folds.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError

Folds = list[tuple[np.ndarray, np.ndarray]]


def make_folds(manifest: Manifest, n_folds: int, seed: int) -> Folds:
    """Grouped, stratified (train rows, test rows) folds; each checked for leakage."""
    from sonodistill.data.splits import check_no_leakage, grouped_kfold

    folds = grouped_kfold(manifest, n_splits=n_folds, seed=seed)
    for f in folds:
        check_no_leakage(manifest, f.train, f.test)
    return [(f.train, f.test) for f in folds]


def fold_table(manifest: Manifest, n_folds: int, seed: int) -> pd.DataFrame:
    """Each item's test fold under `make_folds(manifest, n_folds, seed)` (the split a run with `train.folds` and
    `train.fold_seed` makes): columns path, group, label (when labelled), fold."""
    table = manifest.table[[c for c in ("path", "group", "label") if c in manifest.table.columns]].copy()
    fold = np.full(len(manifest), -1, dtype=np.int64)
    for k, (_, test) in enumerate(make_folds(manifest, n_folds, seed)):
        fold[test] = k
    table["fold"] = fold
    return table


def save_folds(run_dir: Path, manifest: Manifest, folds: Folds) -> None:
    """RUN/folds.json: each fold's train and test rows, and its test groups."""
    data = [{"fold": k, "train": tr.tolist(), "test": te.tolist(),
             "test_groups": sorted(set(manifest.groups[te].tolist()))} for k, (tr, te) in enumerate(folds)]
    (Path(run_dir) / "folds.json").write_text(json.dumps(data))


def load_folds(run_dir: Path) -> Folds:
    """(train rows, test rows) of every fold of a run (its folds.json)."""
    data = json.loads((Path(run_dir) / "folds.json").read_text())
    return [(np.asarray(d["train"], dtype=np.int64), np.asarray(d["test"], dtype=np.int64)) for d in data]


def fold_seed_of(cfg: RunConfig) -> int:
    """The seed of the fold split: `train.fold_seed`, else `train.seed`."""
    return int(cfg.train.seed if cfg.train.fold_seed is None else cfg.train.fold_seed)


def cv_folds(cfg: RunConfig, manifest: Manifest, resume: bool, save: bool = True) -> Folds:
    """The run's folds: the saved folds.json when resuming, else new grouped folds (saved when `save`)."""
    if resume and (cfg.run_dir / "folds.json").exists():
        return load_folds(cfg.run_dir)
    if cfg.train.folds < 2:
        raise ConfigError(f"train.folds must be >= 2 for cross-validation, got {cfg.train.folds}")
    folds = make_folds(manifest, cfg.train.folds, fold_seed_of(cfg))
    if save:
        save_folds(cfg.run_dir, manifest, folds)
    return folds
