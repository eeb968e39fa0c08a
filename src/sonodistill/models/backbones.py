"""Backbone registry: every entry builds a `StagedBackbone` (stage features + pooled embedding).

Video backbones take `B x C x T x H x W`, frame backbones `B x C x H x W`. `width` scales channels (ResNets)
or the embedding dimension (ViTs) for CPU-sized variants.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from monai.networks.nets import ResNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from sonodistill.errors import ConfigError
from sonodistill.models.efficientnet import LITE_VARIANTS, EfficientNetLiteBackbone, VideoEfficientNetLite
from sonodistill.models.pretrained import apply_pretrained
from sonodistill.models.stages import StagedBackbone, StageOutputs, per_frame_stages
from sonodistill.models.tsm import TemporalShift
from sonodistill.models.vit import VIT_CONFIGS, VideoVisionTransformer, VisionTransformer, scaled_dim

NORMS = ("batch", "instance", "group")
RESNET_INPLANES = (64, 128, 256, 512)


class _MonaiResNet(ResNet):
    """MONAI ResNet whose residual layers use the requested norm (MONAI 1.6 applies it to the stem only)."""

    def __init__(self, *args: Any, norm: str | tuple, temporal_stride: int = 2, **kwargs: Any) -> None:
        object.__setattr__(self, "_layer_norm", norm)
        object.__setattr__(self, "_temporal_stride", temporal_stride)
        super().__init__(*args, norm=norm, **kwargs)

    def _make_layer(  # type: ignore[no-untyped-def]
        self, block, planes, blocks, spatial_dims, shortcut_type, stride=1, norm="batch"
    ) -> nn.Sequential:
        if spatial_dims == 3 and stride != 1:  # layers 2-4 downsample space by 2 and time by `temporal_stride`
            stride = (self._temporal_stride, stride, stride)
        return super()._make_layer(
            block, planes, blocks, spatial_dims, shortcut_type, stride, norm=self._layer_norm
        )


def _scale_channels(channels: int, width: float, multiple: int = 8) -> int:
    """`channels * width` rounded to a multiple of `multiple` (at least `multiple`)."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def _norm_arg(norm: str, channels: list[int]) -> str | tuple:
    """MONAI norm argument: batch; instance (affine); group with the most groups <= 32 dividing every width."""
    if norm == "batch":
        return "batch"
    if norm == "instance":
        return ("instance", {"affine": True})
    g = math.gcd(*channels)
    groups = max(d for d in range(1, 33) if g % d == 0)
    return ("group", {"num_groups": groups})


