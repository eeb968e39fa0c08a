"""The overhead benchmark measures both recipes on the same batches; the inference models are identical."""

from __future__ import annotations

from sonodistill.config import load_config
from sonodistill.protocols.overhead import measure_overhead, overhead_markdown


def test_overhead_reports_ratios_and_identical_inference_size():
    cfg = load_config(None, ["model.backbone=resnet10_3d", "model.width=0.125", "model.kwargs={temporal_stride: 1}",
                             "data.size=32", "data.num_frames=8"])
    r = measure_overhead(cfg, batch_size=2, batches=1, repeats=1, warmup=0)
    assert r["inference_params"]["dualdistill"] == r["inference_params"]["supervised"]
    assert r["training_params"]["dualdistill"] > r["training_params"]["supervised"]
    assert r["train_ratio"] > 0 and len(r["per_repeat_train_ratio"]) == 1
    assert "| training step" in overhead_markdown(r)
