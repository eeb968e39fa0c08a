"""Dual-decoder U-Net: shapes, where the noise goes, the exported inference model, input checks."""

from __future__ import annotations

import pytest
import torch

from sonodistill.errors import ConfigError
from sonodistill.models.segmentation import (
    DecoderAveragedNet,
    DualDecoderUNet,
    FeatureDropout,
    FeatureNoise,
    SegmentationNet,
    SingleDecoderUNet,
    UNetDecoder,
)

SMALL = (4, 8, 16, 32, 64)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 1, 32, 32)


def test_shapes_in_training(x: torch.Tensor) -> None:
    model = DualDecoderUNet(num_classes=3, channels=SMALL).train()
    out = model(x)
    assert out.logits1.shape == (2, 3, 32, 32)
    assert out.logits2 is not None and out.logits2.shape == (2, 3, 32, 32)
    assert [tuple(f.shape) for f in out.features] == [
        (2, 4, 32, 32), (2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)
    ]
    assert [tuple(f.shape) for f in out.decoder_features] == [
        (2, 32, 4, 4), (2, 16, 8, 8), (2, 8, 16, 16), (2, 4, 32, 32)
    ]


def test_default_channels_and_width_multiplier(x: torch.Tensor) -> None:
    assert DualDecoderUNet().channels == [16, 32, 64, 128, 256]
    model = DualDecoderUNet(channels=(16, 32, 64, 128, 256), width=0.25)
    assert model.channels == [4, 8, 16, 32, 64]
    assert model.eval()(x).logits1.shape == (2, 2, 32, 32)


def test_second_decoder_only_in_training_with_dual(x: torch.Tensor) -> None:
    model = DualDecoderUNet(channels=SMALL)
    assert model.train()(x, dual=False).logits2 is None
    assert model.eval()(x).logits2 is None
    assert SingleDecoderUNet(channels=SMALL).train()(x).logits2 is None


def test_eval_is_deterministic(x: torch.Tensor) -> None:
    model = DualDecoderUNet(channels=SMALL).eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a.logits1, b.logits1)


def test_noise_reaches_d2_only_in_training(x: torch.Tensor) -> None:
    torch.manual_seed(1)
    model = DualDecoderUNet(channels=SMALL).train()
    with torch.no_grad():
        a, b = model(x), model(x)
    # D1 sees clean features: identical across calls even in training (BatchNorm uses batch stats).
    assert torch.equal(a.logits1, b.logits1)
    assert a.logits2 is not None and b.logits2 is not None
    assert not torch.allclose(a.logits2, b.logits2)


def test_without_perturbation_d2_equals_d1_when_weights_match(x: torch.Tensor) -> None:
    model = DualDecoderUNet(channels=SMALL, feature_noise=0.0, feature_dropout=0.0).train()
    model.decoder2.load_state_dict(model.decoder1.state_dict())
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out.logits1, out.logits2, atol=1e-6)


def test_decoders_share_one_class_and_single_is_dual_minus_d2() -> None:
    dual = DualDecoderUNet(channels=SMALL)
    single = SingleDecoderUNet(channels=SMALL)
    assert type(dual.decoder1) is type(dual.decoder2) is UNetDecoder
    assert not hasattr(single, "decoder2")
    assert n_params(single) == n_params(dual) - n_params(dual.decoder2)


def test_inference_model_is_encoder_plus_d1(x: torch.Tensor) -> None:
    model = DualDecoderUNet(channels=SMALL)
    net = model.inference_model()
    assert isinstance(net, SegmentationNet)
    assert n_params(net) == n_params(model.encoder) + n_params(model.decoder1)
    d2_ids = {id(p) for p in model.decoder2.parameters()}
    assert not d2_ids & {id(p) for p in net.parameters()}
    assert not any(k.startswith("decoder2") for k in net.state_dict())
    model.eval()
    net.eval()
    with torch.no_grad():
        logits = net(x)
        assert isinstance(logits, torch.Tensor)
        assert torch.equal(logits, model(x).logits1)


