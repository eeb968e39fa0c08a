"""Backbone registry: the staged contract for every entry, ViT/TSM specifics, summaries and the CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sonodistill.cli import main
from sonodistill.errors import ConfigError
from sonodistill.models.backbones import (
    BACKBONES,
    backbone_summary,
    build_backbone,
    count_flops,
    list_backbones,
)
from sonodistill.models.tsm import temporal_shift
from sonodistill.models.vit import Attention, Block, stage_block_indices

# Tiny CPU variants: width 0.25 for ResNets, depth 2 for ViTs.
TINY = {
    "resnet10_3d": {},
    "resnet18_3d": {},
    "resnet50_3d": {},
    "tsm_resnet18": {},
    "video_vit": {"depth": 2},
    "vit_tiny_p8": {"depth": 2},
    "vit_tiny_p16": {"depth": 2},
    "vit_small_p8": {"depth": 2},
    "vit_small_p16": {"depth": 2},
    "resnet18_2d": {},
    "efficientnet_lite0": {"width": 1.0},          # the fixed ImageNet architecture (its own tests:
    "tsm_efficientnet_lite0": {"width": 1.0},      # test_efficientnet.py)
    "efficientnet_lite0_frames": {"width": 1.0},
    **{name.format(v): {"width": 1.0} for v in ("lite1", "lite2")
       for name in ("efficientnet_{}", "tsm_efficientnet_{}", "efficientnet_{}_frames")},
}
VIDEO_X = (2, 1, 4, 32, 32)
FRAME_X = (2, 1, 32, 32)


def tiny(name: str, **kwargs) -> nn.Module:
    return build_backbone(name, **{"width": 0.25, **TINY[name], **kwargs})


def test_registry_lists_every_name() -> None:
    assert list_backbones() == list(TINY)
    assert {BACKBONES[n].kind for n in TINY} == {"video", "frame"}


@pytest.mark.parametrize("name", list(TINY))
def test_staged_contract_and_gradient_flow(name: str) -> None:
    torch.manual_seed(0)
    model = tiny(name).train()
    kind = BACKBONES[name].kind
    assert model.kind == kind
    x = torch.randn(VIDEO_X if kind == "video" else FRAME_X)
    out = model(x)
    assert len(out.stages) == (5 if "efficientnet" in name else 4)  # EfficientNet: its five resolution stages
    assert [s.shape[1] for s in out.stages] == model.stage_channels
    assert all(s.dim() == (5 if kind == "video" else 4) and s.shape[0] == 2 for s in out.stages)
    assert out.pooled.shape == (2, model.embed_dim)
    if kind == "video":  # T is kept by TSM, downsampled or tokenised by the others
        assert out.stages[0].shape[2] == (2 if name in ("resnet10_3d", "resnet18_3d", "resnet50_3d", "video_vit") else 4)
    out.pooled.sum().backward()
    # Every parameter is used by the pooled embedding (ViTs: [CLS] attends to every token in the last block).
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


def test_resnet_pooled_is_global_average_of_last_stage() -> None:
    model = tiny("resnet18_3d").eval()
    out = model(torch.randn(VIDEO_X))
    torch.testing.assert_close(out.pooled, out.stages[-1].mean(dim=(2, 3, 4)))


def test_resnet_stage_shapes_at_default_input() -> None:
    s = backbone_summary("resnet18_2d", (1, 64, 64), width=0.25)
    assert s["stage_shapes"] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    s = backbone_summary("resnet50_3d", (1, 8, 32, 32), width=0.25)
    assert [c for c, *_ in s["stage_shapes"]] == [64, 128, 256, 512]  # bottleneck expansion 4
    assert s["stage_shapes"][0][1:] == (4, 8, 8)  # stem stride (1,2,2) + max-pool 2


@pytest.mark.parametrize("name, shape", [("resnet18_3d", (1, 8, 32, 32)), ("tsm_efficientnet_lite0", (1, 4, 32, 32)),
                                         ("vit_tiny_p16", (1, 32, 32)), ("video_vit", (1, 4, 32, 32))])
def test_summary_on_the_meta_device_equals_a_cpu_run(name: str, shape: tuple[int, ...]) -> None:
    """`backbone_summary` builds and runs on the meta device: its FLOPs, parameters and stage shapes are a CPU
    model's (attention included: the CPU flash kernel has its own FLOP formula)."""
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    width = 0.25 if "efficientnet" not in name else 1.0
    summary = backbone_summary(name, shape, width=width, **kwargs)
    model = build_backbone(name, width=width, in_channels=shape[0], **kwargs).eval()
    x = torch.zeros(1, *shape)
    with torch.no_grad():
        out = model(x)
    assert summary["flops"] == count_flops(model, x) > 0
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert summary["stage_shapes"] == [tuple(t.shape[1:]) for t in out.stages]