class ResNetBackbone(StagedBackbone):
    """MONAI ResNet trunk (3D video or 2D frame): stages = layer1..layer4, pooled = global average of layer4."""

    def __init__(
        self,
        block: str,
        layers: list[int],
        in_channels: int = 1,
        width: float = 1.0,
        norm: str = "batch",
        spatial_dims: int = 3,
        conv1_size: int | tuple[int, ...] = 7,
        conv1_stride: int | tuple[int, ...] = (1, 2, 2),
        temporal_stride: int = 2,
    ) -> None:
        super().__init__()
        if temporal_stride not in (1, 2):
            raise ConfigError(f"temporal_stride must be 1 (keep T in every stage) or 2, got {temporal_stride}")
        inplanes = [_scale_channels(c, width) for c in RESNET_INPLANES]
        self.net = _MonaiResNet(
            temporal_stride=temporal_stride,
            block=block,
            layers=layers,
            block_inplanes=inplanes,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_size,
            conv1_t_stride=conv1_stride,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
            norm=_norm_arg(norm, inplanes),
        )
        expansion = 4 if block == "bottleneck" else 1
        self.kind = "video" if spatial_dims == 3 else "frame"
        self.stage_channels = [c * expansion for c in inplanes]
        self.embed_dim = self.stage_channels[-1]
        self.spatial_dims = spatial_dims

    def trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stem then layer1..layer4: `B x C x *S` -> four `B x C_i x *S_i` maps."""
        n = self.net
        x = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            x = n.maxpool(x)
        stages = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            stages.append(x)
        return stages

    def forward(self, x: torch.Tensor) -> StageOutputs:
        if x.dim() != self.spatial_dims + 2:
            layout = "B x C x T x H x W" if self.spatial_dims == 3 else "B x C x H x W"
            raise ValueError(f"{type(self).__name__} expects {layout}, got shape {tuple(x.shape)}")
        stages = self.trunk(x)
        return StageOutputs(stages=stages, pooled=stages[-1].flatten(2).mean(dim=2))


class TSMResNet(StagedBackbone):
    """2D ResNet per frame with a temporal shift in every residual branch (Lin et al. 2019).

    `B x C x T x H x W` -> stages `B x C_i x T x H_i x W_i`, pooled `B x D` (average over T, H, W).
    """

    kind = "video"

    def __init__(self, block: str, layers: list[int], in_channels: int = 1, width: float = 1.0,
                 norm: str = "batch", fold_div: int = 8) -> None:
        super().__init__()
        self.frames = ResNetBackbone(block, layers, in_channels, width, norm, spatial_dims=2, conv1_stride=2)
        self.shifts: list[TemporalShift] = []
        for layer in (self.frames.net.layer1, self.frames.net.layer2, self.frames.net.layer3, self.frames.net.layer4):
            for blk in layer:
                blk.conv1 = TemporalShift(blk.conv1, fold_div)
                self.shifts.append(blk.conv1)
        self.stage_channels = list(self.frames.stage_channels)
        self.embed_dim = self.frames.embed_dim

    def forward(self, x: torch.Tensor) -> StageOutputs:
        for shift in self.shifts:
            shift.num_frames = x.shape[2] if x.dim() == 5 else 1  # a wrong shape is refused below
        return per_frame_stages(x, self.frames.trunk)


# ---------------------------------------------------------------- builders: (in_channels, width, norm, **kwargs)


def _resnet3d(block: str, layers: list[int]) -> Callable[..., StagedBackbone]:
    def build(in_channels: int, width: float, norm: str, conv1_size: int | tuple[int, ...] = 7,
              conv1_stride: int | tuple[int, ...] = (1, 2, 2), temporal_stride: int = 2) -> StagedBackbone:
        return ResNetBackbone(block, layers, in_channels, width, norm, 3, conv1_size, conv1_stride, temporal_stride)

    return build


def _resnet2d(in_channels: int, width: float, norm: str) -> StagedBackbone:
    return ResNetBackbone("basic", [2, 2, 2, 2], in_channels, width, norm, spatial_dims=2, conv1_stride=2)


def _tsm_resnet18(in_channels: int, width: float, norm: str, fold_div: int = 8) -> StagedBackbone:
    return TSMResNet("basic", [2, 2, 2, 2], in_channels, width, norm, fold_div)


def _check_fixed_architecture(name: str, width: float, norm: str) -> None:
    if width != 1.0 or norm != "batch":
        raise ConfigError(f"{name} has the fixed ImageNet architecture: set model.width=1.0 and model.norm=batch "
                          f"(got width {width}, norm {norm!r})")


def _efficientnet_lite(variant: str) -> Callable[..., StagedBackbone]:
    def build(in_channels: int, width: float, norm: str, stages: int = 5) -> StagedBackbone:
        _check_fixed_architecture(f"efficientnet_{variant}", width, norm)
        return EfficientNetLiteBackbone(in_channels, stages, variant=variant)

    return build


def _video_efficientnet_lite(variant: str, shift: bool) -> Callable[..., StagedBackbone]:
    def build(in_channels: int, width: float, norm: str, fold_div: int = 8) -> StagedBackbone:
        _check_fixed_architecture(f"tsm_efficientnet_{variant}" if shift else f"efficientnet_{variant}_frames",
                                  width, norm)
        return VideoEfficientNetLite(in_channels, shift=shift, fold_div=fold_div, variant=variant)

    return build


def _efficientnet_lite_specs() -> dict[str, "BackboneSpec"]:
    """Frame, TSM video and per-frame video encoders of every EfficientNet-Lite variant with ImageNet weights
    (Lite0 in the base install, Lite1 / Lite2 with the `larger-encoders` extra)."""
    specs = {}
    for variant in LITE_VARIANTS:
        family, title = f"efficientnet_{variant}", f"EfficientNet-{variant.capitalize()}"
        specs[family] = BackboneSpec(_efficientnet_lite(variant), "frame", FRAME_INPUT,
                                     f"{title}, ImageNet weights available", family)
        specs[f"tsm_{family}"] = BackboneSpec(_video_efficientnet_lite(variant, True), "video", VIDEO_INPUT,
                                              f"{title} per frame + temporal shift, ImageNet weights", family)
        specs[f"{family}_frames"] = BackboneSpec(_video_efficientnet_lite(variant, False), "video", VIDEO_INPUT,
                                                 f"{title} per frame, mean over time, ImageNet weights", family)
    return specs


def _vit_dims(size: str, width: float, dim: int | None, depth: int | None, heads: int | None) -> dict[str, int]:
    if size not in VIT_CONFIGS:
        raise ConfigError(f"unknown ViT size '{size}'; choose from {sorted(VIT_CONFIGS)}")
    cfg = VIT_CONFIGS[size]
    heads = heads or cfg["heads"]
    return {"dim": scaled_dim(dim or cfg["dim"], heads, width), "depth": depth or cfg["depth"], "heads": heads}


def _check_vit_norm(norm: str) -> None:
    if norm != "batch":
        raise ConfigError(f"norm='{norm}' applies to ResNets only; ViTs always use LayerNorm (no batch statistics)")


def _frame_vit(size: str, patch: int) -> Callable[..., StagedBackbone]:
    def build(in_channels: int, width: float, norm: str, img_size: int = 224, depth: int | None = None,
              dim: int | None = None, heads: int | None = None, mlp_ratio: float = 4.0) -> StagedBackbone:
        _check_vit_norm(norm)
        return VisionTransformer(in_channels, patch, img_size, mlp_ratio=mlp_ratio,
                                 **_vit_dims(size, width, dim, depth, heads))

    return build


def _video_vit(in_channels: int, width: float, norm: str, size: str = "tiny", depth: int | None = None,
               dim: int | None = None, heads: int | None = None, tubelet: tuple[int, int, int] = (2, 16, 16),
               num_frames: int = 16, img_size: int = 112, mlp_ratio: float = 4.0) -> StagedBackbone:
    _check_vit_norm(norm)
    return VideoVisionTransformer(in_channels, tuple(tubelet), num_frames, img_size, mlp_ratio=mlp_ratio,
                                  **_vit_dims(size, width, dim, depth, heads))


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry: `builder(in_channels, width, norm, **kwargs)`, its input kind and default input shape."""

    builder: Callable[..., StagedBackbone]
    kind: Literal["video", "frame"]
    input_shape: tuple[int, ...]  # without batch: C x T x H x W (video) or C x H x W (frame)
    description: str
    imagenet: str | None = None  # family name in models/pretrained.IMAGENET_WEIGHTS, if ImageNet weights ship


