"""Frozen-feature probes: DINO's weighted kNN (hand-computed case), logistic and ridge probes, feature extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sonodistill.evaluation.probes import extract_features, knn_predict, linear_probe, linear_regression_probe
from sonodistill.models.stages import StageOutputs


def _blobs(n_per: int, seed: int, dim: int = 16, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((classes, dim)) * 4.0
    x = np.concatenate([c + rng.standard_normal((n_per, dim)) for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(classes), n_per)


def test_probes_separate_toy_features():
    xtr, ytr = _blobs(30, seed=0)
    xte, yte = _blobs(20, seed=1)
    for probs in (knn_predict(xtr, ytr, xte, k=20, num_classes=3), linear_probe(xtr, ytr, xte, num_classes=3)):
        assert probs.shape == (60, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        assert (probs.argmax(axis=1) == yte).mean() == 1.0


def test_knn_weighted_votes_by_hand():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    test = np.array([[1.0, 0.2]])
    probs = knn_predict(train, labels, test, k=3, temperature=0.5, num_classes=3)
    t = test[0] / np.linalg.norm(test[0])
    sims = [float(t @ (v / np.linalg.norm(v))) for v in train]
    top = np.argsort(sims)[::-1][:3]  # items 0, 2, 1
    votes = np.zeros(3)
    for i in top:
        votes[labels[i]] += math.exp(sims[i] / 0.5)
    np.testing.assert_allclose(probs[0], votes / votes.sum(), rtol=1e-10)
    assert probs[0, 2] == 0.0  # a class with no neighbour gets no vote


def test_knn_k_larger_than_training_set_and_bad_k():
    probs = knn_predict(np.eye(2), np.array([0, 1]), np.array([[1.0, 0.0]]), k=20)
    assert probs.shape == (1, 2) and probs[0, 0] > probs[0, 1]
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_predict(np.eye(2), np.array([0, 1]), np.eye(2), k=0)


def test_linear_probe_class_missing_from_training_gets_zero():
    xtr, ytr = _blobs(20, seed=0, classes=2)
    probs = linear_probe(xtr, ytr, xtr[:5], num_classes=3)
    assert probs.shape == (5, 3) and (probs[:, 2] == 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_probe_input_checks():
    with pytest.raises(ValueError, match="equal D"):
        linear_probe(np.zeros((4, 3)), np.array([0, 1, 0, 1]), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        knn_predict(np.full((2, 2), np.nan), np.array([0, 1]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(np.eye(2), np.array([0, 2]), np.eye(2), num_classes=2)


def test_linear_regression_probe_recovers_linear_target():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    w = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    y = x @ w + 0.7
    pred = linear_regression_probe(x[:150], y[:150], x[150:], alpha=1e-3)
    assert np.abs(pred - y[150:]).max() < 0.01


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> StageOutputs:
        return StageOutputs(stages=[], pooled=self.lin(x.flatten(1)))


def test_extract_features_order_index_and_mode():
    model = _Backbone().train()
    x = torch.randn(7, 1, 2, 2)
    loader = [{"x": x[i:i + 3], "index": torch.arange(i, min(i + 3, 7)) + 10} for i in range(0, 7, 3)]
    feats, index = extract_features(model, loader)
    assert feats.shape == (7, 3) and feats.dtype == np.float32
    np.testing.assert_array_equal(index, np.arange(10, 17))
    with torch.no_grad():
        np.testing.assert_allclose(feats, model.lin(x.flatten(1)).numpy(), rtol=1e-6)
    assert model.training  # mode restored