@pytest.mark.parametrize("norm, layer", [("group", nn.GroupNorm), ("instance", nn.InstanceNorm3d)])
def test_norm_option_reaches_every_block(norm: str, layer: type) -> None:
    model = build_backbone("resnet18_3d", width=0.25, norm=norm)
    types = {type(m) for m in model.modules()}
    assert layer in types
    assert not any(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in types)
    # 1 stem norm + 2 per basic block (8 blocks) + 1 per downsample (layers 2-4)
    assert sum(isinstance(m, layer) for m in model.modules()) == 1 + 16 + 3


def test_width_multiplier_reduces_params() -> None:
    for name in ("resnet18_3d", "tsm_resnet18", "vit_tiny_p16"):
        kw = TINY[name]
        small = sum(p.numel() for p in build_backbone(name, width=0.25, **kw).parameters())
        big = sum(p.numel() for p in build_backbone(name, width=0.5, **kw).parameters())
        assert small < big, name
    vit = build_backbone("vit_small_p16", width=0.3, depth=1)
    assert vit.embed_dim % vit.num_heads == 0


def test_build_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("resnet1000")
    with pytest.raises(ConfigError, match="unknown option"):
        build_backbone("resnet18_3d", depth=3)
    with pytest.raises(ConfigError, match="unknown norm"):
        build_backbone("resnet18_3d", norm="layer")
    with pytest.raises(ConfigError, match="LayerNorm"):
        build_backbone("vit_tiny_p16", norm="group", depth=1)
    with pytest.raises(ConfigError, match="width"):
        build_backbone("resnet18_2d", width=0)


# ------------------------------------------------------------------------------------------------ ViT


def test_stage_blocks_evenly_spaced() -> None:
    assert stage_block_indices(12) == [2, 5, 8, 11]
    assert stage_block_indices(8) == [1, 3, 5, 7]
    assert stage_block_indices(2) == [0, 0, 1, 1]


def test_vit_positional_embedding_interpolates_to_two_sizes() -> None:
    model = build_backbone("vit_tiny_p8", width=0.25, depth=1, img_size=32).eval()
    with torch.no_grad():
        model.pos_embed.fill_(0.5)  # bicubic weights sum to one: a constant stays constant
    assert model.interpolate_pos_embed(4, 4) is model.pos_embed
    for size, grid in ((24, 3), (56, 7)):
        out = model(torch.randn(1, 1, size, size))
        assert out.stages[0].shape == (1, model.embed_dim, grid, grid)
        assert out.tokens.shape == (1, 1 + grid * grid, model.embed_dim)
        pos = model.interpolate_pos_embed(grid, grid)
        assert pos.shape == (1, grid * grid, model.embed_dim)
        torch.testing.assert_close(pos, torch.full_like(pos, 0.5))
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(1, 1, 30, 30))


def test_video_vit_positional_embedding_interpolates_over_time() -> None:
    model = build_backbone("video_vit", width=0.25, depth=1, num_frames=4, img_size=32).eval()
    out = model(torch.randn(1, 1, 8, 48, 32))
    assert out.stages[-1].shape == (1, model.embed_dim, 4, 3, 2)


def test_last_selfattention_rows_sum_to_one_and_match_sdpa() -> None:
    torch.manual_seed(0)
    model = build_backbone("vit_tiny_p16", width=0.25, depth=2, img_size=32).eval()
    x = torch.randn(2, 1, 48, 32)
    attn = model.get_last_selfattention(x)
    assert attn.shape == (2, model.num_heads, 1 + 6, 1 + 6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, model.num_heads, 7))
    # the explicit-softmax path equals the scaled_dot_product_attention path
    blk = model.blocks[-1]
    h = torch.randn(2, 7, model.embed_dim)
    explicit, _ = blk(h, return_attention=True)
    torch.testing.assert_close(explicit, blk(h), atol=1e-5, rtol=1e-5)


def test_pooled_is_final_norm_cls_and_patch_tokens() -> None:
    model = build_backbone("vit_tiny_p16", width=0.25, depth=1, img_size=32).eval()
    out = model(torch.randn(2, 1, 32, 32))
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])
    assert out.tokens[:, 1:].shape == (2, 4, model.embed_dim)


