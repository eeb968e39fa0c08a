"""`sonodistill score PREDICTIONS.json --labels FILE`: score `sonodistill predict`'s output against labels.

The labels file is a CSV (as spreadsheets save it: `data/user_csv.py`) with one row per labelled input:
- the input: column `path`, `input` or `file` (a path, relative to the labels file's folder or the current one, or
  just the file name);
- classification: `label` (a class of the model, or of the merged classes with `--merge`);
- segmentation: `mask` (mask image, same size as the input), optional `pixel_size_mm` (hd95/asd in mm, else
  pixels) and `hc_mm` (head circumference; needs `pixel_size_mm`);
- optional `group` (patient / subject): intervals resample groups instead of items; with `--per-group` a
  classifier is scored one row a group, its inputs' probabilities averaged (a per-patient label, e.g. COVID).
  With `--per-group` the labels may instead be one row a patient (`group`, `label`, no input column): they are then
  matched to the `groups` of `predict --per-group` by name (the full name, or its last part where that is unique).
A labelled input that is a folder (a patient's export, as the csv adapter reads it) stands for every video or image
below it, each with the row's label; without a `group` column the folder is their group. One patients table
(`path,label`, a folder a row) then trains (`--data csv:...`) and scores (`score --per-group`).

The same metrics, tables and plots as the cross-validation report (`evaluation/report.py`, `metrics.py`), each
metric with its bootstrap interval (`evaluation/paired.py`). Labelled inputs without a prediction, and
predictions that failed or cannot be scored, are counted and listed in the report; the command then exits 1.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sonodistill.errors import ConfigError, DataError, SonoDistillError

INPUT_COLUMNS = ("path", "input", "file")
DATA_URI = "data:image/png;base64,"


@dataclass
class Matched:
    """Labelled rows with a usable prediction, and the ones without (reason per input)."""

    pairs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (labels row, result)
    missing: list[str] = field(default_factory=list)  # labelled inputs with no prediction
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    unlabelled: list[str] = field(default_factory=list)  # predictions with no label row


# ------------------------------------------------------------------------------------------- reading
def read_predictions_json(path: str | Path) -> dict[str, Any]:
    """`sonodistill predict`'s JSON: {"model": {...}, "results": [...]}; DataError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found")
    try:
        payload = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(p, f"invalid JSON ({exc})") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), list) or "model" not in payload:
        raise DataError(p, "not the output of `sonodistill predict` (expected keys 'model' and 'results')")
    for i, r in enumerate(payload["results"]):
        if not isinstance(r, dict) or "input" not in r:
            raise DataError(p, f"results[{i}] has no 'input'")
    return payload


def read_labels(path: str | Path, patients: bool = False) -> tuple[pd.DataFrame, str]:
    """The labels CSV and the name of its input column; with `patients` (score --per-group), a table of groups
    (`group`, `label`, no input column) is read too, its column 'group'."""
    from sonodistill.evaluation.report import read_csv_file

    p = Path(path)
    table = read_csv_file(p, {"label": str, "group": str}, "file not found")
    column = next((c for c in INPUT_COLUMNS if c in table.columns), None)
    if column is None and patients and "group" in table.columns:
        column = "group"
    if column is None:
        raise DataError(p, f"no input column: expected one of {list(INPUT_COLUMNS)}"
                           f"{' (or a group column: one row a patient)' if patients else ''}; "
                           f"found {list(table.columns)}")
    if len(table) == 0:
        raise DataError(p, "no rows")
    empty = np.flatnonzero(table[column].isna().to_numpy())
    if empty.size:
        raise DataError(p, f"row {empty[0]}: empty '{column}'")
    dup = np.flatnonzero(table[column].astype(str).duplicated().to_numpy())
    if dup.size:
        raise DataError(p, f"row {dup[0]}: input {table[column].iloc[dup[0]]!r} is labelled twice")
    return table.reset_index(drop=True), column


