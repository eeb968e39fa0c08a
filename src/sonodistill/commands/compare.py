"""`sonodistill compare RUN_A RUN_B [RUN_C ...]`: paired comparison of runs on identical items and folds.

The first run is the baseline; each later run is compared with it: difference B - A of each metric on the
predictions pooled over folds, its bootstrap interval over groups (patients) and a paired permutation p-value
(`evaluation/paired.py`). Runs whose folds, items, groups or targets differ are refused with what differs.

Seeds: a run directory holding `seed_<s>/predictions.csv` folders has one seed per folder (each may carry its own
folds.json / manifest.csv, else the run's); a predictions.csv with a `seed` column has one seed per value; any
other run has one seed, its config's `train.seed`. Seeds are paired by value (one seed on each side: paired
whatever their values); with several, the last rows average B_s - A_s over the seeds.

Folds: `--folds 0` (or `0,2`) compares the runs on those test folds only, e.g. a run trained on one `--set
train.fold=0` with the same fold of a cross-validated run; a run without predictions on a named fold is refused.

Models: a run whose predictions.csv holds several models in a `model` column (e.g. medivlad's aggregators, trained
on the same folds and features) is named `RUN:MODEL` to compare one of them; naming none is an error that lists them.

Per patient: `--per-group` scores each run per group (its items' probabilities averaged, as `eval --per-group`)
after the item-level checks, for a per-patient label; the bootstrap and permutation then run over those groups.

Subgroups: `--by COLUMN` repeats the comparison within each value of a manifest column (e.g. busi's `label`:
benign / malignant lesions), after the rows on all items; each subgroup's interval resamples its own groups, and
its p-value is not corrected for the number of subgroups.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sonodistill.config import seed_run_dirs
from sonodistill.errors import SonoDistillError
from sonodistill.evaluation.embedding_eval import ANOMALY_OUTCOMES

SEQUENCES = "sequences.csv"  # a sequence run's manifest of sequences (what its folds.json and predictions index)
ANNOTATION_THRESHOLD = 0.5  # binary findings are predicted at this probability (DILBERT's default threshold)
ALL_SEEDS = "mean"
ALL_ITEMS = "all items"  # the subgroup of the rows on every item, with --by


@dataclass
class SeedPredictions:
    """One seed of a run: predictions sorted by (fold, index), and the folds / manifest it was made with."""

    seed: int
    predictions: pd.DataFrame
    folds: list[dict]
    manifest: pd.DataFrame
    classes: list[str]
    source: Path


@dataclass
class ComparedRun:
    """A run directory read for comparison: name, task and its seeds."""

    path: Path
    name: str
    task: str
    seeds: dict[int, SeedPredictions] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- reading
def _read_manifest(path: Path) -> tuple[pd.DataFrame, list[str]]:
    from sonodistill.data.manifest import Manifest

    m = Manifest.from_csv(path)
    return m.table, list(m.classes)


def _task_of(pred: pd.DataFrame, where: Path) -> str:
    if "dice" in pred.columns:
        return "segmentation"
    if set(ANOMALY_OUTCOMES) <= set(pred.columns):  # a DISCOVR run's anomaly detection
        return "anomaly"
    if any(c.startswith("prob_") for c in pred.columns):
        return "classification"
    if any(c.startswith("y_") for c in pred.columns) and any(c.startswith("p_") for c in pred.columns):
        return "annotation"
    raise SonoDistillError(f"{where}: neither prob_<class> columns (classification), dice (segmentation), "
                           "y_<finding> / p_<finding> columns (annotation) nor anomaly scores and calls (anomaly)")


MODEL_COLUMNS = ("model", "variant")  # medivlad's aggregators; DILBERT's baseline / teacher / student


def _select_model(pred: pd.DataFrame, where: Path, model: str | None) -> pd.DataFrame:
    """The rows of `model` (a value of the `model` or `variant` column), without that column; the whole table
    when it has one model."""
    column = next((c for c in MODEL_COLUMNS if c in pred.columns), None)
    if column is None:
        if model is not None:
            raise SonoDistillError(f"{where}: no `model` or `variant` column, so ':{model}' selects nothing; name "
                                   "the run alone")
        return pred
    models = sorted(pred[column].astype(str).unique())
    if model is None:
        if len(models) > 1:
            raise SonoDistillError(f"{where} holds {len(models)} models {models}: compare one of them as RUN:MODEL")
        return pred.drop(columns=column)
    if model not in models:
        raise SonoDistillError(f"{where}: no model {model!r}; it holds {models}")
    return pred[pred[column].astype(str) == model].drop(columns=column)


def _read_seed(folder: Path, run: Path, seed: int, pred: pd.DataFrame | None = None,
               model: str | None = None) -> SeedPredictions:
    """Predictions of one seed from `folder` (of `model` only, if named); folds.json and manifest.csv from `folder`,
    else from `run`."""
    files = {}
    for name in ("folds.json", "manifest.csv"):
        files[name] = folder / name if (folder / name).is_file() else run / name
        if not files[name].is_file():
            raise SonoDistillError(f"{run} is not a complete run directory: {name} is missing")
    for place in (folder, run):  # a sequence run (DILBERT): folds and predictions index its sequences
        if (place / SEQUENCES).is_file():
            files["manifest.csv"] = place / SEQUENCES
            break
    if pred is None:
        if not (folder / "predictions.csv").is_file():
            raise SonoDistillError(f"{folder}: predictions.csv is missing (an unfinished run?)")
        pred = pd.read_csv(folder / "predictions.csv", dtype={"group": str})
    pred = _select_model(pred, folder / "predictions.csv", model)
    missing = [c for c in ("fold", "index") if c not in pred.columns]
    if missing:
        raise SonoDistillError(f"{folder / 'predictions.csv'}: missing column(s) {missing}")
    pred = pred.sort_values(["fold", "index"], kind="mergesort").reset_index(drop=True)
    if pred.duplicated(["fold", "index"]).any():
        raise SonoDistillError(f"{folder / 'predictions.csv'}: an item appears twice in one fold")
    table, classes = _read_manifest(files["manifest.csv"])
    return SeedPredictions(seed, pred, json.loads(files["folds.json"].read_text()), table, classes, folder)


def split_model(path: str | Path) -> tuple[Path, str | None]:
    """`RUN` or `RUN:MODEL` -> (run directory, model or None); a directory named with a colon stays whole."""
    text = str(path)
    if Path(text).is_dir() or ":" not in text:
        return Path(text), None
    run, model = text.rsplit(":", 1)
    return Path(run), model


def read_run(path: str | Path) -> ComparedRun:
    """Read a run directory, or one model of it as `RUN:MODEL` (every seed); SonoDistillError naming a missing
    file."""
    from sonodistill.config import load_config

    run, model = split_model(path)
    if not (run / "config.yaml").is_file():
        raise SonoDistillError(f"{run} is not a run directory: config.yaml is missing")
    seed_dirs = seed_run_dirs(run)
    seeds: dict[int, SeedPredictions] = {}
    if seed_dirs:
        for s, d in seed_dirs.items():
            seeds[s] = _read_seed(d, run, s, model=model)
    else:
        if not (run / "predictions.csv").is_file():
            raise SonoDistillError(f"{run}: predictions.csv is missing (an unfinished run?)")
        pred = pd.read_csv(run / "predictions.csv", dtype={"group": str})
        if "seed" in pred.columns:
            for s, part in pred.groupby("seed", sort=True):
                seeds[int(s)] = _read_seed(run, run, int(s), part.drop(columns="seed"), model)
        else:
            seed = int(load_config(run / "config.yaml").train.seed)
            seeds[seed] = _read_seed(run, run, seed, pred, model)
    tasks = {_task_of(s.predictions, s.source) for s in seeds.values()}
    if len(tasks) != 1:
        raise SonoDistillError(f"{run}: seeds of different tasks {sorted(tasks)}")
    name = run.resolve().name + (f":{model}" if model is not None else "")
    return ComparedRun(run, name, tasks.pop(), seeds)


def restrict_folds(run: ComparedRun, folds: list[int]) -> None:
    """Keep only test folds `folds` of every seed of `run` (predictions and folds.json) in place; SonoDistillError
    naming a fold the run has no predictions on or does not define."""
    wanted = sorted(set(int(k) for k in folds))
    for s in run.seeds.values():
        defined = {int(f["fold"]) for f in s.folds}
        predicted = set(s.predictions["fold"].astype(int))
        for k in wanted:
            if k not in defined:
                raise SonoDistillError(f"--folds: {run.path} has no fold {k} (its folds.json defines {sorted(defined)})")
            if k not in predicted:
                raise SonoDistillError(f"--folds: {s.source / 'predictions.csv'} has no predictions on fold {k} "
                                       f"(predicted folds: {sorted(predicted)})")
        keep = s.predictions["fold"].astype(int).isin(wanted).to_numpy()
        s.predictions = s.predictions[keep].reset_index(drop=True)
        s.folds = [f for f in s.folds if int(f["fold"]) in wanted]


def read_item_list(path: str | Path) -> set[str]:
    """The item paths listed in `path`: a CSV with a `path` column (e.g. a run's predictions.csv), else one path a
    line ('#' comments and blank lines skipped); SonoDistillError when the file is missing or lists nothing."""
    path = Path(path)
    if not path.is_file():
        raise SonoDistillError(f"--exclude-items: file not found: {path}")
    from sonodistill.data.user_csv import header_separator

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SonoDistillError(f"--exclude-items: {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8") \
            from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    sep = header_separator(lines[0]) if lines else ","
    if lines and "path" in [c.strip() for c in lines[0].split(sep)]:
        lines = pd.read_csv(path, comment="#", sep=sep, encoding="utf-8-sig")["path"].dropna().astype(str).tolist()
    if not lines:
        raise SonoDistillError(f"--exclude-items: {path} lists no item path")
    return {os.path.normpath(ln) for ln in lines}


def exclude_items(run: ComparedRun, paths: set[str]) -> int:
    """Drop every seed's predictions of the items whose manifest path is in `paths`, in place; returns how many of
    the first seed's scored items were dropped. SonoDistillError when the manifest has no path column or nothing
    is left."""
    dropped = []
    for s in run.seeds.values():
        if "path" not in s.manifest.columns:
            raise SonoDistillError(f"--exclude-items: {s.source}'s items have no path column to match")
        item_paths = s.manifest["path"].astype(str).map(os.path.normpath).to_numpy()
        drop = np.isin(item_paths[s.predictions["index"].to_numpy(np.int64)], sorted(paths))
        if drop.all():
            raise SonoDistillError(f"--exclude-items leaves no scored item of {s.source}")
        s.predictions = s.predictions[~drop].reset_index(drop=True)
        dropped.append(int(drop.sum()))
    return dropped[0]


MAX_SUBGROUPS = 12  # more values than this: an identifier or a number, not a subgroup column


def subgroup_values(run: ComparedRun, column: str) -> list[str]:
    """The values of manifest column `column` over the items `run` scored (first seed), sorted; SonoDistillError
    when the column is missing or has more than MAX_SUBGROUPS values."""
    first = next(iter(run.seeds.values()))
    if column not in first.manifest.columns:
        raise SonoDistillError(f"--by {column}: {first.source}'s items have no {column!r} column; they have "
                               f"{list(first.manifest.columns)}")
    scored = first.manifest[column].astype(str).to_numpy()[first.predictions["index"].to_numpy(np.int64)]
    values = sorted(set(scored))
    if len(values) > MAX_SUBGROUPS:
        raise SonoDistillError(f"--by {column}: {len(values)} different values over the scored items (at most "
                               f"{MAX_SUBGROUPS}): an identifier or a number, not a subgroup column")
    return values


def subgroup_of(run: ComparedRun, column: str, value: str) -> ComparedRun:
    """A copy of `run` whose seeds keep only the predictions of items with manifest `column` == `value`;
    SonoDistillError naming a seed that scored none of them."""
    seeds = {}
    for key, s in run.seeds.items():
        if column not in s.manifest.columns:
            raise SonoDistillError(f"--by {column}: {s.source}'s items have no {column!r} column")
        item_values = s.manifest[column].astype(str).to_numpy()
        keep = item_values[s.predictions["index"].to_numpy(np.int64)] == value
        if not keep.any():
            raise SonoDistillError(f"--by {column}: {s.source} scored no item with {column} = {value!r}")
        seeds[key] = replace(s, predictions=s.predictions[keep].reset_index(drop=True))
    return replace(run, seeds=seeds)


# ------------------------------------------------------------------------------------------- checks
def _relative(paths: pd.Series) -> list[str]:
    """Paths relative to their common folder, so the same data under another root compares equal."""
    values = ["" if pd.isna(p) else str(p) for p in paths]
    real = [v for v in values if v]
    if not real:
        return values
    root = os.path.commonpath(real) if len(real) > 1 else str(Path(real[0]).parent)
    if root in real:  # one file: its folder
        root = str(Path(root).parent)
    return [os.path.relpath(v, root) if v else "" for v in values]


def _first_difference(a: list, b: list) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} rows"
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    n = sum(x != y for x, y in zip(a, b))
    return f"{n} row(s) differ, first row {i}: {a[i]!r} vs {b[i]!r}"


def comparability_problems(a: SeedPredictions, b: SeedPredictions, task_a: str, task_b: str) -> list[str]:
    """What differs between two runs' items, targets, folds and predicted items (empty: comparable)."""
    problems: list[str] = []
    if task_a != task_b:
        return [f"tasks differ: {task_a} vs {task_b}"]
    ta, tb = a.manifest, b.manifest
    if len(ta) != len(tb):
        return [f"items differ: the manifests have {len(ta)} vs {len(tb)} rows"]
    for col, what in (("path", "items (manifest paths)"), ("mask", "targets (masks)")):
        if (col in ta.columns) != (col in tb.columns):
            problems.append(f"{what}: only one manifest has a '{col}' column")
        elif col in ta.columns and _relative(ta[col]) != _relative(tb[col]):
            problems.append(f"{what} differ: {_first_difference(_relative(ta[col]), _relative(tb[col]))}")
    ga, gb = ta["group"].astype(str).tolist(), tb["group"].astype(str).tolist()
    if ga != gb:
        problems.append(f"groups differ: {_first_difference(ga, gb)}")
    if a.classes != b.classes:
        problems.append(f"classes differ: {a.classes} vs {b.classes}")
    for col in ("label", "target"):
        if col in ta.columns or col in tb.columns:
            la = ta[col].astype(str).tolist() if col in ta.columns else []
            lb = tb[col].astype(str).tolist() if col in tb.columns else []
            if la != lb:
                problems.append(f"targets ('{col}') differ: {_first_difference(la, lb)}")
    fa = {int(f["fold"]): (sorted(f["train"]), sorted(f["test"])) for f in a.folds}
    fb = {int(f["fold"]): (sorted(f["train"]), sorted(f["test"])) for f in b.folds}
    if sorted(fa) != sorted(fb):
        problems.append(f"folds differ: folds {sorted(fa)} vs {sorted(fb)}")
    else:
        for k in sorted(fa):
            if fa[k][1] != fb[k][1]:
                only_a, only_b = set(fa[k][1]) - set(fb[k][1]), set(fb[k][1]) - set(fa[k][1])
                problems.append(f"folds differ: fold {k} test rows differ ({len(only_a)} only in the first, "
                                f"{len(only_b)} only in the second, e.g. row {sorted(only_a | only_b)[0]})")
            elif fa[k][0] != fb[k][0]:
                problems.append(f"folds differ: fold {k} training rows differ")
    if not problems:
        ka = list(zip(a.predictions["fold"], a.predictions["index"]))
        kb = list(zip(b.predictions["fold"], b.predictions["index"]))
        if ka != kb:
            problems.append(f"predicted items differ ((fold, manifest row) pairs): {_first_difference(ka, kb)}; "
                            "was one run trained on a single --fold?")
        elif "y_true" in a.predictions.columns and "y_true" in b.predictions.columns and \
                a.predictions["y_true"].tolist() != b.predictions["y_true"].tolist():
            problems.append("targets differ: y_true of predictions.csv")
        elif "is_anomalous" in a.predictions.columns and \
                a.predictions["is_anomalous"].tolist() != b.predictions["is_anomalous"].tolist():
            problems.append("targets differ: is_anomalous of predictions.csv (another normal_label?)")
    return problems


def pair_seeds(a: ComparedRun, b: ComparedRun) -> list[tuple[SeedPredictions, SeedPredictions]]:
    """Seeds paired by value; one seed on each side pairs whatever the values; otherwise they must match."""
    if len(a.seeds) == 1 and len(b.seeds) == 1:
        return [(next(iter(a.seeds.values())), next(iter(b.seeds.values())))]
    if sorted(a.seeds) != sorted(b.seeds):
        raise SonoDistillError(f"cannot compare {b.path} with {a.path}: seeds differ: {sorted(b.seeds)} vs "
                               f"{sorted(a.seeds)}")
    return [(a.seeds[s], b.seeds[s]) for s in sorted(a.seeds)]


def check_comparable(a: ComparedRun, b: ComparedRun) -> list[tuple[SeedPredictions, SeedPredictions]]:
    """The seed pairs of two runs, after checking every pair; SonoDistillError listing what differs."""
    pairs = pair_seeds(a, b)
    for sa, sb in pairs:
        problems = comparability_problems(sa, sb, a.task, b.task)
        if problems:
            raise SonoDistillError(f"cannot compare {b.path} with {a.path} (not the same items and folds):\n  - "
                                   + "\n  - ".join(problems))
    return pairs


def seeds_score_the_same_items(seeds: list[SeedPredictions]) -> bool:
    """Whether every seed predicted the same items in the same rows: the seed-averaged difference pairs row k of
    each seed. Seeds trained on other fold splits (`train.fold_seed` = the seed) score other items: no average."""
    first = seeds[0].predictions["index"].to_numpy()
    return all(np.array_equal(s.predictions["index"].to_numpy(), first) for s in seeds[1:])


# ------------------------------------------------------------------------------------------- statistics
def _metric_data(run: SeedPredictions, task: str, metrics: list[str]) -> np.ndarray:
    """Per-item model output N x D: class probabilities (classification), outcomes [known | true | predicted] per
    finding (annotation), [is anomalous | called anomalous | score] (anomaly) or metric values (segmentation)."""
    if task == "annotation":
        from sonodistill.evaluation.annotation import outcome_matrix

        return outcome_matrix(run.predictions, ANNOTATION_THRESHOLD)[1]
    if task == "anomaly":
        return run.predictions[ANOMALY_OUTCOMES].to_numpy(np.float64)
    if task == "classification":
        from sonodistill.evaluation.report import prob_columns

        missing = [c for c in prob_columns(run.classes) if c not in run.predictions.columns]
        if missing:
            raise SonoDistillError(f"{run.source / 'predictions.csv'}: missing column(s) {missing}")
        return run.predictions[prob_columns(run.classes)].to_numpy(np.float64)
    return run.predictions[metrics].to_numpy(np.float64)


def default_metrics(task: str, runs: list[ComparedRun]) -> list[str]:
    """The task's metrics present in every run (segmentation: HC error only where every run has it)."""
    from sonodistill.evaluation.paired import CLASSIFICATION_METRICS, SEGMENTATION_METRICS

    if task == "classification":
        return list(CLASSIFICATION_METRICS)
    if task == "annotation":
        from sonodistill.evaluation.paired import ANNOTATION_METRICS

        return list(ANNOTATION_METRICS)
    if task == "anomaly":
        from sonodistill.evaluation.paired import ANOMALY_METRICS

        return list(ANOMALY_METRICS)
    return [m for m in SEGMENTATION_METRICS
            if all(m in s.predictions.columns for r in runs for s in r.seeds.values())]


def merge_run_classes(run: ComparedRun, merge: dict[str, list[str]]) -> None:
    """Merge a classification run's classes in place (probabilities summed, e.g. severity 0 / 1-2 / 3)."""
    from sonodistill.evaluation.run_dir import merge_classes

    if run.task != "classification":
        raise SonoDistillError(f"--merge: {run.path} is a {run.task} run; classes merge only in classification")
    for s in run.seeds.values():
        s.predictions, s.classes = merge_classes(s.predictions, s.classes, merge)


def per_group_run(run: ComparedRun) -> None:
    """Each seed of a classification run scored per group (patient), in place: a row a (fold, group), its items'
    probabilities averaged (`evaluation.per_group`, as `eval --per-group`), its manifest one row a group (sorted:
    `index`); the item-level comparability checks run before this."""
    from sonodistill.errors import ConfigError
    from sonodistill.evaluation.per_group import per_group_predictions

    if run.task != "classification":
        raise SonoDistillError(f"--per-group: {run.path} is a {run.task} run; probabilities are averaged per group "
                               "for classification only")
    for s in run.seeds.values():
        pred = s.predictions.copy()
        pred["group"] = s.manifest["group"].astype(str).to_numpy()[pred["index"].to_numpy(np.int64)]
        try:
            out = per_group_predictions(pred)
        except ConfigError as exc:
            raise SonoDistillError(f"--per-group: {s.source / 'predictions.csv'}: {exc}") from exc
        names = sorted(set(s.manifest["group"].astype(str)))
        out["index"] = out["group"].map({g: i for i, g in enumerate(names)})
        s.predictions = out.sort_values(["fold", "index"], kind="mergesort").reset_index(drop=True)
        s.manifest = pd.DataFrame({"group": names})


def distinct_names(runs: list[ComparedRun]) -> list[ComparedRun]:
    """Runs whose folder names collide (seed folders `a/seed_0` and `b/seed_0`, a run and its rescored copy) named
    by as many trailing path parts as tell them apart, `" (2)"` ... added for the same folder given twice; the
    tables and the plot key their rows by these names."""
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.name, []).append(i)
    for name, members in groups.items():
        if len(members) < 2:
            continue
        parts = [runs[i].path.resolve().parts for i in members]
        suffix = name[len(parts[0][-1]):]  # ":MODEL", the same for the whole group
        distinct = len(set(parts))
        for k in range(2, max(len(p) for p in parts) + 1):
            longer = ["/".join(p[-k:]) + suffix for p in parts]
            if len(set(longer)) == distinct:
                break
        seen: dict[str, int] = {}
        for i, new in zip(members, longer):
            seen[new] = seen.get(new, 0) + 1
            runs[i].name = new if seen[new] == 1 else f"{new} ({seen[new]})"
    return runs


