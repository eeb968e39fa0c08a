"""Paired statistics on the same items: bootstrap intervals over groups and permutation tests.

Items belong to groups (patients, subjects: the manifest's ``group``); a group is the unit of resampling, because
items of one patient are not independent. Every metric is recomputed on the pooled predictions of the resampled
groups (a group drawn twice counts twice), never averaged over per-group values.

- ``bootstrap_intervals``: one model, metric on all items and its percentile interval (groups drawn with
  replacement, ``n_resamples`` times, seeded).
- ``paired_comparison``: models A (baseline) and B on the same items: difference B - A of each metric, its
  interval from the *same* group resamples applied to both models, and a two-sided paired permutation test that
  swaps A's and B's predictions for a random set of groups (every one of the 2**G swaps when 2**G <= n_permutations,
  then the p-value is exact). Several seeds: the statistic is the mean over seeds of B_s - A_s, a group's swap
  applies to every seed at once.

Metrics are computed with item *weights* (multiplicities, `R x N` for R resamples at once) by a `Scorer`:
``classification_scorer`` (accuracy, balanced accuracy, macro sensitivity / specificity / precision / F1,
macro one-vs-rest ROC-AUC, Brier score, top-class ECE, with exactly the conventions of
``metrics.classification_metrics``, which the tests hold it to; vectorised because 2000 resamples x 2 models x 4000
calls of that function take minutes),
``anomaly_scorer`` (DISCOVR's anomaly class: F1, precision, recall, balanced accuracy, AUROC), ``annotation_scorer``
(DILBERT's findings) and ``mean_scorer`` (mean of per-item values such as Dice, NaN left out, as in the
segmentation report).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sonodistill.evaluation.metrics import ECE_BINS, confidence_bins

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc")
ALL_CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1",
                              "roc_auc", "brier", "ece")
SEGMENTATION_METRICS = ("dice", "iou", "hc_abs_err_mm")
ANNOTATION_METRICS = ("f1", "sensitivity", "precision")  # macro over findings (DILBERT)
ANOMALY_METRICS = ("f1", "auroc", "balanced_accuracy", "precision", "recall")  # of the anomaly class (DISCOVR)
TIE_TOLERANCE = 1e-9
_CHUNK_CELLS = 4_000_000  # resamples x items per weight matrix (float64: 32 MB)


# ------------------------------------------------------------------------------------------------ scorers


@dataclass(frozen=True)
class Scorer:
    """Metric values from item weights: ``fn(data N x D, weights R x N) -> R x M`` (M = len(names)).

    data: one model's per-item predictions (class probabilities N x C, or per-item metric values N x M);
    weights: item multiplicities of R resamples (all ones: the metric on the items as they are).
    """

    names: tuple[str, ...]
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def __call__(self, data: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.fn(np.asarray(data, dtype=np.float64), np.atleast_2d(np.asarray(weights, dtype=np.float64)))


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Mean over axis 1 leaving NaN out; NaN where a row has no finite value (no RuntimeWarning)."""
    finite = ~np.isnan(x)
    n = finite.sum(axis=1)
    total = np.where(finite, x, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _divide(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), empty)


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC of scores [N] for positives [N] under weights R x N (ties count 1/2); NaN without pos or neg.

    Equals ``sklearn.metrics.roc_auc_score(positive, scores, sample_weight=w[r])`` for each row r."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ws = w[:, order]
    pos_b = np.add.reduceat(ws * positive[order], starts, axis=1)  # R x U weight per distinct score
    neg_b = np.add.reduceat(ws * ~positive[order], starts, axis=1)
    below = np.cumsum(neg_b, axis=1) - neg_b
    p, q = pos_b.sum(axis=1), neg_b.sum(axis=1)
    num = (pos_b * (below + 0.5 * neg_b)).sum(axis=1)
    return _divide(num, p * q, math.nan)


