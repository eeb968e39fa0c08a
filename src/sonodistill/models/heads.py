"""Heads on top of staged backbones: linear classifier, pooled-stage classifier, MLP."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Dropout + linear: `B x D` -> logits `B x K`."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x))


class StageHead(nn.Module):
    """Global average pool over every non-channel dim, then linear: `B x C x ...` (3D/4D/5D) -> `B x K`."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"StageHead expects a B x C x ... stage map, got shape {tuple(x.shape)}")
        return self.fc(self.dropout(x.flatten(2).mean(dim=2)))


class MLPHead(nn.Module):
    """MLP `B x D` -> `B x out_dim`: `num_layers` linear layers with GELU (and optional dropout) between them."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, num_layers: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLPHead needs num_layers >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers += [nn.GELU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
