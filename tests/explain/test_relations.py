"""Frame-relation heat maps and the baseline-vs-distilled side-by-side figure of `sonodistill explain --compare`."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from sonodistill.cli import main
from sonodistill.config import load_config
from sonodistill.explain.relations import stage_relation_matrices
from sonodistill.recipes.base import build_classifier
from tests.serve.conftest import make_run, video_file  # noqa: F401  (fixture)


def test_relation_matrices_are_cosines_per_stage():
    cfg = load_config(None, ["model.width=0.125", "model.kwargs={temporal_stride: 1}"])
    model = build_classifier(cfg, 3)
    x = torch.randn(1, 1, 8, 32, 32)
    x[:, :, 1] = x[:, :, 0]  # two identical frames: relation 1 between them in every stage
    mats = stage_relation_matrices(model, x)
    assert len(mats) == 4
    for m in mats:
        assert m.shape == (4, 4)  # the stem max-pool halves T; temporal_stride 1 keeps it after
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-5)
        np.testing.assert_allclose(m, m.T, atol=1e-6)
        assert m.min() >= -1 - 1e-5 and m.max() <= 1 + 1e-5


def test_explain_compare_writes_side_by_side(tmp_path, video_file):
    distilled = make_run(tmp_path / "a", name="dd", recipe="dualdistill")
    baseline = make_run(tmp_path / "b", name="sup", recipe="supervised", seed=7)
    out = tmp_path / "explain"
    assert main(["explain", str(distilled), str(video_file), "--out", str(out), "--compare", str(baseline),
                 "--method", "gradcam"]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert summary["relations"].endswith("relations.png")
    img = Image.open(out / "relations.png")
    assert img.size[0] > img.size[1] > 100
    for tag in ("supervised", "dualdistill"):
        mats = np.load(out / f"relations_{tag}.npz")
        assert len(mats.files) == 4
