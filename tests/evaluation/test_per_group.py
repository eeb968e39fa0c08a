"""Per-group scoring: probabilities averaged over each patient's items, one label per patient."""

from __future__ import annotations

import pandas as pd
import pytest

from sonodistill.errors import ConfigError
from sonodistill.evaluation.per_group import per_group_predictions


def _pred(rows):
    return pd.DataFrame(rows, columns=["fold", "index", "path", "group", "y_true", "prob_neg", "prob_pos"])


def test_group_probabilities_are_the_mean_over_its_items():
    pred = _pred([(0, 0, "a1", "p1", 1, 0.8, 0.2), (0, 1, "a2", "p1", 1, 0.2, 0.8), (0, 2, "a3", "p1", 1, 0.3, 0.7),
                  (1, 3, "b1", "p2", 0, 0.9, 0.1)])
    out = per_group_predictions(pred)
    assert out["group"].tolist() == ["p1", "p2"] and out["n_items"].tolist() == [3, 1]
    assert out.loc[0, "prob_pos"] == pytest.approx((0.2 + 0.8 + 0.7) / 3)
    assert out["y_true"].tolist() == [1, 0] and out["fold"].tolist() == [0, 1]


def test_mixed_labels_or_folds_within_a_group_are_errors():
    with pytest.raises(ConfigError, match="'p1' has items with different labels"):
        per_group_predictions(_pred([(0, 0, "a", "p1", 1, 0.5, 0.5), (0, 1, "b", "p1", 0, 0.5, 0.5)]))
    with pytest.raises(ConfigError, match="'p1' is in several test folds"):
        per_group_predictions(_pred([(0, 0, "a", "p1", 1, 0.5, 0.5), (1, 1, "b", "p1", 1, 0.5, 0.5)]))
