"""2D U-Nets for semi-supervised segmentation: one encoder, a main decoder D1 and (HDC, URPC-style) a
second decoder D2 that sees perturbed encoder features during training only.

Shapes: input `B x C_in x H x W` (H, W divisible by 2 ** (levels - 1)), logits `B x K x H x W`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from sonodistill.errors import ConfigError
from sonodistill.models.pretrained import is_pretrained

__all__ = [
    "SegOutputs",
    "FeatureNoise",
    "FeatureDropout",
    "FeaturePerturbation",
    "UNetEncoder",
    "EfficientNetUNetEncoder",
    "UNetDecoder",
    "SegmentationNet",
    "FlipAveraged",
    "flip_averaged",
    "SingleDecoderUNet",
    "DualDecoderUNet",
]


@dataclass
class SegOutputs:
    """Output of a segmentation U-Net.

    logits1: `B x K x H x W` logits of the main decoder D1.
    logits2: `B x K x H x W` logits of the noisy decoder D2, or None (eval mode, `dual=False`, single decoder).
    features: encoder features, shallow to deep, `B x C_i x H/2^i x W/2^i` (correlation-guidance loss input).
    decoder_features: D1's decoder features, deep to shallow (before the 1x1 classifier).
    """

    logits1: torch.Tensor
    logits2: torch.Tensor | None
    features: list[torch.Tensor]
    decoder_features: list[torch.Tensor] = field(default_factory=list)


class FeatureNoise(nn.Module):
    """Uniform multiplicative feature noise f * (1 + U(-a, a)), i.i.d. per element; identity in eval or a=0."""

    def __init__(self, amplitude: float = 0.3) -> None:
        super().__init__()
        if amplitude < 0:
            raise ConfigError(f"FeatureNoise: amplitude must be >= 0, got {amplitude}")
        self.amplitude = float(amplitude)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.amplitude == 0.0:
            return x
        # drawn in the logical (contiguous) order, not `empty_like`'s memory order: the same noise for a
        # channels-last feature map (train.channels_last) as for a contiguous one
        noise = torch.empty(x.shape, dtype=x.dtype, device=x.device).uniform_(-self.amplitude, self.amplitude)
        return x * (1.0 + noise)


class FeatureDropout(nn.Module):
    """Channel dropout (`Dropout2d`): zeroes whole channels of `B x C x H x W` with probability p, rescales by
    1/(1-p); identity in eval or p=0."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"FeatureDropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return F.dropout2d(x, p=self.p, training=True)