def classification_scorer(y_true: np.ndarray, n_classes: int,
                          metrics: Sequence[str] = CLASSIFICATION_METRICS) -> Scorer:
    """Scorer of class probabilities N x C against labels y_true [N] (int class indices).

    Macro averages are over the classes present (weight > 0) in the resample, ROC-AUC over classes with both
    positives and negatives; precision and F1 of a never-predicted class are 0 (``metrics.py`` conventions)."""
    y = np.asarray(y_true, dtype=np.int64)
    unknown = [m for m in metrics if m not in ALL_CLASSIFICATION_METRICS]
    if unknown:
        raise ValueError(f"unknown classification metric(s) {unknown}; known: {list(ALL_CLASSIFICATION_METRICS)}")
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array [N], got shape {y.shape}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true holds labels outside 0..{n_classes - 1}")
    true_1h = y[:, None] == np.arange(n_classes)  # N x C
    names = tuple(metrics)

    def fn(probs: np.ndarray, w: np.ndarray) -> np.ndarray:
        if probs.shape != (y.size, n_classes):
            raise ValueError(f"probabilities have shape {probs.shape}, expected {(y.size, n_classes)}")
        pred_1h = probs.argmax(axis=1)[:, None] == np.arange(n_classes)
        support, predicted, tp = w @ true_1h, w @ pred_1h, w @ (true_1h & pred_1h)  # R x C each
        total = w.sum(axis=1, keepdims=True)
        present = support > 0
        out: dict[str, np.ndarray] = {}
        out["accuracy"] = _divide(tp.sum(axis=1), total[:, 0], math.nan)
        recall = np.where(present, _divide(tp, support, math.nan), np.nan)
        out["balanced_accuracy"] = out["sensitivity"] = _nanmean_rows(recall)
        if "specificity" in names:
            tn = total - support - predicted + tp
            out["specificity"] = _nanmean_rows(np.where(present, _divide(tn, tn + predicted - tp, math.nan), np.nan))
        out["precision"] = _nanmean_rows(np.where(present, _divide(tp, predicted, 0.0), np.nan))
        out["f1"] = _nanmean_rows(np.where(present, _divide(2 * tp, support + predicted, 0.0), np.nan))
        if "roc_auc" in names:
            aucs = np.stack([_weighted_auc(probs[:, k], true_1h[:, k], w) for k in range(n_classes)], axis=1)
            out["roc_auc"] = _nanmean_rows(aucs)
        if "brier" in names:
            out["brier"] = _divide(w @ ((probs - true_1h) ** 2).sum(axis=1), total[:, 0], math.nan)
        if "ece" in names:  # per bin, |sum of weight x (correct - confidence)|, summed over bins
            gap = (pred_1h & true_1h).any(axis=1) - probs.max(axis=1)
            in_bin = confidence_bins(probs)[:, None] == np.arange(ECE_BINS)  # N x B
            out["ece"] = _divide(np.abs(w @ (gap[:, None] * in_bin)).sum(axis=1), total[:, 0], math.nan)
        return np.stack([out[m] for m in names], axis=1)

    return Scorer(names, fn)


def annotation_scorer(n_findings: int, metrics: Sequence[str] = ANNOTATION_METRICS) -> Scorer:
    """Scorer of multi-finding annotations: data N x 3F = [known | true | predicted] (0/1 per finding, F findings;
    a categorical target's classes count as findings, `evaluation/annotation.outcome_matrix`).

    Macro over findings as `annotation_metrics` does: sensitivity and F1 leave out findings where they are
    undefined (no positive; no positive, prediction or miss), precision is 0 for a finding never predicted."""
    unknown = [m for m in metrics if m not in ANNOTATION_METRICS]
    if unknown:
        raise ValueError(f"unknown annotation metric(s) {unknown}; known: {list(ANNOTATION_METRICS)}")
    names, f = tuple(metrics), int(n_findings)

    def fn(data: np.ndarray, w: np.ndarray) -> np.ndarray:
        if data.ndim != 2 or data.shape[1] != 3 * f:
            raise ValueError(f"annotation outcomes have shape {data.shape}, expected N x {3 * f}")
        known, true, pred = data[:, :f] > 0, data[:, f:2 * f] > 0, data[:, 2 * f:] > 0
        tp, fp, fn_ = w @ (known & true & pred), w @ (known & ~true & pred), w @ (known & true & ~pred)  # R x F
        out = {"sensitivity": _nanmean_rows(_divide(tp, tp + fn_, math.nan)),
               "precision": _nanmean_rows(_divide(tp, tp + fp, 0.0)),
               "f1": _nanmean_rows(_divide(2 * tp, 2 * tp + fp + fn_, math.nan))}
        return np.stack([out[m] for m in names], axis=1)

    return Scorer(names, fn)


