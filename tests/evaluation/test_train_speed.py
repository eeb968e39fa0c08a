"""bench train: step timing, FLOPs (3 x forward) and the same-run matmul reference."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sonodistill.cli import main
from sonodistill.evaluation.train_speed import matmul_gflops, measure_train_speed

pytestmark = pytest.mark.usefixtures("one_thread")


def test_measure_train_speed_counts_three_forward_passes_and_updates_weights():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    before = model[1].weight.detach().clone()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    r = measure_train_speed(model, x, y, repeats=2, warmup=1)
    assert r["forward_gflop_per_item"] == pytest.approx(2 * 64 * 3 / 1e9)
    assert r["train_gflops"] == pytest.approx(3 * 8 * r["forward_gflop_per_item"] / r["train_step_s"])
    assert r["fraction_of_matmul_peak"] == pytest.approx(r["train_gflops"] / r["matmul_gflops"])
    assert r["train_items_per_s"] == pytest.approx(8 / r["train_step_s"]) and r["frozen_items_per_s"] > 0
    assert not torch.equal(before, model[1].weight)
    assert r["frozen_ort_items_per_s"] is None  # no backbone: the ONNX Runtime path is for frame encoders


def test_frame_classifiers_report_the_onnxruntime_frozen_feature_speed():
    from sonodistill.commands.bench import _config, speed_batch

    cfg = _config("pocus-finetune-imagenet", ["data.size=32", "model.pretrained=none"])
    model, x, y = speed_batch(cfg, 2)
    r = measure_train_speed(model, x, y, repeats=1, warmup=1)
    assert r["frozen_ort_items_per_s"] > 0


def test_matmul_reference_is_positive():
    assert matmul_gflops(n=128, repeats=2) > 0


def test_bench_train_cli_on_video_and_segmentation_configs(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", "train", "demo", "seg-hc18-cpu", "--threads", "1", "--repeats", "1", "--batch-size", "2",
                 "--set", "data.size=32", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["config"] for r in rows] == ["demo", "seg-hc18-cpu"]
    assert rows[0]["input"][:2] == [2, 1] and len(rows[0]["input"]) == 5   # B x C x T x H x W
    assert rows[1]["input"] == [2, 1, 32, 32]
    assert "fraction of peak" in capsys.readouterr().out
