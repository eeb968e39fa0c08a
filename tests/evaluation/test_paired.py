"""Paired statistics: weighted metrics against metrics.py / scikit-learn, and comparisons with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sonodistill.evaluation.metrics import classification_metrics
from sonodistill.evaluation.paired import (
    ALL_CLASSIFICATION_METRICS,
    _weighted_auc,
    bootstrap_intervals,
    bootstrap_weights,
    classification_scorer,
    group_codes,
    mean_scorer,
    paired_comparison,
)

CLASSES = ["a", "b", "c"]


def _random_probs(n: int, c: int, seed: int, decimals: int = 1) -> np.ndarray:
    """Rounded Dirichlet probabilities (ties in scores on purpose), rows summing to 1."""
    rng = np.random.default_rng(seed)
    p = np.round(rng.dirichlet(np.ones(c), n), decimals)
    p[:, -1] = 1.0 - p[:, :-1].sum(axis=1)
    return np.clip(p, 0, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("absent_class", [False, True])
def test_weighted_classification_equals_metrics_py_on_repeated_rows(seed, absent_class):
    rng = np.random.default_rng(seed)
    n = 40
    y = rng.integers(0, 2 if absent_class else 3, n)  # class 'c' absent from y_true in half of the cases
    probs = _random_probs(n, 3, seed)
    weights = rng.integers(0, 4, size=(5, n)).astype(float)
    weights[:, 0] = 1  # never an empty resample
    got = classification_scorer(y, 3, ALL_CLASSIFICATION_METRICS)(probs, weights)
    for r, w in enumerate(weights):
        rows = np.repeat(np.arange(n), w.astype(int))
        ref = classification_metrics(y[rows], probs[rows], CLASSES)
        for j, m in enumerate(ALL_CLASSIFICATION_METRICS):
            np.testing.assert_allclose(got[r, j], ref[m], rtol=1e-12, atol=1e-12, err_msg=f"{m}, resample {r}")


def test_weighted_auc_equals_sklearn_with_sample_weight_and_nan_without_negatives():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(30), 1)  # ties
    pos = rng.random(30) < 0.4
    w = rng.random((4, 30))
    got = _weighted_auc(scores, pos, w)
    for r in range(4):
        assert got[r] == pytest.approx(roc_auc_score(pos, scores, sample_weight=w[r]), abs=1e-12)
    assert math.isnan(_weighted_auc(scores, np.ones(30, bool), w[:1])[0])


def test_mean_scorer_leaves_nan_out_and_weights_items():
    values = np.array([[1.0, np.nan], [0.0, 2.0], [0.5, 4.0]])
    got = mean_scorer(["dice", "hd95"])(values, np.array([[1, 1, 1], [2, 0, 1], [0, 0, 0]]))
    np.testing.assert_allclose(got[0], [0.5, 3.0])
    np.testing.assert_allclose(got[1], [2.5 / 3, 4.0])
    assert np.isnan(got[2]).all()


def test_bootstrap_weights_draw_whole_groups():
    codes, g = group_codes(np.array(["p2", "p1", "p1", "p3"]), 4)
    assert g == 3 and codes[1] == codes[2]
    w = bootstrap_weights(codes, g, 50, np.random.default_rng(0))
    assert w.shape == (50, 4)
    np.testing.assert_array_equal(w[:, 1], w[:, 2])  # items of one group always together
    counts = np.stack([w[:, 0], w[:, 1], w[:, 3]], axis=1)
    np.testing.assert_array_equal(counts.sum(axis=1), 3)  # G groups drawn each time


def _scenario(n_groups: int, per_group: int = 3, seed: int = 0):
    """Labels, groups and a baseline right on 1 item of each group; the better model right on all of them."""
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    y = rng.integers(0, 3, n)
    groups = np.repeat([f"p{i:02d}" for i in range(n_groups)], per_group)
    good = np.full((n, 3), 0.1)
    good[np.arange(n), y] = 0.8
    bad = np.roll(good, 1, axis=1)
    base = bad.copy()
    base[::per_group] = good[::per_group]  # one right item per group
    return y, groups, base, good


def test_identical_runs_difference_zero_and_p_one():
    y, groups, base, _ = _scenario(25)
    scorer = classification_scorer(y, 3)
    res = paired_comparison(scorer, [base], [base.copy()], groups, n_resamples=300, n_permutations=100)
    for r in res:
        assert not r.exact and r.n_permutations == 100
        assert r.difference == 0.0 and r.ci_low == 0.0 and r.ci_high == 0.0, r
        assert r.p_value == 1.0, r
        assert r.n_groups == 25 and r.n_items == 75


def test_identical_runs_exact_permutation_p_is_one():
    y, groups, base, _ = _scenario(5)
    res = paired_comparison(classification_scorer(y, 3), [base], [base], groups, n_resamples=200,
                            n_permutations=2000)
    assert all(r.exact and r.n_permutations == 32 and r.p_value == 1.0 and r.difference == 0 for r in res)


def test_run_better_on_every_group_interval_excludes_zero_and_p_small():
    y, groups, base, good = _scenario(30)
    res = {r.metric: r for r in paired_comparison(classification_scorer(y, 3), [base], [good], groups,
                                                  n_resamples=1000, n_permutations=999, seed=1)}
    acc = res["accuracy"]
    assert acc.baseline == pytest.approx(1 / 3) and acc.other == 1.0 and acc.difference == pytest.approx(2 / 3)
    assert not acc.exact and acc.p_value == pytest.approx(1 / 1000)  # no swap reaches the observed difference
    for r in res.values():
        assert r.ci_low > 0 and r.ci_high >= r.difference >= r.ci_low, r
        assert r.p_value < 0.01, r
    # reversed roles: the same difference with the opposite sign
    rev = {r.metric: r for r in paired_comparison(classification_scorer(y, 3), [good], [base], groups,
                                                  n_resamples=1000, n_permutations=999, seed=1)}
    assert rev["accuracy"].difference == pytest.approx(-acc.difference)
    assert rev["accuracy"].ci_high < 0 and rev["accuracy"].p_value == acc.p_value


def test_exact_permutation_p_for_few_groups():
    y, groups, base, good = _scenario(4)
    acc = paired_comparison(classification_scorer(y, 3, ["accuracy"]), [base], [good], groups,
                            n_resamples=200, n_permutations=2000)[0]
    assert acc.exact and acc.n_permutations == 16
    assert acc.p_value == pytest.approx(2 / 16)  # only "no swap" and "swap all" are as extreme


def test_seeds_average_and_results_are_reproducible():
    y, groups, base, good = _scenario(12)
    scorer = classification_scorer(y, 3, ["accuracy"])
    one = paired_comparison(scorer, [base], [good], groups, n_resamples=200, n_permutations=200, seed=5)[0]
    again = paired_comparison(scorer, [base], [good], groups, n_resamples=200, n_permutations=200, seed=5)[0]
    assert one == again
    two = paired_comparison(scorer, [base, base], [good, base], groups, n_resamples=200, n_permutations=200)[0]
    assert two.n_seeds == 2 and two.difference == pytest.approx(one.difference / 2)


def test_segmentation_values_paired_difference():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 2)
    a = rng.uniform(0.6, 0.8, size=(40, 1))
    b = a + 0.05
    r = paired_comparison(mean_scorer(["dice"]), [a], [b], groups, n_resamples=500, n_permutations=500)[0]
    assert r.difference == pytest.approx(0.05) and r.ci_low == pytest.approx(0.05) and r.ci_high == pytest.approx(0.05)
    assert r.p_value < 0.01


def test_bootstrap_over_groups_of_copies_equals_bootstrap_over_items():
    rng = np.random.default_rng(0)
    values = rng.random((15, 1))
    single = bootstrap_intervals(mean_scorer(["dice"]), values, None, n_resamples=300, seed=2)[0]
    doubled = bootstrap_intervals(mean_scorer(["dice"]), np.repeat(values, 2, axis=0),
                                  np.repeat([f"s{i:02d}" for i in range(15)], 2),
                                  n_resamples=300, seed=2)[0]
    assert (single.value, single.ci_low, single.ci_high) == pytest.approx((doubled.value, doubled.ci_low,
                                                                           doubled.ci_high))
    assert single.ci_low < single.value < single.ci_high and single.n_groups == 15 and doubled.n_items == 30


def test_bad_arguments_are_errors():
    y, groups, base, good = _scenario(3)
    scorer = classification_scorer(y, 3)
    with pytest.raises(ValueError, match="unknown classification metric"):
        classification_scorer(y, 3, ["dice"])
    with pytest.raises(ValueError, match="differ"):
        paired_comparison(scorer, [base], [good[:-1]], groups)
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(scorer, base, groups, level=95)


def _annotation_table(n: int, seed: int):
    """A DILBERT-like prediction table: two binary findings (some labels unknown, one never predicted) and a
    3-class categorical target (some unknown), with its AnnotationSpec."""
    import pandas as pd

    from sonodistill.data.sequences import AnnotationSpec

    rng = np.random.default_rng(seed)
    y_a = rng.integers(0, 2, n).astype(float)
    y_a[rng.random(n) < 0.2] = np.nan
    t = pd.DataFrame({"y_a_lines": y_a, "p_a_lines": rng.random(n),
                      "y_effusion": rng.integers(0, 2, n).astype(float), "p_effusion": rng.random(n) * 0.4,
                      "y_severity": np.where(rng.random(n) < 0.1, -1, rng.integers(0, 3, n))})
    for c in range(3):
        t[f"p_severity_{c}"] = rng.random(n)
    spec = AnnotationSpec("lung", ["A-lines", "pleural effusion"], ["a_lines", "effusion"],
                          {"severity": ["0", "1", "2"]})
    return t, spec


@pytest.mark.parametrize("seed", [0, 1])
def test_annotation_scorer_equals_annotation_metrics_on_repeated_rows(seed):
    """compare's annotation scorer (bootstrap weights over outcome_matrix) gives the macro sensitivity, precision
    and F1 that DILBERT's own report computes (annotation_metrics) on the resampled rows."""
    from sonodistill.evaluation.annotation import annotation_metrics, outcome_matrix
    from sonodistill.evaluation.paired import ANNOTATION_METRICS, annotation_scorer

    n = 30
    table, spec = _annotation_table(n, seed)
    names, data = outcome_matrix(table, 0.5)
    assert names == ["a_lines", "effusion", "severity=0", "severity=1", "severity=2"]
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 3, size=(4, n)).astype(float)
    weights[0] = 1.0  # the full sample
    got = annotation_scorer(len(names))(data, weights)
    for r, w in enumerate(weights):
        ref = annotation_metrics(table.iloc[np.repeat(np.arange(n), w.astype(int))], spec, 0.5)["macro"]
        for j, m in enumerate(ANNOTATION_METRICS):
            np.testing.assert_allclose(got[r, j], ref[m], rtol=1e-12, atol=1e-12, err_msg=f"{m}, resample {r}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anomaly_scorer_equals_anomaly_metrics_on_repeated_rows(seed):
    """compare's anomaly scorer gives DISCOVR's own anomaly_metrics (F1, precision, recall of the anomaly class,
    balanced accuracy, AUROC) on the rows of each resample, at the calls the run made."""
    from sonodistill.evaluation.anomaly import anomaly_metrics
    from sonodistill.evaluation.paired import ANOMALY_METRICS, anomaly_scorer

    rng = np.random.default_rng(seed)
    n = 40
    true = rng.integers(0, 2, n).astype(bool)
    score = rng.normal(size=n) + true  # informative but noisy; a few ties
    score[:4] = 0.5
    threshold = 0.6
    data = np.stack([true, score >= threshold, score], axis=1).astype(float)
    weights = rng.integers(0, 3, size=(5, n)).astype(float)
    weights[0] = 1.0
    got = anomaly_scorer()(data, weights)
    for r, w in enumerate(weights):
        rows = np.repeat(np.arange(n), w.astype(int))
        ref = anomaly_metrics(score[rows], true[rows], threshold)
        for j, m in enumerate(ANOMALY_METRICS):
            np.testing.assert_allclose(got[r, j], ref[m], rtol=1e-12, atol=1e-12, err_msg=f"{m}, resample {r}")
    only_normal = np.zeros((1, n))
    only_normal[0, ~true] = 1.0
    assert np.isnan(anomaly_scorer(["auroc", "balanced_accuracy"])(data, only_normal)).all()
    with pytest.raises(ValueError, match="unknown anomaly metric"):
        anomaly_scorer(["accuracy"])
