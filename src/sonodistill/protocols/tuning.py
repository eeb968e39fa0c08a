"""`train.threads: auto` and `train.parallel_folds: auto`: the processes x threads setting that trains fastest on
this machine, measured once per (machine, network, input shape) and remembered.

Candidates on C usable CPUs with F folds to train: P processes (1 <= P <= min(C, F)) of T torch threads
(T = 1 or C // P), within what the config fixes (a number given for one of the two is kept). Each candidate is
timed with `measure_train_speed(frozen=False)` (the steps of `sonodistill bench train`) on the config's network and
a random batch of its input shape, P copies at once in spawned processes, their items/s summed; the fastest wins.
What is timed is the network's plain supervised step, not a method's own extra work (an EMA teacher, a second
decoder), which is assumed to scale with threads and processes as the network does.

Measurements are stored in `SONODISTILL_CACHE/tuning/<key>.json` (key: CPU model, usable CPUs, torch version,
recipe task, backbone, width, model kwargs, size, frames, batch size) and reused by later runs; delete the file to
measure again. Not measured: runs on an accelerator or a multi-device launch (auto: torch's default threads, one
process), and a machine with one usable CPU (1 x 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

from sonodistill.config import RunConfig
from sonodistill.errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
REPEATS = 3  # timed steps per candidate (after 1 warm-up step)


def is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def check_setting(name: str, value: Any, minimum: int) -> None:
    """`train.<name>` is `auto` or an integer >= minimum, else a ConfigError naming it."""
    if is_auto(value):
        return
    if isinstance(value, str) or int(value) < minimum:
        raise ConfigError(f"train.{name} must be 'auto' or an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------------- timing
def speed_batch(cfg: RunConfig, batch_size: int | None, num_classes: int = 3, seed: int = 0):  # -> (model, x, y)
    """A config's trainable network (classification: the recipe's inference model; segmentation: its U-Net)
    and a random batch of its input shape with targets; with `train.frozen_cache_views`, the network after the
    frozen stages and a batch of their output (what a cached run trains); with `train.channels_last`, the network's
    weights in channels-last order (as the run's `ChannelsLast` callback puts them)."""
    model, x, y = _speed_batch(cfg, batch_size, num_classes, seed)
    if cfg.train.channels_last:
        from sonodistill.recipes.trainer import to_channels_last

        to_channels_last(model)
    return model, x, y


def _speed_batch(cfg: RunConfig, batch_size: int | None, num_classes: int, seed: int):  # -> (model, x, y)
    """`speed_batch` in the default memory order."""
    import torch

    from sonodistill.recipes import get_recipe

    torch.manual_seed(seed)
    recipe_cls = get_recipe(cfg.recipe)
    bs = int(batch_size or cfg.data.batch_size)
    s = cfg.data.size
    g = torch.Generator().manual_seed(seed)
    task = getattr(recipe_cls, "task", "classification")
    if task == "segmentation":
        model = recipe_cls(cfg).inference_model()
        return model, torch.rand(bs, 1, s, s, generator=g), torch.randint(0, 2, (bs, s, s), generator=g)
    if task != "classification":
        raise ConfigError(f"recipe {cfg.recipe!r} ({task}): training speed is measured on classification and "
                          "segmentation networks only; give train.threads and train.parallel_folds as numbers")
    model = recipe_cls(cfg, num_classes=num_classes).inference_model()
    shape = (1, cfg.data.num_frames, s, s) if model.backbone.kind == "video" else (1, s, s)
    x, y = torch.rand(bs, *shape, generator=g), torch.randint(0, num_classes, (bs,), generator=g)
    if cfg.train.frozen_cache_views:  # a cached run's step: the stages after the frozen ones, from their output
        from sonodistill.recipes.frozen_cache import FromPrefix, check_frozen_cache

        check_frozen_cache(cfg, recipe_cls, model.backbone)
        return FromPrefix(model), model.backbone.frozen_prefix(x), y
    return model, x, y


def config_speed(cfg: RunConfig, batch_size: int | None, repeats: int, threads: int,
                 frozen: bool = True, device: str = "cpu", precision: str = "32-true") -> dict[str, Any]:
    """`measure_train_speed` of `cfg`'s network with `threads` torch threads on `device` in `precision`, in this
    process (a worker's job too)."""
    import torch

    from sonodistill.evaluation.train_speed import measure_train_speed

    torch.set_num_threads(threads)
    model, x, y = speed_batch(cfg, batch_size)
    return measure_train_speed(model, x, y, repeats=repeats, warmup=1 if not frozen else 2, frozen=frozen,
                               device=device, precision=precision)


def time_setting(cfg: RunConfig, processes: int, threads: int, repeats: int = REPEATS) -> dict[str, Any]:
    """Training items/s of P concurrent processes of T threads (summed), each timing the same steps."""
    from sonodistill.evaluation.train_speed import combine_concurrent
    from sonodistill.protocols.processes import map_in_processes

    call = (cfg, None, repeats, threads, False)
    rows = map_in_processes(config_speed, [call] * processes, processes)
    return combine_concurrent(rows) if processes > 1 else {**rows[0], "processes": 1}


# ------------------------------------------------------------------------------------------- choosing
def candidates(cpus: int, folds: int, threads: Any, processes: Any) -> list[tuple[int, int]]:
    """(processes, threads) settings to try; a number given for either is kept (threads 0: C // P)."""
    counts = range(1, max(1, min(cpus, folds)) + 1) if is_auto(processes) else [int(processes)]
    out = []
    for p in counts:
        options = {1, max(1, cpus // p)} if is_auto(threads) else {int(threads) or max(1, cpus // p)}
        out += [(p, t) for t in sorted(options)]
    return out


def tuning_key(cfg: RunConfig, cpus: int) -> dict[str, Any]:
    """What a measurement depends on: the machine and the network's step (not the data, seed or schedule)."""
    import torch

    from sonodistill.recipes import get_recipe

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "usable_cpus": cpus, "torch": torch.__version__,
            "task": str(getattr(get_recipe(cfg.recipe), "task", "classification")), "backbone": cfg.model.backbone,
            "width": cfg.model.width, "kwargs": cfg.model.kwargs, "size": cfg.data.size,
            "num_frames": cfg.data.num_frames, "batch_size": cfg.data.batch_size}


def _tuning_file(key: dict[str, Any], cache_dir: Path) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir / "tuning" / f"{digest}.json"


def choose_setting(cfg: RunConfig, folds: int, cpus: int, cache_dir: Path) -> dict[str, Any]:
    """{"processes", "threads", "items_per_s", "candidates": [rows], "file"}: the fastest candidate, timing only the
    candidates the tuning file does not hold yet."""
    key = tuning_key(cfg, cpus)
    path = _tuning_file(key, cache_dir)
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"key": key, "rows": []}
    rows = {(r["processes"], r["threads"]): r for r in stored["rows"]}
    wanted = candidates(cpus, folds, cfg.train.threads, cfg.train.parallel_folds)
    todo = [c for c in wanted if c not in rows]
    for p, t in todo:
        t0 = time.perf_counter()
        row = time_setting(cfg, p, t)
        rows[(p, t)] = {"processes": p, "threads": t, "items_per_s": float(row["train_items_per_s"]),
                        "step_s": float(row["train_step_s"]), "load_average": list(os.getloadavg()),
                        "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        log.info("measured %d process(es) x %d thread(s): %.1f training items/s (%.0f s)", p, t,
                 rows[(p, t)]["items_per_s"], time.perf_counter() - t0)
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "rows": list(rows.values())}, indent=1), encoding="utf-8")
    pool = [rows[c] for c in wanted]
    best = max(pool, key=lambda r: r["items_per_s"])
    return {"processes": best["processes"], "threads": best["threads"], "items_per_s": best["items_per_s"],
            "candidates": pool, "file": str(path)}


