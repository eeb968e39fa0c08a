"""Cross-validation reports: Markdown tables of mean ± std, metrics CSV/JSON, confusion-matrix and ROC plots.

Reads the run-directory contract ``predictions.csv``: one row per test item per fold with columns
``fold, index, group, y_true, prob_<class>...`` and optionally ``model`` (one block of rows per compared model).
Plots use matplotlib's Agg canvas only (no display, no pyplot state).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, roc_auc_score, roc_curve

from sonodistill.errors import DataError
from sonodistill.evaluation.metrics import (ECE_BINS, MeanStd, brier_score, classification_metrics,
                                            expected_calibration_error, reliability_bins, summarise)

SUMMARY_COLUMNS = ["accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "brier",
                   "ece"]
PER_CLASS_COLUMNS = ["sensitivity", "specificity", "precision", "f1", "roc_auc"]
PREDICTION_COLUMNS = ["fold", "index", "group", "y_true"]
PROB_PREFIX = "prob_"
NA = "n/a"


# ------------------------------------------------------------------------------------------------- tables


def format_mean_std(stat: Sequence[float], percent: bool = False) -> str:
    """'0.812 ± 0.034' (or '81.2 ± 3.4' with percent); NaN -> 'n/a'; appends '(k n/a)' when k folds were NaN."""
    mean, std = float(stat[0]), float(stat[1])
    if math.isnan(mean):
        text = NA
    elif percent:
        text = f"{100 * mean:.1f} ± {100 * std:.1f}"
    else:
        text = f"{mean:.3f} ± {std:.3f}"
    n_nan = getattr(stat, "n_nan", 0)
    if n_nan and not math.isnan(mean):
        text += f" ({n_nan} {NA})"
    return text


def markdown_table(
    rows: Mapping[str, Mapping[str, Sequence[float]]],
    columns: list[str],
    percent: bool = False,
    extra: Mapping[str, Mapping[str, str]] | None = None,
    index_name: str = "",
) -> str:
    """Markdown table, one line per row name, cells 'mean ± std' from rows[row][column].

    extra: row -> column -> preformatted text, for cells not in ``rows`` (e.g. a paper's reported number);
    rows only in ``extra`` are appended. Missing cells render as '–'.
    """
    extra = extra or {}
    names = list(rows) + [r for r in extra if r not in rows]
    lines = [
        "| " + " | ".join([index_name] + list(columns)) + " |",
        "|" + "|".join(["---"] + [":---:"] * len(columns)) + "|",
    ]
    for name in names:
        cells = [str(name)]
        for col in columns:
            if col in rows.get(name, {}):
                cells.append(format_mean_std(rows[name][col], percent))
            elif col in extra.get(name, {}):
                cells.append(str(extra[name][col]))
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def confusion_markdown(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """Markdown confusion matrix: rows true class, columns predicted class, integer counts."""
    lines = [
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "|---|" + "|".join([":---:"] * len(classes)) + "|",
    ]
    for name, row in zip(classes, cm):
        lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_confusion_matrix(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str, path: Path) -> None:
    """Save a count-annotated confusion matrix (rows true, columns predicted) as a PNG."""
    size = max(4.0, 0.8 * len(classes) + 2.5)
    fig = _new_figure(size, size)
    ax = fig.add_subplot()
    rotate = 45 if max(len(c) for c in classes) > 6 else 0
    ConfusionMatrixDisplay(np.asarray(cm, dtype=int), display_labels=list(classes)).plot(
        ax=ax, values_format="d", colorbar=False, cmap="Blues", xticks_rotation=rotate
    )
    ax.set_title(title)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def pooled_roc_auc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """One-vs-rest ROC-AUC per class on all items pooled together (NaN without positives and negatives)."""
    out = {}
    for k, name in enumerate(classes):
        pos = y_true == k
        out[name] = float(roc_auc_score(pos, probs[:, k])) if 0 < pos.sum() < len(pos) else math.nan
    return out


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], title: str, path: Path) -> None:
    """Save one-vs-rest ROC curves (one line per class, AUC in the legend) as a PNG."""
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    aucs = pooled_roc_auc(y_true, probs, classes)
    for k, name in enumerate(classes):
        if math.isnan(aucs[name]):
            ax.plot([], [], " ", label=f"{name} (AUC {NA}: no positives or no negatives)")
            continue
        fpr, tpr, _ = roc_curve(y_true == k, probs[:, k])
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC = {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, title: str, path: Path) -> None:
    """Save a reliability diagram: accuracy against mean highest probability per occupied confidence bin (marker
    area by item count), the diagonal, and ECE / Brier score in the title."""
    count, confidence, right = reliability_bins(y_true, probs)
    occupied = count > 0
    count, mean_conf, accuracy = count[occupied], (confidence / np.maximum(count, 1))[occupied], \
        (right / np.maximum(count, 1))[occupied]
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.plot(mean_conf, accuracy, color="tab:blue", lw=1)
    ax.scatter(mean_conf, accuracy, s=20 + 180 * count / count.max(), color="tab:blue", alpha=0.8,
               label=f"{ECE_BINS} confidence bins (area: items)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean highest probability in the bin (confidence)")
    ax.set_ylabel("accuracy in the bin")
    ece, brier = expected_calibration_error(y_true, probs), brier_score(y_true, probs)
    ax.set_title(f"{title}\nECE {ece:.3f}, Brier {brier:.3f} ({len(y_true)} items)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------------------------------- predictions


def prob_columns(classes: Sequence[str]) -> list[str]:
    """Column names holding class probabilities: prob_<class>."""
    return [f"{PROB_PREFIX}{c}" for c in classes]


def read_csv_file(path: str | Path, dtype: dict[str, type], missing: str) -> pd.DataFrame:
    """A CSV file as a table (`data.user_csv`: UTF-8, `,` `;` or tab); a missing file (`missing` says why it should
    exist), one not in UTF-8 or an unparsable one is a DataError naming the file."""
    from sonodistill.data.user_csv import read_user_csv

    path = Path(path)
    if not path.is_file():
        raise DataError(path, missing)
    return read_user_csv(path, dtype=dtype)


def read_predictions(run_dir: str | Path) -> pd.DataFrame:
    """Read ``run_dir/predictions.csv`` (columns fold, index, group, y_true, prob_<class>..., optional model)."""
    path = Path(run_dir) / "predictions.csv"
    df = read_csv_file(path, {"group": str, "model": str},
                       "no predictions.csv in this run directory (the trainer writes it after evaluation)")
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing or not any(c.startswith(PROB_PREFIX) for c in df.columns):
        need = missing + ([] if any(c.startswith(PROB_PREFIX) for c in df.columns) else ["prob_<class>"])
        raise DataError(path, f"missing columns {need}; found {list(df.columns)}")
    return df


def _row_name(df: pd.DataFrame, i: int) -> str:
    row = df.iloc[i]
    where = f"predictions row {i} (fold {row['fold']}"
    if "index" in df.columns:
        where += f", manifest index {row['index']}"
    if "model" in df.columns:
        where += f", model {row['model']}"
    return where + ")"


def _validate_predictions(df: pd.DataFrame, classes: Sequence[str]) -> None:
    if not classes:
        raise ValueError("classes is empty")
    needed = ["fold", "y_true"] + prob_columns(classes)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}; found {list(df.columns)}")
    unknown = [c for c in df.columns if c.startswith(PROB_PREFIX) and c not in prob_columns(classes)]
    if unknown:
        raise ValueError(f"predictions have probability columns {unknown} for classes not in {list(classes)}")
    if len(df) == 0:
        raise ValueError("predictions are empty")
    y = pd.to_numeric(df["y_true"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(y) | (np.mod(y, 1) != 0) | (y < 0) | (y >= len(classes)))
    if bad.size:
        raise ValueError(
            f"{_row_name(df, bad[0])}: y_true {df['y_true'].iloc[bad[0]]} is not a class index 0..{len(classes) - 1}"
        )
    probs = df[prob_columns(classes)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1) | (np.abs(probs.sum(axis=1) - 1) > 1e-3))
    if bad.size:
        raise ValueError(
            f"{_row_name(df, bad[0])}: probabilities {probs[bad[0]].tolist()} are not finite or do not sum to 1"
        )
    if "index" in df.columns:
        keys = [c for c in ("model", "fold", "index") if c in df.columns]
        dup = np.flatnonzero(df.duplicated(keys).to_numpy())
        if dup.size:
            raise ValueError(f"{_row_name(df, dup[0])}: the same item appears twice in one fold")


def _fold_metrics(df: pd.DataFrame, classes: Sequence[str]) -> list[dict]:
    rows = []
    for fold, part in df.groupby("fold", sort=True):
        m = classification_metrics(
            part["y_true"].to_numpy(dtype=np.int64), part[prob_columns(classes)].to_numpy(np.float64), list(classes)
        )
        rows.append({"fold": fold.item() if hasattr(fold, "item") else fold, "n_items": len(part), **m})
    return rows


def _evaluate(df: pd.DataFrame, classes: Sequence[str]) -> dict:
    """Per-fold metrics, their summary, the summed confusion matrix and pooled per-class AUC for one model."""
    per_fold = _fold_metrics(df, classes)
    keys = [k for k, v in per_fold[0].items() if k not in ("fold", "n_items") and not isinstance(v, list)]
    y = df["y_true"].to_numpy(dtype=np.int64)
    probs = df[prob_columns(classes)].to_numpy(np.float64)
    return {
        "per_fold": per_fold,
        "summary": summarise(per_fold, keys),
        "confusion_matrix": np.sum([f["confusion_matrix"] for f in per_fold], axis=0).astype(int).tolist(),
        "pooled_roc_auc": pooled_roc_auc(y, probs, classes),
        "n_items": len(df),
        "n_folds": len(per_fold),
    }


# ------------------------------------------------------------------------------------------------- writing


def _json_ready(x: object) -> object:
    """Replace NaN/inf by None and MeanStd by {mean, std, n, n_nan}, so the JSON is strict."""
    if isinstance(x, MeanStd):
        return {"mean": _json_ready(x.mean), "std": _json_ready(x.std), "n": x.n, "n_nan": x.n_nan}
    if isinstance(x, Mapping):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _safe_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(model)).strip("_") or "model"


def _per_class_rows(summary: Mapping[str, MeanStd], classes: Sequence[str]) -> dict[str, dict[str, MeanStd]]:
    return {c: {m: summary[f"{m}/{c}"] for m in PER_CLASS_COLUMNS} for c in classes}


def _model_section(res: dict, classes: Sequence[str], cm_png: str, roc_png: str, level: str,
                   calibration_png: str) -> list[str]:
    return [
        f"{level} Per class (one-vs-rest, mean ± std over folds)\n",
        markdown_table(_per_class_rows(res["summary"], classes), PER_CLASS_COLUMNS, index_name="class"),
        f"{level} Confusion matrix (summed over {res['n_folds']} folds)\n",
        confusion_markdown(res["confusion_matrix"], classes),
        f"{level} Plots\n",
        f"![confusion matrix]({cm_png})\n\n![ROC curves, one-vs-rest, pooled over folds]({roc_png})\n\n"
        f"![reliability diagram, pooled over folds]({calibration_png})\n",
    ]


def _check_same_folds(df: pd.DataFrame) -> None:
    models = list(dict.fromkeys(df["model"]))
    ref = models[0]
    ref_folds = set(df.loc[df["model"] == ref, "fold"])
    for m in models[1:]:
        folds = set(df.loc[df["model"] == m, "fold"])
        if folds != ref_folds:
            raise ValueError(f"model {m!r} has folds {sorted(folds)} but model {ref!r} has {sorted(ref_folds)}")
        if "index" in df.columns:
            for f in sorted(ref_folds):
                a = set(df.loc[(df["model"] == ref) & (df["fold"] == f), "index"])
                b = set(df.loc[(df["model"] == m) & (df["fold"] == f), "index"])
                if a != b:
                    raise ValueError(f"fold {f}: model {m!r} and model {ref!r} were tested on different items")


def write_cv_report(
    out_dir: str | Path,
    predictions: pd.DataFrame,
    classes: list[str],
    title: str,
    extra_rows: Mapping[str, Mapping[str, str]] | None = None,
) -> dict:
    """Write metrics_per_fold.csv, metrics.json, report.md and the confusion/ROC PNGs into out_dir.

    Returns the summary (metric -> MeanStd over folds); with a ``model`` column, model -> summary.
    extra_rows: additional rows for the summary table (row -> metric -> text), e.g. a paper's numbers.
    """
    _validate_predictions(predictions, classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    compare = "model" in predictions.columns
    if compare:
        _check_same_folds(predictions)
        groups = {str(m): part for m, part in predictions.groupby("model", sort=False)}
        files = {m: _safe_name(m) for m in groups}
        if len(set(files.values())) != len(files):
            raise ValueError(f"model names {list(files)} collide once made file-safe: {list(files.values())}")
    else:
        groups = {"": predictions}
    results = {m: _evaluate(part, classes) for m, part in groups.items()}

    csv_rows = []
    for m, res in results.items():
        for f in res["per_fold"]:
            row = {k: v for k, v in f.items() if not isinstance(v, list)}
            csv_rows.append({"model": m, **row} if compare else row)
    pd.DataFrame(csv_rows).to_csv(out / "metrics_per_fold.csv", index=False)

    n_folds = next(iter(results.values()))["n_folds"]
    lines = [f"# {title}\n"]
    if compare:
        lines.append(
            f"{len(results)} models, each on the same {n_folds} folds. Cells are mean ± std over folds "
            "(std with ddof=1); '(k n/a)' marks k folds where the metric was undefined and left out.\n"
        )
        lines.append("## Comparison\n")
        lines.append(
            markdown_table({m: r["summary"] for m, r in results.items()}, SUMMARY_COLUMNS, extra=extra_rows,
                           index_name="model")
        )
        for m, res in results.items():
            lines.append(f"## {m}\n")
            lines += _model_section(res, classes, f"confusion_matrix_{files[m]}.png", f"roc_{files[m]}.png", "###",
                                    f"calibration_{files[m]}.png")
            plot_confusion_matrix(res["confusion_matrix"], classes, f"{m}: confusion matrix ({n_folds} folds)",
                                  out / f"confusion_matrix_{files[m]}.png")
            part = groups[m]
            y, probs = part["y_true"].to_numpy(np.int64), part[prob_columns(classes)].to_numpy(np.float64)
            plot_roc(y, probs, classes, f"{m}: ROC one-vs-rest (pooled over {n_folds} folds)",
                     out / f"roc_{files[m]}.png")
            plot_reliability(y, probs, f"{m}: reliability (pooled over {n_folds} folds)",
                             out / f"calibration_{files[m]}.png")
        payload = {"title": title, "classes": list(classes), "models": results}
        returned = {m: r["summary"] for m, r in results.items()}
    else:
        res = results[""]
        lines.append(
            f"{res['n_items']} test predictions over {n_folds} folds. Cells are mean ± std over folds "
            "(std with ddof=1); '(k n/a)' marks k folds where the metric was undefined and left out.\n"
        )
        lines.append("## Summary\n")
        lines.append(markdown_table({f"{n_folds}-fold CV": res["summary"]}, SUMMARY_COLUMNS, extra=extra_rows))
        lines += _model_section(res, classes, "confusion_matrix.png", "roc.png", "##", "calibration.png")
        plot_confusion_matrix(res["confusion_matrix"], classes, f"{title}: confusion matrix ({n_folds} folds)",
                              out / "confusion_matrix.png")
        y, probs = predictions["y_true"].to_numpy(np.int64), predictions[prob_columns(classes)].to_numpy(np.float64)
        plot_roc(y, probs, classes, f"{title}: ROC one-vs-rest (pooled over {n_folds} folds)", out / "roc.png")
        plot_reliability(y, probs, f"{title}: reliability (pooled over {n_folds} folds)", out / "calibration.png")
        payload = {"title": title, "classes": list(classes), **res}
        returned = res["summary"]

    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(_json_ready(payload), indent=2, allow_nan=False), encoding="utf-8")
    return returned