VIDEO_INPUT = (1, 16, 112, 112)
FRAME_INPUT = (1, 224, 224)

BACKBONES: dict[str, BackboneSpec] = {
    "resnet10_3d": BackboneSpec(_resnet3d("basic", [1, 1, 1, 1]), "video", VIDEO_INPUT, "3D ResNet-10 (MONAI)"),
    "resnet18_3d": BackboneSpec(_resnet3d("basic", [2, 2, 2, 2]), "video", VIDEO_INPUT, "3D ResNet-18 (MONAI)"),
    "resnet50_3d": BackboneSpec(_resnet3d("bottleneck", [3, 4, 6, 3]), "video", VIDEO_INPUT,
                                "3D ResNet-50, bottleneck blocks (MONAI)"),
    "tsm_resnet18": BackboneSpec(_tsm_resnet18, "video", VIDEO_INPUT, "2D ResNet-18 per frame + temporal shift"),
    "video_vit": BackboneSpec(_video_vit, "video", VIDEO_INPUT, "video ViT, tubelet tokens (tiny/small)"),
    "vit_tiny_p8": BackboneSpec(_frame_vit("tiny", 8), "frame", FRAME_INPUT, "ViT-Tiny, patch 8"),
    "vit_tiny_p16": BackboneSpec(_frame_vit("tiny", 16), "frame", FRAME_INPUT, "ViT-Tiny, patch 16"),
    "vit_small_p8": BackboneSpec(_frame_vit("small", 8), "frame", FRAME_INPUT, "ViT-Small, patch 8"),
    "vit_small_p16": BackboneSpec(_frame_vit("small", 16), "frame", FRAME_INPUT, "ViT-Small, patch 16"),
    "resnet18_2d": BackboneSpec(_resnet2d, "frame", FRAME_INPUT, "2D ResNet-18 (MONAI)"),
    **_efficientnet_lite_specs(),
}