def resolve_parallelism(cfg: RunConfig, folds: int) -> tuple[RunConfig, dict | None]:
    """(`cfg` with numbers for `train.threads` / `train.parallel_folds`, what was chosen and why); `cfg` itself and
    None when neither is `auto`. `folds`: how many folds this run trains (1 for a single model)."""
    from sonodistill.data.cache import cache_root
    from sonodistill.protocols.processes import usable_cpus

    train = cfg.train
    check_setting("threads", train.threads, 0)
    check_setting("parallel_folds", train.parallel_folds, 1)
    if not (is_auto(train.threads) or is_auto(train.parallel_folds)):
        return cfg, None
    out = deepcopy(cfg)
    cpus = usable_cpus()
    multi = int(train.devices) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if train.accelerator != "cpu" or multi:
        why = "an accelerator" if train.accelerator != "cpu" else "a multi-device launch"
        chosen = {"processes": 1, "threads": 0, "why": f"not measured: {why} (torch's default threads, one process)"}
    elif cpus == 1:
        chosen = {"processes": 1, "threads": 1, "why": "not measured: one usable CPU"}
    else:
        chosen = choose_setting(cfg, folds, cpus, cache_root(cfg.data.cache_dir))
        chosen["why"] = f"fastest measured on {cpus} CPUs for {folds} fold(s) to train"
    if is_auto(train.parallel_folds):
        out.train.parallel_folds = int(chosen["processes"])
    if is_auto(train.threads):
        out.train.threads = int(chosen["threads"])
    log.info("train.threads=%s, train.parallel_folds=%s (%s)", out.train.threads, out.train.parallel_folds,
             chosen["why"])
    return out, {"threads": out.train.threads, "parallel_folds": out.train.parallel_folds, **chosen}
