"""Shared conventions of every loss module: `(loss, parts)` outputs and per-sample distances."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch


class LossOutput(NamedTuple):
    """What every loss `forward` returns; unpacks as `loss, parts = criterion(...)`.

    loss: scalar tensor carrying the graph. parts: named detached scalars for logging.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


def detached(value: torch.Tensor) -> torch.Tensor:
    """A logging copy of a scalar term: detached from the graph, same value (NaN stays NaN)."""
    return value.detach()


def prefixed(parts: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Rename parts `{k: v}` to `{prefix/k: v}` (how composite losses nest their terms' parts)."""
    return {f"{prefix}/{key}": value for key, value in parts.items()}


def frobenius_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the per-sample Frobenius norm `||a_n - b_n||_F`; `a, b`: `B x ...` -> scalar.

    Reduced in at least float32. A per-sample mean, so under data parallelism the average of per-process
    values equals the global value for equal per-process batch sizes (nothing to all-reduce).
    """
    if a.shape != b.shape:
        raise ValueError(f"frobenius_distance: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).flatten(1)
    diff = diff.to(torch.promote_types(diff.dtype, torch.float32))  # half precision: reduce in float32
    return torch.linalg.vector_norm(diff, ord=2, dim=1).mean()
