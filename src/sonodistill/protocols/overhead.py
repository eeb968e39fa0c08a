"""Training and inference overhead of a method versus the supervised recipe, on the same batches, in one run."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sonodistill.config import RunConfig


def _step_time(recipe: Any, batches: list[dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer) -> float:
    """Seconds for one optimisation step over every batch (forward, all loss terms, backward, step)."""
    t0 = time.perf_counter()
    for batch in batches:
        loss, _ = recipe.compute_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - t0) / len(batches)


def _inference_time(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(batch["x"])
    return (time.perf_counter() - t0) / len(batches)


def measure_overhead(cfg: RunConfig, method: str = "dualdistill", baseline: str = "supervised",
                     num_classes: int = 3, batch_size: int = 8, batches: int = 4, repeats: int = 5,
                     warmup: int = 2, seed: int = 0) -> dict[str, Any]:
    """Interleave method and baseline steps on identical random batches; return median times and their ratios.

    Interleaving (A, B, A, B, ...) keeps slow drifts of a shared machine out of the ratio.
    """
    from sonodistill.recipes import get_recipe

    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, 1, cfg.data.num_frames, cfg.data.size, cfg.data.size)
    data = [{"x": torch.randn(*shape, generator=g), "y": torch.randint(0, num_classes, (batch_size,), generator=g)}
            for _ in range(batches)]
    recipes = {}
    for name in (baseline, method):
        torch.manual_seed(seed)
        recipes[name] = get_recipe(name)(cfg, num_classes=num_classes)
        recipes[name].train()
    optims = {n: torch.optim.SGD(r.parameters(), lr=1e-4, momentum=0.9) for n, r in recipes.items()}
    train: dict[str, list[float]] = {n: [] for n in recipes}
    infer: dict[str, list[float]] = {n: [] for n in recipes}
    for i in range(warmup + repeats):
        for name, recipe in recipes.items():
            recipe.train()
            t = _step_time(recipe, data, optims[name])
            s = _inference_time(recipe.inference_model(), data)
            if i >= warmup:
                train[name].append(t)
                infer[name].append(s)
    med = {n: statistics.median(v) for n, v in train.items()}
    med_inf = {n: statistics.median(v) for n, v in infer.items()}
    params = {n: sum(p.numel() for p in r.inference_model().parameters()) for n, r in recipes.items()}
    train_params = {n: sum(p.numel() for p in r.parameters()) for n, r in recipes.items()}
    return {
        "backbone": cfg.model.backbone, "width": cfg.model.width, "input": list(shape),
        "threads": torch.get_num_threads(), "repeats": repeats,
        "train_step_s": med, "inference_s": med_inf,
        "train_ratio": med[method] / med[baseline],
        "inference_ratio": med_inf[method] / med_inf[baseline],
        "inference_params": params, "training_params": train_params,
        "per_repeat_train_ratio": [a / b for a, b in zip(train[method], train[baseline])],
    }


def overhead_markdown(r: dict[str, Any], method: str = "dualdistill", baseline: str = "supervised") -> str:
    rows = [
        "| measure | supervised | dualdistill | ratio |",
        "|---|---|---|---|",
        f"| training step (s, median of {r['repeats']}) | {r['train_step_s'][baseline]:.4f} | "
        f"{r['train_step_s'][method]:.4f} | {r['train_ratio']:.3f} |",
        f"| inference (s per batch) | {r['inference_s'][baseline]:.4f} | {r['inference_s'][method]:.4f} | "
        f"{r['inference_ratio']:.3f} |",
        f"| inference parameters | {r['inference_params'][baseline]:,} | {r['inference_params'][method]:,} | "
        f"{r['inference_params'][method] / r['inference_params'][baseline]:.3f} |",
        f"| training parameters | {r['training_params'][baseline]:,} | {r['training_params'][method]:,} | "
        f"{r['training_params'][method] / r['training_params'][baseline]:.3f} |",
    ]
    return f"{r['backbone']} (width {r['width']}), input {r['input']}, {r['threads']} threads\n\n" + "\n".join(rows)
