"""DILBERT's scoring, pure: annotation metrics per finding (sensitivity, precision, F1 at a threshold; categorical
targets per class by argmax) and their macro mean, retrieval Recall@K with the recall of a random ranking (and the
query-bank normalisation of its scores), the out-of-fold prediction table, the collapse test (outputs constant over
sequences), the run's summary (metrics.json) and report.md. No model is run here (the protocol,
`protocols/dilbert.py`, runs them)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig
from sonodistill.data.sequences import AnnotationSpec, SequenceSet

#: the collapse test's tolerance: every output's standard deviation over the scored sequences below it
COLLAPSE_STD = 1e-4


def retrieval_recall(scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K: the fraction of queries (rows) with a relevant candidate among the K highest scores, and the same
    expected under a random ranking (`chance@K` = mean of 1 - C(n-m, K) / C(n, K), m relevant of n)."""
    n_q, n_c = scores.shape
    out: dict[str, float] = {"queries": float(n_q), "candidates": float(n_c)}
    if n_q == 0:
        return out
    order = np.argsort(-scores, axis=1, kind="stable")
    hit_rank = np.array([np.flatnonzero(relevant[i, order[i]])[0] if relevant[i].any() else n_c for i in range(n_q)])
    m = relevant.sum(1)
    for k in ks:
        out[f"R@{k}"] = float(np.mean(hit_rank < k))
        out[f"chance@{k}"] = float(np.mean([1.0 - (math.comb(n_c - mi, k) / math.comb(n_c, k) if k <= n_c else 0.0)
                                            for mi in m]))
    return out


def match_logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """CMM match probabilities -> their logits (float64; probabilities clipped to [eps, 1 - eps])."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def bank_statistics(bank: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's (mean, standard deviation) of its match logits over a bank of queries: `bank` is
    `B x candidates` match probabilities -> two float64 vectors of length `candidates` (the std at least `eps`)."""
    b = match_logit(bank, eps)
    return b.mean(0), np.maximum(b.std(0), eps)