def expand_folder_labels(table: pd.DataFrame, column: str, folders: list[Path]) -> pd.DataFrame:
    """Label rows that name a folder (a patient's export, as the csv adapter reads them) become one row a supported
    file below it (`expand_folder_rows`), with the row's label and other columns; without a `group` column the folder
    is its files' group (a file row: its own). A folder without a supported file is a DataError naming it; a file
    labelled twice (by a file row and a folder row, or two folder rows) too."""
    from sonodistill.data.folder_rows import expand_folder_rows

    dirs = [next((Path(k) for k in sorted(_candidates(str(v), folders)) if Path(k).is_dir()), None)
            for v in table[column].astype(str)]
    if not any(dirs):
        return table
    own_group = "group" not in table.columns
    if own_group:
        table = table.assign(group=table[column].astype(str))
    out = expand_folder_rows(table, column, dirs, folder_group="group" if own_group else None)
    values = out[column].tolist()
    twice = pd.Series([os.path.realpath(_existing(v, folders)) for v in values]).duplicated()
    if twice.any():
        raise DataError(values[int(np.flatnonzero(twice.to_numpy())[0])], "labelled twice (a file row and a folder "
                                                                          "row holding it, or two folder rows)")
    return out


def _candidates(value: str, folders: list[Path]) -> set[str]:
    """The absolute paths `value` may name: itself if absolute, else below each of `folders`; a path written on
    Windows also with `/` (`data.user_csv.forward_slashes`)."""
    from sonodistill.data.user_csv import forward_slashes

    out: set[str] = set()
    for text in {value, forward_slashes(value)}:
        p = Path(text)
        out |= {str(p.resolve())} if p.is_absolute() else {str((f / p).resolve()) for f in folders}
    return out


def _file_name(value: str) -> str:
    """The file name of a labels cell, a path written on Windows included (`exports\\p3\\IM1` -> `IM1`)."""
    from sonodistill.data.user_csv import forward_slashes

    return Path(forward_slashes(value)).name


def match_predictions(labels: pd.DataFrame, column: str, results: list[dict[str, Any]], labels_dir: Path,
                      predictions_dir: Path) -> Matched:
    """Pair label rows with results by resolved path, then by file name where that name is unique on both sides."""
    cwd = Path.cwd()
    by_path: dict[str, int] = {}
    seen: set[str] = set()
    for i, r in enumerate(results):
        name = str(r["input"])
        if name in seen:
            raise SonoDistillError(f"input {name!r} appears twice in the predictions")
        seen.add(name)
        for key in _candidates(name, [cwd, predictions_dir]):
            by_path.setdefault(key, i)
    values = labels[column].astype(str).tolist()
    chosen: dict[int, int] = {}
    for row, v in enumerate(values):
        hits = {by_path[k] for k in _candidates(v, [labels_dir, cwd]) if k in by_path}
        if len(hits) == 1:
            chosen[row] = hits.pop()
    used = set(chosen.values())
    pred_names = pd.Series([Path(str(r["input"])).name for r in results])
    label_names = pd.Series([_file_name(v) for v in values])
    for row, v in enumerate(values):
        if row in chosen:
            continue
        name = _file_name(v)
        hits = [i for i in np.flatnonzero((pred_names == name).to_numpy()) if i not in used]
        if len(hits) == 1 and (label_names == name).sum() == 1 and (pred_names == name).sum() == 1:
            chosen[row] = int(hits[0])
            used.add(int(hits[0]))
    out = Matched()
    for row, v in enumerate(values):
        if row not in chosen:
            out.missing.append(v)
            continue
        r = results[chosen[row]]
        if "error" in r:
            out.errors.append((v, str(r["error"])))
        else:
            out.pairs.append((row, r))
    out.unlabelled = [str(r["input"]) for i, r in enumerate(results) if i not in used]
    return out


# ------------------------------------------------------------------------------------------- classification
def _label_index(label: str, classes: list[str], merge: dict[str, list[str]] | None, row: int) -> int:
    if merge:
        for new, olds in merge.items():
            if label == new or label in olds:
                return list(merge).index(new)
    elif label in classes:
        return classes.index(label)
    known = sorted(set(classes) | set(merge or {}))
    raise SonoDistillError(f"labels row {row}: label {label!r} is not a class of the model ({known})")


def classification_frame(labels: pd.DataFrame, column: str, matched: Matched, classes: list[str],
                         merge: dict[str, list[str]] | None) -> tuple[pd.DataFrame, list[str]]:
    """A predictions table in the run-directory contract (fold 0, index = labels row, group, y_true, prob_*)."""
    from sonodistill.evaluation.report import prob_columns

    if "label" not in labels.columns:
        raise SonoDistillError("the labels file has no 'label' column (a classification model's predictions)")
    rows, probs = [], []
    for row, r in matched.pairs:
        p = r.get("probabilities")
        if not isinstance(p, dict) or sorted(p) != sorted(classes):
            raise SonoDistillError(f"prediction for {r['input']!r} has no probabilities for classes {classes}")
        rows.append(row)
        probs.append([float(p[c]) for c in classes])
    probs_arr = np.asarray(probs, dtype=np.float64).reshape(len(rows), len(classes))
    out_classes = classes
    if merge:
        from sonodistill.evaluation.run_dir import merge_probabilities

        out_classes, probs_arr = merge_probabilities(classes, probs_arr, merge)
    frame = pd.DataFrame({
        "fold": 0, "index": rows, "path": [str(labels[column].iloc[i]) for i in rows],
        "group": _groups(labels, rows),
        "y_true": [_label_index(str(labels["label"].iloc[i]), classes, merge, i) for i in rows]})
    for c, values in zip(prob_columns(out_classes), probs_arr.T):
        frame[c] = values
    return frame, out_classes


