"""A fitted logistic-regression probe as a PyTorch head, so a frozen encoder + probe is one exportable model."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ABSENT_LOGIT = -1.0e4  # logit of a class absent from the probe's training labels (probability ~0, finite for ONNX)


class LinearProbeHead(nn.Module):
    """Standardise, then a linear map to class logits: `B x D` (images) or `B x T x D` frames pooled over valid
    frames (`mask` `B x T`; `pool` mean, or mean and max concatenated) -> logits `B x K`.

    Holds the scaler's mean/scale and the logistic regression's coefficients as buffers (`load_probe`)."""

    def __init__(self, in_dim: int, num_classes: int, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "meanmax"):
            raise ValueError(f"pool must be mean or meanmax, got {pool!r}")
        self.pool = pool
        dim = in_dim * (2 if pool == "meanmax" else 1)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("weight", torch.zeros(num_classes, dim))
        self.register_buffer("bias", torch.zeros(num_classes))

    @torch.no_grad()
    def load_probe(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                   classes: np.ndarray) -> "LinearProbeHead":
        """Copy a fitted StandardScaler + LogisticRegression (its `classes_` index the rows of this head's K)."""
        k = self.weight.shape[0]
        coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        if coef.shape[0] == 1 and len(classes) == 2:  # binary: p(c1) = sigmoid(w z + b) = softmax([0, w z + b])
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        weight = np.zeros((k, coef.shape[1]))
        bias = np.full(k, ABSENT_LOGIT)
        for row, c in enumerate(np.asarray(classes, dtype=np.int64)):
            weight[c], bias[c] = coef[row], intercept[row]
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        self.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return self

    def pooled(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`B x T x D` -> `B x D` (mean) or `B x 2D` (mean, max) over valid frames."""
        if mask is None:
            mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        m = mask.unsqueeze(-1).to(feats.dtype)
        mean = (feats * m).sum(1) / m.sum(1).clamp_min(1.0)
        if self.pool == "mean":
            return mean
        big = feats.masked_fill(~mask.unsqueeze(-1), torch.finfo(feats.dtype).min).amax(1)
        return torch.cat([mean, torch.where(mask.any(1, keepdim=True), big, torch.zeros_like(big))], dim=1)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        z = self.pooled(feats, mask) if feats.ndim == 3 else feats
        return ((z - self.mean) / self.scale) @ self.weight.T + self.bias
