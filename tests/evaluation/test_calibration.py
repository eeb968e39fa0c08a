"""Temperature scaling (evaluation/calibration.py) on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sonodistill.errors import ConfigError
from sonodistill.evaluation.calibration import T_RANGE, apply_temperature, fit_temperature, nll


def test_apply_temperature_by_hand():
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    # T = 2: softmax(log p / 2) = sqrt(p) normalised; 0.9 : 0.1 = 9 : 1 becomes 3 : 1
    np.testing.assert_allclose(apply_temperature(p, 2.0), [[0.75, 0.25], [0.5, 0.5]], atol=1e-12)
    assert apply_temperature(p, 2.0).argmax(1).tolist() == p.argmax(1).tolist()  # the class never changes
    # it equals softmax(z / T) of the logits behind p
    z = np.array([[2.0, -1.0, 0.5]])
    p3 = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(apply_temperature(p3, 0.5), np.exp(2 * z) / np.exp(2 * z).sum(), atol=1e-12)
    assert apply_temperature(np.array([[1.0, 0.0]]), 3.0)[0, 1] < 1e-90  # an underflowed 0 stays (almost) 0


def test_nll_by_hand():
    assert nll(np.array([[0.75, 0.25], [0.75, 0.25]]), np.array([0, 1])) == pytest.approx(
        -(math.log(0.75) + math.log(0.25)) / 2)


def test_fit_temperature_recovers_the_calibrated_confidence():
    # overconfident: 0.9 said, 3 of 4 right -> the likelihood is largest at q = 0.75, i.e. T = 2 (9:1 -> 3:1)
    probs, y = np.array([[0.9, 0.1]] * 4), np.array([0, 0, 0, 1])
    t = fit_temperature(probs, y)
    assert t == pytest.approx(2.0, rel=1e-3)
    assert nll(apply_temperature(probs, t), y) < nll(probs, y)
    # underconfident: 0.6 said, 9 of 10 right -> q = 0.9: 1.5 ** (1 / T) = 9, T = ln 1.5 / ln 9
    probs, y = np.array([[0.6, 0.4]] * 10), np.array([0] * 9 + [1])
    assert fit_temperature(probs, y) == pytest.approx(math.log(1.5) / math.log(9), rel=1e-3)
    # always right: the likelihood keeps growing as T falls, so the search stops at its lower bound
    assert fit_temperature(np.array([[0.7, 0.3]] * 3), np.zeros(3, int)) == pytest.approx(T_RANGE[0], rel=1e-3)


def test_fit_temperature_refuses_what_it_cannot_fit():
    with pytest.raises(ConfigError, match="N x K probabilities and N labels"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, int))
    with pytest.raises(ConfigError, match="N x K probabilities and N labels"):
        fit_temperature(np.full((3, 2), 0.5), np.zeros(2, int))