def _groups(labels: pd.DataFrame, rows: list[int]) -> list[str]:
    if "group" in labels.columns:
        g = labels["group"].iloc[rows]
        if g.isna().any():
            raise SonoDistillError(f"labels row {rows[int(np.flatnonzero(g.isna().to_numpy())[0])]}: empty group")
        return g.astype(str).tolist()
    return [f"item{i}" for i in rows]


# ------------------------------------------------------------------------------------------- segmentation
def _existing(value: str, folders: list[Path]) -> Path:
    """The first existing file `value` names (absolute, or relative to one of `folders`); else `value` itself."""
    return next((Path(k) for k in sorted(_candidates(value, folders)) if Path(k).is_file()), Path(value))


def _read_png(ref: str, folders: list[Path]) -> np.ndarray:
    """A predicted mask (path or data URI) as bool H x W: foreground where the PNG is non-zero."""
    from PIL import Image

    if ref.startswith(DATA_URI):
        with Image.open(io.BytesIO(base64.b64decode(ref[len(DATA_URI):]))) as img:
            return np.asarray(img) > 0
    path = _existing(ref, folders)
    if not path.is_file():
        raise DataError(ref, "predicted mask file not found")
    with Image.open(path) as img:
        return np.asarray(img) > 0


def segmentation_frame(labels: pd.DataFrame, column: str, matched: Matched, labels_dir: Path,
                       predictions_dir: Path, hc_outline_offset_px: float = 0.0) -> pd.DataFrame:
    """Per-item Dice, IoU, HD95, ASD (and HC, less the masks' outline offset in pixels) at the original resolution;
    items that cannot be scored move to `matched.errors` with the reason."""
    from sonodistill.data.readers import read_mask
    from sonodistill.evaluation.head_circumference import hc_scores
    from sonodistill.evaluation.metrics import segmentation_metrics

    if "mask" not in labels.columns:
        raise SonoDistillError("the labels file has no 'mask' column (a segmentation model's predictions)")
    has_spacing, has_hc = "pixel_size_mm" in labels.columns, "hc_mm" in labels.columns
    if has_hc and not has_spacing:
        raise SonoDistillError("the labels file has 'hc_mm' but no 'pixel_size_mm': HC needs the pixel size")
    records, kept = [], []
    for row, r in matched.pairs:
        name = str(labels[column].iloc[row])
        masks = r.get("masks") or []
        if len(masks) != 1:
            matched.errors.append((name, f"{len(masks)} predicted frames; score expects one mask per image"))
            continue
        try:
            pred = _read_png(str(masks[0]["png"]), [Path.cwd(), predictions_dir])
            truth = read_mask(_existing(str(labels["mask"].iloc[row]), [labels_dir, Path.cwd()])).astype(bool)
        except DataError as exc:
            matched.errors.append((name, str(exc)))
            continue
        if pred.shape != truth.shape:
            matched.errors.append((name, f"predicted mask {pred.shape} and label mask {truth.shape} differ in size"))
            continue
        spacing = float(labels["pixel_size_mm"].iloc[row]) if has_spacing else 1.0
        rec: dict[str, Any] = {"fold": 0, "index": row, "path": name, **segmentation_metrics(pred, truth, spacing)}
        if has_hc:
            rec.update(hc_scores(pred, spacing, float(labels["hc_mm"].iloc[row]), hc_outline_offset_px))
        records.append(rec)
        kept.append((row, r))
    matched.pairs = kept
    frame = pd.DataFrame(records)
    if not frame.empty:
        frame.insert(3, "group", _groups(labels, frame["index"].tolist()))
    return frame


