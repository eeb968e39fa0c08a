"""Frozen features on ONNX Runtime: the same embeddings as PyTorch (1e-4), and a clear error when an encoder
cannot be exported (no silent switch of engine)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sonodistill.errors import ConfigError
from sonodistill.models.backbones import build_backbone
from sonodistill.models.frozen_engine import OnnxFrozenEncoder, frozen_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("backbone, size", [("efficientnet_lite0", 64), ("resnet18_2d", 32)])
def test_onnxruntime_embeddings_equal_torch(backbone, size):
    torch.manual_seed(0)
    enc = build_backbone(backbone, in_channels=1, width=1.0 if backbone.startswith("eff") else 0.25).eval()
    x = torch.randn(5, 1, size, size)
    with torch.no_grad():
        expected = enc(x).pooled
    ort = frozen_encoder(enc, "onnxruntime")
    assert isinstance(ort, OnnxFrozenEncoder)
    got = ort(x)
    assert got.shape == expected.shape and (got - expected).abs().max().item() < 1e-4
    assert ort(x[:2]).shape == (2, expected.shape[1])   # another batch size: the same session (dynamic batch)
    assert len(ort._sessions) == 1


class _Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvalsh(x[:, 0])  # no ONNX operator for it


def test_an_encoder_onnx_cannot_trace_is_an_error_naming_the_setting():
    with pytest.raises(ConfigError, match="train.feature_engine=torch"):
        frozen_encoder(_Unexportable(), "onnxruntime")(torch.randn(2, 1, 8, 8))
    assert frozen_encoder(enc := _Unexportable(), "torch") is enc
    with pytest.raises(ConfigError, match="feature_engine must be one of"):
        frozen_encoder(enc, "tensorrt")
