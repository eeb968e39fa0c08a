"""kNN anomaly detection on frozen embeddings (DISCOVR's protocol): a bank of normal embeddings, cosine distance.

score(q) = mean over the k nearest bank embeddings of `1 - cos(q, b)`. Higher = more anomalous.
The decision threshold is chosen on the training folds only, from leave-one-group-out scores of the
training clips (a clip is never scored against clips of its own patient), by one of two rules:
- `"max_f1"`: the threshold that maximises the anomaly-class F1 over all training clips, placed midway
  between two consecutive training scores (the lowest such threshold on ties);
- `"percentile"`: the `percentile`-th percentile of the normal training clips' scores.
A clip is called anomalous when `score >= threshold`.

With `standardize=True` every embedding dimension is z-scored with the mean and std of all training clips
(labels unused; the same step as the linear probe's StandardScaler) before the cosine: embeddings that share
a large common direction (e.g. a final LayerNorm's bias) otherwise have cosine distances near 0 whatever
their content. (Centring on the *normal* mean alone would turn a tight normal cluster into isotropic noise
around 0, where cosine distances are meaningless.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

THRESHOLD_RULES = ("max_f1", "percentile")


def _l2(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be N x D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} row {int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])} is not finite")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_anomaly_scores(bank: np.ndarray, queries: np.ndarray, k: int = 5, bank_groups: np.ndarray | None = None,
                       query_groups: np.ndarray | None = None) -> np.ndarray:
    """Mean cosine distance of each query (`M x D`) to its `k` nearest bank embeddings (`N x D`) -> `M`.

    With groups, bank items of the query's own group are left out (leave-one-group-out); fewer than `k`
    remaining items use all that remain; none remaining is an error.
    """
    if k < 1:
        raise ValueError(f"knn_anomaly_scores: k must be >= 1, got {k}")
    b, q = _l2(bank, "bank"), _l2(queries, "queries")
    if b.shape[1] != q.shape[1]:
        raise ValueError(f"bank has dim {b.shape[1]} but queries have dim {q.shape[1]}")
    dist = 1.0 - q @ b.T  # M x N
    if (bank_groups is None) != (query_groups is None):
        raise ValueError("knn_anomaly_scores: pass both bank_groups and query_groups, or neither")
    if bank_groups is not None:
        same = np.asarray(query_groups).reshape(-1, 1) == np.asarray(bank_groups).reshape(1, -1)
        dist = np.where(same, np.inf, dist)
    n_valid = np.isfinite(dist).sum(axis=1)
    if (n_valid == 0).any():
        raise ValueError(f"query {int(np.flatnonzero(n_valid == 0)[0])} has no bank item outside its own group")
    kk = min(k, dist.shape[1])
    nearest = np.sort(dist, axis=1)[:, :kk]
    valid = np.isfinite(nearest)
    return np.where(valid, nearest, 0.0).sum(axis=1) / valid.sum(axis=1)


def choose_threshold(scores: np.ndarray, is_anomaly: np.ndarray, rule: str = "max_f1",
                     percentile: float = 95.0) -> float:
    """Decision threshold from training scores (see the module docstring for the rules)."""
    scores = np.asarray(scores, dtype=np.float64)
    is_anomaly = np.asarray(is_anomaly, dtype=bool)
    if rule == "percentile":
        normal = scores[~is_anomaly]
        if normal.size == 0:
            raise ValueError("choose_threshold: the percentile rule needs normal training scores")
        return float(np.percentile(normal, percentile))
    if rule != "max_f1":
        raise ValueError(f"choose_threshold: unknown rule {rule!r}; choose from {THRESHOLD_RULES}")
    if is_anomaly.all() or not is_anomaly.any():
        raise ValueError("choose_threshold: max_f1 needs both normal and anomalous training clips")
    uniq = np.unique(scores)
    candidates = np.r_[uniq[0] - 1e-9, (uniq[:-1] + uniq[1:]) / 2]  # below all scores, then every midpoint
    best, best_f1 = float(candidates[0]), -1.0
    for thr in candidates:
        f1 = f1_score(is_anomaly, scores >= thr, zero_division=0)
        if f1 > best_f1:
            best, best_f1 = float(thr), f1
    return best


def anomaly_metrics(scores: np.ndarray, is_anomaly: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC (threshold-free), and F1 / precision / recall of the anomaly class and balanced accuracy at
    `score >= threshold`. AUROC is NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(is_anomaly, dtype=bool)
    pred = scores >= threshold
    both = 0 < y.sum() < y.size
    return {
        "auroc": float(roc_auc_score(y, scores)) if both else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else float("nan"),
        "threshold": float(threshold),
        "f1_all_anomalous": float(2 * y.mean() / (1 + y.mean())) if y.any() else 0.0,  # trivial reference
        "n_test": int(y.size),
        "n_anomalous": int(y.sum()),
    }


def knn_anomaly_detection(train_feats: np.ndarray, train_is_anomaly: np.ndarray, train_groups: np.ndarray,
                          test_feats: np.ndarray, test_is_anomaly: np.ndarray, k: int = 5,
                          threshold_rule: str = "max_f1", percentile: float = 95.0,
                          standardize: bool = False) -> dict[str, Any]:
    """Full protocol for one fold: bank = normal training clips; threshold from leave-one-group-out training
    scores; test clips scored against the whole bank. Returns metrics plus `test_scores` and `train_scores`."""
    train_is_anomaly = np.asarray(train_is_anomaly, dtype=bool)
    train_groups = np.asarray(train_groups)
    normal = ~train_is_anomaly
    if not normal.any():
        raise ValueError("knn_anomaly_detection: no normal training clips to build the bank from")
    train_feats = np.asarray(train_feats, dtype=np.float64)
    test_feats = np.asarray(test_feats, dtype=np.float64)
    if standardize:  # statistics of the training clips only
        mean = train_feats.mean(axis=0, keepdims=True)
        std = np.maximum(train_feats.std(axis=0, keepdims=True), 1e-12)
        train_feats, test_feats = (train_feats - mean) / std, (test_feats - mean) / std
    bank = train_feats[normal]
    train_scores = knn_anomaly_scores(bank, train_feats, k, train_groups[normal], train_groups)
    threshold = choose_threshold(train_scores, train_is_anomaly, threshold_rule, percentile)
    test_scores = knn_anomaly_scores(bank, test_feats, k)
    out: dict[str, Any] = anomaly_metrics(test_scores, test_is_anomaly, threshold)
    out["train_f1"] = float(f1_score(train_is_anomaly, train_scores >= threshold, zero_division=0))
    out["test_scores"] = test_scores
    out["train_scores"] = train_scores
    return out