# ------------------------------------------------------------------------------------------- report
def _cell(value: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "n/a"
    ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if math.isfinite(low) else ""
    return f"{value:.{digits}f}{ci}"


def _coverage(matched: Matched, n_labels: int) -> list[str]:
    lines = [f"{n_labels} labelled input(s): {len(matched.pairs)} scored, {len(matched.missing)} without a "
             f"prediction, {len(matched.errors)} with a prediction that failed or could not be scored; "
             f"{len(matched.unlabelled)} prediction(s) without a label (not scored).\n"]
    if matched.missing:
        lines += ["## Labelled inputs without a prediction\n"] + [f"- {m}" for m in matched.missing] + [""]
    if matched.errors:
        lines += ["## Predictions that failed or could not be scored\n"] + [f"- {m}: {e}" for m, e in matched.errors]
        lines.append("")
    return lines


def group_entries(payload: dict[str, Any], predictions: str | Path) -> list[dict[str, Any]]:
    """The `groups` of a `predict --per-group` JSON as results to match a labels table of patients: input = the
    group's name, its averaged probabilities (or its error), the inputs that failed (`failed`)."""
    groups = payload.get("groups")
    if not isinstance(groups, list):
        raise ConfigError(f"{predictions} has no 'groups': a labels table of patients (group, label) scores the "
                          "output of `sonodistill predict --per-group`; predict with --per-group, or give the labels "
                          "one row an input with a group column")
    out = []
    for g in groups:
        entry: dict[str, Any] = {"input": str(g.get("group")), "failed": list(g.get("failed") or [])}
        entry.update({"error": g["error"]} if "error" in g else {"probabilities": g.get("probabilities")})
        out.append(entry)
    return out


def _partial_groups(results: list[dict[str, Any]]) -> list[str]:
    """Report lines for the groups scored from part of their inputs (the others failed to read)."""
    partial = [r for r in results if r.get("failed") and "error" not in r]
    if not partial:
        return []
    return ["## Groups scored from part of their inputs\n"] + [
        f"- {r['input']}: {len(r['failed'])} input(s) failed and were left out: {', '.join(r['failed'])}"
        for r in partial] + [""]


def _interval_text(n_groups: int | None, n_items: int, n_resamples: int, level: float, seed: int) -> str:
    over = f"{n_groups} groups (labels column 'group')" if n_groups is not None else f"{n_items} items"
    return (f"Cells: value on all scored items [{100 * level:g} % percentile bootstrap interval over {over}, "
            f"{n_resamples} resamples, seed {seed}].\n")


def score_classification(frame: pd.DataFrame, classes: list[str], out: Path, title: str, coverage: list[str],
                         grouped: bool, n_resamples: int, level: float, seed: int) -> dict[str, Any]:
    from sonodistill.evaluation.metrics import classification_metrics
    from sonodistill.evaluation.paired import ALL_CLASSIFICATION_METRICS, bootstrap_intervals, classification_scorer
    from sonodistill.evaluation.report import (
        PER_CLASS_COLUMNS,
        SUMMARY_COLUMNS,
        confusion_markdown,
        markdown_table,
        plot_confusion_matrix,
        plot_reliability,
        plot_roc,
        prob_columns,
    )

    y = frame["y_true"].to_numpy(np.int64)
    probs = frame[prob_columns(classes)].to_numpy(np.float64)
    metrics = classification_metrics(y, probs, classes)
    intervals = bootstrap_intervals(classification_scorer(y, len(classes), ALL_CLASSIFICATION_METRICS), probs,
                                    frame["group"].to_numpy() if grouped else None, n_resamples, level, seed)
    ci = {i.metric: i for i in intervals}
    n = len(frame)
    summary = {f"{n} items": {m: _cell(metrics[m], ci[m].ci_low, ci[m].ci_high) for m in SUMMARY_COLUMNS}}
    per_class = {c: {m: _cell(metrics[f"{m}/{c}"], math.nan, math.nan) for m in PER_CLASS_COLUMNS} for c in classes}
    plot_confusion_matrix(metrics["confusion_matrix"], classes, f"{title}: confusion matrix",
                          out / "confusion_matrix.png")
    plot_roc(y, probs, classes, f"{title}: ROC one-vs-rest", out / "roc.png")
    plot_reliability(y, probs, f"{title}: reliability", out / "calibration.png")
    lines = [f"# {title}\n", *coverage,
             _interval_text(intervals[0].n_groups if grouped else None, n, n_resamples, level, seed),
             "## Summary\n", markdown_table({}, SUMMARY_COLUMNS, extra=summary),
             "## Per class (one-vs-rest)\n", markdown_table({}, PER_CLASS_COLUMNS, extra=per_class, index_name="class"),
             "## Confusion matrix\n", confusion_markdown(metrics["confusion_matrix"], classes),
             "## Plots\n", "![confusion matrix](confusion_matrix.png)\n\n![ROC curves, one-vs-rest](roc.png)\n\n"
             "![reliability diagram](calibration.png)\n"]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return {"metrics": metrics, "intervals": {i.metric: i.as_dict() for i in intervals}}


def score_segmentation(frame: pd.DataFrame, out: Path, title: str, coverage: list[str], grouped: bool, units: str,
                       n_resamples: int, level: float, seed: int, hc_outline_offset_px: float = 0.0) -> dict[str, Any]:
    from sonodistill.evaluation.paired import bootstrap_intervals, mean_scorer
    from sonodistill.evaluation.report import markdown_table
    from sonodistill.evaluation.segmentation_report import HC_METRICS, METRICS

    columns = METRICS + [c for c in HC_METRICS if c in frame.columns]
    intervals = bootstrap_intervals(mean_scorer(columns), frame[columns].to_numpy(np.float64),
                                    frame["group"].to_numpy() if grouped else None, n_resamples, level, seed)
    undefined = {c: int(frame[c].isna().sum()) for c in columns}
    cells = {i.metric: _cell(i.value, i.ci_low, i.ci_high) + (f" ({undefined[i.metric]} n/a)"
                                                               if undefined[i.metric] else "") for i in intervals}
    lines = [f"# {title}\n", *coverage,
             _interval_text(intervals[0].n_groups if grouped else None, len(frame), n_resamples, level, seed),
             f"Mean over items at the original image resolution; hd95 and asd in {units}; '(k n/a)' counts items "
             "where a surface distance was undefined (exactly one mask empty), left out of that mean.\n",
             markdown_table({}, columns, extra={f"{len(frame)} items": cells})]
    if "hc_abs_err_mm" in columns:
        lines.append("hc_abs_err_mm: |HC of the least-squares ellipse fitted to the predicted mask's outer contour "
                     f"taken {hc_outline_offset_px:g} px inside (--hc-outline-offset-px) - hc_mm|; an image with no "
                     "head predicted is a failure (NaN), counted in n_nan.\n")
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return {"units": units, "hc_outline_offset_px": hc_outline_offset_px, "undefined": undefined,
            "intervals": {i.metric: i.as_dict() for i in intervals}}


def score_predictions(predictions: str | Path, labels: str | Path, out: str | Path | None = None,
                      merge: dict[str, list[str]] | None = None, n_resamples: int = 2000, level: float = 0.95,
                      seed: int = 0, hc_outline_offset_px: float = 0.0,
                      per_group: bool = False) -> tuple[Path, Matched]:
    """Score a predictions JSON against a labels CSV; writes report.md, metrics.json, predictions.csv (+ plots).
    `hc_outline_offset_px`: the training masks' outline offset removed from predicted HC (a training run's
    fold_k/hc_calibration.json); 0 scores the raw contour. `per_group` (classification): one row a labels `group`,
    its inputs' probabilities averaged, as `eval --per-group` (a group's inputs must share their label)."""
    from sonodistill.evaluation.report import _json_ready

    payload = read_predictions_json(predictions)
    table, column = read_labels(labels, patients=per_group)
    pred_path, labels_path = Path(predictions), Path(labels)
    if column != "group":
        table = expand_folder_labels(table, column, [labels_path.parent, Path.cwd()])
    model = payload["model"] if isinstance(payload["model"], dict) else {}
    tasks = {str(r.get("task")) for r in payload["results"] if "error" not in r and r.get("task")}
    task = str(model.get("task") or (tasks.pop() if len(tasks) == 1 else ""))
    if task not in ("classification", "segmentation"):
        raise SonoDistillError(f"{predictions}: cannot tell the task (model.task = {model.get('task')!r})")
    if merge and task != "classification":
        raise ConfigError("--merge is for classification predictions")
    if per_group and task != "classification":
        raise ConfigError(f"--per-group scores a classifier's predictions per patient; {predictions} is {task}")
    if per_group and "group" not in table.columns:
        raise ConfigError(f"--per-group: {labels} has no 'group' column (the patient of each input)")
    patient_table = column == "group"  # one label row a patient: scored against predict --per-group's groups
    results = group_entries(payload, predictions) if patient_table else payload["results"]
    matched = match_predictions(table, column, results, labels_path.parent, pred_path.parent)
    out_dir = Path(out) if out else pred_path.with_name(pred_path.stem + "-score")
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{Path(str(model.get('source', 'model'))).name} on {labels_path.name}"
    grouped = "group" in table.columns
    if task == "classification":
        classes = [str(c) for c in model.get("classes") or []]
        if not classes:
            raise SonoDistillError(f"{predictions}: model.classes is empty")
        frame = None
        if matched.pairs:
            frame, classes = classification_frame(table, column, matched, classes, merge)
            if patient_table:
                title += f", scored per group ({len(frame)} groups of `predict --per-group`)"
            elif per_group:
                from sonodistill.evaluation.per_group import per_group_predictions

                frame = per_group_predictions(frame)
                title += f", scored per group ({len(frame)} groups, probabilities averaged over each group's inputs)"
    else:
        frame = segmentation_frame(table, column, matched, labels_path.parent, pred_path.parent,
                                   hc_outline_offset_px)
    if frame is None or frame.empty:
        raise SonoDistillError(f"no labelled input of {labels} has a usable prediction in {predictions}: "
                               f"{len(matched.missing)} without a prediction, {len(matched.errors)} failed")
    frame.to_csv(out_dir / "predictions.csv", index=False)
    coverage = _coverage(matched, len(table))
    if patient_table:
        coverage += _partial_groups(results)
    if task == "classification":
        result = score_classification(frame, classes, out_dir, title, coverage, grouped, n_resamples, level, seed)
    else:
        units = "mm" if "pixel_size_mm" in table.columns else "px (original image pixels)"
        result = score_segmentation(frame, out_dir, title, coverage, grouped, units, n_resamples, level, seed,
                                    hc_outline_offset_px)
    payload_out = {"title": title, "task": task, "predictions": str(pred_path), "labels": str(labels_path),
                   "model": model, "classes": classes if task == "classification" else None,
                   "counts": {"labelled": len(table), "scored": len(matched.pairs), "missing": len(matched.missing),
                              "errors": len(matched.errors), "unlabelled_predictions": len(matched.unlabelled)},
                   "missing": matched.missing, "errors": [{"input": i, "error": e} for i, e in matched.errors],
                   "bootstrap": {"resamples": n_resamples, "level": level, "seed": seed,
                                 "over": "groups" if grouped else "items"}, **result}
    (out_dir / "metrics.json").write_text(json.dumps(_json_ready(payload_out), indent=2, allow_nan=False),
                                          encoding="utf-8")
    return out_dir, matched


def _score(args: argparse.Namespace) -> int:
    from sonodistill.evaluation.run_dir import parse_merge

    merge = parse_merge(args.merge) if args.merge else None
    out, matched = score_predictions(args.predictions, args.labels, args.out, merge, args.resamples, args.level,
                                     args.seed, args.hc_outline_offset_px, args.per_group)
    print((out / "report.md").read_text())
    print(f"written: {out}/ (report.md, metrics.json, predictions.csv)")
    incomplete = len(matched.missing) + len(matched.errors)
    if incomplete:
        print(f"error: {incomplete} labelled input(s) not scored ({len(matched.missing)} without a prediction, "
              f"{len(matched.errors)} failed); listed in {out / 'report.md'}", file=sys.stderr)
    return 1 if incomplete else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score `sonodistill predict` output against a labels CSV (same metrics as the "
                                     "CV report, with bootstrap intervals)")
    p.add_argument("predictions", help="JSON written by `sonodistill predict ... --out FILE`")
    p.add_argument("--labels", required=True,
                   help="CSV: path|input|file, and label (classification) or mask [+ pixel_size_mm, hc_mm] "
                        "(segmentation); optional group. With --per-group also group,label: one row a patient, "
                        "scored against predict --per-group's groups")
    p.add_argument("--merge", action="append", default=[], metavar="NEW=OLD1,OLD2",
                   help="score with classes merged (probabilities summed), as `sonodistill eval --merge`")
    p.add_argument("--out", help="output folder (default: PREDICTIONS-score/ beside the JSON)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--hc-outline-offset-px", type=float, default=0.0, metavar="PX",
                   help="head circumference: how far the training masks' outline lies outside the annotated ellipse "
                        "(the training run's fold_k/hc_calibration.json outline_offset_px); default 0, the raw contour")
    p.add_argument("--per-group", action="store_true",
                   help="classification: score one row a labels 'group' (patient), its inputs' probabilities "
                        "averaged, as `eval --per-group` (for a per-patient label such as COVID)")
    p.set_defaults(func=_score)
