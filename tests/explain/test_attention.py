"""[CLS] attention maps of a frame ViT: shape, normalisation, agreement with the block's weights, overlay PNGs."""

from __future__ import annotations

import pytest
import torch

from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.explain.attention import cls_attention_maps, write_attention_overlays, write_overlay_png
from sonodistill.models.backbones import build_backbone
from sonodistill.recipes.trainer import save_weights


def _vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("vit_tiny_p8", in_channels=1, width=0.25, img_size=32, depth=2).train()


def test_maps_shape_and_rows_normalised():
    vit = _vit()
    x = torch.rand(2, 1, 32, 48)
    maps = cls_attention_maps(vit, x)
    assert maps.shape == (2, vit.num_heads, 4, 6)
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(2, vit.num_heads))
    assert (maps >= 0).all()
    assert vit.training  # mode restored
    # the maps are the last block's [CLS] row without the [CLS] column, renormalised
    attn = vit.eval().get_last_selfattention(x)
    row = attn[:, :, 0, 1:]
    torch.testing.assert_close(maps.flatten(2), row / row.sum(-1, keepdim=True))
    up = cls_attention_maps(vit, x, size=(32, 48))
    assert up.shape == (2, vit.num_heads, 32, 48)


def test_non_vit_is_an_error():
    cnn = build_backbone("resnet18_2d", in_channels=1, width=0.125)
    with pytest.raises(ConfigError, match="ViT"):
        cls_attention_maps(cnn, torch.rand(1, 1, 32, 32))


def test_overlays_from_a_run_directory(tmp_path):
    run = tmp_path / "dino-run"
    cfg = load_config(None, ["recipe=dino", "model.backbone=vit_tiny_p8", "model.width=0.25",
                             "model.kwargs={img_size: 32, depth: 2}", "data.size=32"])
    cfg.save(run / "config.yaml")
    save_weights(_vit(), run / "teacher_backbone.safetensors")
    paths = write_attention_overlays(run, torch.rand(2, 1, 32, 32), tmp_path / "out")
    assert len(paths) == 2 and all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    with pytest.raises(ValueError, match="heads x H x W"):
        write_overlay_png(torch.rand(8, 8).numpy(), torch.rand(3, 4, 4).numpy(), tmp_path / "bad.png")


def test_explainer_hook_for_classifier_and_video_scorer():
    from sonodistill.explain.attention import attention_explainer
    from sonodistill.models.aggregators import build_aggregator
    from sonodistill.models.heads import ClassificationHead
    from sonodistill.models.stages import Classifier
    from sonodistill.models.wrappers import VideoScorer
    from sonodistill.recipes.medivlad import EXPLAINERS
    from sonodistill.serve.loading import recipe_explainers

    vit = _vit()
    maps = attention_explainer(Classifier(vit, ClassificationHead(vit.embed_dim, 3)), torch.rand(2, 1, 32, 32))
    assert maps.shape == (2, 1, 32, 32) and float(maps.min()) == 0.0 and float(maps.max()) == pytest.approx(1.0)
    scorer = VideoScorer(vit, build_aggregator("mean", vit.embed_dim, 3))
    assert attention_explainer(scorer, torch.rand(1, 1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert "attention" in EXPLAINERS and callable(recipe_explainers("medivlad")["attention"])
