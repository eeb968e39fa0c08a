"""Classification, regression and segmentation metrics, and mean ± std over cross-validation folds.

Conventions (see docs/evaluation.md):
- sensitivity = recall; specificity is one-vs-rest from the confusion matrix.
- Macro averages are taken over the classes present in ``y_true`` (so macro sensitivity equals
  balanced accuracy); per-class values of absent classes are still reported.
- Undefined values are NaN (sensitivity of a class absent from ``y_true``, specificity of a class that is
  every item, ROC-AUC without both positives and negatives), except precision of a never-predicted class,
  which is 0 (scikit-learn ``zero_division=0``), as is its F1.
- Calibration: ``brier`` is the multi-class Brier score, mean over items of sum_k (p_k - 1[y = k])^2 (0 perfect,
  2 worst; Brier 1950); ``ece`` the expected calibration error of the top class (Guo et al. 2017): items put in
  ECE_BINS equal-width bins ((m-1)/M, m/M] of their highest probability, sum over bins of the bin's share of items
  times |accuracy - mean highest probability| in it. Both: lower is better.
- Segmentation: both masks empty -> dice 1, iou 1, hd95 0, asd 0; exactly one empty -> dice 0, iou 0,
  hd95 NaN, asd NaN (no surface to measure to). ``summarise`` skips NaN and counts them in ``n_nan``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)

PROB_SUM_TOLERANCE = 1e-3
ECE_BINS = 15  # Guo et al. 2017's equal-width confidence bins


class MeanStd(tuple):
    """``(mean, std)`` over folds (a plain 2-tuple), plus ``n`` values used and ``n_nan`` values skipped."""

    def __new__(cls, mean: float, std: float, n: int = 0, n_nan: int = 0) -> "MeanStd":
        self = super().__new__(cls, (float(mean), float(std)))
        self.n = int(n)
        self.n_nan = int(n_nan)
        return self

    @property
    def mean(self) -> float:
        return self[0]

    @property
    def std(self) -> float:
        return self[1]

    def __reduce__(self):  # keep n and n_nan through pickling / copying
        return (MeanStd, (self[0], self[1], self.n, self.n_nan))

    def __repr__(self) -> str:
        return f"MeanStd(mean={self[0]!r}, std={self[1]!r}, n={self.n}, n_nan={self.n_nan})"


# --------------------------------------------------------------------------------------------- classification


def _check_classification_inputs(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.ndim != 1:
        raise ValueError(f"y_true must be 1-D [N], got shape {y_true.shape}")
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C], got shape {probs.shape}")
    n, c = probs.shape
    if y_true.shape[0] != n:
        raise ValueError(f"y_true has {y_true.shape[0]} items but probs has {n} rows")
    if n == 0:
        raise ValueError("no items: y_true and probs are empty")
    if c != len(classes):
        raise ValueError(f"probs has {c} columns but {len(classes)} classes were given: {list(classes)}")
    if c < 2:
        raise ValueError(f"classification needs at least 2 classes, got {list(classes)}")
    if len(set(classes)) != c:
        raise ValueError(f"class names must be unique, got {list(classes)}")
    if not np.issubdtype(y_true.dtype, np.integer):
        if not np.all(np.mod(y_true.astype(np.float64), 1) == 0):
            raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
        y_true = y_true.astype(np.int64)
    bad = np.flatnonzero((y_true < 0) | (y_true >= c))
    if bad.size:
        raise ValueError(f"y_true row {bad[0]} has label {y_true[bad[0]]}, outside 0..{c - 1} ({list(classes)})")
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if bad.size:
        raise ValueError(f"probs row {bad[0]} is not finite: {probs[bad[0]].tolist()}")
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_TOLERANCE)
    if bad.size:
        raise ValueError(f"probs row {bad[0]} sums to {sums[bad[0]]:.6f}, not 1 (pass softmax probabilities)")
    return y_true.astype(np.int64), probs


def _specificity(cm: np.ndarray) -> np.ndarray:
    """One-vs-rest specificity TN / (TN + FP) per class from a C x C confusion matrix (NaN when TN + FP = 0)."""
    total = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = total - tp - fp - fn
    denom = tn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tn / np.maximum(denom, 1), np.nan)


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score: mean over items of sum_k (probs[i, k] - 1[y_true[i] = k])^2; y [N], probs N x C."""
    onehot = np.asarray(y_true)[:, None] == np.arange(probs.shape[1])
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def confidence_bins(probs: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index [N] in 0..n_bins-1 of each item's highest probability: bin m holds (m/n_bins, (m+1)/n_bins]."""
    # the 1e-9 keeps a confidence of exactly m / n_bins in bin m - 1 (0.8 * 15 is 12.000000000000002)
    confidence = probs.max(axis=1)
    return np.clip(np.ceil(confidence * n_bins - 1e-9).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_bins(y_true: np.ndarray, probs: np.ndarray,
                     n_bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin [n_bins]: items, sum of highest probabilities, right predictions (ECE, reliability plot)."""
    bins = confidence_bins(probs, n_bins)
    right = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    return (np.bincount(bins, minlength=n_bins), np.bincount(bins, weights=probs.max(axis=1), minlength=n_bins),
            np.bincount(bins, weights=right, minlength=n_bins))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-class ECE: sum over confidence bins of (items in bin / N) * |accuracy - mean confidence| in the bin."""
    count, confidence, right = reliability_bins(y_true, probs, n_bins)
    return float(np.abs(right - confidence).sum() / count.sum())


def _mean_or_nan(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float | list]:
    """Accuracy, balanced accuracy, macro and per-class sensitivity/specificity/precision/F1/ROC-AUC, Brier score
    and ECE (calibration), confusion matrix.

    y_true: int [N] class indices; probs: float [N, C], rows summing to 1; prediction = argmax.
    """
    y_true, probs = _check_classification_inputs(y_true, probs, classes)
    c = probs.shape[1]
    labels = list(range(c))
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    present = support > 0

    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    sensitivity = np.where(present, recall, np.nan)
    specificity = _specificity(cm)
    auc = np.full(c, np.nan)
    for k in labels:
        positives = y_true == k
        if 0 < positives.sum() < len(y_true):
            auc[k] = roc_auc_score(positives, probs[:, k])

    out: dict[str, float | list] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        "sensitivity": _mean_or_nan(sensitivity),
        "specificity": _mean_or_nan(specificity[present]),
        "precision": float(np.mean(precision[present])),
        "f1": float(np.mean(f1[present])),
        "roc_auc": _mean_or_nan(auc),
        "brier": brier_score(y_true, probs),
        "ece": expected_calibration_error(y_true, probs),
    }
    for k, name in enumerate(classes):
        out[f"sensitivity/{name}"] = float(sensitivity[k])
        out[f"specificity/{name}"] = float(specificity[k])
        out[f"precision/{name}"] = float(precision[k])
        out[f"f1/{name}"] = float(f1[k])
        out[f"roc_auc/{name}"] = float(auc[k])
    out["confusion_matrix"] = [[int(v) for v in row] for row in cm]
    return out


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """scikit-learn's balanced accuracy (mean recall over classes in y_true), without its warning about
    predicted classes absent from y_true (that case is expected in small folds and handled the same way)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


# ------------------------------------------------------------------------------------------------- regression


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R^2 of predictions [N] against targets [N] (R^2 is NaN when N < 2)."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("no items: y_true and y_pred are empty")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{name} row {bad[0]} is not finite: {arr[bad[0]]}")
    return {
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "r2": float(r2_score(y_true, y_pred)) if y_true.size >= 2 else math.nan,
    }


# ----------------------------------------------------------------------------------------------- segmentation


def _as_binary_mask(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name} must be a binary mask (bool or 0/1), got values {np.unique(x)[:5].tolist()}...")
    return x.astype(bool)


def _spacing_tuple(spacing: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    if isinstance(spacing, Real):
        sp = (float(spacing),) * ndim
    else:
        sp = tuple(float(s) for s in spacing)
        if len(sp) != ndim:
            raise ValueError(f"spacing {tuple(spacing)} has {len(sp)} values but the masks are {ndim}-D")
    if not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be positive and finite, got {sp}")
    return sp


def segmentation_metrics(
    pred: np.ndarray, target: np.ndarray, spacing: float | tuple = 1.0
) -> dict[str, float]:
    """Dice, IoU, HD95 and symmetric average surface distance of binary masks H x W (or D x H x W).

    spacing: size of a pixel (one number, or one per axis, e.g. mm); hd95 and asd are in those units.
    """
    pred = _as_binary_mask(pred, "pred")
    target = _as_binary_mask(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be H x W or D x H x W, got shape {pred.shape}")
    sp = _spacing_tuple(spacing, pred.ndim)

    n_pred, n_target = int(pred.sum()), int(target.sum())
    if n_pred == 0 and n_target == 0:
        return {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}
    inter = int(np.logical_and(pred, target).sum())
    union = n_pred + n_target - inter
    out = {"dice": 2.0 * inter / (n_pred + n_target), "iou": inter / union}
    if n_pred == 0 or n_target == 0:
        out.update(hd95=math.nan, asd=math.nan)
        return out

    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yt = torch.from_numpy(target[None, None].astype(np.float32))
    with warnings.catch_warnings():  # MONAI 1.5+ passes its own deprecated argument internally
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=sp)
        asd = compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=sp)
    out.update(hd95=float(hd95.item()), asd=float(asd.item()))
    return out


# ---------------------------------------------------------------------------------------------------- folds


def _is_scalar(v: object) -> bool:
    return isinstance(v, (Real, np.number)) and not isinstance(v, (bool, np.bool_))


def summarise(per_fold: list[Mapping], keys: list[str] | None = None) -> dict[str, MeanStd]:
    """Mean and std (ddof=1; 0 for one fold) of each scalar metric over folds, skipping NaN.

    keys: metrics to summarise (default: every scalar key of the first fold). Each value is a ``MeanStd``,
    a ``(mean, std)`` tuple that also carries ``n`` (folds used) and ``n_nan`` (folds skipped as NaN).
    """
    if not per_fold:
        raise ValueError("summarise needs at least one fold, got none")
    if keys is None:
        keys = [k for k, v in per_fold[0].items() if _is_scalar(v)]
    out: dict[str, MeanStd] = {}
    for key in keys:
        values = []
        for i, fold in enumerate(per_fold):
            if key not in fold:
                raise ValueError(f"fold {i} has no metric '{key}' (it has {sorted(fold)})")
            v = fold[key]
            if not _is_scalar(v):
                raise ValueError(f"fold {i} metric '{key}' is not a number: {v!r}")
            values.append(float(v))
        arr = np.asarray(values, dtype=np.float64)
        used = arr[~np.isnan(arr)]
        n, n_nan = int(used.size), int(arr.size - used.size)
        if n == 0:
            out[key] = MeanStd(math.nan, math.nan, 0, n_nan)
        else:
            std = float(np.std(used, ddof=1)) if n >= 2 else 0.0
            out[key] = MeanStd(float(np.mean(used)), std, n, n_nan)
    return out
