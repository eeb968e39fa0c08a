"""Streaming preprocessing and prediction against the offline pipeline; the realtime benchmark report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sonodistill.data.preprocess import PreprocessConfig, preprocess_clip
from sonodistill.data.readers import read_clip
from sonodistill.errors import ConfigError
from sonodistill.serve.loading import load_model
from sonodistill.serve.predict import PredictOptions, predict_file
from sonodistill.serve.stream import StreamingPreprocessor, benchmark, iter_video_frames, stream_predict


def _stream(frames: np.ndarray, pre: StreamingPreprocessor) -> np.ndarray:
    out = []
    for f in frames:
        out += pre.push(f)
    return np.stack(out + pre.flush())


def test_streaming_preprocessing_equals_offline_when_the_clip_fits_the_warmup(video_file):
    frames = read_clip(video_file).frames  # 20 frames <= warmup 32: one block, the offline computation
    cfg = PreprocessConfig(size=64)
    np.testing.assert_array_equal(_stream(frames, StreamingPreprocessor(cfg)), preprocess_clip(frames, cfg))
    decoded = np.stack([f for f, _ in iter_video_frames(video_file)])
    np.testing.assert_array_equal(decoded, frames)  # incremental decoding = the reader's
    with pytest.raises(ConfigError):
        StreamingPreprocessor(cfg, chunk=40, context=32)


def test_streaming_preprocessing_close_to_offline_on_a_real_clip(lus_clip):
    frames = read_clip(lus_clip).frames  # 100 frames: region from the first 32, overlays in 8-frame chunks
    cfg = PreprocessConfig(size=64)
    online = _stream(frames, StreamingPreprocessor(cfg, chunk=8))
    offline = preprocess_clip(frames, cfg)
    diff = np.abs(online.astype(np.int16) - offline.astype(np.int16))
    assert online.shape == offline.shape and (diff > 0).mean() < 0.01 and diff.max() <= 16


def test_stream_predict_matches_offline_windows(tiny_run, video_file):
    model = load_model(tiny_run)
    offline = predict_file(model, video_file, PredictOptions(stride=4))
    online = stream_predict(model, video_file, stride=4)
    r = online.result
    assert r["windows"]["starts"] == offline["windows"]["starts"] == [0, 4, 8, 12]
    np.testing.assert_allclose(r["windows"]["probabilities"], offline["windows"]["probabilities"], atol=1e-5)
    assert r["prediction"] == offline["prediction"] and r["frames"] == 20
    assert 0 < online.first_result_s <= online.total_s and len(online.window_s) == 4


def test_benchmark_report(tiny_run, video_file, tmp_path):
    report = benchmark({"torch": load_model(tiny_run)}, video_file, repeats=1, stride=8,
                       out_json=tmp_path / "rt.json")
    r = report["backends"]["torch"]
    assert r["frames"] == 20 and r["video_duration_s"] == pytest.approx(0.8) and r["windows"] == 3
    assert r["real_time_factor"] == pytest.approx(r["processing_s_median"] / 0.8)
    assert json.loads((tmp_path / "rt.json").read_text())["backends"]["torch"]["windows"] == 3