def list_backbones() -> list[str]:
    """Registered backbone names, in registry order."""
    return list(BACKBONES)


def backbone_kind(name: str) -> str:
    """'video' (input `B x C x T x H x W`) or 'frame' (`B x C x H x W`) for a registered backbone."""
    return _spec(name).kind


def backbone_family(name: str) -> str | None:
    """The ImageNet weight family a registered backbone can load (None: none ships)."""
    return _spec(name).imagenet


def accepts_option(name: str, option: str) -> bool:
    """Whether a registered backbone's builder takes the keyword `option` (e.g. a ViT's `img_size`)."""
    return option in inspect.signature(_spec(name).builder).parameters


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; choose from {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, in_channels: int = 1, width: float = 1.0, norm: str = "batch",
                   pretrained: str = "none", freeze_stages: int = 0, **kwargs: Any) -> StagedBackbone:
    """Build a registered backbone and initialise it from `pretrained` ('none', 'imagenet' or a PATH, see
    `models/pretrained.py`; recorded as `backbone.pretrained_from`) and freeze its first `freeze_stages` stages
    (partial finetuning). Unknown names, norms, widths or keyword
    arguments raise ConfigError; unusable weights raise CheckpointError."""
    spec = _spec(name)
    if not width > 0:
        raise ConfigError(f"backbone '{name}': width must be > 0, got {width}")
    if norm not in NORMS:
        raise ConfigError(f"backbone '{name}': unknown norm '{norm}'; choose from {NORMS}")
    params = inspect.signature(spec.builder).parameters
    allowed = [k for k in params if k not in ("in_channels", "width", "norm")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"backbone '{name}': unknown option(s) {unknown}; allowed: {allowed}")
    backbone = spec.builder(in_channels, width, norm, **kwargs)
    backbone.pretrained_from = apply_pretrained(backbone, spec.imagenet, pretrained)
    if freeze_stages:
        if not hasattr(backbone, "freeze_stages"):
            raise ConfigError(f"model.freeze_stages: backbone '{name}' does not support partial finetuning")
        backbone.freeze_stages(int(freeze_stages))
    return backbone


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    return sdpa_flop_count(query, key, value)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs (2 per multiply-add) of `model(x)` by `FlopCounterMode`, CPU attention included."""
    return _counted_forward(model, x)[1]


def _counted_forward(model: nn.Module, x: torch.Tensor) -> tuple[Any, int]:
    """`model(x)` without gradients, and its forward FLOPs (`count_flops`)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out = model(x)
    return out, int(counter.get_total_flops())


def backbone_summary(name: str, input_shape: tuple[int, ...], width: float = 1.0, **kwargs: Any) -> dict:
    """Params, forward FLOPs and stage shapes (without batch) of a backbone at `input_shape` (without batch).

    `input_shape` is `C x T x H x W` for video backbones and `C x H x W` for frame backbones. The model is built and
    run on the `meta` device: shapes and FLOPs without computing a value (the paper-size ViT-S/8 and 3D ResNet-50
    took minutes on 2 cores; the counts equal a CPU run's, tested), and its weights are never loaded.
    """
    spec = _spec(name)
    want = 4 if spec.kind == "video" else 3
    if len(input_shape) != want:
        layout = "C x T x H x W" if spec.kind == "video" else "C x H x W"
        raise ConfigError(f"backbone '{name}' ({spec.kind}) needs an input shape {layout}, got {input_shape}")
    kwargs.setdefault("in_channels", input_shape[0])
    kwargs.pop("pretrained", None)  # the architecture only
    with torch.device("meta"):
        model = build_backbone(name, width=width, **kwargs).eval()
        out, flops = _counted_forward(model, torch.zeros(1, *input_shape))
    return {
        "name": name,
        "kind": spec.kind,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": flops,
        "stage_shapes": [tuple(s.shape[1:]) for s in out.stages],
        "embed_dim": model.embed_dim,
    }
