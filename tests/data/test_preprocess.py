"""Preprocessing: region detection against known synthetic geometry and real clips, overlay removal,
resize/pad geometry, sampling, normalisation, config keys and the preview PNGs."""

from __future__ import annotations

import json
import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sonodistill.data.manifest import Manifest
from sonodistill.data.preprocess import (
    PreprocessConfig,
    Region,
    detect_imaging_region,
    normalise,
    preprocess_clip,
    remove_static_overlay,
    resize_pad,
    sample_frame_indices,
)
from sonodistill.data.preview import write_contact_sheet, write_crop_check
from sonodistill.data.readers import read_clip
from sonodistill.errors import ConfigError


# -- synthetic clips of known geometry ------------------------------------------------------------
def sector_mask(h: int, w: int, apex=(-25.0, None), r0: float = 35.0, r1: float = None, half_angle=35.0):
    """Annular sector (convex-probe fan) with its apex above the image."""
    ay, ax = apex[0], (w / 2 if apex[1] is None else apex[1])
    r1 = r1 if r1 is not None else h - ay - 8
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot(yy - ay, xx - ax)
    ang = np.degrees(np.arctan2(xx - ax, yy - ay))
    return (r >= r0) & (r <= r1) & (np.abs(ang) <= half_angle)


def rect_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def speckle_clip(mask: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    """Temporally varying Rayleigh speckle (mean ~80) inside `mask`, black outside: uint8 T x H x W."""
    sp = rng.rayleigh(64.0, size=(t,) + mask.shape)
    return np.where(mask[None], np.clip(sp, 0, 255), 0).astype(np.uint8)


def add_static_overlays(clip: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Text-like blocks and a colour-bar-like gradient strip, static over time; returns the overlay mask."""
    h, w = region.shape
    ov = np.zeros((h, w), bool)
    # "text": rows of small bright glyph blocks in the top-left and top-right corners
    for y in (3, 11):
        for x in range(3, 40, 6):
            ov[y : y + 5, x : x + 3] = True
            ov[y : y + 5, w - 1 - x - 3 : w - 1 - x] = True
    # colour-bar-like strip on the right edge: vertical gradient
    bar = np.zeros((h, w), bool)
    bar[h // 8 : h // 2, w - 8 : w - 3] = True
    ov &= ~region
    bar &= ~region
    clip[:, ov] = 240
    grad = np.linspace(40, 255, h)[:, None].repeat(w, 1).astype(np.uint8)
    clip[:, bar] = grad[bar]
    return ov | bar


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture
def fan_clip(rng: np.random.Generator):
    h, w = 160, 200
    truth = sector_mask(h, w)
    clip = speckle_clip(truth, 16, rng)
    overlay = add_static_overlays(clip, truth)
    return clip, truth, overlay


def test_sector_region_and_overlays(fan_clip) -> None:
    clip, truth, overlay = fan_clip
    assert overlay.sum() > 200 and not (overlay & truth).any()
    region = detect_imaging_region(clip)
    assert isinstance(region, Region) and region.mask.dtype == bool
    assert iou(region.mask, truth) >= 0.95
    assert region.shape == "sector"
    ys, xs = np.nonzero(truth)
    assert region.bbox[0] <= ys.min() + 2 and region.bbox[1] >= ys.max() - 1
    assert abs(region.bbox[2] - xs.min()) <= 3 and abs(region.bbox[3] - (xs.max() + 1)) <= 3
    assert not (region.mask & overlay).any()
    out = remove_static_overlay(clip, region)
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert out[:, overlay].max() == 0  # overlays blanked
    inside = region.mask & truth
    np.testing.assert_array_equal(out[:, inside], clip[:, inside])  # tissue untouched


def test_linear_region(rng: np.random.Generator) -> None:
    h, w = 150, 180
    truth = rect_mask(h, w, 25, 140, 40, 150)
    clip = speckle_clip(truth, 12, rng)
    overlay = add_static_overlays(clip, truth)
    region = detect_imaging_region(clip)
    assert iou(region.mask, truth) >= 0.95
    assert region.shape == "linear"
    assert region.bbox == (25, 140, 40, 150)
    assert remove_static_overlay(clip, region)[:, overlay].max() == 0


def test_full_frame_region(rng: np.random.Generator) -> None:
    clip = rng.integers(0, 255, (8, 40, 50), dtype=np.uint8)
    region = detect_imaging_region(clip)
    assert region.shape == "full" and region.bbox == (0, 40, 0, 50) and region.mask.all()


def test_static_marker_inside_region_is_replaced(fan_clip) -> None:
    clip, truth, _ = fan_clip
    cross = np.zeros_like(truth)
    cross[95:98, 85:115] = True
    cross[82:111, 99:102] = True
    assert (cross & truth).sum() == cross.sum()
    clip = clip.copy()
    clip[:, cross] = 255
    region = detect_imaging_region(clip)
    assert iou(region.mask, truth) >= 0.95
    out = remove_static_overlay(clip, region)
    assert out[:, cross].astype(float).std(axis=0).min() > 5  # now varies like the tissue around it
    assert (out[:, cross] == 255).mean() < 0.05
    away = region.mask.copy()
    away[75:120, 75:125] = False
    np.testing.assert_array_equal(out[:, away], clip[:, away])


def test_single_image_intensity_region(rng: np.random.Generator) -> None:
    h, w = 160, 200
    truth = sector_mask(h, w)
    img = speckle_clip(truth, 1, rng)
    overlay = add_static_overlays(img, truth)
    region = detect_imaging_region(img)
    assert iou(region.mask, truth) >= 0.95
    assert not (region.mask & overlay).any()
    # by default single images keep their pixels (no overlay removal): crop only
    cfg = PreprocessConfig(size=max(h, w), crop_region=False)
    np.testing.assert_array_equal(preprocess_clip(img, cfg), resize_pad(img, max(h, w)))
    cfg = PreprocessConfig(size=max(h, w), crop_region=False, remove_overlay_images=True)
    out = preprocess_clip(img, cfg)
    top = (max(h, w) - h) // 2
    assert out[0, top : top + h][overlay].max() == 0


def test_preprocess_clip_crop_and_shapes(fan_clip) -> None:
    clip, truth, _ = fan_clip
    out = preprocess_clip(clip, PreprocessConfig(size=64))
    assert out.shape == (16, 64, 64) and out.dtype == np.uint8
    # the fan's bbox is wider than tall: content spans the full width, padding top and bottom
    assert out[:, :, 0].max() > 0 or out[:, :, 1].max() > 0
    assert out[:, 0].max() == 0 and out[:, -1].max() == 0
    colour = np.repeat(clip[..., None], 3, axis=-1)
    np.testing.assert_array_equal(preprocess_clip(colour, PreprocessConfig(size=64)), out)
    rgb = preprocess_clip(colour, PreprocessConfig(size=64, grayscale=False))
    assert rgb.shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(rgb[..., 1], out)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_clip(clip.astype(np.float32), PreprocessConfig())


@pytest.mark.parametrize("grayscale", [True, False])
def test_preprocess_clip_in_chunks_equals_whole(fan_clip, monkeypatch: pytest.MonkeyPatch, grayscale: bool) -> None:
    """Chunks of any size give the output of one pass: the region and the overlay come from the whole clip."""
    from sonodistill.data import preprocess

    clip, truth, overlay = fan_clip
    clip = clip.copy()
    clip[:, 95:98, 85:115] = 255  # a static marker inside the fan: replaced from tissue, identically in each chunk
    colour = np.stack([clip, clip // 2, 255 - clip], axis=-1)
    cfg = PreprocessConfig(size=64, grayscale=grayscale)
    whole = preprocess_clip(colour, cfg)
    for frames_per_chunk in (1, 3, 7):
        monkeypatch.setattr(preprocess, "_CHUNK_BYTES", colour[0].nbytes * frames_per_chunk)
        np.testing.assert_array_equal(preprocess_clip(colour, cfg), whole)
    region = detect_imaging_region(clip)
    y0, y1, x0, x1 = region.bbox
    gray = preprocess.rgb_to_gray(colour)
    reference = resize_pad(remove_static_overlay(gray if grayscale else colour, region)[:, y0:y1, x0:x1], 64)
    np.testing.assert_array_equal(whole, reference)


def test_preprocess_clip_in_chunks_never_copies_the_clip_whole(fan_clip, monkeypatch: pytest.MonkeyPatch) -> None:
    """In one chunk (as before chunking) overlay removal and the crop each copy the whole clip; in chunks of 8 frames
    the peak is lower by more than the clip's own size (a 5-minute 800 x 600 clip is 4.3 GB)."""
    import tracemalloc

    from sonodistill.data import preprocess

    clip = np.concatenate([fan_clip[0]] * 40)  # 640 frames of 160 x 200 (20 MB): far more than region detection uses

    def numpy_peak(chunk_frames: int) -> int:
        monkeypatch.setattr(preprocess, "_CHUNK_BYTES", clip[0].nbytes * chunk_frames)
        tracemalloc.start()
        try:
            preprocess_clip(clip, PreprocessConfig(size=64))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole, chunked = numpy_peak(len(clip)), numpy_peak(8)
    assert chunked < whole - clip.nbytes, (whole, chunked, clip.nbytes)


def test_preprocess_speed(fan_clip, rng: np.random.Generator) -> None:
    truth = sector_mask(350, 350)
    clip = speckle_clip(truth, 100, rng)
    add_static_overlays(clip, truth)
    cfg = PreprocessConfig()
    preprocess_clip(clip, cfg)
    best = min(_timed(lambda: preprocess_clip(clip, cfg)) for _ in range(3))
    assert best < 0.3, f"preprocess of 100x350x350 took {best:.3f}s"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- real clips -----------------------------------------------------------------------------------
def _moving_pixels(frames: np.ndarray) -> np.ndarray:
    std = frames[::4].astype(np.float32).std(axis=0)
    return std > np.percentile(std[std > 0], 50)


@pytest.mark.parametrize("name", ["color3d_jpeg_baseline.dcm", "examples_ybr_color.dcm"])
def test_real_echo_cine_region(shared_data: Path, name: str) -> None:
    frames = read_clip(shared_data / "dicom" / name).frames
    t, h, w = frames.shape
    region = detect_imaging_region(frames)
    y0, y1, x0, x1 = region.bbox
    assert region.shape == "sector"
    assert y1 - y0 < 0.9 * h and x1 - x0 < 0.9 * w  # static border (text, scale, buttons) dropped
    moving = _moving_pixels(frames)
    assert (moving & region.mask).sum() >= 0.99 * moving.sum()
    assert not region.mask[: h // 12, : w // 8].any()  # the top-left text block is outside
    out = remove_static_overlay(frames, region)
    assert out[:, : h // 12, : w // 8].max() == 0


@pytest.mark.parametrize("name", ["patient_10_L1.mp4", "patient_60_R3.mp4"])
def test_real_lus_region(shared_data: Path, name: str) -> None:
    frames = read_clip(shared_data / "lus-blues" / "videos" / name).frames
    region = detect_imaging_region(frames)
    assert region.shape == "sector"
    assert region.mask.mean() < 0.97  # the black corners beside the fan are outside
    assert not region.mask[0, 0] and not region.mask[0, -1]
    moving = _moving_pixels(frames)
    assert (moving & region.mask).sum() >= 0.995 * moving.sum()


# -- resize / pad ---------------------------------------------------------------------------------
def test_resize_pad_geometry() -> None:
    clip = np.full((3, 200, 100), 200, np.uint8)
    out = resize_pad(clip, 50)
    assert out.shape == (3, 50, 50) and out.dtype == np.uint8
    # 200x100 -> 50x25 centred: columns 12..36 are content, the rest padding
    assert (out[:, :, 12:37] == 200).all()
    assert (out[:, :, :12] == 0).all() and (out[:, :, 37:] == 0).all()
    wide = resize_pad(np.full((1, 10, 40), 9, np.uint8), 8)  # 10x40 -> 2x8, rows 3..4
    assert (wide[0, 3:5] == 9).all() and wide[0, :3].max() == 0 and wide[0, 5:].max() == 0


def test_resize_pad_matches_float_reference(rng: np.random.Generator) -> None:
    clip = rng.integers(0, 256, (4, 90, 120), dtype=np.uint8)
    out = resize_pad(clip, 60)
    ref = F.interpolate(torch.from_numpy(clip).float()[:, None], size=(45, 60), mode="bilinear",
                        antialias=True, align_corners=False)
    ref = ref.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    assert np.abs(out[:, 7:52].astype(int) - ref).max() <= 1
    assert out[:, :7].max() == 0 and out[:, 52:].max() == 0


def test_resize_pad_identity_and_colour(rng: np.random.Generator) -> None:
    clip = rng.integers(0, 256, (2, 32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(resize_pad(clip, 32), clip)
    colour = rng.integers(0, 256, (2, 20, 40, 3), dtype=np.uint8)
    out = resize_pad(colour, 40)
    assert out.shape == (2, 40, 40, 3)
    np.testing.assert_array_equal(out[:, 10:30], colour)


# -- sampling, normalisation, config --------------------------------------------------------------
def test_sample_uniform() -> None:
    np.testing.assert_array_equal(sample_frame_indices(10, 5), [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(sample_frame_indices(3, 6), [0, 0, 1, 1, 2, 2])  # nearest-neighbour repeat
    np.testing.assert_array_equal(sample_frame_indices(1, 4), [0, 0, 0, 0])
    assert sample_frame_indices(100, 16).dtype == np.int64


def test_sample_stride_and_random() -> None:
    np.testing.assert_array_equal(sample_frame_indices(20, 4, "stride", stride=3), [0, 3, 6, 9])
    # window of 10 frames does not fit into 5: stretched over the clip
    np.testing.assert_array_equal(sample_frame_indices(5, 4, "stride", stride=3), [0, 1, 3, 4])
    np.testing.assert_array_equal(sample_frame_indices(2, 4, "stride", stride=1), [0, 0, 1, 1])
    a = sample_frame_indices(50, 8, "random", stride=2, rng=np.random.default_rng(3))
    b = sample_frame_indices(50, 8, "random", stride=2, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (np.diff(a) == 2).all() and a[0] >= 0 and a[-1] <= 49
    starts = {int(sample_frame_indices(50, 8, "random", 2, np.random.default_rng(s))[0]) for s in range(30)}
    assert len(starts) > 5 and max(starts) <= 50 - 15
    with pytest.raises(ConfigError, match="unknown frame sampling mode"):
        sample_frame_indices(10, 2, "bogus")
    with pytest.raises(ConfigError):
        sample_frame_indices(10, 0)
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)


def test_normalise() -> None:
    clip = np.array([[0, 51, 255]], np.uint8)
    out = normalise(clip, PreprocessConfig(mean=0.2, std=0.5))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[(0 - 0.2) / 0.5, (0.2 - 0.2) / 0.5, (1 - 0.2) / 0.5]], atol=1e-6)


def test_config_key() -> None:
    a = PreprocessConfig()
    assert a.key() == PreprocessConfig().key()
    expected = hashlib.sha1(json.dumps(asdict(a), sort_keys=True).encode()).hexdigest()[:12]
    assert a.key() == expected and len(a.key()) == 12
    keys = {PreprocessConfig(size=64).key(), PreprocessConfig(crop_region=False).key(),
            PreprocessConfig(remove_overlay=False).key(), PreprocessConfig(grayscale=False).key(),
            PreprocessConfig(mean=0.5).key(), PreprocessConfig(std=0.2).key(), a.key()}
    assert len(keys) == 7
    with pytest.raises(ConfigError):
        PreprocessConfig(size=0)


# -- preview --------------------------------------------------------------------------------------
def test_crop_check_png(fan_clip, tmp_path: Path) -> None:
    clip, _, _ = fan_clip
    path = tmp_path / "fan.gif"
    Image.fromarray(clip[0]).save(path, save_all=True, append_images=[Image.fromarray(f) for f in clip[1:]])
    png = write_crop_check(path, tmp_path / "out", PreprocessConfig(size=64))
    assert png == tmp_path / "out" / "fan_crop.png"
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[1] > 2 * 160 - 10  # original | preprocessed, both at the frame height
    assert ((img[..., 0] == 255) & (img[..., 1] == 0)).sum() > 100  # red region outline drawn


def test_contact_sheet(fan_clip, tmp_path: Path) -> None:
    clip, _, _ = fan_clip
    rows = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(clip[i]).save(p)
        rows.append({"path": str(p), "group": f"g{i}", "label": "a" if i % 2 else "b"})
    manifest = Manifest(pd.DataFrame(rows), ["a", "b"], "image", "toy")
    png = write_contact_sheet(manifest, tmp_path / "sheet", PreprocessConfig(size=48), n=3, seed=1)
    assert png.is_file()
    img = Image.open(png)
    assert img.height >= 3 * 48 and img.width >= 48