def anomaly_scorer(metrics: Sequence[str] = ANOMALY_METRICS) -> Scorer:
    """Scorer of anomaly detection: data N x 3 = [is anomalous (0/1) | called anomalous (0/1) | anomaly score].

    The conventions of `anomaly.anomaly_metrics`: F1, precision and recall of the anomaly class (0 when undefined),
    balanced accuracy and AUROC of the score (NaN without both classes). AUROC pools the scores of all folds."""
    unknown = [m for m in metrics if m not in ANOMALY_METRICS]
    if unknown:
        raise ValueError(f"unknown anomaly metric(s) {unknown}; known: {list(ANOMALY_METRICS)}")
    names = tuple(metrics)

    def fn(data: np.ndarray, w: np.ndarray) -> np.ndarray:
        if data.ndim != 2 or data.shape[1] != 3:
            raise ValueError(f"anomaly outcomes have shape {data.shape}, expected N x 3 (true, called, score)")
        true, pred = data[:, 0] > 0, data[:, 1] > 0
        tp, fp, fn_ = w @ (true & pred), w @ (~true & pred), w @ (true & ~pred)
        tn = w @ (~true & ~pred)
        both = (tp + fn_ > 0) & (tn + fp > 0)
        recall = _divide(tp, tp + fn_, 0.0)
        out = {"f1": _divide(2 * tp, 2 * tp + fp + fn_, 0.0), "precision": _divide(tp, tp + fp, 0.0), "recall": recall,
               "balanced_accuracy": np.where(both, (recall + _divide(tn, tn + fp, 0.0)) / 2, math.nan)}
        if "auroc" in names:
            out["auroc"] = _weighted_auc(data[:, 2], true, w)
        return np.stack([out[m] for m in names], axis=1)

    return Scorer(names, fn)


def mean_scorer(metrics: Sequence[str]) -> Scorer:
    """Scorer of per-item values N x M (e.g. Dice, IoU, HC error per image): weighted mean, NaN left out."""
    names = tuple(metrics)

    def fn(values: np.ndarray, w: np.ndarray) -> np.ndarray:
        if values.ndim != 2 or values.shape[1] != len(names):
            raise ValueError(f"per-item values have shape {values.shape}, expected N x {len(names)} ({names})")
        finite = np.isfinite(values)
        return _divide(w @ np.where(finite, values, 0.0), w @ finite, math.nan)

    return Scorer(names, fn)


# ------------------------------------------------------------------------------------------------ resampling


def group_codes(groups: np.ndarray | Sequence | None, n_items: int) -> tuple[np.ndarray, int]:
    """Group index [N] in 0..G-1 and G; None: every item is its own group."""
    if groups is None:
        return np.arange(n_items), n_items
    groups = np.asarray(groups).astype(str)
    if groups.shape != (n_items,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n_items},)")
    uniq, codes = np.unique(groups, return_inverse=True)
    return codes.astype(np.int64), len(uniq)


def bootstrap_weights(codes: np.ndarray, n_groups: int, n_resamples: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Item weights R x N: each row draws `n_groups` groups with replacement; an item weighs its group's count."""
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)  # R x G
    return counts[:, codes].astype(np.float64)


