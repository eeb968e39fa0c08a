"""Heads: shapes and hand-computed outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sonodistill.models.heads import ClassificationHead, MLPHead, StageHead


def test_classification_head_is_linear_in_eval() -> None:
    head = ClassificationHead(6, 3, dropout=0.5).eval()
    x = torch.randn(4, 6)
    torch.testing.assert_close(head(x), x @ head.fc.weight.T + head.fc.bias)


@pytest.mark.parametrize("shape", [(2, 5, 7), (2, 5, 3, 4), (2, 5, 2, 3, 4)])
def test_stage_head_pools_every_non_channel_dim(shape: tuple[int, ...]) -> None:
    head = StageHead(5, 3).eval()
    x = torch.randn(shape)
    pooled = x.reshape(2, 5, -1).mean(-1)
    torch.testing.assert_close(head(x), pooled @ head.fc.weight.T + head.fc.bias)


def test_stage_head_rejects_pooled_input() -> None:
    with pytest.raises(ValueError, match="stage map"):
        StageHead(5, 3)(torch.randn(2, 5))


def test_mlp_head_layers_and_shape() -> None:
    head = MLPHead(8, 4, hidden_dim=16, num_layers=3)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 4)]
    assert head(torch.randn(5, 8)).shape == (5, 4)
    one = MLPHead(8, 4, num_layers=1)
    x = torch.randn(2, 8)
    torch.testing.assert_close(one(x), x @ one.mlp[0].weight.T + one.mlp[0].bias)
    with pytest.raises(ValueError):
        MLPHead(8, 4, num_layers=0)