class FeaturePerturbation(nn.Module):
    """Feature-level noise for the noisy decoder: dropout(noise(f)) applied to every feature in a list."""

    def __init__(self, noise: float = 0.3, dropout: float = 0.5) -> None:
        super().__init__()
        self.noise = FeatureNoise(noise)
        self.dropout = FeatureDropout(dropout)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.dropout(self.noise(f)) for f in features]


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + LeakyReLU layers (MONAI `Convolution`), spatial size kept."""
    def conv(cin: int) -> Convolution:
        return Convolution(
            spatial_dims=2, in_channels=cin, out_channels=out_channels, kernel_size=3,
            act=("leakyrelu", {"negative_slope": 0.01}), norm="batch", adn_ordering="NA", bias=False,
        )
    return nn.Sequential(conv(in_channels), conv(out_channels))


class UNetEncoder(nn.Module):
    """`B x C_in x H x W` -> features shallow to deep, level i: `B x channels[i] x H/2^i x W/2^i`."""

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = list(channels)
        self.stem = _conv_block(in_channels, self.channels[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _conv_block(cin, cout))
            for cin, cout in zip(self.channels[:-1], self.channels[1:])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class EfficientNetUNetEncoder(nn.Module):
    """U-Net encoder on an EfficientNet-Lite trunk (`trunk`: efficientnet_lite0 | _lite1 | _lite2; ImageNet weights
    possible): a full-resolution conv block on the input, then the trunk's five stages as skips. `B x 1 x H x W`
    in [0, 1] -> level i at `H/2^i` with channels (16, *trunk stage channels), e.g. (16, 16, 24, 40, 112, 1280)
    for Lite0, i = 0..5 (H, W divisible by 32)."""

    def __init__(self, in_channels: int = 1, pretrained: str = "none", trunk: str = "efficientnet_lite0") -> None:
        super().__init__()
        from sonodistill.models.backbones import build_backbone

        self.trunk = build_backbone(trunk, in_channels=in_channels, pretrained=pretrained)
        self.pretrained_from = self.trunk.pretrained_from
        self.full = _conv_block(in_channels, 16)
        self.channels = [16, *self.trunk.stage_channels]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.full(x), *self.trunk(x).stages]


SEGMENTATION_ENCODERS = ("unet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class _UpBlock(nn.Module):
    """1x1 conv to the skip width, bilinear x2 upsampling, concat with the skip, conv block."""

    def __init__(self, in_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, skip_channels, kernel_size=1)
        self.block = _conv_block(2 * skip_channels, skip_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.block(torch.cat([skip, x], dim=1))


class UNetDecoder(nn.Module):
    """Encoder features (shallow to deep) -> (`B x K x H x W` logits, decoder features deep to shallow)."""

    def __init__(self, channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        channels = list(channels)
        self.ups = nn.ModuleList(
            _UpBlock(channels[i + 1], channels[i]) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = features[-1]
        decoded = []
        for up, skip in zip(self.ups, reversed(features[:-1])):
            x = up(x, skip)
            decoded.append(x)
        return self.head(x), decoded


def _check_input(x: torch.Tensor, in_channels: int, factor: int) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # shapes may be symbolic while tracing / exporting to ONNX
    if x.dim() != 4:
        raise ValueError(f"segmentation input must be B x C x H x W, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"segmentation input has {x.shape[1]} channels, model expects {in_channels}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ConfigError(
            f"segmentation input size {h}x{w} is not divisible by {factor} "
            f"(the U-Net downsamples {factor.bit_length() - 1} times): resize or pad the images"
        )


class SegmentationNet(nn.Module):
    """The exported inference model: encoder + one decoder, `B x C_in x H x W` -> `B x K x H x W` logits."""

    def __init__(self, encoder: nn.Module, decoder: UNetDecoder, in_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.in_channels = in_channels
        self.size_factor = 2 ** (len(encoder.channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.size_factor)
        return self.decoder(self.encoder(x))[0]


INFERENCE_DECODERS = ("d1", "both")  # what a dual-decoder U-Net serves: D1, or D1 and D2 averaged


class DecoderAveragedNet(SegmentationNet):
    """Encoder + two decoders whose class probabilities are averaged (HDC's `inference_decoders: both`):
    `B x C_in x H x W` -> `B x K x H x W` logits, the log of the mean softmax, so a softmax downstream gives the
    averaged probabilities and their argmax the ensemble's mask."""

    def __init__(self, encoder: nn.Module, decoder: UNetDecoder, decoder2: UNetDecoder, in_channels: int) -> None:
        super().__init__(encoder, decoder, in_channels)
        self.decoder2 = decoder2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.size_factor)
        features = self.encoder(x)
        log_probs = torch.stack([self.decoder(features)[0].log_softmax(dim=1),
                                 self.decoder2(features)[0].log_softmax(dim=1)])
        return torch.logsumexp(log_probs, dim=0) - math.log(2.0)


