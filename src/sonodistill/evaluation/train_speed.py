"""Training speed of a config's network on this machine: items/s and achieved GFLOP/s of an optimisation step,
beside a large fp32 matmul's GFLOP/s measured in the same run (the machine's practical peak), so the ratio is
comparable across noisy, shared machines.

FLOPs: `torch.utils.flop_counter` on the forward pass (2 per multiply-add), times 3 for forward + backward (the
counter's own backward count over-counts depthwise convolutions). Frozen-feature throughput (inference only, no
gradient) is measured too, for the frozen-feature protocols.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn



def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of an `n x n` fp32 matmul (2 n^3 FLOPs) with the current torch thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def measure_train_speed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 5,
                        warmup: int = 2, frozen: bool = True) -> dict[str, Any]:
    """Median SGD step time, items/s and achieved GFLOP/s of `model` on batch `x` (`B x ...`) with cross-entropy
    against `y` (`B` class indices, or `B x H x W` for segmentation logits); the same-run matmul GFLOP/s and the
    ratio; frozen-feature (inference-mode) items/s. frozen=False: the training step only (no matmul, no frozen
    features, no FLOP count: what choosing threads needs)."""
    from sonodistill.models.backbones import count_flops

    bs = x.shape[0]
    model.eval()
    fwd_flops = count_flops(model, x[:1]) * bs if frozen else 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    model.train()
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    if not frozen:
        return {"input": list(x.shape), "threads": torch.get_num_threads(), "train_step_s": step,
                "train_items_per_s": bs / step}
    model.eval()
    infer = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                infer.append(time.perf_counter() - t0)
    peak = matmul_gflops()
    achieved = 3 * fwd_flops / step / 1e9
    ort = frozen_onnxruntime_items_per_s(model, x, repeats, warmup)
    return {
        "input": list(x.shape), "threads": torch.get_num_threads(),
        "train_step_s": step, "train_items_per_s": bs / step, "train_gflops": achieved,
        "forward_gflop_per_item": fwd_flops / bs / 1e9,
        "matmul_gflops": peak, "fraction_of_matmul_peak": achieved / peak,
        "frozen_items_per_s": bs / statistics.median(infer),
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


def speed_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `measure_train_speed` results, one row each; threads 'P x T' for P concurrent processes
    of T threads (their rates summed)."""
    head = ("| config | backbone | input (B x ...) | threads | step (s) | train items/s | train GFLOP/s | "
            "matmul GFLOP/s | fraction of peak | frozen items/s (torch) | frozen items/s (ONNX Runtime) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['config']} | {r['backbone']} | {' x '.join(map(str, r['input']))} | "
        f"{_threads(r)} | {r['train_step_s']:.3f} | {r['train_items_per_s']:.1f} | {r['train_gflops']:.1f} | "
        f"{r['matmul_gflops']:.1f} | {r['fraction_of_matmul_peak']:.0%} | {r['frozen_items_per_s']:.1f} | "
        f"{_fmt(r.get('frozen_ort_items_per_s'))} |\n"
        for r in rows)
    return head + body
