"""Metrics against scikit-learn, hand-computed values and a brute-force surface-distance reference."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from sonodistill.evaluation.metrics import (
    MeanStd,
    classification_metrics,
    regression_metrics,
    segmentation_metrics,
    summarise,
)

CLASSES3 = ["a", "b", "c"]


def probs_from(pred: list[int], n_classes: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Probabilities whose argmax is `pred`: random but peaked, rows summing to 1."""
    rng = rng or np.random.default_rng(0)
    p = rng.uniform(0.0, 0.3, size=(len(pred), n_classes))
    p[np.arange(len(pred)), pred] = 1.0
    return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------- classification


def test_classification_matches_sklearn_three_classes(rng):
    y = rng.integers(0, 3, size=60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    m = classification_metrics(y, probs, CLASSES3)

    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    recalls = recall_score(y, pred, average=None)
    precisions = precision_score(y, pred, average=None)
    f1s = f1_score(y, pred, average=None)
    for k, c in enumerate(CLASSES3):
        assert m[f"sensitivity/{c}"] == pytest.approx(recalls[k])
        assert m[f"precision/{c}"] == pytest.approx(precisions[k])
        assert m[f"f1/{c}"] == pytest.approx(f1s[k])
        assert m[f"roc_auc/{c}"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert all(isinstance(v, int) for row in m["confusion_matrix"] for v in row)


def test_brier_and_ece_hand_computed():
    """Brier: (0.14 + 0.06 + 0.54 + 0.62) / 4 = 0.34, as scikit-learn's multi-class brier_score_loss. ECE, 15 bins:
    confidences 0.7 / 0.8 / 0.4 right and 0.5 wrong each alone in a bin: (0.3 + 0.2 + 0.6 + 0.5) / 4 = 0.4."""
    y = np.array([0, 1, 2, 1])
    probs = np.array([[.7, .2, .1], [.1, .8, .1], [.3, .3, .4], [.5, .4, .1]])
    m = classification_metrics(y, probs, CLASSES3)
    assert m["brier"] == pytest.approx(0.34)
    assert m["brier"] == pytest.approx(brier_score_loss(y, probs, labels=[0, 1, 2]))
    assert m["ece"] == pytest.approx(0.4)
    perfect = classification_metrics(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]), ["a", "b"])
    assert perfect["brier"] == 0.0 and perfect["ece"] == 0.0


def test_ece_pools_a_bin_before_taking_the_absolute_gap():
    """Confidence 0.75 right and exactly 0.8 = 12/15 wrong share the bin (11/15, 12/15]: |0.25 - 0.8| / 2 = 0.275,
    not (0.25 + 0.8) / 2; moved to 0.81 (the next bin) the wrong one counts alone: (0.25 + 0.81) / 2 = 0.53."""
    y = np.array([0, 1])
    same_bin = classification_metrics(y, np.array([[0.75, 0.25], [0.8, 0.2]]), ["a", "b"])
    assert same_bin["ece"] == pytest.approx(0.275)
    next_bin = classification_metrics(y, np.array([[0.75, 0.25], [0.81, 0.19]]), ["a", "b"])
    assert next_bin["ece"] == pytest.approx(0.53)


