"""Frozen-embedding evaluation of a pretrained encoder on one fold (DISCOVR's protocol): kNN anomaly detection
with one label as normal, linear and kNN classification probes, a ridge regression probe; and the run report
(mean ± std over folds).

`feats` is indexed by manifest row (`len(manifest) x D`; only the fold's training and test rows are read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sonodistill.data.manifest import Manifest

#: what `evaluate_embeddings` can run
EVALUATIONS = ("anomaly", "linear", "knn", "regression")

#: per test item, the anomaly detection of the z-scored section: truth, call at the fold's threshold, score (the
#: order `paired.anomaly_scorer` reads; DISCOVR's predictions.csv and `sonodistill compare` use these columns)
ANOMALY_OUTCOMES = ["is_anomalous", "anomaly_called", "anomaly_score"]

#: report.md: the columns shown per evaluation section
REPORT_COLUMNS = {
    "anomaly": ["auroc", "f1", "balanced_accuracy", "precision", "recall", "f1_all_anomalous"],
    "anomaly_raw": ["auroc", "f1", "balanced_accuracy", "precision", "recall"],
    "linear": ["accuracy", "balanced_accuracy", "f1", "roc_auc"],
    "knn": ["accuracy", "balanced_accuracy", "f1", "roc_auc"],
    "regression": ["mae", "rmse", "r2"],
}


@dataclass
class EmbeddingEvaluation:
    """Which evaluations run and how (see docs/discovr.md, "Protocol")."""

    evaluate: list[str] = field(default_factory=lambda: list(EVALUATIONS))
    normal_label: str | None = None          # anomaly detection: this class is normal (None: no anomaly section)
    knn_k: int = 5                           # neighbours of the anomaly score
    threshold_rule: str = "max_f1"           # max_f1 | percentile (on leave-one-group-out training scores)
    threshold_percentile: float = 95.0
    anomaly_standardize: bool = True         # z-score with training-fold statistics ("anomaly_raw": without)
    regression_column: str | None = "severity_score"


def evaluate_embeddings(manifest: Manifest, feats: np.ndarray, train: np.ndarray, test: np.ndarray,
                        how: EmbeddingEvaluation) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Metrics per section ({"anomaly": {...}, "linear": {...}, ...}) and one row per test item (index, group,
    y_true, is_anomalous, `<section>_score` and `<section>_called` (0/1 at the fold's threshold),
    `<probe>_prob_<class>`, regression_true/pred)."""
    from sonodistill.evaluation.anomaly import knn_anomaly_detection
    from sonodistill.evaluation.metrics import classification_metrics, regression_metrics
    from sonodistill.evaluation.probes import knn_predict, linear_probe, linear_regression_probe

    metrics: dict[str, dict[str, float]] = {}
    table = pd.DataFrame({"index": test, "group": manifest.groups[test]})
    wanted = set(how.evaluate)
    if manifest.has_labels:
        y = manifest.labels
        table["y_true"] = y[test]
        if "anomaly" in wanted and how.normal_label is not None:
            ni = manifest.classes.index(str(how.normal_label))
            table["is_anomalous"] = (y[test] != ni).astype(int)
            sections = [("anomaly", bool(how.anomaly_standardize))]
            if how.anomaly_standardize:
                sections.append(("anomaly_raw", False))
            for section, scale in sections:
                res = knn_anomaly_detection(feats[train], y[train] != ni, manifest.groups[train], feats[test],
                                            y[test] != ni, k=int(how.knn_k), threshold_rule=how.threshold_rule,
                                            percentile=float(how.threshold_percentile), standardize=scale)
                table[f"{section}_score"] = res.pop("test_scores")
                table[f"{section}_called"] = (table[f"{section}_score"] >= res["threshold"]).astype(int)
                res.pop("train_scores")
                metrics[section] = res
        for name, fn in (("linear", linear_probe), ("knn", knn_predict)):
            if name in wanted:
                probs = fn(feats[train], y[train], feats[test], num_classes=len(manifest.classes))
                m = classification_metrics(y[test], probs, manifest.classes)
                metrics[name] = {k: v for k, v in m.items() if isinstance(v, float)}
                for c, col in enumerate(manifest.classes):
                    table[f"{name}_prob_{col}"] = probs[:, c]
    col = how.regression_column
    if "regression" in wanted and col and col in manifest.table.columns:
        target = manifest.table[col].to_numpy(dtype=np.float64)
        pred = linear_regression_probe(feats[train], target[train], feats[test])
        metrics["regression"] = regression_metrics(target[test], pred)
        table["regression_true"], table["regression_pred"] = target[test], pred
    return metrics, table


def summarise_sections(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """{section: {metric: MeanStd}} over the folds' records (a section is a dict-valued entry of a record)."""
    from sonodistill.evaluation.metrics import summarise

    sections = sorted({s for r in per_fold for s, v in r.items() if isinstance(v, dict)})
    return {s: summarise([r[s] for r in per_fold if s in r]) for s in sections}


def write_embedding_metrics(run_dir: Path, per_fold: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """metrics.json: {"folds", "per_fold" (each fold's eval.json), "summary" (mean, std, n, n_nan per metric)}."""
    import json

    path = run_dir / "metrics.json"
    path.write_text(json.dumps(
        {"folds": [r["fold"] for r in per_fold], "per_fold": per_fold,
         "summary": {s: {m: {"mean": v.mean, "std": v.std, "n": v.n, "n_nan": v.n_nan} for m, v in d.items()}
                     for s, d in summary.items()}}, indent=1, default=float))
    return path


def write_embedding_report(run_dir: Path, title: str, name: str, summary: dict[str, Any], folds: list[int],
                           n_folds: int, notes: list[str] | None = None) -> Path:
    """report.md: one mean ± std table per evaluation (anomaly, linear/kNN probe, regression probe)."""
    from sonodistill.evaluation.report import markdown_table

    lines = [f"# {title}", "", f"Folds {folds} of {n_folds} (grouped); mean ± std over folds.", ""]
    for section, cols in REPORT_COLUMNS.items():
        if section in summary:
            lines += [f"## {section}", "", markdown_table({name: summary[section]}, cols), ""]
    lines += list(notes or [])
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