def _chunks(n_resamples: int, n_items: int) -> list[int]:
    size = max(1, _CHUNK_CELLS // max(1, n_items))
    return [min(size, n_resamples - i) for i in range(0, n_resamples, size)]


def _percentiles(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of values R x M: (low, high, finite count), NaN where no finite value."""
    alpha = 100 * (1 - level) / 2
    low, high = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    n = np.isfinite(values).sum(axis=0)
    for j in range(values.shape[1]):
        v = values[np.isfinite(values[:, j]), j]
        if v.size:
            low[j], high[j] = np.percentile(v, [alpha, 100 - alpha])
    return low, high, n


def _check_level(level: float, n_resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


# ------------------------------------------------------------------------------------------------ one model


@dataclass(frozen=True)
class Interval:
    """A metric on all items and its bootstrap percentile interval (level `level`)."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    level: float
    n_items: int
    n_groups: int
    n_resamples: int  # resamples where the metric was defined (finite)

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_intervals(scorer: Scorer, data: np.ndarray, groups: np.ndarray | Sequence | None = None,
                        n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> list[Interval]:
    """Each metric of `scorer` on `data` (N x D) with its interval by bootstrap over groups (None: over items)."""
    _check_level(level, n_resamples)
    data = np.asarray(data, dtype=np.float64)
    n = data.shape[0]
    codes, g = group_codes(groups, n)
    value = scorer(data, np.ones((1, n)))[0]
    rng = np.random.default_rng([seed, 0])
    reps = np.concatenate([scorer(data, bootstrap_weights(codes, g, r, rng)) for r in _chunks(n_resamples, n)])
    low, high, used = _percentiles(reps, level)
    return [Interval(m, float(value[j]), float(low[j]), float(high[j]), level, n, g, int(used[j]))
            for j, m in enumerate(scorer.names)]


# ------------------------------------------------------------------------------------------------ two models


@dataclass(frozen=True)
class PairedDifference:
    """B - A of one metric: values on all items (means over seeds), bootstrap interval, permutation p-value."""

    metric: str
    baseline: float
    other: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    level: float
    n_items: int
    n_groups: int
    n_seeds: int
    n_resamples: int  # bootstrap resamples where the difference was defined
    n_permutations: int  # permutations evaluated (2**G when exact)
    exact: bool  # p-value from every one of the 2**G swaps

    def as_dict(self) -> dict:
        return asdict(self)


def _stack_seeds(runs: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    arrays = [np.asarray(r, dtype=np.float64) for r in runs]
    if not arrays:
        raise ValueError(f"{name}: no predictions (one array per seed expected)")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{name}: seeds have different shapes {sorted(shapes)}")
    return arrays


def _swap_sets(n_groups: int, n_permutations: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Swap indicators P x G: all 2**G when that is <= n_permutations (exact), else random halves."""
    if n_groups <= 30 and 2 ** n_groups <= n_permutations:
        return ((np.arange(2 ** n_groups)[:, None] >> np.arange(n_groups)) & 1).astype(bool), True
    return rng.random((n_permutations, n_groups)) < 0.5, False


def paired_comparison(scorer: Scorer, a: Sequence[np.ndarray], b: Sequence[np.ndarray],
                      groups: np.ndarray | Sequence | None = None, n_resamples: int = 2000,
                      n_permutations: int = 2000, level: float = 0.95, seed: int = 0) -> list[PairedDifference]:
    """Compare model B with baseline A on the same N items.

    a, b: one array per seed, each N x D (row i of every array is the same item); groups [N] (None: items).
    Statistic: mean over seeds of metric(B_s) - metric(A_s) on the pooled items. Interval: percentile bootstrap
    over groups, the same resamples for A and B. p-value (two-sided): share of group swaps whose |statistic| is
    at least the observed one; Monte Carlo with the +1 correction, (1 + k) / (1 + P), unless exact.
    """
    _check_level(level, n_resamples)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    a_list, b_list = _stack_seeds(a, "a"), _stack_seeds(b, "b")
    if len(a_list) != len(b_list) or a_list[0].shape != b_list[0].shape:
        raise ValueError(f"a and b differ: {len(a_list)} vs {len(b_list)} seeds of shape "
                         f"{a_list[0].shape} vs {b_list[0].shape}")
    n = a_list[0].shape[0]
    codes, g = group_codes(groups, n)
    ones = np.ones((1, n))

    def statistic(weights: np.ndarray, a_s: list[np.ndarray], b_s: list[np.ndarray]) -> np.ndarray:
        return np.mean([scorer(y, weights) - scorer(x, weights) for x, y in zip(a_s, b_s)], axis=0)

    base = np.mean([scorer(x, ones)[0] for x in a_list], axis=0)
    other = np.mean([scorer(y, ones)[0] for y in b_list], axis=0)
    observed = statistic(ones, a_list, b_list)[0]

    rng = np.random.default_rng([seed, 0])
    reps = np.concatenate([statistic(bootstrap_weights(codes, g, r, rng), a_list, b_list)
                           for r in _chunks(n_resamples, n)])
    low, high, used = _percentiles(reps, level)

    swaps, exact = _swap_sets(g, n_permutations, np.random.default_rng([seed, 1]))
    perm = np.empty((len(swaps), len(scorer.names)))
    for i, swap in enumerate(swaps):
        item_swap = swap[codes][:, None]
        a_p = [np.where(item_swap, y, x) for x, y in zip(a_list, b_list)]
        b_p = [np.where(item_swap, x, y) for x, y in zip(a_list, b_list)]
        perm[i] = statistic(ones, a_p, b_p)[0]

    out = []
    for j, m in enumerate(scorer.names):
        obs = float(observed[j])
        col = perm[:, j][np.isfinite(perm[:, j])]
        if not math.isfinite(obs) or col.size == 0:
            p = math.nan
        else:
            k = int(np.sum(np.abs(col) >= abs(obs) - TIE_TOLERANCE))
            p = k / col.size if exact else (1 + k) / (1 + col.size)
        out.append(PairedDifference(m, float(base[j]), float(other[j]), obs, float(low[j]), float(high[j]),
                                    min(1.0, p), level, n, g, len(a_list), int(used[j]), len(swaps), exact))
    return out
