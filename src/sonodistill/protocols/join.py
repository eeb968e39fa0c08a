"""Join the finished folds of runs trained separately (one job or machine a fold: `--set train.fold=K`) into one run
directory, and report them together. Nothing is trained: the runs must share their config (but for the fields a
resume may change) and their folds.json, and no fold may be finished in two of them."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonodistill.config import SEED_DIR_PREFIX, RunConfig, load_config, seed_run_dirs
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.evaluation.run_dir import PREDICTIONS, check_has_cv_estimate
from sonodistill.protocols import get_protocol
from sonodistill.protocols.folds import config_differences, run_protocol, with_resolved_options

log = logging.getLogger(__name__)

RUN_FILES = ("config.yaml", "folds.json", "manifest.csv")  # what each joined run must hold, equal in all


def finished_folds(run_dir: Path) -> list[int]:
    """The folds K of `run_dir` whose RUN/fold_K/predictions.csv exists (written last: the fold is finished)."""
    return sorted(int(p.parent.name.removeprefix("fold_")) for p in run_dir.glob(f"fold_*/{PREDICTIONS}")
                  if p.parent.name.removeprefix("fold_").isdigit())


def _check_run(run_dir: Path) -> None:
    check_has_cv_estimate(run_dir)  # a final-only run (train.cv=false) has no folds
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(f"--join: {run_dir} is not a cross-validation run directory (no {', '.join(missing)})")


def _check_same_config(first: Path, other: Path) -> None:
    """ConfigError unless `other`/config.yaml trains what `first`'s does (outside the fields a resume may change)."""
    diffs = config_differences(with_resolved_options(load_config(first / "config.yaml")),
                               with_resolved_options(load_config(other / "config.yaml")))
    if diffs:
        raise ConfigError(f"--join: {other} trains another config than {first}: " + "; ".join(diffs))


def _check_same_run(first: Path, other: Path) -> None:
    """ConfigError unless `other` trains what `first` trains on the same items (manifest.csv) and the same folds
    (folds.json)."""
    _check_same_config(first, other)
    for name in ("manifest.csv", "folds.json"):
        if (first / name).read_bytes() != (other / name).read_bytes():
            raise ConfigError(f"--join: {other / name} differs from {first / name}: the runs were made over other "
                              "items or another fold split (train.fold_seed), so their folds cannot be joined")


def _merged_timing(folds: dict[int, Path]) -> dict[str, float]:
    """Each joined fold's training seconds, from the timing.json of the run that trained it."""
    timing: dict[str, float] = {}
    for k, src in folds.items():
        file = src / "timing.json"
        seconds = json.loads(file.read_text()).get(str(k)) if file.is_file() else None
        if seconds is not None:
            timing[str(k)] = float(seconds)
    return timing


@dataclass
class JoinPlan:
    """One run to write: `dest`, the run whose files it takes (`first`), each fold's source run, the config."""

    dest: Path
    first: Path
    folds: dict[int, Path]
    cfg: RunConfig


def plan_join(dest: Path, sources: list[Path]) -> JoinPlan:
    """Every check of joining `sources` (one seed's runs) into `dest` (new, or a run of the same config whose
    folds are kept), before anything is written: ConfigError naming the run and the cause."""
    runs = ([dest] if (dest / "config.yaml").is_file() else []) + [s for s in sources if s.resolve() != dest.resolve()]
    for run in runs:
        _check_run(run)
    for run in runs[1:]:
        _check_same_run(runs[0], run)
    folds: dict[int, Path] = {}
    for run in runs:
        for k in finished_folds(run):
            if k in folds:
                raise ConfigError(f"--join: fold {k} is finished in both {folds[k]} and {run}: keep one of them")
            folds[k] = run
    if not folds:
        raise ConfigError(f"--join: no finished fold (fold_K/{PREDICTIONS}) in {', '.join(map(str, runs))}")
    cfg = load_config(runs[0] / "config.yaml", [f"out_dir={dest.parent}", f"name={dest.name}", "train.fold=null",
                                                 "train.threads=0", "train.parallel_folds=1"])
    if not get_protocol(cfg.recipe).cross_validates:
        raise ConfigError(f"--join: {runs[0]} ({cfg.recipe}) trains one model on every item: no folds to join")
    return JoinPlan(dest, runs[0], folds, cfg)