def compare_runs(paths: list[str | Path], metrics: list[str] | None = None, n_resamples: int = 2000,
                 n_permutations: int = 2000, level: float = 0.95, seed: int = 0,
                 merge: dict[str, list[str]] | None = None, folds: list[int] | None = None,
                 exclude: set[str] | None = None, by: str | None = None,
                 per_group: bool = False) -> tuple[list[ComparedRun], pd.DataFrame]:
    """Compare every run with the first; one row per (run, seed, metric) plus seed 'mean' rows with >1 seed.
    `by` (a manifest column) adds a `subgroup` column: the rows on all items (ALL_ITEMS), then the same rows within
    each of the column's values. `per_group` compares classification runs scored per group (patient), each group's
    items' probabilities averaged (`per_group_run`), after the item-level checks.

    `merge` ({new: [old, ...]}) re-scores classification runs with classes merged before comparing; `folds` keeps
    only those test folds of every run; `exclude` (item paths) drops those items from every run (SonoDistillError
    when none of them is a scored item of the baseline: another data root?)."""
    from sonodistill.evaluation.paired import ALL_CLASSIFICATION_METRICS, ANNOTATION_METRICS, ANOMALY_METRICS

    if len(paths) < 2:
        raise SonoDistillError("compare needs at least two run directories (the first is the baseline)")
    if per_group and by is not None:
        raise SonoDistillError("--per-group and --by: a subgroup is a column of the items, a group's items may differ "
                               "in it; compare per group without --by")
    runs = distinct_names([read_run(p) for p in paths])
    if folds is not None:
        if not folds:
            raise SonoDistillError("--folds names no fold")
        for run in runs:
            restrict_folds(run, folds)
    if exclude is not None:
        dropped = [exclude_items(run, exclude) for run in runs]
        if dropped[0] == 0:
            raise SonoDistillError(f"--exclude-items: none of the {len(exclude)} listed paths is a scored item of "
                                   f"{runs[0].path} (paths are matched exactly: another data root?)")
    if merge:
        for run in runs:
            merge_run_classes(run, merge)
    base = runs[0]
    pairs_per_run = [check_comparable(base, r) for r in runs[1:]]
    if per_group:
        for run in runs:
            per_group_run(run)
        pairs_per_run = [check_comparable(base, r) for r in runs[1:]]
    metrics = list(metrics) if metrics else default_metrics(base.task, runs)
    known = {"classification": ALL_CLASSIFICATION_METRICS, "annotation": ANNOTATION_METRICS,
             "anomaly": ANOMALY_METRICS}.get(base.task)
    unknown = [m for m in metrics if m not in known] if known else []
    if unknown:
        raise SonoDistillError(f"unknown {base.task} metric(s) {unknown}; known: {list(known)}")
    if base.task == "segmentation":
        absent = [m for m in metrics for r in runs for s in r.seeds.values() if m not in s.predictions.columns]
        if absent:
            raise SonoDistillError(f"metric(s) {sorted(set(absent))} are not in every run's predictions.csv")
    values = subgroup_values(base, by) if by is not None else []
    rows = comparison_rows(base, list(zip(runs[1:], pairs_per_run)), metrics, n_resamples, n_permutations, level,
                           seed)
    if by is not None:
        rows = [{"subgroup": ALL_ITEMS, **r} for r in rows]
        for value in values:
            parts = [subgroup_of(run, by, value) for run in runs]
            pairs = [check_comparable(parts[0], part) for part in parts[1:]]
            rows += [{"subgroup": value, **r} for r in comparison_rows(parts[0], list(zip(parts[1:], pairs)),
                                                                       metrics, n_resamples, n_permutations,
                                                                       level, seed)]
    return runs, pd.DataFrame(rows)