def test_both_decoders_serve_the_mean_of_their_probabilities(x: torch.Tensor) -> None:
    """inference_model("both"): softmax(output) = (softmax(D1) + softmax(D2)) / 2 on unperturbed features, the
    parameters shared with the student (D2 included), the names of the one-decoder model plus decoder2.*."""
    torch.manual_seed(1)
    model = DualDecoderUNet(channels=SMALL).eval()
    net = model.inference_model(decoders="both")
    assert isinstance(net, DecoderAveragedNet)
    assert {id(p) for p in net.parameters()} == {id(p) for p in model.parameters()}
    assert set(net.state_dict()) == set(model.inference_model().state_dict()) | {
        f"decoder2.{k}" for k in model.decoder2.state_dict()}
    with torch.no_grad():
        features = model.encoder(x)
        p1 = model.decoder1(features)[0].softmax(dim=1)
        p2 = model.decoder2(features)[0].softmax(dim=1)
        got = net(x).softmax(dim=1)
    assert (p1 - p2).abs().max() > 1e-3  # two different decoders: the average is neither of them
    torch.testing.assert_close(got, (p1 + p2) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(net(x).exp().sum(dim=1), torch.ones(2, 32, 32))  # log-probabilities
    with pytest.raises(ConfigError, match="inference decoders must be one of"):
        model.inference_model(decoders="d2")


def test_gradient_of_d2_loss_skips_d1(x: torch.Tensor) -> None:
    model = DualDecoderUNet(channels=SMALL).train()
    model(x).logits2.sum().backward()
    assert all(p.grad is None for p in model.decoder1.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder2.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


@pytest.mark.parametrize("size", [(30, 32), (32, 24), (8, 8)])
def test_size_not_divisible_by_16_is_config_error(size: tuple[int, int]) -> None:
    model = DualDecoderUNet(channels=SMALL).eval()
    with pytest.raises(ConfigError, match="divisible by 16"):
        model(torch.zeros(1, 1, *size))
    with pytest.raises(ConfigError, match="divisible by 16"):
        model.inference_model()(torch.zeros(1, 1, *size))


def test_fewer_levels_need_smaller_multiple() -> None:
    model = SingleDecoderUNet(channels=(4, 8, 16)).eval()
    assert model(torch.zeros(1, 1, 12, 20)).logits1.shape == (1, 2, 12, 20)
    with pytest.raises(ConfigError, match="divisible by 4"):
        model(torch.zeros(1, 1, 14, 20))


def test_wrong_input_channels_named() -> None:
    with pytest.raises(ValueError, match="3 channels, model expects 1"):
        SingleDecoderUNet(channels=SMALL)(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    "kwargs",
    [{"channels": (8,)}, {"feature_dropout": 1.0}, {"feature_noise": -0.1}, {"width": 0.0}, {"num_classes": 0}],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        DualDecoderUNet(**kwargs)


def test_feature_noise_is_bounded_multiplicative_and_off_in_eval() -> None:
    torch.manual_seed(0)
    f = torch.rand(2, 3, 8, 8) + 0.5
    noise = FeatureNoise(0.3).train()
    ratio = noise(f) / f
    assert ratio.min() >= 0.7 - 1e-6 and ratio.max() <= 1.3 + 1e-6
    assert ratio.std() > 0.05  # i.i.d. per element, not one factor
    assert torch.equal(noise.eval()(f), f)
    assert torch.equal(FeatureNoise(0.0).train()(f), f)


def test_feature_dropout_drops_whole_channels() -> None:
    torch.manual_seed(0)
    f = torch.rand(4, 16, 5, 5) + 0.5
    out = FeatureDropout(0.5).train()(f)
    per_channel = (out == 0).flatten(2)
    assert torch.all(per_channel.all(dim=2) | ~per_channel.any(dim=2))  # channel all zero or untouched
    kept = ~per_channel.all(dim=2)
    assert 0 < kept.sum() < kept.numel()
    assert torch.allclose(out[kept], f[kept] * 2.0)
    assert torch.equal(FeatureDropout(0.5).eval()(f), f)
