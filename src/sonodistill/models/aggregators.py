"""Video-level aggregators of frame features: `forward(x B x T x D, mask B x T | None) -> logits B x K`.

`mask` is True for real frames and False for padding; padded frames never influence the output.
Aggregators: max frame score, mean pooling, gated attention-MIL (Ilse et al. 2018), Bi-LSTM, NetVLAD
(Arandjelovic et al. 2016) and MeDiVLAD's dual-level VLAD (cluster-level NetVLAD assignment x frame-level
soft assignment over frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import ConfigError


def _mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Bool `B x T` mask (all True when None); every video needs at least one real frame."""
    if x.ndim != 3:
        raise ValueError(f"aggregators expect frame features B x T x D, got shape {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected B x T = {tuple(x.shape[:2])}")
    mask = mask.bool()
    empty = torch.nonzero(~mask.any(dim=1)).flatten()
    if empty.numel():
        raise ValueError(f"video {int(empty[0])} of the batch has no valid frame (mask all False)")
    return mask


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Padded frames set to 0, so nothing in them (even NaN) reaches a weighted sum."""
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax of `scores` over `dim` with masked-out entries at exactly 0."""
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=dim).masked_fill(~mask, 0.0)


class MaxFrameScore(nn.Module):
    """A linear classifier per frame; the video's logit per class is the maximum over its valid frames."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = _mask(x, mask)
        logits = self.fc(self.dropout(x))                               # B x T x K
        return logits.masked_fill(~m.unsqueeze(-1), float("-inf")).amax(dim=1)


class MeanPool(nn.Module):
    """Mean of the valid frames' features, then a linear classifier."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = _mask(x, mask)
        pooled = _zero_padding(x, m).sum(dim=1) / m.sum(dim=1, keepdim=True).to(x.dtype)
        return self.fc(self.dropout(pooled))


class AttentionMIL(nn.Module):
    """Gated attention-MIL (Ilse et al. 2018): `a = softmax_t(w^T (tanh(V h_t) * sigmoid(U h_t)))`, `z = sum a h`."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)

    def frame_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention over frames `B x T` (sums to 1 over valid frames, 0 on padding)."""
        m = _mask(x, mask)
        scores = self.w(torch.tanh(self.V(x)) * torch.sigmoid(self.U(x))).squeeze(-1)
        return masked_softmax(scores, m)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.frame_weights(x, mask)
        return self.fc(self.dropout(torch.einsum("bt,btd->bd", a, _zero_padding(x, _mask(x, mask)))))


