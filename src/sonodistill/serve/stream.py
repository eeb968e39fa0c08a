"""Streaming inference: decode frames one by one (PyAV), preprocess causally, run each window as it fills.

Causal preprocessing: the imaging region is detected from the first `warmup` frames (offline: 32 frames
spread over the whole clip); static overlays are found in each chunk of new frames together with the
frames just before it (at most `context` in all). Windows and aggregation are those of `serve.predict`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Iterator

import numpy as np

from sonodistill.data.preprocess import (
    PreprocessConfig,
    Region,
    detect_imaging_region,
    remove_static_overlay,
    resize_pad,
)
from sonodistill.data.readers import open_video_stream
from sonodistill.errors import ConfigError, DataError
from sonodistill.serve.loading import LoadedModel
from sonodistill.serve.predict import default_stride, frame_scores, round_list, run_batches, window_indices

log = logging.getLogger(__name__)


def iter_video_frames(path: str | Path) -> Iterator[tuple[np.ndarray, float | None]]:
    """Decode a video incrementally: yields (uint8 H x W gray frame, fps)."""
    import av

    with open_video_stream(path) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        n = 0
        try:
            for frame in container.decode(stream):
                n += 1
                yield frame.to_ndarray(format="gray"), fps
        except av.FFmpegError as exc:
            raise DataError(path, f"video decode failed after {n} frame(s): {exc.strerror or exc}") from exc
    if n == 0:
        raise DataError(path, "no decodable video frames")


class StreamingPreprocessor:
    """Causal `preprocess_clip` for a gray frame stream; `push` / `flush` return newly ready uint8 S x S frames."""

    def __init__(self, cfg: PreprocessConfig, warmup: int = 32, context: int = 32, chunk: int = 8) -> None:
        if min(warmup, context, chunk) < 1 or chunk > context:
            raise ConfigError("need warmup, context, chunk >= 1 and chunk <= context; "
                              f"got {warmup}, {context}, {chunk}")
        self.cfg, self.warmup, self.context, self.chunk = cfg, warmup, context, chunk
        self.region: Region | None = None
        self.pending: list[np.ndarray] = []
        self.history: deque[np.ndarray] = deque(maxlen=context)

    @property
    def _needs_region(self) -> bool:
        return self.cfg.crop_region or self.cfg.remove_overlay

    def _process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        new = np.stack(frames)
        if self._needs_region and self.region is None:
            self.region = detect_imaging_region(new)
        arr = new
        if self.cfg.remove_overlay:
            past = list(self.history)[-(self.context - len(frames)):] if self.context > len(frames) else []
            stack = np.concatenate([np.stack(past), new]) if past else new
            if stack.shape[0] > 1:  # offline rule: overlays are removed for clips, not single images
                arr = remove_static_overlay(stack, self.region)[-len(frames):]
        if self.cfg.crop_region:
            y0, y1, x0, x1 = self.region.bbox  # type: ignore[union-attr]
            arr = arr[:, y0:y1, x0:x1]
        self.history.extend(frames)
        return list(resize_pad(arr, int(self.cfg.size)))

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        self.pending.append(frame)
        limit = self.warmup if self.region is None and self._needs_region else self.chunk
        if len(self.pending) < limit:
            return []
        frames, self.pending = self.pending, []
        return self._process(frames)

    def flush(self) -> list[np.ndarray]:
        if not self.pending:
            return []
        frames, self.pending = self.pending, []
        return self._process(frames)


@dataclass
class StreamResult:
    """Prediction JSON plus timings (seconds): first window result, per-window model time, total."""

    result: dict[str, Any]
    total_s: float
    first_result_s: float | None
    window_s: list[float] = field(default_factory=list)


def stream_predict(model: LoadedModel, path: str | Path, stride: int | None = None, warmup: int = 32,
                   context: int = 32) -> StreamResult:
    """Stream a video through a video classifier: file in, the same JSON fields as `predict` out."""
    if model.task != "classification" or model.input_kind != "video":
        raise ConfigError(f"streaming needs a video classifier; {model.source} is a {model.input_kind} "
                          f"{model.task} model")
    t0 = time.perf_counter()
    t, stride = model.num_frames, stride or default_stride(model)
    pre = StreamingPreprocessor(model.preprocess, warmup, context, chunk=min(stride, context))
    clip: list[np.ndarray] = []
    starts: list[int] = []
    probs: list[np.ndarray] = []
    window_s: list[float] = []
    first: float | None = None
    fps: float | None = None

    def run(start: int, n: int) -> None:
        nonlocal first
        w0 = time.perf_counter()
        idx = window_indices(n, t, start)
        probs.append(run_batches(model, [np.stack([clip[i] for i in idx])], 1)[0])
        window_s.append(time.perf_counter() - w0)
        starts.append(start)
        if first is None:
            first = time.perf_counter() - t0

    next_start = 0
    for frame, fps in iter_video_frames(path):
        clip.extend(pre.push(frame))
        while next_start + t <= len(clip):
            run(next_start, len(clip))
            next_start += stride
    clip.extend(pre.flush())
    n = len(clip)
    while next_start + t <= n:
        run(next_start, n)
        next_start += stride
    if n < t:
        run(0, n)
    elif starts[-1] != n - t:
        run(n - t, n)
    wp = np.stack(probs)
    mean = wp.mean(axis=0)
    result = {
        "task": "classification", "frames": n, "fps": fps, "duration_s": (n / fps) if fps else None,
        "windows": {"length": t, "stride": stride, "starts": starts, "probabilities": round_list(wp, 6)},
        "prediction": model.classes[int(np.argmax(mean))],
        "probabilities": dict(zip(model.classes, round_list(mean, 6))),
        "clip_mode": "windows",
        "per_frame": round_list(frame_scores(n, t, starts, wp), 6),
        "streaming": {"warmup_frames": warmup, "context_frames": context},
    }
    return StreamResult(result, time.perf_counter() - t0, first, window_s)


def benchmark(models: dict[str, LoadedModel], video: str | Path, repeats: int = 3, stride: int | None = None,
              out_json: str | Path | None = None) -> dict[str, Any]:
    """Time `stream_predict` end to end (file -> JSON written) per backend: median over `repeats` after a warm-up.

    Real-time factor = processing time / video duration (< 1: faster than real time).
    """
    import tempfile

    report: dict[str, Any] = {"video": str(video), "repeats": repeats, "backends": {}}
    for name, model in models.items():
        stream_predict(model, video, stride)  # warm-up: lazy initialisation, caches
        totals, firsts, windows = [], [], []
        last: StreamResult | None = None
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                t0 = time.perf_counter()
                last = stream_predict(model, video, stride)
                (Path(tmp) / "prediction.json").write_text(json.dumps(last.result))
                totals.append(time.perf_counter() - t0)
                firsts.append(last.first_result_s or 0.0)
                windows.extend(last.window_s)
        assert last is not None
        duration = last.result["duration_s"]
        total = median(totals)
        report["backends"][name] = {
            "model": model.source, "backend": model.backend, "members": model.member_names,
            "frames": last.result["frames"], "fps": last.result["fps"], "video_duration_s": duration,
            "windows": len(last.result["windows"]["starts"]), "stride": last.result["windows"]["stride"],
            "processing_s_median": total, "processing_s_all": totals,
            "real_time_factor": (total / duration) if duration else None,
            "first_result_s_median": median(firsts), "window_ms_median": 1000 * median(windows),
            "prediction": last.result["prediction"],
        }
    if out_json is not None:
        Path(out_json).write_text(json.dumps(report, indent=2))
    return report