SeedPairs = list[tuple[SeedPredictions, SeedPredictions]]


def comparison_rows(base: ComparedRun, compared: list[tuple[ComparedRun, SeedPairs]], metrics: list[str],
                    n_resamples: int, n_permutations: int, level: float, seed: int) -> list[dict]:
    """One row per (run, seed, metric) of each compared run against `base`, from its checked seed pairs; plus
    seed 'mean' rows where several seeds scored the same items."""
    from sonodistill.evaluation.paired import (annotation_scorer, anomaly_scorer, classification_scorer, mean_scorer,
                                               paired_comparison)

    def scorer_of(seed_predictions: SeedPredictions, data: np.ndarray):  # -> the task's scorer of these items
        if base.task == "classification":
            return classification_scorer(seed_predictions.predictions["y_true"].to_numpy(np.int64),
                                         len(seed_predictions.classes), metrics)
        if base.task == "annotation":
            return annotation_scorer(data.shape[1] // 3, metrics)  # outcomes N x 3F
        return anomaly_scorer(metrics) if base.task == "anomaly" else mean_scorer(metrics)

    rows = []
    for run, pairs in compared:
        a = [_metric_data(sa, base.task, metrics) for sa, _ in pairs]
        b = [_metric_data(sb, base.task, metrics) for _, sb in pairs]
        scorers = [scorer_of(sa, data) for (sa, _), data in zip(pairs, a)]
        groups = [sa.manifest["group"].astype(str).to_numpy()[sa.predictions["index"].to_numpy(np.int64)]
                  for sa, _ in pairs]  # per seed: seeds on other fold splits scored other items
        blocks = [([i], f"{sa.seed}" if sa.seed == sb.seed else f"{sa.seed}/{sb.seed}") for i, (sa, sb) in
                  enumerate(pairs)]
        if len(pairs) > 1 and seeds_score_the_same_items([sa for sa, _ in pairs]):
            blocks.append((list(range(len(pairs))), ALL_SEEDS))
        for idx, label in blocks:
            for r in paired_comparison(scorers[idx[0]], [a[i] for i in idx], [b[i] for i in idx], groups[idx[0]],
                                       n_resamples, n_permutations, level, seed):
                rows.append({"baseline": base.name, "run": run.name, "seed": label, **r.as_dict()})
    return rows


# ------------------------------------------------------------------------------------------- output
def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def comparison_markdown(runs: list[ComparedRun], table: pd.DataFrame, n_resamples: int, level: float,
                        seed: int, merge: dict[str, list[str]] | None = None, note: str = "",
                        by: str | None = None) -> str:
    """The report: one table per compared run (rows metric x seed, and subgroup with `by`), with the method
    paragraph (and `note`)."""
    base = runs[0]
    first = next(iter(base.seeds.values()))
    fold_ids = sorted(int(k) for k in first.predictions["fold"].unique())
    n_folds = f"{len(fold_ids)} fold{'s' if len(fold_ids) > 1 else ''} ({', '.join(map(str, fold_ids))})"
    r0 = table.iloc[0]
    seeds = f" Seed '{ALL_SEEDS}': the difference averaged over seeds." if (table["seed"] == ALL_SEEDS).any() else ""
    if not seeds and len(seed_labels := set(table["seed"])) > 1:
        seeds = (f" The {len(seed_labels)} seeds scored different items (other fold splits: `train.fold_seed`), so "
                 "there is no seed-averaged row.")
    perm = (f"all {int(r0['n_permutations'])} swaps (exact)" if bool(r0["exact"])
            else f"{int(r0['n_permutations'])} random swaps, p = (1 + k) / (1 + swaps)")
    merged = f" Classes merged: {merge}." if merge else ""
    subgroups = (f" Subgroups by the manifest's `{by}` (items in brackets): each compared within itself, its groups "
                 "resampled within it; the p-values are not corrected for the number of subgroups." if by else "")
    lines = [f"# Paired comparison with {base.name} (baseline)\n",
             f"Every run scored on the same {int(r0['n_items'])} items of {int(r0['n_groups'])} groups in {n_folds}, "
             f"{base.task}. Difference = run − baseline, each metric computed on the predictions pooled "
             f"over folds. {100 * level:g} % interval: percentile bootstrap over groups ({n_resamples} resamples, "
             f"seed {seed}; the same resamples for both runs). p: two-sided paired permutation test swapping the "
             f"two runs' predictions per group ({perm}). Pooled values can differ from the CV report's means over "
             f"folds.{seeds}{merged}{subgroups}{' ' + note if note else ''}\n"]
    with_subgroups = "subgroup" in table.columns
    for run_name, part in table.groupby("run", sort=False):
        lines.append(f"## {run_name} − {base.name}\n")
        first = f"| {by} (items) " if with_subgroups else ""
        lines.append(f"{first}| metric | seed | {base.name} | {run_name} | difference | {100 * level:g} % interval "
                     "| p |")
        lines.append(("|---" if with_subgroups else "") + "|---|---|---:|---:|---:|:---:|---:|")
        for _, r in part.iterrows():
            first = f"| {r['subgroup']} ({int(r['n_items'])}) " if with_subgroups else ""
            lines.append(f"{first}| {r['metric']} | {r['seed']} | {_fmt(r['baseline'])} | {_fmt(r['other'])} | "
                         f"{_fmt(r['difference'])} | [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | "
                         f"{_fmt_p(r['p_value'])} |")
        lines.append("")
    lines.append("![difference with interval per metric](comparison.png)\n")
    return "\n".join(lines)


def plot_comparison(table: pd.DataFrame, baseline: str, path: Path, level: float) -> None:
    """Horizontal error bars: difference and interval per metric (one colour per run; seed 'mean' or the only seed;
    one colour per run and seed where the seeds scored different items; all items only, with subgroups)."""
    from sonodistill.evaluation.report import _new_figure

    if "subgroup" in table.columns:  # --by: the rows on all items
        table = table[table["subgroup"] == ALL_ITEMS]
    seeds = set(table["seed"])
    if ALL_SEEDS in seeds:
        rows = table[table["seed"] == ALL_SEEDS]
    elif len(seeds) > 1:
        rows = table.assign(run=[f"{r} (seed {s})" for r, s in zip(table["run"], table["seed"])])
    else:
        rows = table
    metrics = list(dict.fromkeys(rows["metric"]))
    names = list(dict.fromkeys(rows["run"]))
    fig = _new_figure(6.5, 1.0 + 0.55 * len(metrics) * max(1, len(names)))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        part = rows[rows["run"] == name].set_index("metric").loc[metrics]
        y = np.arange(len(metrics)) + (j - (len(names) - 1) / 2) * height
        d = part["difference"].to_numpy(float)
        err = np.vstack([d - part["ci_low"].to_numpy(float), part["ci_high"].to_numpy(float) - d])
        # clipped: a difference that is the same in every resample has bounds one rounding away from it (and a
        # percentile interval of a non-linear metric such as ECE need not hold the observed value)
        ax.errorbar(d, y, xerr=np.clip(np.nan_to_num(err), 0.0, None), fmt="o", capsize=4,
                    label=f"{name} − {baseline}")
    ax.axvline(0.0, color="grey", lw=1, ls="--")
    ax.set_yticks(np.arange(len(metrics)), metrics)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference (run − {baseline}), {100 * level:g} % bootstrap interval over groups")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def write_comparison(runs: list[ComparedRun], table: pd.DataFrame, out: Path, n_resamples: int, level: float,
                     seed: int, merge: dict[str, list[str]] | None = None, note: str = "",
                     by: str | None = None) -> str:
    """comparison.md, comparison.csv and comparison.png into `out`; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = comparison_markdown(runs, table, n_resamples, level, seed, merge, note, by)
    (out / "comparison.md").write_text(text, encoding="utf-8")
    table.to_csv(out / "comparison.csv", index=False)
    plot_comparison(table, runs[0].name, out / "comparison.png", level)
    return text


def software_note(runs: list[ComparedRun], most: int = 6) -> str:
    """A sentence on the software the compared folds were trained with (each `fold_K/environment.json`, written
    since session 26): the same, or which folds differ from the baseline's first fold in code or library versions
    (a result that moves between two such runs may be the software, not the method)."""
    from sonodistill.provenance import environment_differences, read_environment

    records = [(f"{run.name} seed {s.seed} {d.name}", read_environment(d))
               for run in runs for s in run.seeds.values() for d in sorted(s.source.glob("fold_*"))]
    known = [(where, r) for where, r in records if r is not None]
    unknown = len(records) - len(known)
    missing = f" {unknown} of {len(records)} folds record no software environment." if unknown else ""
    if not known:
        return "Software: no compared fold records its environment (trained before it was recorded)."
    reference_where, reference = known[0]
    differing = [(where, diff) for where, r in known[1:] if (diff := environment_differences(reference, r))]
    if not differing:
        return f"Software: every recorded fold was trained with the same code and library versions.{missing}"
    shown = "; ".join(f"{where}: {', '.join(diff)}" for where, diff in differing[:most])
    more = f" (and {len(differing) - most} more folds)" if len(differing) > most else ""
    return (f"**Software differs** from {reference_where}'s (code or library versions, fold_K/environment.json): "
            f"{shown}{more}.{missing}")


def _compare(args: argparse.Namespace) -> int:
    from sonodistill.evaluation.run_dir import parse_merge

    metrics = [m for m in args.metrics.split(",") if m] if args.metrics else None
    merge = parse_merge(args.merge) if args.merge else None
    folds = None
    if args.folds is not None:
        try:
            folds = [int(k) for k in args.folds.split(",") if k.strip()]
        except ValueError:
            raise SonoDistillError(f"--folds takes comma-separated fold numbers, got {args.folds!r}") from None
    exclude = read_item_list(args.exclude_items) if args.exclude_items else None
    runs, table = compare_runs(args.runs, metrics, args.resamples, args.permutations, args.level, args.seed, merge,
                               folds, exclude, args.by, args.per_group)
    out = Path(args.out) if args.out else runs[0].path.parent / (
        "compare-" + "-vs-".join(re.sub(r"[:/ ()]+", "-", r.name).strip("-") for r in runs)
        + ("-merged" if merge else "") + ("-per-group" if args.per_group else ""))
    note = (f"Items excluded: those listed in `{args.exclude_items}` ({len(exclude)} paths; --exclude-items). "
            if exclude else "")
    note += ("Scored per group (--per-group): an item here is a group (patient), its videos' probabilities "
             "averaged, as `eval --per-group`. " if args.per_group else "") + software_note(runs)
    text = write_comparison(runs, table, out, args.resamples, args.level, args.seed, merge, note, args.by)
    print(text)
    print(f"written: {out / 'comparison.md'}, comparison.csv, comparison.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="paired comparison of runs on the same items and folds (first = baseline): "
                                       "difference, bootstrap interval over groups, permutation p-value")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (RUN:MODEL: one model of a run that "
                                                          "holds several); the first is the baseline")
    p.add_argument("--out", help="output folder (default: RUN_A's parent/compare-A-vs-B)")
    p.add_argument("--metrics", help="comma-separated metrics (default: classification accuracy, "
                                     "balanced_accuracy, f1, roc_auc; segmentation dice, iou, hc_abs_err_mm)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of groups (default 2000)")
    p.add_argument("--permutations", type=int, default=2000,
                   help="random group swaps of the permutation test; all 2^G when that is fewer (default 2000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--merge", action="append", metavar="NEW=OLD1,OLD2",
                   help="classification: merge classes before comparing (probabilities summed), as in `eval --merge`; "
                        "repeat for each new class")
    p.add_argument("--folds", metavar="K[,K...]",
                   help="compare on these test folds only (e.g. a run trained on one fold with that fold of a "
                        "cross-validated run)")
    p.add_argument("--exclude-items", metavar="FILE",
                   help="leave out the items whose paths FILE lists (one a line, or a CSV with a path column, e.g. "
                        "the predictions.csv of the validation runs that chose a setting) from every run")
    p.add_argument("--by", metavar="COLUMN",
                   help="also compare within each value of this manifest column (e.g. label: busi's benign and "
                        "malignant lesions), after the rows on all items")
    p.add_argument("--per-group", action="store_true",
                   help="classification: compare per group (patient), each group's items' probabilities averaged "
                        "as in `eval --per-group` (a per-patient label such as lus-blues covid)")
    p.set_defaults(func=_compare)