def test_specificity_hand_computed_3x3():
    # confusion matrix (rows true, cols predicted) = [[3,1,0],[1,2,1],[0,1,4]], N = 13
    pairs = [(0, 0)] * 3 + [(0, 1)] + [(1, 0)] + [(1, 1)] * 2 + [(1, 2)] + [(2, 1)] + [(2, 2)] * 4
    y = np.array([t for t, _ in pairs])
    probs = probs_from([p for _, p in pairs], 3)
    m = classification_metrics(y, probs, CLASSES3)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 1], [0, 1, 4]]
    # class a: TN = 13-4-4+3 = 8, FP = 1;  class b: TN = 13-4-4+2 = 7, FP = 2;  class c: TN = 13-5-5+4 = 7, FP = 1
    assert m["specificity/a"] == pytest.approx(8 / 9)
    assert m["specificity/b"] == pytest.approx(7 / 9)
    assert m["specificity/c"] == pytest.approx(7 / 8)
    assert m["specificity"] == pytest.approx((8 / 9 + 7 / 9 + 7 / 8) / 3)
    assert m["sensitivity/a"] == pytest.approx(3 / 4)
    assert m["sensitivity/b"] == pytest.approx(2 / 4)
    assert m["sensitivity/c"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(9 / 13)


def test_binary_case():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.4, 0.6, 0.7, 0.9, 0.3, 0.8, 0.2])
    probs = np.stack([1 - p1, p1], axis=1)
    pred = (p1 >= 0.5).astype(int)
    m = classification_metrics(y, probs, ["neg", "pos"])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["roc_auc/neg"] == pytest.approx(m["roc_auc/pos"])
    assert m["sensitivity/pos"] == pytest.approx(recall_score(y, pred))  # 3/4
    assert m["specificity/pos"] == pytest.approx(3 / 4)  # negatives 0,1,7 correct, 2 wrong
    assert m["specificity/pos"] == pytest.approx(m["sensitivity/neg"])
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_absent_class_is_nan_and_excluded_from_macro():
    y = np.array([0, 0, 1, 1, 0, 1])
    pred = [0, 2, 1, 0, 0, 1]  # class c never true but predicted once
    probs = probs_from(pred, 3)
    m = classification_metrics(y, probs, CLASSES3)
    assert math.isnan(m["sensitivity/c"]) and math.isnan(m["roc_auc/c"])
    assert m["precision/c"] == 0.0
    assert m["sensitivity"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(precision_score(y, pred, labels=[0, 1], average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, labels=[0, 1], average="macro"))
    assert m["roc_auc"] == pytest.approx(np.mean([m["roc_auc/a"], m["roc_auc/b"]]))
    assert m["specificity/c"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"][2] == [0, 0, 0]


def test_never_predicted_class_has_zero_precision():
    y = np.array([0, 1, 2, 2])
    probs = probs_from([0, 1, 1, 1], 3)
    m = classification_metrics(y, probs, CLASSES3)
    assert m["precision/c"] == 0.0
    assert m["f1/c"] == 0.0
    assert m["sensitivity/c"] == 0.0


def test_roc_auc_nan_when_single_class():
    y = np.array([1, 1, 1])
    m = classification_metrics(y, probs_from([1, 0, 1], 3), CLASSES3)
    assert math.isnan(m["roc_auc"])
    assert m["sensitivity"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "y, probs, classes, match",
    [
        ([0, 1], [[0.5, 0.4], [0.5, 0.5]], ["a", "b"], "sums to"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "outside"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "items"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"], "columns"),
        ([0, 1], [[np.nan, 1.0], [0.5, 0.5]], ["a", "b"], "not finite"),
    ],
)
def test_classification_rejects_bad_inputs(y, probs, classes, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(np.array(y), np.array(probs), classes)


# --------------------------------------------------------------------------------------------- regression


def test_regression_hand_case():
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0]))
    assert m["mae"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 4 / 5)
    assert m["r2"] == pytest.approx(r2_score([1, 2, 3, 4], [1, 2, 3, 6]))


def test_regression_rejects_mismatch():
    with pytest.raises(ValueError, match="values"):
        regression_metrics(np.zeros(3), np.zeros(4))


# ------------------------------------------------------------------------------------------- segmentation


def square(shape: tuple[int, ...], start: int, size: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(start, start + size) for _ in shape)] = True
    return m


def brute_force_surface(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """Reference HD95 and symmetric ASD: edge pixels (mask minus its erosion), all pairwise distances."""
    sp = np.asarray(spacing, dtype=np.float64)
    ep = np.argwhere(pred & ~binary_erosion(pred)) * sp
    et = np.argwhere(target & ~binary_erosion(target)) * sp
    d = np.sqrt(((ep[:, None, :] - et[None, :, :]) ** 2).sum(-1))
    d_pt, d_tp = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))
    return float(hd95), float(np.concatenate([d_pt, d_tp]).mean())


def test_dice_iou_overlapping_squares():
    a = square((10, 10), 2, 4)  # rows/cols 2..5
    b = square((10, 10), 4, 4)  # rows/cols 4..7, overlap 2 x 2 = 4 pixels
    m = segmentation_metrics(a, b)
    assert m["dice"] == pytest.approx(2 * 4 / (16 + 16))
    assert m["iou"] == pytest.approx(4 / (16 + 16 - 4))
    same = segmentation_metrics(a, a.astype(np.uint8))
    assert same == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}