def flip_averaged(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Horizontal-flip test-time augmentation: `(fn(x) + mirror(fn(mirror(x)))) / 2` for per-pixel outputs
    `B x K x H x W` (e.g. probabilities) of images `B x C x H x W`; mirror = flip of the last (width) axis."""
    return (fn(x) + fn(x.flip(-1)).flip(-1)) / 2


class FlipAveraged(nn.Module):
    """`module`'s per-pixel output averaged with that of the mirrored image, mirrored back (`flip_averaged`);
    wraps the served probabilities module, so `predict` and the export run the same test-time augmentation."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_averaged(self.module, x)


class SingleDecoderUNet(nn.Module):
    """Encoder + main decoder D1 (supervised / Mean Teacher / FixMatch / CPS baselines).

    `channels` are the encoder widths shallow to deep, scaled by `width` (CPU-small default).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        width: float = 1.0,
        encoder: str = "unet",
        pretrained: str = "none",
    ) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ConfigError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if len(channels) < 2 or any(int(c) < 1 for c in channels):
            raise ConfigError(f"channels needs >= 2 positive widths, got {tuple(channels)}")
        if width <= 0:
            raise ConfigError(f"width multiplier must be > 0, got {width}")
        if encoder not in SEGMENTATION_ENCODERS:
            raise ConfigError(f"unknown segmentation encoder {encoder!r}; choose from {SEGMENTATION_ENCODERS}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        if encoder == "unet":
            if is_pretrained(pretrained):
                raise ConfigError("the plain U-Net encoder has no pretrained weights: use model.backbone="
                                  "efficientnet_lite0 for an ImageNet start")
            self.channels = [max(1, round(int(c) * width)) for c in channels]
            self.encoder: nn.Module = UNetEncoder(in_channels, self.channels)
        else:
            if width != 1.0:
                raise ConfigError(f"the {encoder} encoder has the fixed ImageNet architecture: set model.width=1.0 "
                                  f"(got {width})")
            self.encoder = EfficientNetUNetEncoder(in_channels, pretrained, trunk=encoder)
            self.channels = list(self.encoder.channels)
        self.size_factor = 2 ** (len(self.channels) - 1)
        self.decoder1 = UNetDecoder(self.channels, num_classes)

    def forward(self, x: torch.Tensor, dual: bool = True) -> SegOutputs:
        _check_input(x, self.in_channels, self.size_factor)
        features = self.encoder(x)
        logits1, decoded = self.decoder1(features)
        return SegOutputs(logits1, self._second(features, dual), features, decoded)

    def _second(self, features: list[torch.Tensor], dual: bool) -> torch.Tensor | None:
        return None

    def inference_model(self) -> SegmentationNet:
        """Encoder + D1 as a plain module returning logits (shares, not copies, the parameters)."""
        return SegmentationNet(self.encoder, self.decoder1, self.in_channels)


class DualDecoderUNet(SingleDecoderUNet):
    """Encoder + D1 (clean features) + D2 (same decoder class, fed dropout(noise(f)) on every skip and the
    bottleneck). D2 runs only in training with `dual=True`; otherwise `logits2` is None."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        feature_noise: float = 0.3,
        feature_dropout: float = 0.5,
        width: float = 1.0,
        encoder: str = "unet",
        pretrained: str = "none",
    ) -> None:
        super().__init__(in_channels, num_classes, channels, width, encoder, pretrained)
        self.decoder2 = UNetDecoder(self.channels, num_classes)
        self.perturb = FeaturePerturbation(feature_noise, feature_dropout)

    def _second(self, features: list[torch.Tensor], dual: bool) -> torch.Tensor | None:
        if not (self.training and dual):
            return None
        return self.decoder2(self.perturb(features))[0]

    def inference_model(self, decoders: str = "d1") -> SegmentationNet:
        """Encoder + D1 (`decoders="d1"`), or encoder + D1 and D2 with their probabilities averaged (`"both"`,
        `DecoderAveragedNet`; no feature perturbation); shares, not copies, the parameters."""
        if decoders == "d1":
            return super().inference_model()
        if decoders == "both":
            return DecoderAveragedNet(self.encoder, self.decoder1, self.decoder2, self.in_channels)
        raise ConfigError(f"inference decoders must be one of {INFERENCE_DECODERS}, got {decoders!r}")
