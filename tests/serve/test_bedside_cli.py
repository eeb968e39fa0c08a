"""`sonodistill explain` (Grad-CAM + a recipe's EXPLAINERS hook) and `sonodistill realtime` from the command line."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from sonodistill.cli import main


def test_explain_writes_strip_gif_and_runs_recipe_explainers(tiny_run, video_file, tmp_path, monkeypatch):
    import sonodistill.recipes.supervised as supervised

    calls = []

    def flat(model, x, target_class):  # a recipe's own explainer: B x T x H x W
        calls.append((tuple(x.shape), target_class))
        return torch.ones(x.shape[0], *x.shape[2:])

    monkeypatch.setattr(supervised, "EXPLAINERS", {"flat": flat}, raising=False)
    out = tmp_path / "explain"
    assert main(["explain", str(tiny_run), str(video_file), "--out", str(out), "--target", "b_lines",
                 "--max-strip-frames", "5"]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert summary["target_class"] == "b_lines" and set(summary["methods"]) == {"gradcam", "flat"}
    strip = Image.open(out / "gradcam_strip.png")
    assert strip.size == (5 * 64 + 4 * 2, 64)
    gif = Image.open(out / "gradcam.gif")
    assert gif.size == (64, 64) and gif.n_frames > 1
    cam = np.load(out / "gradcam_maps.npy")
    assert cam.shape == (20, 64, 64) and cam.min() >= 0 and cam.max() == np.float16(1.0)
    np.testing.assert_array_equal(np.load(out / "flat_maps.npy"), 1.0)
    # windows of T = 8 every 8 frames, last one ending at frame 20; each window once per fold model
    assert [c[0] for c in calls] == [(3, 1, 8, 64, 64)] * 2 and {c[1] for c in calls} == {1}
    assert "input_warning" not in summary


def test_explain_of_a_still_image_with_a_video_model_says_so(tiny_run, tmp_path, caplog):
    from tests.serve.conftest import synthetic_frames

    still = tmp_path / "still.png"
    Image.fromarray(synthetic_frames(1, 64, 64)[0]).save(still)
    assert main(["explain", str(tiny_run), str(still), "--out", str(tmp_path / "ex")]) == 0
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert summary["frames"] == 1 and summary["input_warning"].startswith("a still image (one frame), fewer than")
    assert any("still.png: a still image" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_realtime_command_reports_both_backends(video_file, tmp_path, capsys):
    import pytest

    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")
    config = tmp_path / "tiny.yaml"
    config.write_text("data: {size: 64, num_frames: 8}\nmodel: {backbone: resnet10_3d, width: 0.125}\n")
    report_path = tmp_path / "rt.json"
    assert main(["realtime", str(config), str(video_file), "--random-init", "--num-classes", "3", "--repeats", "1",
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["backends"]) == {"onnx", "torch"}
    for r in report["backends"].values():
        assert r["frames"] == 20 and r["windows"] == 4 and r["real_time_factor"] > 0
    assert report["backends"]["onnx"]["prediction"] == report["backends"]["torch"]["prediction"]
    assert "real-time factor" in capsys.readouterr().out