def normalised_by(scores: np.ndarray, mean: np.ndarray, std: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Match probabilities `queries x candidates` -> their logits z-scored per candidate with `bank_statistics`."""
    return (match_logit(scores, eps) - np.asarray(mean, dtype=np.float64)) / np.asarray(std, dtype=np.float64)


def bank_normalised(scores: np.ndarray, bank: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Match probabilities `queries x candidates` with each candidate's bias removed: in logit space, minus the
    candidate's mean and over its standard deviation against a bank of other queries (`bank`: `B x candidates`,
    e.g. the training fold's texts). A "hub" candidate that scores high for every query (a sequence the matching
    head calls matched whatever the text) then no longer tops every ranking; a ranking within one candidate's scores
    is unchanged. The query-bank normalisation of Bogolin et al. (CVPR 2022) with a z-score for its softmax."""
    return normalised_by(scores, *bank_statistics(bank, eps), eps)


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, precision, F1, specificity of one finding (unknown labels, NaN, skipped); F1 = 0 when undefined."""
    known = ~np.isnan(y)
    y, pred = y[known].astype(int), (p[known] >= threshold).astype(int)
    tp, fp = int(((pred == 1) & (y == 1)).sum()), int(((pred == 1) & (y == 0)).sum())
    fn, tn = int(((pred == 0) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {"sensitivity": sens, "precision": prec, "f1": f1, "specificity": spec, "positives": float(tp + fn),
            "n": float(len(y))}


def annotation_metrics(pred: pd.DataFrame, spec: AnnotationSpec, threshold: float) -> dict[str, Any]:
    """Per-finding and macro sensitivity / precision / F1 (binary at `threshold`), per-class and macro for each
    categorical target (argmax), from a predictions table with `y_<col>`, `p_<col>`, `y_<cat>`, `p_<cat>_<class>`."""
    out: dict[str, Any] = {"findings": {}, "categorical": {}}
    for name, col in zip(spec.binary, spec.columns):
        out["findings"][name] = binary_metrics(pred[f"y_{col}"].to_numpy(float), pred[f"p_{col}"].to_numpy(float),
                                               threshold)
    for cname, classes in spec.categorical.items():
        key = _slug(cname)
        y = pred[f"y_{key}"].to_numpy(int)
        probs = pred[[f"p_{key}_{c}" for c in classes]].to_numpy(float)
        known = y >= 0
        yk, pk = y[known], probs[known].argmax(1)
        per = {c: binary_metrics((yk == j).astype(float), (pk == j).astype(float), 0.5) for j, c in enumerate(classes)}
        out["categorical"][cname] = {"classes": per, "accuracy": float((yk == pk).mean()) if len(yk) else float("nan")}
    macro: dict[str, float] = {}
    rows = list(out["findings"].values()) + [r for c in out["categorical"].values() for r in c["classes"].values()]
    for m in ("sensitivity", "precision", "f1"):
        vals = [r[m] for r in rows if not math.isnan(r[m])]
        macro[m] = float(np.mean(vals)) if vals else float("nan")
    out["macro"] = macro
    return out


def outcome_matrix(pred: pd.DataFrame, threshold: float = 0.5) -> tuple[list[str], np.ndarray]:
    """A prediction table's findings and their outcomes `N x 3F` = [known | true | predicted], 0/1: a binary
    finding `y_<col>` / `p_<col>` predicted at `threshold` (unknown label: NaN), a categorical target `y_<key>` /
    `p_<key>_<class>` as one finding per class, predicted by argmax (unknown label: < 0). What
    `annotation_metrics` scores, in the form `evaluation/paired.annotation_scorer` resamples."""
    names, known, true, predicted = [], [], [], []
    for col in [c[2:] for c in pred.columns if c.startswith("y_")]:
        y = pred[f"y_{col}"].to_numpy(float)
        if f"p_{col}" in pred.columns:
            names.append(col)
            known.append(~np.isnan(y))
            true.append(np.nan_to_num(y) > 0.5)
            predicted.append(pred[f"p_{col}"].to_numpy(float) >= threshold)
            continue
        classes = [c for c in pred.columns if c.startswith(f"p_{col}_")]
        if not classes:
            raise ValueError(f"y_{col} has neither p_{col} nor p_{col}_<class> columns")
        top = pred[classes].to_numpy(float).argmax(1)
        for j, c in enumerate(classes):
            names.append(f"{col}={c[len(col) + 3:]}")
            known.append(y >= 0)
            true.append(y == j)
            predicted.append(top == j)
    if not names:
        raise ValueError("no y_<finding> columns: not an annotation prediction table")
    return names, np.concatenate([np.stack(a, axis=1) for a in (known, true, predicted)], axis=1).astype(np.float64)


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("-", "_")


def prediction_table(seqs: SequenceSet, rows: np.ndarray, binary: np.ndarray, cats: list[np.ndarray],
                     fold: int, variant: str) -> pd.DataFrame:
    """One row per test sequence: ids, true targets (`y_*`) and probabilities (`p_*`)."""
    spec = seqs.spec
    t = pd.DataFrame({"fold": fold, "variant": variant, "index": rows,
                      "group": seqs.manifest.groups[rows], "path": [seqs.manifest.paths[i] for i in rows]})
    for j, col in enumerate(spec.columns):
        t[f"y_{col}"] = seqs.binary[rows, j]
        t[f"p_{col}"] = binary[:, j]
    for j, (cname, classes) in enumerate(spec.categorical.items()):
        key = _slug(cname)
        t[f"y_{key}"] = seqs.categorical[rows, j]
        for c, cls_name in enumerate(classes):
            t[f"p_{key}_{cls_name}"] = cats[j][:, c]
    return t



def output_spread(binary: np.ndarray, cats: list[np.ndarray]) -> float:
    """The largest standard deviation, over the sequences (rows), of any output: a binary finding's probability
    (`binary` `N x F`) or a categorical class's (`cats`, one `N x K_c` each). NaN with fewer than 2 rows."""
    parts = [a.reshape(len(a), -1) for a in [binary, *cats] if a.size]
    if not parts or parts[0].shape[0] < 2:
        return float("nan")
    return float(np.concatenate(parts, axis=1).std(axis=0).max())


def collapsed(binary: np.ndarray, cats: list[np.ndarray], tol: float = COLLAPSE_STD) -> bool:
    """The collapse test: every output's std over the sequences is below `tol` (the model gives one annotation,
    with the same probabilities, whatever the input). False with fewer than 2 sequences (nothing to compare).

    Not "the thresholded annotation is the same for every sequence": a working model on a small test fold may
    call every sequence negative; a collapsed one does not tell them apart at all."""
    spread = output_spread(binary, cats)
    return not math.isnan(spread) and spread < tol


def summarise_experiment(pred: pd.DataFrame, retrieval: dict[int, dict], seconds: dict[int, dict],
                         spec: AnnotationSpec, threshold: float) -> dict[str, Any]:
    """Pooled (all out-of-fold predictions) and per-fold mean ± std annotation metrics per variant, retrieval
    recalls (mean ± std over folds) and stage times."""
    out: dict[str, Any] = {"variants": {}, "threshold": threshold}
    for variant, part in pred.groupby("variant", sort=False):
        pooled = annotation_metrics(part, spec, threshold)
        per_fold = [annotation_metrics(p, spec, threshold) for _, p in part.groupby("fold")]
        fold_macro = {m: _mean_std([f["macro"][m] for f in per_fold]) for m in ("sensitivity", "precision", "f1")}
        rec: dict[str, Any] = {}
        for k, r in retrieval.items():
            for direction, vals in r.get(variant, {}).items():
                for key, v in vals.items():
                    rec.setdefault(direction, {}).setdefault(key, []).append(v)
        out["variants"][variant] = {
            "pooled": pooled, "per_fold_macro": fold_macro,
            "retrieval": {d: {k: _mean_std(v) for k, v in vals.items()} for d, vals in rec.items()},
        }
    times: dict[str, list[float]] = {}
    for k, s in seconds.items():
        for name, v in s.items():
            times.setdefault(name, []).append(float(v))
    out["seconds"] = {name: _mean_std(v) for name, v in times.items()}
    return out


def _mean_std(values: list[float]) -> list[float]:
    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if v.size == 0:
        return [float("nan"), float("nan"), 0]
    return [float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)]


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_ms(ms: list[float], digits: int = 3) -> str:
    return "n/a" if math.isnan(ms[0]) else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def write_dilbert_report(run_dir: Path, cfg: RunConfig, summary: dict[str, Any], spec: AnnotationSpec,
                         folds: list[int], title: str | None = None) -> Path:
    """report.md: per-finding table, macro, retrieval and training time tables (`title`: the heading, default
    '<name>: dilbert on <data>')."""
    variants = list(summary["variants"])
    lines = [f"# {title or f'{cfg.name}: dilbert on {cfg.data.spec}'}", "",
             f"Folds {folds} of {cfg.train.folds} (grouped by patient). Annotation: threshold "
             f"{summary['threshold']} on sigmoid probabilities (binary), argmax (categorical); pooled over the "
             "out-of-fold predictions. Macro F1 per fold: mean ± std.", ""]
    names = list(spec.binary) + [f"{c}={k}" for c, ks in spec.categorical.items() for k in ks]
    lines += ["## Annotation (pooled out-of-fold)", "",
              "| finding | " + " | ".join(f"{v} sens / prec / F1" for v in variants) + " |",
              "|---|" + "---|" * len(variants)]
    for n in names:
        cells = []
        for v in variants:
            p = summary["variants"][v]["pooled"]
            if "=" in n:
                c, k = n.split("=", 1)
                r = p["categorical"][c]["classes"][k]
            else:
                r = p["findings"][n]
            cells.append(f"{_fmt(r['sensitivity'])} / {_fmt(r['precision'])} / {_fmt(r['f1'])}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| **macro** | " + " | ".join(
        "{} / {} / {}".format(*(_fmt(summary['variants'][v]['pooled']['macro'][m]) for m in ('sensitivity', 'precision', 'f1')))
        for v in variants) + " |")
    lines.append("| macro F1 per fold | " + " | ".join(_fmt_ms(summary["variants"][v]["per_fold_macro"]["f1"])
                                                     for v in variants) + " |")
    lines += ["", "## Retrieval (CMM scores of the pretrained models; mean ± std over folds)", "",
              "| variant | seq→text R@1 | R@5 | R@10 | text→seq R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        r = summary["variants"][v]["retrieval"]
        if not r:
            continue
        cells = [_fmt_ms(r[d][f"R@{k}"]) for d in ("seq2text", "text2seq") for k in (1, 5, 10)]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    r0 = next((summary["variants"][v]["retrieval"] for v in variants if summary["variants"][v]["retrieval"]), None)
    if r0:
        cells = [_fmt_ms(r0[d][f"chance@{k}"]) for d in ("seq2text", "text2seq") for k in (1, 5, 10)]
        lines.append("| random ranking | " + " | ".join(cells) + " |")
    banked = [v for v in variants if "text2seq_bank" in summary["variants"][v]["retrieval"]]
    if banked:
        lines += ["", "Query-bank normalised (each candidate's scores against the training fold's texts or sequences, "
                  "`bank_normalised`; random ranking as above):", "",
                  "| variant | seq→text R@1 | R@5 | R@10 | text→seq R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|---|"]
        for v in banked:
            r = summary["variants"][v]["retrieval"]
            cells = [_fmt_ms(r[d][f"R@{k}"]) for d in ("seq2text_bank", "text2seq_bank") for k in (1, 5, 10)]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "## Training time per fold (seconds, mean ± std)", "", "| stage | seconds |", "|---|---|"]
    for name, ms in summary["seconds"].items():
        lines.append(f"| {name} | {_fmt_ms(ms, 0)} |")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
