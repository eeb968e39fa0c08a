"""Training speed of a config's network on this machine: items/s and achieved GFLOP/s of an optimisation step,
beside a large matmul's GFLOP/s measured in the same run on the same device in the same precision (the machine's
practical peak: fp32 on the CPU; on a GPU fp32 or bf16 under autocast), so the ratio is comparable across noisy,
shared machines.

FLOPs: `torch.utils.flop_counter` on the forward pass (2 per multiply-add), times 3 for forward + backward (the
counter's own backward count over-counts depthwise convolutions). Frozen-feature throughput (inference only, no
gradient) is measured too, for the frozen-feature protocols.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

PRECISIONS = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16}  # Lightning's names for the timed modes


def _dtype(precision: str) -> torch.dtype:
    """The compute dtype of a Lightning precision string this benchmark times; ConfigError for another."""
    from sonodistill.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"training speed is timed in precision {sorted(PRECISIONS)}, not {precision!r}")
    return PRECISIONS[precision]


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a host clock read alone times the launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(step: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall seconds of `step()` over `repeats` calls after `warmup` untimed ones, device work included."""
    times = []
    for i in range(warmup + repeats):
        _synchronize(device)
        t0 = time.perf_counter()
        step()
        _synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(n: int | None = None, repeats: int = 5, device: str | torch.device = "cpu",
                  precision: str = "32-true") -> float:
    """Median GFLOP/s of an `n x n` matmul (2 n^3 FLOPs) on `device` in `precision`'s dtype, random operands
    (n default: 2048 on the CPU, 8192 on an accelerator, whose peak a smaller product does not reach)."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 8192)
    dtype = _dtype(precision)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    return 2 * n**3 / _median_seconds(lambda: torch.mm(a, b), device, 1, repeats) / 1e9


def measure_train_speed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 5,
                        warmup: int = 2, frozen: bool = True, device: str | torch.device = "cpu",
                        precision: str = "32-true") -> dict[str, Any]:
    """Median SGD step time, items/s and achieved GFLOP/s of `model` on batch `x` (`B x ...`) with cross-entropy
    against `y` (`B` class indices, or `B x H x W` for segmentation logits); the same-run matmul GFLOP/s (same
    device and precision) and the ratio; frozen-feature (inference-mode) items/s. On `device` (model and batch moved
    there), under autocast for `bf16-mixed`; on CUDA also the peak memory of the training step. frozen=False: the
    training step only (no matmul, no frozen features, no FLOP count: what choosing threads needs)."""
    from sonodistill.models.backbones import count_flops

    device = torch.device(device)
    dtype = _dtype(precision)
    model, x, y = model.to(device), x.to(device), y.to(device)
    bs = x.shape[0]
    model.eval()
    fwd_flops = count_flops(model, x[:1]) * bs if frozen else 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def train_step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = _median_seconds(train_step, device, warmup, repeats)
    out: dict[str, Any] = {"input": list(x.shape), "threads": torch.get_num_threads(), "device": device.type,
                           "precision": precision, "train_step_s": step, "train_items_per_s": bs / step}
    if device.type == "cuda":
        out["train_peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if not frozen:
        return out
    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    infer_s = _median_seconds(infer, device, warmup, repeats)
    peak = matmul_gflops(device=device, precision=precision)
    achieved = 3 * fwd_flops / step / 1e9
    ort = frozen_onnxruntime_items_per_s(model.cpu(), x.cpu(), repeats, warmup) if device.type == "cpu" else None
    return {
        **out, "train_gflops": achieved,
        "forward_gflop_per_item": fwd_flops / bs / 1e9,
        "matmul_gflops": peak, "fraction_of_matmul_peak": achieved / peak,
        "frozen_items_per_s": bs / infer_s,
        "frozen_ort_items_per_s": ort,
    }


def frozen_onnxruntime_items_per_s(model: nn.Module, x: torch.Tensor, repeats: int = 5,
                                   warmup: int = 2) -> float | None:
    """Items/s of the frozen-feature path on ONNX Runtime (`train.feature_engine=onnxruntime`): the model's
    backbone, pooled embedding, for frame inputs `B x C x H x W`; None for other models (video, segmentation)."""
    from sonodistill.models.frozen_engine import OnnxFrozenEncoder

    backbone = getattr(model, "backbone", None)
    if backbone is None or x.ndim != 4:
        return None
    encoder = OnnxFrozenEncoder(backbone.eval())
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        encoder(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def _threads(r: dict[str, Any]) -> str:
    return f"{r['processes']} x {r['threads']}" if r.get("processes", 1) > 1 else str(r["threads"])


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def combine_concurrent(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for `measure_train_speed` run at the same time in several processes: rates (items/s, GFLOP/s, the
    matmul's) summed over the processes, the step time their median; `processes` says how many."""
    out = dict(rows[0])
    out["train_items_per_s"] = float(sum(r["train_items_per_s"] for r in rows))
    out["train_step_s"] = statistics.median(r["train_step_s"] for r in rows)
    out["processes"] = len(rows)
    if "matmul_gflops" not in out:  # a training-only row (measure_train_speed(frozen=False))
        return out
    for key in ("train_gflops", "matmul_gflops", "frozen_items_per_s"):
        out[key] = float(sum(r[key] for r in rows))
    ort = [r.get("frozen_ort_items_per_s") for r in rows]
    out["frozen_ort_items_per_s"] = None if any(v is None for v in ort) else float(sum(ort))
    out["fraction_of_matmul_peak"] = out["train_gflops"] / out["matmul_gflops"]
    return out


def best_setting(rows: list[dict[str, Any]]) -> str:
    """'P process(es) x T thread(s)' of the row with the highest training items/s (all processes together)."""
    best = max(rows, key=lambda r: r["train_items_per_s"])
    return (f"{best.get('processes', 1)} process(es) x {best['threads']} thread(s): "
            f"{best['train_items_per_s']:.1f} training items/s")


def _device(r: dict[str, Any]) -> str:
    """'cpu', or e.g. 'cuda bf16-mixed, 3.2 GiB' (precision and peak training memory) for an accelerator row."""
    if r.get("device", "cpu") == "cpu":
        return "cpu"
    memory = r.get("train_peak_memory_gib")
    return f"{r['device']} {r['precision']}" + ("" if memory is None else f", {memory:.1f} GiB")


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `measure_train_speed` results, one row each; threads 'P x T' for P concurrent processes
    of T threads (their rates summed); device with precision and peak training memory on an accelerator."""
    head = ("| config | backbone | input (B x ...) | device | threads | step (s) | train items/s | train GFLOP/s | "
            "matmul GFLOP/s | fraction of peak | frozen items/s (torch) | frozen items/s (ONNX Runtime) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['config']} | {r['backbone']} | {' x '.join(map(str, r['input']))} | {_device(r)} | "
        f"{_threads(r)} | {r['train_step_s']:.3f} | {r['train_items_per_s']:.1f} | {r['train_gflops']:.1f} | "
        f"{r['matmul_gflops']:.1f} | {r['fraction_of_matmul_peak']:.0%} | {r['frozen_items_per_s']:.1f} | "
        f"{_fmt(r.get('frozen_ort_items_per_s'))} |\n"
        for r in rows)
    return head + body
