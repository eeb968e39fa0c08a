"""Grouped splits: leakage check, k-fold on real data, group-wise fractions, feasibility errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sonodistill.data.adapters import load_adapter
from sonodistill.data.manifest import Manifest
from sonodistill.data.splits import check_no_leakage, grouped_fraction, grouped_kfold, inspect_report
from sonodistill.errors import ConfigError, LeakageError


def _toy(n_groups: int = 12, per_group: int = 3, labelled: bool = True) -> Manifest:
    rows = []
    for g in range(n_groups):
        for k in range(per_group):
            rows.append({"path": f"/x/g{g}_{k}.png", "group": f"g{g}", "label": "ab"[g % 2]})
    t = pd.DataFrame(rows)
    if not labelled:
        t = t.drop(columns="label")
    return Manifest(t, ["a", "b"] if labelled else [], "image", "toy")


def test_leakage_check_raises_on_bad_split():
    m = _toy()
    # rows 0..2 are g0, 3..5 are g1: put row 2 (g0) and row 5 (g1) in test while their groups train
    with pytest.raises(LeakageError, match=r"2 group\(s\) on both sides.*'g0', 'g1'"):
        check_no_leakage(m, np.array([0, 1, 3, 4]), np.array([2, 5]))
    check_no_leakage(m, np.arange(0, 6), np.arange(6, 12))  # clean split: no error


def test_leakage_message_truncates():
    m = _toy()
    with pytest.raises(LeakageError, match=r"12 group\(s\).*\(and 7 more\)"):
        check_no_leakage(m, np.arange(0, len(m), 3), np.arange(1, len(m), 3))


@pytest.mark.parametrize("labelled", [True, False])
def test_grouped_kfold_partitions_rows(labelled):
    m = _toy(labelled=labelled)
    folds = grouped_kfold(m, n_splits=4, seed=1)
    assert [f.index for f in folds] == [0, 1, 2, 3]
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests.tolist()) == list(range(len(m)))  # each row tested exactly once
    for f in folds:
        assert len(np.intersect1d(f.train, f.test)) == 0 and len(f.train) + len(f.test) == len(m)
        assert not set(m.groups[f.train]) & set(m.groups[f.test])


def test_grouped_kfold_seeded():
    m = _toy(n_groups=20)
    a = [f.test.tolist() for f in grouped_kfold(m, 4, seed=3)]
    b = [f.test.tolist() for f in grouped_kfold(m, 4, seed=3)]
    c = [f.test.tolist() for f in grouped_kfold(m, 4, seed=4)]
    assert a == b and a != c


def test_grouped_kfold_infeasible():
    with pytest.raises(ConfigError, match="exceeds the number of groups"):
        grouped_kfold(_toy(n_groups=3), n_splits=5)
    m = _toy(n_groups=10)
    m.table.loc[m.table["group"].isin(["g1", "g3", "g5", "g7"]), "label"] = "a"  # class b only in g9
    with pytest.raises(ConfigError, match="class 'b' occurs in only 1 group"):
        grouped_kfold(m, n_splits=3)


@pytest.mark.parametrize("name", ["lus-blues", "pocus-frames"])
def test_grouped_kfold_real_data_no_leakage(shared_data, name):
    m = load_adapter(name)
    folds = grouped_kfold(m, n_splits=5, seed=0)
    for f in folds:
        check_no_leakage(m, f.train, f.test)
        # stratified: every class appears in every test fold
        assert (np.bincount(m.labels[f.test], minlength=len(m.classes)) > 0).all()
    assert sum(len(f.test) for f in folds) == len(m)


def test_pocus_source_videos_never_split(shared_data):
    m = load_adapter("pocus-frames")
    for f in grouped_kfold(m, 5):
        src = m.table["source_video"].to_numpy()
        assert not set(src[f.train]) & set(src[f.test])


def test_grouped_fraction_groupwise_and_stratified():
    m = _toy(n_groups=40, per_group=3)
    rows = np.arange(len(m))
    pick = grouped_fraction(m, rows, 0.25, seed=0)
    # whole groups only
    picked_groups = set(m.groups[pick])
    assert all(set(np.flatnonzero(np.isin(m.groups, [g]))) <= set(pick) for g in picked_groups)
    # 20 groups per class * 0.25 -> 5 groups each -> 15 rows per class
    assert np.bincount(m.labels[pick]).tolist() == [15, 15]
    assert np.array_equal(pick, grouped_fraction(m, rows, 0.25, seed=0))
    assert not np.array_equal(pick, grouped_fraction(m, rows, 0.25, seed=1))
    # subset of the given rows only; tiny fraction keeps one group per class
    sub = grouped_fraction(m, rows[:30], 0.01)
    assert set(sub) <= set(range(30)) and len(set(m.groups[sub])) == 2
    with pytest.raises(ConfigError):
        grouped_fraction(m, rows, 0.0)


def test_grouped_fraction_real_data(shared_data):
    m = load_adapter("lus-blues")
    fold = grouped_kfold(m, 5)[0]
    pick = grouped_fraction(m, fold.train, 0.1, seed=0)
    assert set(pick) <= set(fold.train)
    assert 0.05 * len(fold.train) <= len(pick) <= 0.2 * len(fold.train)
    assert (np.bincount(m.labels[pick], minlength=4) > 0).all()


def test_inspect_report_contents():
    text = inspect_report(_toy(n_groups=10), n_splits=5)
    assert "- items: 30 (image)" in text
    assert "- groups: 10; items per group: min 3 / median 3 / max 3" in text
    assert "- classes: a: 15, b: 15" in text
    assert "Leakage check: passed" in text
    assert text.count("\n| ") == 6  # header + 5 folds
