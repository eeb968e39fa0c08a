"""kNN anomaly detection: hand-computed scores, group exclusion, thresholds, a separable toy (AUROC 1)."""

from __future__ import annotations

import numpy as np
import pytest

from sonodistill.evaluation.anomaly import (
    anomaly_metrics,
    choose_threshold,
    knn_anomaly_detection,
    knn_anomaly_scores,
)


def test_scores_hand_computed():
    bank = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    q = np.array([[3.0, 0.0], [1.0, 1.0]])
    # query 0: cosine distances 0, 1, 2 -> k=1: 0, k=2: 0.5 ; query 1: 1 - 1/sqrt2 (twice), 1 + 1/sqrt2
    np.testing.assert_allclose(knn_anomaly_scores(bank, q, k=1), [0.0, 1 - 2 ** -0.5])
    np.testing.assert_allclose(knn_anomaly_scores(bank, q, k=2), [0.5, 1 - 2 ** -0.5])
    np.testing.assert_allclose(knn_anomaly_scores(bank, q, k=10), [1.0, (3 - 2 ** -0.5) / 3])


def test_own_group_is_left_out():
    bank = np.array([[1.0, 0.0], [0.0, 1.0]])
    q = np.array([[1.0, 0.0]])
    assert knn_anomaly_scores(bank, q, 1, np.array(["a", "b"]), np.array(["a"]))[0] == pytest.approx(1.0)
    assert knn_anomaly_scores(bank, q, 1, np.array(["a", "b"]), np.array(["c"]))[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no bank item"):
        knn_anomaly_scores(bank, q, 1, np.array(["a", "a"]), np.array(["a"]))


def test_thresholds():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    anomalous = np.array([0, 0, 0, 1, 1, 1], bool)
    assert choose_threshold(scores, anomalous, "max_f1") == pytest.approx(0.35)  # midway between 0.3 and 0.4
    assert choose_threshold(scores, anomalous, "percentile", 50) == pytest.approx(0.2)
    m = anomaly_metrics(scores, anomalous, 0.35)
    assert m["f1"] == 1.0 and m["auroc"] == 1.0 and m["balanced_accuracy"] == 1.0
    m = anomaly_metrics(scores, anomalous, 0.25)  # predicts 4 anomalous: P = 3/4, R = 1
    assert m["f1"] == pytest.approx(2 * 0.75 / 1.75) and m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="unknown rule"):
        choose_threshold(scores, anomalous, "best")


def test_normal_cluster_versus_outliers_gives_auroc_one():
    rng = np.random.default_rng(0)
    d = 16
    centre = np.eye(d)[0] * 5
    train_normal = centre + rng.normal(size=(40, d))
    train_abn = -centre + rng.normal(size=(10, d))
    test_normal = centre + rng.normal(size=(20, d))
    test_abn = -centre + rng.normal(size=(10, d))
    test_unseen = np.roll(centre, 3) + rng.normal(size=(10, d))  # anomalies of a kind absent from training
    train = np.vstack([train_normal, train_abn])
    train_y = np.r_[np.zeros(40), np.ones(10)].astype(bool)
    groups = np.arange(50) // 2  # two clips per patient
    test_y = np.r_[np.zeros(20), np.ones(10)].astype(bool)
    for rule, abn in (("max_f1", test_abn), ("percentile", test_abn), ("percentile", test_unseen)):
        res = knn_anomaly_detection(train, train_y, groups, np.vstack([test_normal, abn]), test_y, k=5,
                                    threshold_rule=rule, percentile=99)
        assert res["auroc"] == 1.0 and res["recall"] == 1.0  # every anomaly caught
        if rule == "max_f1":
            assert res["f1"] == 1.0 and res["balanced_accuracy"] == 1.0 and res["train_f1"] == 1.0
        else:  # the 99th percentile of 40 normal training scores: at most a normal or two above it
            assert res["balanced_accuracy"] >= 0.95
    assert res["test_scores"].shape == (30,) and res["train_scores"].shape == (50,)


def test_standardizing_removes_a_shared_direction():
    """Embeddings = big common vector + small informative part: raw cosine sees almost nothing, z-scored works."""
    rng = np.random.default_rng(1)
    d = 8
    common = np.full(d, 100.0)
    normal_dir, abn_dir = np.eye(d)[0], np.eye(d)[1]
    train = common + np.vstack([normal_dir + 0.1 * rng.normal(size=(30, d)), abn_dir + 0.1 * rng.normal(size=(10, d))])
    test = common + np.vstack([normal_dir + 0.1 * rng.normal(size=(10, d)), abn_dir + 0.1 * rng.normal(size=(10, d))])
    train_y = np.r_[np.zeros(30), np.ones(10)].astype(bool)
    test_y = np.r_[np.zeros(10), np.ones(10)].astype(bool)
    raw = knn_anomaly_detection(train, train_y, np.arange(40), test, test_y, k=3)
    scaled = knn_anomaly_detection(train, train_y, np.arange(40), test, test_y, k=3, standardize=True)
    assert raw["test_scores"].max() < 1e-3  # every raw cosine distance is tiny
    assert scaled["auroc"] == 1.0 and scaled["f1"] >= 0.9  # threshold from training scores
    assert scaled["f1_all_anomalous"] == pytest.approx(2 * 0.5 / 1.5)
