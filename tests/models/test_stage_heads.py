"""DualDistill's trainable stage modules: attention maps against hand-set convolutions, auxiliary heads' pooling."""

from __future__ import annotations

import math

import pytest
import torch

from sonodistill.errors import ConfigError
from sonodistill.models.stage_heads import (
    AuxiliaryHeads,
    StageAttention,
    StageAttentionModules,
    spatiotemporal_attention_map,
)


def test_stage_attention_has_99_parameters() -> None:
    assert sum(p.numel() for p in StageAttention().parameters()) == 99
    with pytest.raises(ConfigError):
        StageAttention(kernel_size=4)


def test_attention_map_constant_input_with_hand_set_conv() -> None:
    att = StageAttention(kernel_size=3)
    with torch.no_grad():
        att.conv.weight.zero_()
        att.conv.weight[0, 0] = 1.0  # all-ones 3x3 on the channel-mean, zero on the channel-max
        att.conv.bias.zero_()
    feat = torch.ones(1, 5, 2, 4, 4)
    # zero padding: a 3x3 window covers 4 pixels at a corner, 6 on an edge, 9 inside.
    counts = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float32)
    expected = torch.sigmoid(counts).expand(1, 2, 4, 4)
    out = att(feat)
    assert out.shape == (1, 2, 4, 4)
    torch.testing.assert_close(out, expected)


def test_attention_map_uses_channel_mean_and_max() -> None:
    feat = torch.zeros(2, 2, 3, 5, 5)
    feat[:, 1] = 4.0  # mean 2, max 4 everywhere
    weight = torch.zeros(1, 2, 1, 7, 7)
    weight[0, 0, 0, 3, 3], weight[0, 1, 0, 3, 3] = 1.0, -0.25  # centre taps only: 2 - 1 + 0.5
    out = spatiotemporal_attention_map(feat, weight, torch.tensor([0.5]))
    torch.testing.assert_close(out, torch.full((2, 3, 5, 5), 1 / (1 + math.exp(-1.5))))


def test_auxiliary_heads_pool_over_time_and_space() -> None:
    heads = AuxiliaryHeads([2, 3, 4, 5], num_classes=2, stages=(2,))
    with torch.no_grad():
        heads.heads[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
        heads.heads[0].bias.zero_()
    stages = [torch.zeros(1, c, 2, 2, 2) for c in (2, 3, 4, 5)]
    stages[1][0, 0, 0, 0, 0] = 8.0  # channel 0 mean over T*H*W = 1
    stages[1][0, 2] = 3.0  # channel 2 mean = 3
    (logits,) = heads(stages)
    torch.testing.assert_close(logits, torch.tensor([[1.0, 3.0]]))
    assert len(AuxiliaryHeads([2, 3, 4, 5], 3, (1, 2, 3))(stages)) == 3


def test_stage_attention_modules_shapes() -> None:
    mods = StageAttentionModules(num_stages=4, student_stages=(1, 3))
    assert len(mods.attention) == 3
    stages = [torch.rand(2, 4 * 2**i, 8 // 2**i, 16 // 2**i, 16 // 2**i) for i in range(4)]
    maps = mods(stages)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 16), (2, 2, 4, 4), (2, 1, 2, 2)]