class BiLSTMAggregator(nn.Module):
    """Bidirectional LSTM over the valid frames (packed), last hidden states of both directions -> linear."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = _mask(x, mask)
        lengths = m.sum(dim=1)
        # pack the valid frames in their order (padding may sit anywhere: gather the valid ones to the front)
        order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)
        x = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        last = torch.cat([h[-2], h[-1]], dim=1)                         # forward and backward of the top layer
        return self.fc(self.dropout(last))


class NetVLAD(nn.Module):
    """NetVLAD: soft assignment `a_tk = softmax_k(w_k . x_t + b_k)` to K clusters, residuals `sum_t a_tk (x_t - c_k)`,
    intra-normalisation (per cluster) and L2 normalisation of the `K*D` descriptor, then a linear classifier.

    `init_centroids(features)` runs k-means (scikit-learn) and sets `c_k`, `w_k = 2 alpha c_k`,
    `b_k = -alpha ||c_k||^2` (the paper's initialisation, so the assignment starts as a soft nearest centroid).
    """

    uses_frame_weights = False

    def __init__(self, dim: int, num_classes: int, clusters: int | None = None, alpha: float = 10.0,
                 normalize_input: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.clusters = int(clusters or num_classes)
        if self.clusters < 1:
            raise ConfigError(f"NetVLAD: clusters must be >= 1, got {clusters}")
        self.alpha = alpha
        self.normalize_input = normalize_input
        self.centroids = nn.Parameter(torch.randn(self.clusters, dim) * 0.1)
        self.assign = nn.Linear(dim, self.clusters)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.clusters * dim, num_classes)
        self.register_buffer("centroids_initialised", torch.tensor(False))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize_input else x

    @torch.no_grad()
    def init_centroids(self, features: np.ndarray | torch.Tensor, seed: int = 0) -> np.ndarray:
        """k-means on training frame features `N x D` (valid frames only); returns and sets the centroids `K x D`."""
        from sklearn.cluster import KMeans

        f = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"init_centroids: expected N x {self.dim} features, got {tuple(f.shape)}")
        if f.shape[0] < self.clusters:
            raise ValueError(f"init_centroids: {f.shape[0]} features for {self.clusters} clusters")
        f = self._prepare(f).numpy().astype(np.float64)
        km = KMeans(n_clusters=self.clusters, n_init=10, random_state=seed).fit(f)
        c = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        self.centroids.copy_(c)
        self.assign.weight.copy_(2.0 * self.alpha * c)
        self.assign.bias.copy_(-self.alpha * (c * c).sum(dim=1))
        self.centroids_initialised.fill_(True)
        return km.cluster_centers_

    def cluster_assignment(self, x: torch.Tensor) -> torch.Tensor:
        """Soft assignment of each frame to the clusters: `B x T x K`, rows sum to 1."""
        return torch.softmax(self.assign(self._prepare(x)), dim=-1)

    def frame_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """NetVLAD weights every valid frame 1 (padding 0): `B x T`."""
        return _mask(x, mask).to(x.dtype)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised VLAD descriptor `B x (K*D)` (unit L2 norm) fed to the classifier."""
        w = self.frame_weights(x, mask)                                # B x T
        x = _zero_padding(x, _mask(x, mask))
        xn = self._prepare(x)
        a = self.cluster_assignment(x) * w.unsqueeze(-1)               # B x T x K
        vlad = torch.einsum("btk,btd->bkd", a, xn) - a.sum(dim=1).unsqueeze(-1) * self.centroids.unsqueeze(0)
        vlad = F.normalize(vlad, dim=2)                                # intra-normalisation
        return F.normalize(vlad.flatten(1), dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(x, mask)))


class DualVLAD(NetVLAD):
    """MeDiVLAD's dual-level VLAD: NetVLAD's cluster-level assignment times a frame-level soft assignment.

    Frame level: `s_t = softmax_t(MLP(x_t) / temperature)` with `MLP = Linear -> tanh -> Linear(1)`, masked
    frames at exactly 0, so the valid frames' weights sum to 1 and informative frames dominate the residuals
    `V_k = sum_t s_t a_tk (x_t - c_k)`; then intra-normalisation, L2 and the classifier as in NetVLAD.
    """

    uses_frame_weights = True

    def __init__(self, dim: int, num_classes: int, clusters: int | None = None, alpha: float = 10.0,
                 hidden: int = 128, temperature: float = 1.0, normalize_input: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__(dim, num_classes, clusters, alpha, normalize_input, dropout)
        if temperature <= 0:
            raise ConfigError(f"DualVLAD: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.frame_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def frame_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Frame-level soft assignment `B x T`: sums to 1 over the valid frames, 0 on padding."""
        m = _mask(x, mask)
        scores = self.frame_mlp(self._prepare(x)).squeeze(-1) / self.temperature
        return masked_softmax(scores, m)


AGGREGATORS: dict[str, type[nn.Module]] = {
    "max": MaxFrameScore,
    "mean": MeanPool,
    "attention_mil": AttentionMIL,
    "bilstm": BiLSTMAggregator,
    "netvlad": NetVLAD,
    "dual_vlad": DualVLAD,
}


def build_aggregator(name: str, dim: int, num_classes: int, **options: Any) -> nn.Module:
    """An aggregator by name (max | mean | attention_mil | bilstm | netvlad | dual_vlad) with its options."""
    if name not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {name!r}; choose from {sorted(AGGREGATORS)}")
    import inspect

    cls = AGGREGATORS[name]
    allowed = [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "dim", "num_classes")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"aggregator {name!r}: unknown option(s) {unknown}; allowed: {allowed}")
    return cls(dim, num_classes, **options)
