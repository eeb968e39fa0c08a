"""DualDistill recipe: any staged video backbone, zero inference overhead, switches, ablation table."""

from __future__ import annotations

import pytest
import torch

from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.recipes.dualdistill import DualDistillRecipe
from sonodistill.recipes.supervised import SupervisedRecipe

BACKBONES = [
    ("resnet10_3d", {"model.width": 0.125, "model.kwargs": "{temporal_stride: 1}"}),
    ("tsm_resnet18", {"model.width": 0.125}),
    ("video_vit", {"model.kwargs": "{depth: 4, dim: 48, heads: 2, tubelet: [2, 8, 8], num_frames: 8, img_size: 32}"}),
]


def _cfg(backbone, extra, opts=""):
    over = [f"model.backbone={backbone}"] + [f"{k}={v}" for k, v in extra.items()]
    if opts:
        over.append(f"recipe_options={opts}")
    return load_config(None, over + ["recipe=dualdistill"])


@pytest.mark.parametrize("backbone, extra", BACKBONES)
def test_any_backbone_trains_and_exports_the_supervised_architecture(backbone, extra):
    torch.manual_seed(0)
    cfg = _cfg(backbone, extra)
    recipe = DualDistillRecipe(cfg, num_classes=3)
    x = torch.randn(2, 1, 8, 32, 32)
    y = torch.tensor([0, 2])
    loss, parts = recipe.compute_loss({"x": x, "y": y})
    assert torch.isfinite(loss)
    assert {"ce_final", "sd", "rgsd", "agsd"} <= set(parts)
    loss.backward()
    assert all(p.grad is not None for p in recipe.aux_heads.parameters())
    # inference model: same parameter count and outputs as the supervised recipe's architecture
    torch.manual_seed(0)
    supervised = SupervisedRecipe(load_config(None, [f"model.backbone={backbone}"] +
                                              [f"{k}={v}" for k, v in extra.items()]), num_classes=3)
    exported = recipe.inference_model()
    n_exported = sum(p.numel() for p in exported.parameters())
    n_supervised = sum(p.numel() for p in supervised.inference_model().parameters())
    assert n_exported == n_supervised
    assert n_exported < sum(p.numel() for p in recipe.parameters())  # aux heads + attention are extra
    supervised.inference_model().load_state_dict(exported.state_dict())  # same keys and shapes
    exported.eval(), supervised.eval()
    torch.testing.assert_close(exported(x), supervised.inference_model()(x))


def test_switches_change_the_terms():
    cfg = _cfg("resnet10_3d", {"model.width": 0.125, "model.kwargs": "{temporal_stride: 1}"}, "{use_sd: false, use_rgsd: true, use_agsd: false}")
    recipe = DualDistillRecipe(cfg, num_classes=3)
    assert recipe.aux_heads is None and recipe.attention is None
    _, parts = recipe.compute_loss({"x": torch.randn(2, 1, 8, 32, 32), "y": torch.tensor([0, 1])})
    assert "rgsd" in parts and "sd" not in parts and "agsd" not in parts


def test_unknown_option_and_frame_backbone_rejected():
    with pytest.raises(ConfigError, match=r"recipe_options \(dualdistill\): unknown field\(s\) \['alhpa'\]"):
        DualDistillRecipe(_cfg("resnet10_3d", {"model.width": 0.125, "model.kwargs": "{temporal_stride: 1}"}, "{alhpa: 1}"), num_classes=3)
    with pytest.raises(ConfigError, match=r"recipe_options \(dualdistill\)\.temperature: expected float, got 'warm'"):
        DualDistillRecipe(_cfg("resnet10_3d", {"model.width": 0.125, "model.kwargs": "{temporal_stride: 1}"},
                               "{temperature: warm}"), num_classes=3)
    with pytest.raises(ConfigError, match="video backbone"):
        DualDistillRecipe(_cfg("resnet18_2d", {"model.width": 0.125}), num_classes=3)


def test_student_stage_sets_of_table2():
    for stages in ([1], [2], [3], [1, 2, 3]):
        cfg = _cfg("resnet10_3d", {"model.width": 0.125, "model.kwargs": "{temporal_stride: 1}"}, f"{{student_stages: {stages}}}")
        recipe = DualDistillRecipe(cfg, num_classes=2)
        _, parts = recipe.compute_loss({"x": torch.randn(2, 1, 8, 32, 32), "y": torch.tensor([0, 1])})
        assert sorted(k for k in parts if k.startswith("rgsd/")) == sorted(f"rgsd/s{s}" for s in stages)


@pytest.mark.slow
def test_ablation_writes_table1_layout(tiny_carotid, tiny_overrides):
    from sonodistill.protocols.ablation import run_ablation

    cfg = load_config(None, tiny_overrides + ["name=abl", "recipe=dualdistill", "train.epochs=1",
                                              "data.num_frames=8", "data.size=32", "train.folds=2"])
    table = run_ablation(cfg, manifest=tiny_carotid).read_text()
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| SD | RGSD | AGSD | accuracy | sensitivity | specificity | precision | f1")
    assert len(lines) == 2 + 8
    assert "±" in lines[2]
