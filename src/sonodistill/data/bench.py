"""Data pipeline benchmark on lus-blues: decode speed against bare PyAV, read+preprocess speed, and the clip
cache's second-epoch speed-up. `sonodistill bench data` runs it, prints a Markdown table and writes JSON."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from .adapters import load_adapter
from .cache import ClipCache
from .datasets import ClipDataset
from .preprocess import PreprocessConfig, preprocess_clip
from .readers import read_clip

DECODE_TARGET = 0.9   # read_clip frames/s over bare PyAV frames/s
CACHE_TARGET = 10.0   # first (filling) epoch time over second (cached) epoch time


def pyav_decode(path: str, threaded: bool = False) -> int:
    """Bare PyAV loop: decode every frame of the first video stream to a gray ndarray; returns the frame count."""
    import av

    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        if threaded:
            stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="gray")
            n += 1
    return n


def machine_info() -> dict[str, Any]:
    """CPU model, cores usable by this process, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    import av

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "av": av.__version__,
        "numpy": np.__version__,
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _bar(items: Iterable[Any], desc: str, progress: bool, total: int | None = None) -> Iterable[Any]:
    """A progress bar on stderr when asked for and stderr is a terminal (never bar frames in a log file)."""
    return tqdm(items, desc=desc, total=total, disable=not progress or not sys.stderr.isatty(), leave=False,
                unit="video")


def run_data_bench(root: str | Path | None = None, limit: int | None = None, size: int = 112,
                   num_frames: int = 16, cache_dir: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Measure the lus-blues data path; returns a flat dict of results (see docs/data-pipeline.md)."""
    manifest = load_adapter("lus-blues", root)
    if limit is not None:
        manifest = manifest.subset(np.arange(min(int(limit), len(manifest))))
    paths = manifest.paths
    for p in paths:  # warm the OS file cache so that no method pays the first disk read
        Path(p).read_bytes()

    # 1. decode: bare PyAV (default and threaded) vs read_clip, interleaved per file to share conditions.
    times = {"pyav": 0.0, "pyav_threaded": 0.0, "read_clip": 0.0}
    n_frames = 0
    for i, p in enumerate(_bar(paths, "decode", progress)):
        order = ["pyav", "pyav_threaded", "read_clip"]
        order = order[i % 3:] + order[: i % 3]  # rotate which method goes first
        counts = {}
        for method in order:
            if method == "read_clip":
                clip, dt = _timed(lambda: read_clip(p, grayscale=True))
                counts[method] = clip.frames.shape[0]
            else:
                counts[method], dt = _timed(lambda: pyav_decode(p, threaded=method == "pyav_threaded"))
            times[method] += dt
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"{p}: frame counts differ between decoders: {counts}")
        n_frames += counts["read_clip"]

    # 2. read + preprocess (what the cache stores).
    cfg = PreprocessConfig(size=size)
    t_pre = 0.0
    for p in _bar(paths, "read+preprocess", progress):
        _, dt = _timed(lambda: preprocess_clip(read_clip(p, grayscale=True).frames, cfg))
        t_pre += dt

    # 3. two epochs of a ClipDataset over a fresh cache: the first fills it, the second reads it.
    tmp = Path(tempfile.mkdtemp(prefix="sonodistill-bench-", dir=cache_dir))
    try:
        ds = ClipDataset(manifest, cfg, num_frames=num_frames, cache=ClipCache(tmp))
        epochs = []
        for e in range(2):
            t0 = time.perf_counter()
            for i in _bar(range(len(ds)), f"epoch {e + 1}", progress):
                ds[i]
            epochs.append(time.perf_counter() - t0)
        cache_bytes = sum(f.stat().st_size for f in tmp.rglob("*.clip"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    fps = {k: n_frames / v for k, v in times.items()}
    return {
        "dataset": "lus-blues",
        "n_videos": len(paths),
        "n_frames": int(n_frames),
        "size": int(size),
        "num_frames": int(num_frames),
        "pyav_fps": fps["pyav"],
        "pyav_threaded_fps": fps["pyav_threaded"],
        "read_clip_fps": fps["read_clip"],
        "decode_ratio": fps["read_clip"] / fps["pyav"],
        "decode_ratio_threaded": fps["read_clip"] / fps["pyav_threaded"],
        "read_preprocess_fps": n_frames / t_pre,
        "epoch_fill_s": epochs[0],
        "epoch_cached_s": epochs[1],
        "cache_speedup": epochs[0] / epochs[1],
        "cache_mb": cache_bytes / 2**20,
        "decode_target": DECODE_TARGET,
        "cache_target": CACHE_TARGET,
        "decode_target_met": bool(fps["read_clip"] / fps["pyav"] >= DECODE_TARGET),
        "cache_target_met": bool(epochs[0] / epochs[1] >= CACHE_TARGET),
        "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def markdown_table(r: dict[str, Any]) -> str:
    """The benchmark result as a Markdown table."""
    ok = {True: "yes", False: "no"}
    rows = [
        ("videos / frames decoded", f"{r['n_videos']} / {r['n_frames']}", ""),
        ("bare PyAV decode (gray), frames/s", f"{r['pyav_fps']:.0f}", ""),
        ("bare PyAV decode, threaded, frames/s", f"{r['pyav_threaded_fps']:.0f}", ""),
        ("`read_clip`, frames/s", f"{r['read_clip_fps']:.0f}", ""),
        ("`read_clip` / bare PyAV", f"{r['decode_ratio']:.2f}",
         f">= {r['decode_target']} ({ok[r['decode_target_met']]})"),
        ("`read_clip` / threaded PyAV", f"{r['decode_ratio_threaded']:.2f}", ""),
        (f"read + preprocess ({r['size']} px), frames/s", f"{r['read_preprocess_fps']:.0f}", ""),
        (f"epoch 1, `ClipDataset` ({r['num_frames']} frames) filling the cache, s", f"{r['epoch_fill_s']:.2f}", ""),
        ("epoch 2, from the cache, s", f"{r['epoch_cached_s']:.2f}", ""),
        ("epoch 1 / epoch 2", f"{r['cache_speedup']:.1f}", f">= {r['cache_target']:g} ({ok[r['cache_target_met']]})"),
        ("cache size, MiB", f"{r['cache_mb']:.1f}", ""),
    ]
    m = r["machine"]
    lines = ["| measure | value | target (met) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append("")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
                 f"PyAV {m['av']}, Python {m['python']}; {r['date']}.")
    return "\n".join(lines) + "\n"
