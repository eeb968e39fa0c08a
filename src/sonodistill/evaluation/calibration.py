"""Temperature scaling (Guo et al. 2017): one scalar T per model, fitted by negative log-likelihood on held-out
items, dividing the logits before the softmax. It changes confidence, never the predicted class.

Fitted on class probabilities: softmax(log p / T) equals softmax(z / T) for p = softmax(z), because log p and z
differ by a constant per item, so a fold's out-of-fold probabilities are all that is needed.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from sonodistill.errors import ConfigError

#: the range searched for T (a model so wrong that it needs T outside it is a problem calibration cannot fix)
T_RANGE = (0.05, 20.0)
_TINY = 1e-300  # floor of probabilities before the log (a softmax can underflow to exactly 0)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """`N x K` class probabilities recomputed at temperature T: softmax(log p / T), float64."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, None)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes `y` (`N`) under `probs` (`N x K`)."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(p, _TINY, None))))


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The T in `T_RANGE` minimising `nll(apply_temperature(probs, T), y)` (bounded search over log T)."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(y) or len(y) == 0:
        raise ConfigError(f"temperature scaling needs N x K probabilities and N labels, got {probs.shape} and "
                          f"{y.shape}")
    low, high = (math.log(t) for t in T_RANGE)
    result = minimize_scalar(lambda log_t: nll(apply_temperature(probs, math.exp(log_t)), y),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))
