"""Training-only projection heads: DINO's weight-normalised MLP head and learnable prototypes (SwAV/DISCOVR)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """The official DINO head: MLP (GELU) -> L2-normalised bottleneck -> weight-normalised linear layer.

    x: `B x in_dim` -> `B x out_dim`. With `norm_last_layer`, the weight-norm gain g is fixed to 1 (frozen).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        if norm_last_layer:
            gain.requires_grad_(False)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


def cancel_last_layer_gradients(head: nn.Module, epoch: int, freeze_last_layer_epochs: int) -> bool:
    """Drop (set to None) the gradients of every DINOHead's last layer inside `head` while
    `epoch < freeze_last_layer_epochs` (DINO's stabiliser); call between backward and the optimiser step.

    Returns True when gradients were cancelled.
    """
    if epoch >= freeze_last_layer_epochs:
        return False
    heads = [m for m in head.modules() if isinstance(m, DINOHead)]
    if not heads:
        raise ValueError("cancel_last_layer_gradients: no DINOHead found in the given module")
    for h in heads:
        for p in h.last_layer.parameters():
            p.grad = None
    return True


class PrototypeHead(nn.Module):
    """K learnable prototypes (`K x D`): cosine scores between L2-normalised inputs and prototypes.

    x: `B x dim` -> scores `B x n_prototypes` in [-1, 1] (apply the temperature in the loss).
    """

    def __init__(self, dim: int, n_prototypes: int) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(F.normalize(torch.randn(n_prototypes, dim), dim=1))

    def forward(self, x: torch.Tensor, detach_prototypes: bool = False) -> torch.Tensor:
        """`detach_prototypes=True` scores against a stopped-gradient copy (the teacher side of DISCOVR's SCD)."""
        protos = self.prototypes.detach() if detach_prototypes else self.prototypes
        return F.normalize(x, dim=-1) @ F.normalize(protos, dim=-1).t()