def write_join(plan: JoinPlan) -> dict[str, Any] | None:
    """Copy the planned folds into `plan.dest` and report them (`run_protocol` without training); a failure
    removes a `dest` this call created."""
    created = not plan.dest.exists()
    try:
        _copy_folds(plan.dest, plan.first, plan.folds, _merged_timing(plan.folds))
        return run_protocol(plan.cfg, resume=True, manifest=Manifest.from_csv(plan.dest / "manifest.csv"),
                            fit_missing=False)
    except BaseException:
        if created:  # no half-joined run left behind
            shutil.rmtree(plan.dest, ignore_errors=True)
        raise


def _copy_folds(dest: Path, first: Path, folds: dict[int, Path], timing: dict[str, float]) -> None:
    """`first`'s run files and each fold K from the run that finished it into `dest`, and the merged timing."""
    dest.mkdir(parents=True, exist_ok=True)
    if first != dest:
        for name in RUN_FILES:
            shutil.copy2(first / name, dest / name)
    for k, src in sorted(folds.items()):
        if src != dest:
            if (dest / f"fold_{k}").exists():  # an unfinished fold of dest: the finished one replaces it
                shutil.rmtree(dest / f"fold_{k}")
            shutil.copytree(src / f"fold_{k}", dest / f"fold_{k}", symlinks=True)
            log.info("--join: fold %d from %s", k, src)
    file = dest / "timing.json"
    kept = {k: v for k, v in json.loads(file.read_text()).items() if not k.isdigit()} if file.is_file() else {}
    file.write_text(json.dumps({**dict(sorted(timing.items(), key=lambda kv: int(kv[0]))), **kept}, indent=1))


def join_fold_runs(dest: str | Path, sources: list[str | Path]) -> list[dict[str, Any] | None]:
    """Copy the finished folds of `sources` into `dest` and write its predictions and report over all of them.

    Multi-seed runs (RUN/seed_<s>/, `train --seeds`) are joined seed by seed into DEST/seed_<s>/. `dest` may
    already be a run of the same config (its folds are kept), so folds can be added as they finish. Returns the
    report summary of each joined run (one per seed)."""
    dest, paths = Path(dest), [Path(s) for s in sources]
    if not paths:
        raise ConfigError("--join needs at least one run directory to join")
    for p in paths:
        if not p.is_dir():
            raise ConfigError(f"--join: run directory not found: {p}")
    multi = [bool(seed_run_dirs(p)) for p in paths]
    if any(multi) and not all(multi):
        raise ConfigError("--join: mix of multi-seed runs (RUN/seed_<s>/) and one-seed runs: "
                          + ", ".join(f"{p} ({'seeds' if m else 'one seed'})" for p, m in zip(paths, multi)))
    if not multi[0]:
        return [write_join(plan_join(dest, paths))]
    parents = ([dest] if (dest / "config.yaml").is_file() else []) + paths
    for p in parents:
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"--join: {p} holds seed directories but no config.yaml: not a multi-seed run")
    for p in parents[1:]:
        _check_same_config(parents[0], p)
    seeds = sorted({s for p in paths for s in seed_run_dirs(p)})
    plans = [plan_join(dest / f"{SEED_DIR_PREFIX}{s}", [p / f"{SEED_DIR_PREFIX}{s}" for p in paths
                                                        if (p / f"{SEED_DIR_PREFIX}{s}").is_dir()]) for s in seeds]
    dest.mkdir(parents=True, exist_ok=True)  # every seed checked first: a refusal writes nothing
    if not (dest / "config.yaml").is_file():
        shutil.copy2(paths[0] / "config.yaml", dest / "config.yaml")
    return [write_join(plan) for plan in plans]