def test_video_vit_keep_returns_fewer_tokens_and_matches_full() -> None:
    torch.manual_seed(0)
    model = build_backbone("video_vit", width=0.25, depth=2, num_frames=4, img_size=32).eval()
    x = torch.randn(2, 1, 4, 32, 32)  # 2 x 2 x 2 = 8 tubelets
    full = model(x)
    keep_all = torch.arange(8).expand(2, -1)
    torch.testing.assert_close(model(x, keep=keep_all).tokens, full.tokens)
    keep = torch.tensor([[0, 3, 5], [1, 2, 7]])
    out = model(x, keep=keep)
    assert out.tokens.shape == (2, 4, model.embed_dim)
    assert len(out.stages) == 4 and out.stages[0].shape == (2, model.embed_dim, 3)
    assert out.pooled.shape == (2, model.embed_dim)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [0, 3, 5]] = True
    mask[1, [1, 2, 7]] = True
    torch.testing.assert_close(model(x, keep=mask).tokens, out.tokens)
    uneven = mask.clone()
    uneven[1, 7] = False  # 3 tokens kept in row 0, 2 in row 1
    with pytest.raises(ValueError, match="same number"):
        model(x, keep=uneven)
    with pytest.raises(ValueError, match="keep indices"):
        model(x, keep=torch.tensor([[0, 8], [1, 2]]))


# ------------------------------------------------------------------------------------------------ TSM


def test_temporal_shift_hand_case() -> None:
    t, c = 3, 16  # fold = 2 channels each way
    x = torch.tensor([[100.0 * f + ch for ch in range(c)] for f in range(t)]).view(t, c, 1, 1)
    y = temporal_shift(x, num_frames=t, fold_div=8).view(t, c)
    expected = torch.zeros(t, c)
    for f in range(t):
        for ch in range(c):
            if ch < 2:  # from the next frame, zero at the last
                expected[f, ch] = 100.0 * (f + 1) + ch if f + 1 < t else 0.0
            elif ch < 4:  # from the previous frame, zero at the first
                expected[f, ch] = 100.0 * (f - 1) + ch if f >= 1 else 0.0
            else:
                expected[f, ch] = 100.0 * f + ch
    torch.testing.assert_close(y, expected)


def test_temporal_shift_keeps_clips_apart() -> None:
    x = torch.randn(2 * 4, 8, 2, 2)
    y = temporal_shift(x, num_frames=4, fold_div=8)
    torch.testing.assert_close(y[:4], temporal_shift(x[:4], 4, 8))
    torch.testing.assert_close(y[4:], temporal_shift(x[4:], 4, 8))


def test_tsm_mixes_neighbouring_frames_only() -> None:
    torch.manual_seed(0)
    tsm = build_backbone("tsm_resnet18", width=0.25).eval()
    x = torch.randn(1, 1, 8, 32, 32)
    x2 = x.clone()
    x2[:, :, 7] += 1.0
    with torch.no_grad():
        a, b = tsm(x).stages[0], tsm(x2).stages[0]
    changed = (a - b).abs().flatten(3).amax(dim=(0, 1, 3)) > 1e-6  # per frame
    # layer1 has 2 shifted blocks: frame 7 reaches frames 5..7, not 0..4
    assert changed.tolist() == [False] * 5 + [True] * 3


# ------------------------------------------------------------------------------------------------ summary


def test_summary_params_and_flops() -> None:
    s = backbone_summary("resnet10_3d", (1, 4, 32, 32), width=0.25)
    model = build_backbone("resnet10_3d", width=0.25)
    assert s["params"] == sum(p.numel() for p in model.parameters())
    assert s["name"] == "resnet10_3d" and s["kind"] == "video" and s["embed_dim"] == 128
    assert s["flops"] > 0
    with pytest.raises(ConfigError, match="C x T x H x W"):
        backbone_summary("resnet10_3d", (1, 32, 32))


def test_count_flops_hand_cases_including_cpu_attention() -> None:
    assert count_flops(nn.Linear(5, 7, bias=False), torch.zeros(3, 5)) == 2 * 3 * 5 * 7
    n, d = 10, 12
    attn = Attention(d, heads=3)
    linear = 2 * n * d * 3 * d + 2 * n * d * d
    attention = 2 * (2 * n * n * d)  # q @ k^T and attn @ v
    assert count_flops(attn, torch.zeros(1, n, d)) == linear + attention
    blk = Block(d, heads=3, mlp_ratio=2.0)
    assert count_flops(blk, torch.zeros(1, n, d)) == linear + attention + 2 * (2 * n * d * 2 * d)


def test_models_command_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["models", "--names", "resnet18_2d", "tsm_resnet18", "--input", "1x2x32x32", "--width", "0.25"])
    assert rc == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "kind", "input", "params(M)"]
    assert out[1].split()[:3] == ["resnet18_2d", "frame", "1x32x32"]
    assert out[2].split()[:3] == ["tsm_resnet18", "video", "1x2x32x32"]
    assert out[1].split()[-1] == "128x1x1"
    assert main(["models", "--input", "1x32x32"]) == 2
