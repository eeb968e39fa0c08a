"""Tiny run directories (random weights), small synthetic inputs and a toy segmentation recipe."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.recipes.base import build_classifier
from sonodistill.recipes.trainer import save_weights
from tests.tiny_segmentation import trained_seg_run

CLASSES = ["a_lines", "b_lines", "consolidation"]


@contextmanager
def serving(srv: Any) -> Iterator[tuple[str, int]]:
    """`srv` (from `make_server`) answering on a daemon thread inside the block: yields (host, port); shut down and
    closed after, also when the block fails."""
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[:2]
    finally:
        srv.shutdown()
        srv.server_close()


def post_upload(srv: Any, body: bytes, ext: str | None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST `body` to the review server's /api/predict with `X-File-Extension: ext` (none when None) and any extra
    `headers`; returns (status, JSON payload)."""
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    sent = {"Content-Type": "application/octet-stream", **(headers or {})}
    if ext is not None:
        sent["X-File-Extension"] = ext
    conn.request("POST", "/api/predict", body=body, headers=sent)
    resp = conn.getresponse()
    status, payload = resp.status, json.loads(resp.read())
    conn.close()
    return status, payload


def analyse_on_review_page(browser: Any, address: tuple[str, int], ready: str, clip: Path,
                           pixel_size: str | None = None) -> tuple[Any, list[str]]:
    """Open the review page at `address` in a 1200 x 900 Chromium page, wait for the model info to contain `ready`,
    upload `clip` (typing `pixel_size` into the pixel-size field first, when given) and wait until it is analysed.
    Returns (page, the page's JavaScript errors so far and later)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://{address[0]}:{address[1]}/")
    # locators only: the page's Content-Security-Policy forbids eval, which wait_for_function needs
    page.wait_for_selector(f"#model-info:has-text('{ready}')")
    if pixel_size is not None:
        page.fill("#pixel-size", pixel_size)
    page.set_input_files("#file", str(clip))
    page.click("#analyse")
    page.wait_for_selector("#status:has-text('Done in')", timeout=60_000)
    return page, errors


def make_run(root: Path, name: str = "tiny", classes: list[str] | None = None, folds: int = 2, final: bool = False,
             backbone: str = "resnet10_3d", size: int = 64, num_frames: int = 8, width: float = 0.125,
             recipe: str = "supervised", modality: str = "video", crop_region: bool = True, seed: int = 0) -> Path:
    """A run directory as crossval writes it: config.yaml, manifest.csv, folds.json, fold_k/ (and final/) weights."""
    classes = list(classes or CLASSES)
    cfg = RunConfig(name=name, out_dir=str(root), recipe=recipe)
    cfg.data.spec = "synthetic:test"
    cfg.data.size, cfg.data.num_frames, cfg.data.crop_region = size, num_frames, crop_region
    cfg.model.backbone, cfg.model.width = backbone, width
    cfg.train.folds = folds
    run = cfg.run_dir
    cfg.save(run / "config.yaml")
    n = 2 * len(classes) * max(folds, 1)
    table = pd.DataFrame({"path": [f"clips/item{i}.mp4" for i in range(n)], "group": [f"p{i}" for i in range(n)],
                          "label": [classes[i % len(classes)] for i in range(n)]})
    manifest = Manifest(table, classes, modality, name)  # type: ignore[arg-type]
    manifest.to_csv(run / "manifest.csv")
    rows = np.arange(n)
    fold_list = [{"fold": k, "train": rows[rows % folds != k].tolist(), "test": rows[rows % folds == k].tolist(),
                  "test_groups": [f"p{i}" for i in rows[rows % folds == k]]} for k in range(folds)]
    (run / "folds.json").write_text(json.dumps(fold_list))
    for k in range(folds):
        torch.manual_seed(seed + k)
        save_weights(_model(recipe, cfg, manifest), run / f"fold_{k}" / "model.safetensors")
    if final:
        torch.manual_seed(seed + 100)
        save_weights(_model(recipe, cfg, manifest), run / "final" / "model.safetensors")
    return run


def _model(recipe: str, cfg: RunConfig, manifest: Manifest) -> nn.Module:
    if recipe == "toyseg":
        return ToySegRecipe.build_inference_model(cfg, manifest)
    model = build_classifier(cfg, len(manifest.classes))
    with torch.no_grad():  # non-trivial BatchNorm statistics and a peaked softmax, as after training
        model.head.fc.weight.mul_(30.0)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------------------------- toy segmentation
class ToySegNet(nn.Module):
    """1x1 conv, logits [0, 40 (x - 0.5)]: foreground exactly where x > 0.5. `B x 1 x H x W` -> `B x 2 x H x W`."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 40.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -20.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ToySegRecipe:
    """Stands in for a segmentation recipe: `task` marker + `build_inference_model` hook."""

    task = "segmentation"

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest) -> nn.Module:
        return ToySegNet()


@pytest.fixture
def toyseg_recipe(monkeypatch):
    from sonodistill import recipes

    monkeypatch.setitem(recipes.RECIPES, "toyseg", "tests.serve.conftest:ToySegRecipe")
    return "toyseg"


# ---------------------------------------------------------------------------------- inputs
def write_video(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """uint8 T x H x W gray frames -> an H.264 mp4 (yuv420p; H, W even)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.repeat(f[..., None], 3, axis=2)), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def synthetic_frames(t: int = 20, h: int = 80, w: int = 96, seed: int = 0) -> np.ndarray:
    """A moving speckle patch inside a dark border with a static bright marker: uint8 T x H x W."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((t, h, w), dtype=np.uint8)
    for i in range(t):
        frames[i, 8:h - 8, 10:w - 10] = rng.integers(40, 200, size=(h - 16, w - 20))
    frames[:, 12:16, 14:30] = 250  # static overlay text inside the region
    return frames


def write_dicom(path: Path, frames: np.ndarray, patient_name: str = "Doe^Jane") -> Path:
    """Multi-frame 8-bit MONOCHROME2 ultrasound DICOM with patient fields set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = "JD-0042"
    ds.PatientBirthDate = "19700101"
    ds.Modality = "US"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.NumberOfFrames = int(frames.shape[0])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 40.0
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Video classifier run (resnet10_3d, width 0.125, 64 px, T = 8), 2 folds, no final model."""
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def video_file(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("inputs") / "clip.mp4", synthetic_frames())


@pytest.fixture(scope="session")
def lus_clip(shared_data) -> Path:
    path = shared_data / "lus-blues" / "videos" / "patient_10_L1.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory) -> Path:
    """HDC trained 1 epoch on each of 2 folds of 8 synthetic fetal-head images (48 x 48, pixel size in mm)."""
    return trained_seg_run(tmp_path_factory.mktemp("seg-serving"), "hdc")


def ellipse_runner(a: float = 12.0, b: float = 8.0, size: int = 32):
    """Probabilities of a fixed segmenter: foreground inside the ellipse of semi-axes a (columns) and b (rows)
    around the centre of the `size x size` input, whatever the image."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    inside = (((yy - size / 2) / b) ** 2 + ((xx - size / 2) / a) ** 2 <= 1).astype(np.float32)

    def runner(x: np.ndarray) -> np.ndarray:
        fg = np.broadcast_to(inside, (x.shape[0], size, size))
        return np.stack([1 - fg, fg], axis=1).astype(np.float32)
    return runner
