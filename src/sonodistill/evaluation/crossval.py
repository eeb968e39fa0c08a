"""Cross-validation runner: grouped stratified folds, one fit per fold, report from the run directory alone."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig, load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, SonoDistillError

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"


def process_rank() -> int:
    """Global rank of this process in a multi-process (DDP) launch; 0 otherwise."""
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def make_folds(manifest: Manifest, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified folds; each checked for leakage."""
    from sonodistill.data.splits import check_no_leakage, grouped_kfold

    folds = grouped_kfold(manifest, n_splits=n_folds, seed=seed)
    for f in folds:
        check_no_leakage(manifest, f.train, f.test)
    return [(f.train, f.test) for f in folds]


def save_folds(run_dir: Path, manifest: Manifest, folds: list[tuple[np.ndarray, np.ndarray]]) -> None:
    data = [{"fold": k, "train": tr.tolist(), "test": te.tolist(),
             "test_groups": sorted(set(manifest.groups[te].tolist()))} for k, (tr, te) in enumerate(folds)]
    (run_dir / "folds.json").write_text(json.dumps(data))


def load_folds(run_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    data = json.loads((run_dir / "folds.json").read_text())
    return [(np.asarray(d["train"], dtype=np.int64), np.asarray(d["test"], dtype=np.int64)) for d in data]


def cv_folds(cfg: RunConfig, manifest: Manifest, resume: bool, save: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """The run's folds: the saved folds.json when resuming, else new grouped folds (saved when `save`)."""
    if resume and (cfg.run_dir / "folds.json").exists():
        return load_folds(cfg.run_dir)
    if cfg.train.folds < 2:
        raise ConfigError(f"train.folds must be >= 2 for cross-validation, got {cfg.train.folds}")
    folds = make_folds(manifest, cfg.train.folds, cfg.train.seed)
    if save:
        save_folds(cfg.run_dir, manifest, folds)
    return folds


# Fields that say where files go or how data is fed, not what is trained: they may change on --resume.
RESUME_FREE_FIELDS = ("out_dir", "data.cache_dir", "data.num_workers", "train.fold")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'folds': 3}} -> {'train.folds': 3}; recipe_options and model.kwargs are flattened too."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: RunConfig, now: RunConfig) -> list[str]:
    """'field: saved X, now Y' for every field (outside RESUME_FREE_FIELDS) whose value differs."""
    a, b = _flatten(saved.to_dict()), _flatten(now.to_dict())
    return [f"{k}: saved {a.get(k, '(unset)')!r}, now {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b)) if k not in RESUME_FREE_FIELDS and a.get(k) != b.get(k)]


def check_resume_config(cfg: RunConfig) -> bool:
    """On --resume: the resolved config must equal the run's config.yaml (ConfigError naming each differing field).

    Returns False, after saying so, when the run directory holds no run yet (it starts from scratch)."""
    saved_file = cfg.run_dir / "config.yaml"
    if not saved_file.is_file():
        log.warning("--resume: %s holds no run yet (no config.yaml); starting it from scratch", cfg.run_dir)
        return False
    diffs = config_differences(load_config(saved_file), cfg)
    if diffs:
        raise ConfigError(f"--resume: the resolved config differs from {saved_file} in {len(diffs)} field(s): "
                          + "; ".join(diffs) + ". Resume with the run's original options (same --config, --set, "
                          "--data, ...), or start a new run with another --name")
    return True


def validate_run(cfg: RunConfig, manifest: Manifest, recipe_cls: type) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Every check that can fail before training, run before anything is written to the run directory.

    The config's numbers, the manifest, the recipe built once from the config (model, options, optimiser) and,
    for recipes on the shared fold loop, the folds (returned, not saved; None for recipes with their own protocol).
    """
    from sonodistill.recipes.base import build_optimizer

    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}: a run must train")
    manifest.validate(check_files=True)
    if manifest.has_labels:
        manifest.check_classes_nonempty()
    if getattr(recipe_cls, "run_experiment", None) is not None:
        return None
    if cfg.train.folds < 2:
        raise ConfigError(f"train.folds must be >= 2 for cross-validation, got {cfg.train.folds}")
    if cfg.train.fold is not None and not 0 <= cfg.train.fold < cfg.train.folds:
        raise ConfigError(f"train.fold={cfg.train.fold} but there are {cfg.train.folds} folds (0 to "
                          f"{cfg.train.folds - 1})")
    segmentation = getattr(recipe_cls, "task", "classification") != "classification"
    if segmentation and cfg.train.final:
        raise ConfigError("train.final is not supported by the segmentation recipes yet")
    num_classes = len(manifest.classes)
    if segmentation:
        from sonodistill.evaluation.segmentation_cv import SEGMENTATION_CLASSES

        num_classes = SEGMENTATION_CLASSES
    recipe = recipe_cls(cfg, num_classes=num_classes, steps_per_epoch=1)
    build_optimizer(recipe.parameters(), cfg.optim, cfg.train.epochs, 1)
    return make_folds(manifest, cfg.train.folds, cfg.train.seed)


def run_crossval(cfg: RunConfig, resume: bool = False, manifest: Manifest | None = None,
                 **trainer_overrides: Any) -> dict[str, Any]:
    """Train every fold (or `cfg.train.fold` only), write predictions and the report; returns the summary.

    Everything is validated before the run directory is written. With `resume`, the config must equal the saved
    one; folds whose predictions exist are kept and an unfinished fold restarts from its last checkpoint.
    """
    from sonodistill.evaluation.report import write_cv_report
    from sonodistill.recipes import get_recipe
    from sonodistill.recipes.data import load_manifest
    from sonodistill.recipes.trainer import fit_fold

    run_dir = cfg.run_dir
    rank = process_rank()
    if rank != 0:  # a DDP worker re-running the command: rank 0 owns the run directory
        resume = True
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if (run_dir / PREDICTIONS).exists() or (run_dir / "config.yaml").exists():
            raise SonoDistillError(f"run directory {run_dir} already holds a run: pass --resume to continue it, "
                                   "or choose another --name")
    recipe_cls = get_recipe(cfg.recipe)
    manifest = manifest if manifest is not None else load_manifest(cfg.data)
    if resume and rank == 0:
        resume = check_resume_config(cfg)
    new_folds = validate_run(cfg, manifest, recipe_cls)
    # -- nothing was written before this line --
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        if not resume:
            cfg.save(run_dir / "config.yaml")
        manifest.to_csv(run_dir / "manifest.csv")
    runner = getattr(recipe_cls, "run_experiment", None)
    if runner is not None:  # pretraining and multi-stage recipes run their own protocol
        return runner(cfg, manifest, resume=resume, **trainer_overrides)
    assert new_folds is not None
    folds = new_folds
    if resume and (run_dir / "folds.json").exists():
        folds = load_folds(run_dir)
    elif rank == 0:
        save_folds(run_dir, manifest, folds)
    if getattr(recipe_cls, "task", "classification") != "classification":
        from sonodistill.evaluation.segmentation_cv import run_segmentation_cv

        return run_segmentation_cv(cfg, manifest, folds, resume=resume, **trainer_overrides)

    def fit(k: int, train_rows: np.ndarray, test_rows: np.ndarray, fold_dir: Path) -> pd.DataFrame | None:
        return fit_fold(cfg, manifest, train_rows, test_rows, k, fold_dir, resume=resume, **trainer_overrides)

    frames, times = fit_folds(cfg, folds, resume, fit)
    if cfg.train.final and cfg.train.fold is None:
        train_final_model(cfg, manifest, resume, **trainer_overrides)
    if rank != 0:
        return None  # type: ignore[return-value]
    predictions = save_predictions(run_dir, frames, times)
    return write_cv_report(run_dir, predictions, manifest.classes, title=f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}")


def fit_folds(cfg: RunConfig, folds: list[tuple[np.ndarray, np.ndarray]], resume: bool,
              fit: Callable[[int, np.ndarray, np.ndarray, Path], pd.DataFrame | None],
              ) -> tuple[list[pd.DataFrame], dict[int, float]]:
    """Train every fold (or `cfg.train.fold`) with `fit(k, train_rows, test_rows, fold_dir)`.

    Writes each fold's predictions.csv; with `resume`, a fold that has one is kept. `fit` returns None on DDP
    ranks other than 0 (they train but do not predict). Returns (predictions per fold, seconds per trained fold).
    """
    if cfg.train.fold is not None and not 0 <= cfg.train.fold < len(folds):
        raise ConfigError(f"train.fold={cfg.train.fold} but there are {len(folds)} folds")
    wanted = range(len(folds)) if cfg.train.fold is None else [cfg.train.fold]
    frames: list[pd.DataFrame] = []
    times: dict[int, float] = {}
    from sonodistill.recipes.trainer import STOP

    for k in wanted:
        STOP.check(f" before fold {k}")
        fold_dir = cfg.run_dir / f"fold_{k}"
        pred_file = fold_dir / PREDICTIONS
        if resume and pred_file.exists():
            log.info("fold %d already complete, kept", k)
            frames.append(pd.read_csv(pred_file))
            continue
        train_rows, test_rows = folds[k]
        t0 = time.perf_counter()
        pred = fit(k, train_rows, test_rows, fold_dir)
        times[k] = time.perf_counter() - t0
        if pred is None:  # not rank 0: predictions and the report are rank 0's
            continue
        pred.to_csv(pred_file, index=False)
        frames.append(pred)
        log.info("fold %d done in %.1f s", k, times[k])
    return frames, times


def save_predictions(run_dir: Path, frames: list[pd.DataFrame], times: dict[int, float]) -> pd.DataFrame:
    """Concatenate the folds' predictions into run_dir/predictions.csv and merge `times` into timing.json."""
    predictions = pd.concat(frames, ignore_index=True)
    predictions.to_csv(run_dir / PREDICTIONS, index=False)
    timing_file = run_dir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    timing.update({str(k): v for k, v in times.items()})
    timing_file.write_text(json.dumps(timing, indent=1))
    return predictions


def train_final_model(cfg: RunConfig, manifest: Manifest, resume: bool = False, **trainer_overrides: Any) -> Path:
    """Train one model on every item (no test fold) into RUN/final/: the model to deploy after CV."""
    from sonodistill.recipes.trainer import fit_fold

    final_dir = cfg.run_dir / "final"
    if resume and (final_dir / "model.safetensors").is_file() and (final_dir / "done").is_file():
        return final_dir
    rows = np.arange(len(manifest))
    fit_fold(cfg, manifest, rows, rows[:0], fold=len(load_folds(cfg.run_dir)), fold_dir=final_dir,
             resume=resume, **trainer_overrides)
    (final_dir / "done").write_text("trained on all items; no held-out estimate: see the CV report\n")
    return final_dir


def read_run_dir(run_dir: str | Path) -> tuple[RunConfig, Manifest, pd.DataFrame]:
    """(config, manifest, predictions) of a finished run directory; SonoDistillError naming a missing file."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "manifest.csv", PREDICTIONS):
        if not (run_dir / name).is_file():
            raise SonoDistillError(f"{run_dir} is not a complete run directory: {name} is missing")
    return load_config(run_dir / "config.yaml"), Manifest.from_csv(run_dir / "manifest.csv"), \
        pd.read_csv(run_dir / PREDICTIONS)


def report_from_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild the report from a run directory alone (config.yaml, manifest.csv, predictions.csv)."""
    from sonodistill.evaluation.report import write_cv_report

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    return write_cv_report(run_dir, predictions, manifest.classes, title=f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}")


def parse_merge(specs: list[str]) -> dict[str, list[str]]:
    """['0=0', '1-2=1,2', '3=3'] -> {'0': ['0'], '1-2': ['1', '2'], '3': ['3']} (new class -> old classes)."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        new, sep, old = spec.partition("=")
        if not sep or not new or not old:
            raise ConfigError(f"--merge {spec!r}: expected NEW=OLD1,OLD2")
        out[new] = [c for c in old.split(",") if c]
    return out


def merged_report(run_dir: str | Path, merge: dict[str, list[str]], name: str = "merged") -> dict[str, Any]:
    """Re-score a run's predictions with classes merged (probabilities summed), e.g. severity 0 / 1-2 / 3.

    Writes RUN/<name>/report.md etc. Every original class must go to exactly one new class.
    """
    from sonodistill.evaluation.report import write_cv_report

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    olds = [c for cs in merge.values() for c in cs]
    if sorted(olds) != sorted(manifest.classes):
        raise ConfigError(f"merge {merge} must use each class of {manifest.classes} exactly once")
    new_classes = list(merge)
    to_new = {manifest.classes.index(c): new_classes.index(n) for n, cs in merge.items() for c in cs}
    out = predictions[[c for c in predictions.columns if not c.startswith("prob_")]].copy()
    out["y_true"] = predictions["y_true"].map(to_new)
    for n, cs in merge.items():
        out[f"prob_{n}"] = predictions[[f"prob_{c}" for c in cs]].sum(axis=1)
    target = run_dir / name
    target.mkdir(exist_ok=True)
    out.to_csv(target / PREDICTIONS, index=False)
    return write_cv_report(target, out, new_classes,
                           title=f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}, classes merged as {merge}")
