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
    from sonodistill.commands.bench import _config
    from sonodistill.protocols.tuning import speed_batch

    cfg = _config("pocus-finetune-imagenet", ["data.size=32", "model.pretrained=none"])
    model, x, y = speed_batch(cfg, 2)
    r = measure_train_speed(model, x, y, repeats=1, warmup=1)
    assert r["frozen_ort_items_per_s"] > 0


def test_bench_train_times_the_channels_last_order_when_the_config_asks():
    from sonodistill.commands.bench import _config
    from sonodistill.protocols.tuning import speed_batch

    def reordered(overrides: list[str]) -> bool:
        model, _, _ = speed_batch(_config("seg-hc18-imagenet", ["data.size=32", "model.pretrained=none", *overrides]), 2)
        convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
        return all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)

    assert reordered(["train.channels_last=true"]) and not reordered([])


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


def test_concurrent_rows_sum_rates_and_take_the_median_step():
    from sonodistill.evaluation.train_speed import best_setting, combine_concurrent, speed_markdown

    base = {"config": "c", "backbone": "b", "input": [8, 1, 32, 32], "threads": 1, "forward_gflop_per_item": 1.0}
    rows = [dict(base, train_step_s=s, train_items_per_s=8 / s, train_gflops=24 / s, matmul_gflops=50.0,
                 fraction_of_matmul_peak=0.0, frozen_items_per_s=100.0, frozen_ort_items_per_s=o)
            for s, o in ((0.5, 200.0), (1.0, 300.0), (2.0, 100.0))]
    one = combine_concurrent(rows)
    assert one["processes"] == 3 and one["train_step_s"] == 1.0
    assert one["train_items_per_s"] == 16 + 8 + 4 and one["matmul_gflops"] == 150.0
    assert one["fraction_of_matmul_peak"] == (48 + 24 + 12) / 150 and one["frozen_ort_items_per_s"] == 600.0
    assert combine_concurrent([rows[0], dict(rows[1], frozen_ort_items_per_s=None)])["frozen_ort_items_per_s"] is None
    assert "| 3 x 1 |" in speed_markdown([one])
    assert best_setting([rows[0], one]) == "3 process(es) x 1 thread(s): 28.0 training items/s"


def test_bench_train_cli_with_concurrent_processes(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", "train", "demo", "--threads", "1", "--processes", "1,2", "--repeats", "1",
                 "--batch-size", "2", "--set", "data.size=32", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r.get("processes", 1) for r in rows] == [1, 2]
    printed = capsys.readouterr().out
    assert "| 2 x 1 |" in printed and "demo: fastest training throughput with" in printed
    assert main(["bench", "train", "demo", "--processes", "0", "--out", str(out)]) == 2


def test_a_cached_config_times_the_step_after_the_frozen_stages():
    from sonodistill.commands.bench import _config
    from sonodistill.protocols.tuning import speed_batch

    cfg = _config("pocus-finetune-imagenet", ["data.size=32", "model.pretrained=none", "train.frozen_cache_views=2"])
    model, x, y = speed_batch(cfg, 2)
    assert tuple(x.shape) == (2, 24, 8, 8)  # stage 2's map: what the cache holds, not the 32 px image
    whole = measure_train_speed(*speed_batch(_config("pocus-finetune-imagenet", ["data.size=32",
                                                                               "model.pretrained=none"]), 2),
                                repeats=1, warmup=1)
    cached = measure_train_speed(model, x, y, repeats=1, warmup=1)
    assert 0 < cached["forward_gflop_per_item"] < whole["forward_gflop_per_item"]


def test_bf16_autocast_step_is_timed_against_a_bf16_matmul():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 3, (4,))
    r = measure_train_speed(model, x, y, repeats=1, warmup=1, precision="bf16-mixed", frozen=False)
    assert r["precision"] == "bf16-mixed" and r["device"] == "cpu" and r["train_items_per_s"] > 0
    # (the full row's 2048 x 2048 bf16 reference takes minutes on a CPU without bf16 units: a small one here)
    assert matmul_gflops(n=64, repeats=1, precision="bf16-mixed") > 0


def test_bench_train_refuses_a_precision_or_device_it_cannot_time(tmp_path, capsys):
    from sonodistill.errors import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        measure_train_speed(nn.Linear(4, 2), torch.rand(2, 4), torch.tensor([0, 1]), precision="16-mixed")
    out = str(tmp_path / "x.json")
    if not torch.cuda.is_available():
        assert main(["bench", "train", "demo", "--device", "cuda", "--out", out]) == 2
        assert "no such CUDA device" in capsys.readouterr().err
    assert main(["bench", "train", "demo", "--device", "meta", "--out", out]) == 2
    assert "cpu or cuda" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_bench_train_on_cuda_reports_device_memory_and_a_device_peak(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", "train", "seg-hc18-cpu", "--threads", "1", "--repeats", "2", "--batch-size", "2",
                 "--device", "cuda", "--precision", "bf16-mixed", "--set", "data.size=64", "--out", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert row["device"] == "cuda" and row["train_peak_memory_gib"] > 0
    assert row["matmul_gflops"] > 1e4  # a GPU's bf16 product: tens of TFLOP/s at least, far above any CPU here
    assert "cuda bf16-mixed" in capsys.readouterr().out
