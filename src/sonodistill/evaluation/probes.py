"""Frozen-feature probes: feature extraction, DINO's weighted kNN, logistic-regression and ridge probes.

Every probe is fitted on training-fold features only and returns predictions for the test features.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from sonodistill.models.stages import Classifier, StageOutputs


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`B x D` embedding: a Classifier's backbone pooled output, a backbone's pooled output, or a plain tensor."""
    if isinstance(model, Classifier):
        model = model.backbone
    out = model(x)
    if isinstance(out, StageOutputs):
        return out.pooled
    if isinstance(out, torch.Tensor) and out.ndim == 2:
        return out
    raise TypeError(f"extract_features: {type(model).__name__} returned {type(out).__name__}, "
                    "expected StageOutputs or a B x D tensor")


@torch.no_grad()
def extract_features(model_or_backbone: nn.Module, loader: Iterable[dict[str, Any]],
                     device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Run the frozen model over `loader` (batches {"x", "index"}); returns (feats float32 [N, D], index int64 [N]).

    Rows follow the loader's order; `index` holds each batch's "index" entries (dataset positions).
    The model is put in eval mode for the pass and its previous mode restored.
    """
    was_training = model_or_backbone.training
    model_or_backbone.eval()
    feats, index = [], []
    try:
        for batch in loader:
            x = batch["x"].to(device)
            feats.append(_embed(model_or_backbone, x).float().cpu())
            index.append(torch.as_tensor(batch["index"]).reshape(-1).cpu())
    finally:
        model_or_backbone.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batches")
    return torch.cat(feats).numpy(), torch.cat(index).numpy().astype(np.int64)


def _check(train_feats: np.ndarray, train_y: np.ndarray, test_feats: np.ndarray) -> tuple[np.ndarray, ...]:
    tr = np.asarray(train_feats, dtype=np.float64)
    te = np.asarray(test_feats, dtype=np.float64)
    y = np.asarray(train_y)
    if tr.ndim != 2 or te.ndim != 2 or tr.shape[1] != te.shape[1]:
        raise ValueError(f"probe: features must be [N, D] with equal D, got train {tr.shape}, test {te.shape}")
    if y.shape != (tr.shape[0],):
        raise ValueError(f"probe: {tr.shape[0]} training features but labels of shape {y.shape}")
    if tr.shape[0] == 0 or te.shape[0] == 0:
        raise ValueError("probe: empty training or test features")
    for name, arr in (("train", tr), ("test", te)):
        if not np.isfinite(arr).all():
            raise ValueError(f"probe: {name} features contain NaN/inf (row {np.flatnonzero(~np.isfinite(arr).all(1))[0]})")
    return tr, y, te


def _num_classes(labels: np.ndarray, num_classes: int | None) -> int:
    labels = np.asarray(labels, dtype=np.int64)
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"probe: labels must lie in 0..{c - 1}, got {labels.min()}..{labels.max()}")
    return c


def knn_predict(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> np.ndarray:
    """DINO's weighted kNN: cosine similarity, the k nearest training items vote `exp(sim / temperature)`.

    Returns probs [N_test, C] (votes normalised to sum 1); argmax equals DINO's prediction.
    """
    tr, y, te = _check(train_feats, train_labels, test_feats)
    c = _num_classes(y, num_classes)
    if k < 1:
        raise ValueError(f"knn_predict: k must be >= 1, got {k}")
    k = min(k, tr.shape[0])
    trn = torch.nn.functional.normalize(torch.from_numpy(tr), dim=1)
    ten = torch.nn.functional.normalize(torch.from_numpy(te), dim=1)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y.astype(np.int64)), c).double()
    out = []
    for start in range(0, ten.shape[0], chunk):
        sim = ten[start:start + chunk] @ trn.T                         # n x N_train
        top, idx = sim.topk(k, dim=1)
        w = (top / temperature).exp()                                   # n x k
        votes = (onehot[idx] * w.unsqueeze(-1)).sum(dim=1)              # n x C
        out.append(votes / votes.sum(dim=1, keepdim=True))
    return torch.cat(out).numpy()


def fit_linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, C: float = 1.0, max_iter: int = 2000,
                     seed: int = 0, class_weight: str | None = None) -> Any:
    """The fitted scikit-learn pipeline (StandardScaler, multinomial L2 LogisticRegression with strength 1/C;
    `class_weight="balanced"` weighs each class inversely to its frequency); None when the training labels hold
    one class only."""
    tr = np.asarray(train_feats, dtype=np.float64)
    y = np.asarray(train_labels).astype(np.int64)
    if np.unique(y).size == 1:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed,
                                                             class_weight=class_weight))
    return clf.fit(tr, y)


def linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray, C: float = 1.0,
                 max_iter: int = 2000, num_classes: int | None = None, seed: int = 0,
                 class_weight: str | None = None) -> np.ndarray:
    """Logistic regression (multinomial, L2, strength 1/C) on standardised features; probs [N_test, C].

    A class absent from the training labels gets probability 0 (columns follow class indices 0..C-1).
    """
    tr, y, te = _check(train_feats, train_labels, test_feats)
    c = _num_classes(y, num_classes)
    present = np.unique(y.astype(np.int64))
    probs = np.zeros((te.shape[0], c))
    if present.size == 1:
        probs[:, present[0]] = 1.0
        return probs
    clf = fit_linear_probe(tr, y, C=C, max_iter=max_iter, seed=seed, class_weight=class_weight)
    probs[:, clf.classes_] = clf.predict_proba(te)
    return probs


def choose_C(feats: np.ndarray, labels: np.ndarray, fit: np.ndarray, val: np.ndarray, grid: list[float],
             num_classes: int, seed: int, class_weight: str | None = None) -> tuple[float, dict[str, float]]:
    """The C of `grid` with the best balanced accuracy on rows `val` of a probe fitted on rows `fit` (ties: the
    smaller C); returns it and every C's score."""
    from sklearn.metrics import balanced_accuracy_score

    scores = {}
    for c in sorted(float(x) for x in grid):
        probs = linear_probe(feats[fit], labels[fit], feats[val], C=c, num_classes=num_classes, seed=seed,
                             class_weight=class_weight)
        scores[str(c)] = float(balanced_accuracy_score(labels[val], probs.argmax(1)))
    best = max(scores, key=lambda c: (scores[c], -float(c)))
    return float(best), scores


def linear_regression_probe(train_feats: np.ndarray, train_targets: np.ndarray, test_feats: np.ndarray,
                            alpha: float = 1.0) -> np.ndarray:
    """Ridge regression on standardised features: predictions [N_test] of a continuous target."""
    tr, y, te = _check(train_feats, train_targets, test_feats)
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise ValueError("linear_regression_probe: training targets contain NaN/inf")
    reg = make_pipeline(StandardScaler(), Ridge(alpha=alpha))
    reg.fit(tr, y)
    return np.asarray(reg.predict(te), dtype=np.float64)
