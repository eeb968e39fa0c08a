"""Datasets: item shapes and dtypes, normalisation, determinism, mask geometry (hand-computed), real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sonodistill.data.adapters import load_adapter
from sonodistill.data.augment import HorizontalFlip
from sonodistill.data.cache import ClipCache, produce_clip, resize_pad_nearest
from sonodistill.data.datasets import ClipDataset, FrameDataset, VideoFrameDataset
from sonodistill.data.manifest import Manifest
from sonodistill.data.preprocess import PreprocessConfig, normalise, resize_pad
from sonodistill.errors import DataError


def _scene(tmp_path: Path, name: str = "img") -> tuple[Path, Path]:
    """160x100 image: black except a speckled box rows 20..80, cols 30..130; mask = rows 40..60, cols 60..100."""
    rng = np.random.default_rng(0)
    img = np.zeros((100, 160), np.uint8)
    img[20:80, 30:130] = rng.integers(50, 200, (60, 100))
    mask = np.zeros((100, 160), np.uint8)
    mask[40:60, 60:100] = 255
    ip, mp = tmp_path / f"{name}.png", tmp_path / f"{name}_mask.png"
    Image.fromarray(img).save(ip)
    Image.fromarray(mask).save(mp)
    return ip, mp


def _bbox(a: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


@pytest.mark.parametrize(
    "crop, expected",
    [
        # crop to box (60x100) -> scale 1.12, resized 67x112, top pad 22: rows 22+20*1.12=44.4.. , cols 30*1.12=33.6..
        # (the detected region may be a pixel or two wider than the box: 3 px tolerance)
        (True, (44, 67, 34, 78)),
        # full image (100x160) -> scale 0.7, resized 70x112, top pad 21: rows 21+28=49..63, cols 42..70
        (False, (49, 63, 42, 70)),
    ],
)
def test_mask_follows_image_geometry(tmp_path, crop, expected):
    ip, mp = _scene(tmp_path)
    m = Manifest(pd.DataFrame({"path": [str(ip)], "group": ["a"], "mask": [str(mp)]}), [], "image", "scene")
    cfg = PreprocessConfig(size=112, crop_region=crop)
    item = FrameDataset(m, cfg, cache=ClipCache(tmp_path / "c"))[0]
    mask = item["mask"][0].numpy()
    assert set(np.unique(mask)) == {0.0, 1.0} and bool(item["has_mask"])
    got = _bbox(mask > 0)
    assert all(abs(g - e) <= (3 if crop else 1) for g, e in zip(got, expected)), (got, expected)
    # relative to the speckled box as it appears in the output, the mask sits where it sat in the input
    x = item["x"][0].numpy()
    r0, r1, c0, c1 = _bbox(x > 0)
    rel = (r0 + (40 - 20) / 60 * (r1 - r0), r0 + (60 - 20) / 60 * (r1 - r0),
           c0 + (60 - 30) / 100 * (c1 - c0), c0 + (100 - 30) / 100 * (c1 - c0))
    assert all(abs(g - e) <= 1.0 for g, e in zip(got, rel)), (got, rel)
    assert (x[mask > 0] > 0).all()


def test_nearest_mask_matches_resize_pad_geometry():
    rng = np.random.default_rng(1)
    mask = (rng.random((37, 91)) > 0.5).astype(np.uint8)
    mask = np.kron(mask, np.ones((3, 3), np.uint8))  # blocks, so interpolation only differs at edges
    near = resize_pad_nearest(mask, 64)
    lin = resize_pad(mask[None] * 255, 64)[0]
    assert near.shape == (64, 64)
    assert (near[lin > 250] == 1).all() and (near[lin < 5] == 0).all()


def test_frame_dataset_augment_moves_mask_with_image(tmp_path):
    ip, mp = _scene(tmp_path)
    m = Manifest(pd.DataFrame({"path": [str(ip)], "group": ["a"], "mask": [str(mp)]}), [], "image", "scene")
    cfg = PreprocessConfig(size=64, crop_region=False)
    plain = FrameDataset(m, cfg)[0]
    flipped = FrameDataset(m, cfg, augment=HorizontalFlip(p=1.0))[0]
    torch.testing.assert_close(flipped["mask"], plain["mask"].flip(-1))
    torch.testing.assert_close(flipped["x"], plain["x"].flip(-1))


def test_frame_dataset_rejects_videos_and_empty_masks(tmp_path):
    ip, mp = _scene(tmp_path)
    m = Manifest(pd.DataFrame({"path": [str(ip)], "group": ["a"], "mask": [""], "label": ["x"]}), ["x"], "image")
    item = FrameDataset(m, PreprocessConfig(size=32))[0]
    assert not bool(item["has_mask"]) and float(item["mask"].sum()) == 0.0 and int(item["y"]) == 0


@pytest.fixture(scope="module")
def lus_small(shared_data, tmp_path_factory):
    m = load_adapter("lus-blues")
    rows = [0, 1, int(np.argmin(m.table["n_frames"].to_numpy()))]  # include the shortest (7-frame) video
    return m.subset(rows), ClipCache(tmp_path_factory.mktemp("cache"))


def test_clip_dataset_shapes_and_values(lus_small):
    m, cache = lus_small
    cfg = PreprocessConfig(size=48, mean=0.2, std=0.5)
    ds = ClipDataset(m, cfg, num_frames=16, cache=cache)
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        assert item["x"].shape == (1, 16, 48, 48) and item["x"].dtype == torch.float32
        assert item["y"].dtype == torch.int64 and item["y"].ndim == 0 and int(item["y"]) == m.labels[i]
        assert item["index"] == i
    clip = produce_clip(m.paths[0], cfg)
    idx = np.floor((np.arange(16) + 0.5) * len(clip) / 16).astype(int)  # uniform: segment centres
    np.testing.assert_allclose(ds[0]["x"][0].numpy(), normalise(clip[idx], cfg), atol=1e-6)
    with pytest.raises(DataError, match="single images"):
        FrameDataset(m, cfg, cache=cache)[0]


def test_clip_dataset_determinism(lus_small):
    m, cache = lus_small
    cfg = PreprocessConfig(size=48)
    a = ClipDataset(m, cfg, num_frames=8, sampling="random", stride=2, cache=cache, seed=3)
    b = ClipDataset(m, cfg, num_frames=8, sampling="random", stride=2, cache=cache, seed=3)
    assert torch.equal(a[0]["x"], b[0]["x"]) and torch.equal(a[0]["x"], a[0]["x"])
    b.set_epoch(1)
    assert not torch.equal(a[0]["x"], b[0]["x"])  # new epoch, new window (100-frame video, 86 starts)
    # DataLoader workers give the same items as the main process
    batch = next(iter(DataLoader(a, batch_size=3, num_workers=2)))
    torch.testing.assert_close(batch["x"], torch.stack([a[i]["x"] for i in range(3)]))


def test_video_frame_dataset(lus_small):
    m, cache = lus_small
    cfg = PreprocessConfig(size=48)
    ds = VideoFrameDataset(m, cfg, frames_per_video=4, cache=cache, seed=1)
    assert len(ds) == 12
    item = ds[6]
    assert item["x"].shape == (1, 48, 48) and item["video_index"] == 1 and item["index"] == 6
    clip = cache.get(m.paths[1], cfg)
    assert 0 <= item["frame_index"] < len(clip)
    np.testing.assert_allclose(item["x"][0].numpy(), clip[item["frame_index"]] / 255.0, atol=1e-6)
    assert ds[6]["frame_index"] == item["frame_index"]  # seeded
    uni = VideoFrameDataset(m, cfg, frames_per_video=4, sampling="uniform", cache=cache)
    assert [uni[i]["frame_index"] for i in range(4)] == [12, 37, 62, 87]  # 100 frames: segment centres


def test_frame_dataset_hc18(shared_data, tmp_path):
    m = load_adapter("hc18").subset([0, 1])
    ds = FrameDataset(m, PreprocessConfig(size=64), cache=ClipCache(tmp_path))
    item = ds[0]
    assert item["x"].shape == (1, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert 0.02 < float(item["mask"].mean()) < 0.8 and "y" not in item
    assert float(item["target"]) == pytest.approx(float(m.table["target"].iloc[0]))


def test_frame_dataset_from_an_image_masks_folder_of_real_images(shared_data, tmp_path):
    """BUSI laid out as a user's images/ + masks/ folders (links, as `<stem>_mask.png`): the image-masks adapter
    pairs them and the frame dataset gives the same image and mask as through the busi adapter."""
    busi = load_adapter("busi", target="lesions").subset([0, 1, 2])
    for path, mask in zip(busi.table["path"], busi.table["mask"]):
        (tmp_path / "set" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / "masks").mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / "images" / Path(path).name).symlink_to(path)
        (tmp_path / "set" / "masks" / (Path(path).stem + "_mask.png")).symlink_to(mask)
    mine = load_adapter("image-masks", tmp_path / "set")
    assert len(mine) == 3 and sorted(mine.groups) == sorted(Path(p).stem for p in busi.table["path"])
    order = [list(map(lambda p: Path(p).name, busi.table["path"])).index(Path(p).name) for p in mine.table["path"]]
    config, cache = PreprocessConfig(size=64), ClipCache(tmp_path / "cache")
    theirs = FrameDataset(busi, config, cache=cache)
    for i, j in enumerate(order):
        a, b = FrameDataset(mine, config, cache=cache)[i], theirs[j]
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["mask"], b["mask"]) and float(a["mask"].sum()) > 0