@pytest.mark.parametrize("spacing", [1.0, (0.5, 2.0)])
def test_hd95_asd_match_brute_force_2d(spacing):
    rng = np.random.default_rng(1)
    for _ in range(3):
        pred = np.zeros((16, 16), bool)
        target = np.zeros((16, 16), bool)
        for mask in (pred, target):
            r, c = rng.integers(0, 10, size=2)
            h, w = rng.integers(3, 7, size=2)
            mask[r : r + h, c : c + w] = True
            mask[rng.integers(0, 16), rng.integers(0, 16)] = True  # an outlier pixel
        sp = (spacing, spacing) if isinstance(spacing, float) else spacing
        hd95, asd = brute_force_surface(pred, target, sp)
        m = segmentation_metrics(pred, target, spacing=spacing)
        assert m["hd95"] == pytest.approx(hd95, rel=1e-5)
        assert m["asd"] == pytest.approx(asd, rel=1e-5)


def test_hd95_asd_match_brute_force_3d():
    pred = square((8, 8, 8), 1, 4)
    target = square((8, 8, 8), 3, 4)
    hd95, asd = brute_force_surface(pred, target, (2.0, 1.0, 1.0))
    m = segmentation_metrics(pred, target, spacing=(2.0, 1.0, 1.0))
    assert m["hd95"] == pytest.approx(hd95, rel=1e-5)
    assert m["asd"] == pytest.approx(asd, rel=1e-5)


def test_isotropic_spacing_scales_distances():
    a, b = square((12, 12), 1, 5), square((12, 12), 4, 6)
    m1, m2 = segmentation_metrics(a, b), segmentation_metrics(a, b, spacing=0.5)
    assert m2["hd95"] == pytest.approx(m1["hd95"] / 2, rel=1e-5)
    assert m2["asd"] == pytest.approx(m1["asd"] / 2, rel=1e-5)
    assert m2["dice"] == m1["dice"]


def test_empty_masks():
    empty, full = np.zeros((6, 6), bool), square((6, 6), 1, 3)
    assert segmentation_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}
    for pred, target in ((empty, full), (full, empty)):
        m = segmentation_metrics(pred, target)
        assert m["dice"] == 0.0 and m["iou"] == 0.0
        assert math.isnan(m["hd95"]) and math.isnan(m["asd"])


@pytest.mark.parametrize(
    "pred, target, spacing, match",
    [
        (np.full((4, 4), 2), np.zeros((4, 4)), 1.0, "binary"),
        (np.zeros((4, 4)), np.zeros((4, 5)), 1.0, "shape"),
        (np.zeros((4, 4)), np.zeros((4, 4)), (1.0, 1.0, 1.0), "spacing"),
        (np.zeros(4), np.zeros(4), 1.0, "H x W"),
    ],
)
def test_segmentation_rejects_bad_inputs(pred, target, spacing, match):
    with pytest.raises(ValueError, match=match):
        segmentation_metrics(pred, target, spacing)


# -------------------------------------------------------------------------------------------------- folds


def test_summarise_mean_std_and_nan_count():
    folds = [
        {"acc": 0.8, "hd95": 2.0, "confusion_matrix": [[1]], "name": "x"},
        {"acc": 0.6, "hd95": float("nan"), "confusion_matrix": [[1]], "name": "y"},
        {"acc": 0.7, "hd95": 4.0, "confusion_matrix": [[1]], "name": "z"},
    ]
    s = summarise(folds)
    assert set(s) == {"acc", "hd95"}
    mean, std = s["acc"]
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(0.1)  # sqrt(((0.1)^2 + (0.1)^2 + 0) / 2)
    assert (s["acc"].n, s["acc"].n_nan) == (3, 0)
    assert s["hd95"] == pytest.approx((3.0, math.sqrt(2.0)))
    assert (s["hd95"].n, s["hd95"].n_nan) == (2, 1)
    assert repr(copy.deepcopy(s["hd95"])) == repr(s["hd95"])


def test_summarise_single_fold_and_all_nan():
    s = summarise([{"a": 0.5, "b": float("nan")}])
    assert tuple(s["a"]) == (0.5, 0.0)
    assert math.isnan(s["b"].mean) and s["b"].n == 0 and s["b"].n_nan == 1


def test_summarise_explicit_keys_and_errors():
    folds = [{"a": 1.0, "b": 2.0}, {"a": 3.0}]
    assert summarise(folds, keys=["a"]) == {"a": (2.0, math.sqrt(2.0))}
    assert isinstance(summarise(folds, keys=["a"])["a"], MeanStd)
    with pytest.raises(ValueError, match="fold 1 has no metric 'b'"):
        summarise(folds, keys=["b"])
    with pytest.raises(ValueError, match="at least one fold"):
        summarise([])
