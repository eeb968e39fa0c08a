"""Look at data before training: a contact sheet of preprocessed clips and a before/after crop check (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from sonodistill.data.manifest import Manifest
from sonodistill.data.preprocess import PreprocessConfig, detect_imaging_region, preprocess_clip, sample_frame_indices
from sonodistill.data.readers import read_clip

_CAPTION_H = 14
_GAP = 2


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _caption(text: str, width: int) -> Image.Image:
    img = Image.new("RGB", (width, _CAPTION_H), (0, 0, 0))
    ImageDraw.Draw(img).text((2, 1), text, fill=(255, 255, 0), font=_font())
    return img


def write_contact_sheet(manifest: Manifest, out_dir: str | Path, cfg: PreprocessConfig, n: int = 16,
                        seed: int = 0, frames_per_clip: int = 4) -> Path:
    """PNG grid: one row per clip (n drawn at random with `seed`), `frames_per_clip` preprocessed frames,
    captioned with the label (or group) and file name. Returns the PNG path (OUT/<name>_contact_sheet.png)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(manifest), size=min(int(n), len(manifest)), replace=False))
    s = int(cfg.size)
    width = frames_per_clip * (s + _GAP)
    tiles: list[Image.Image] = []
    table = manifest.table
    for r in rows:
        path = str(table["path"].iloc[r])
        clip = preprocess_clip(read_clip(path, grayscale=cfg.grayscale).frames, cfg)
        idx = sample_frame_indices(clip.shape[0], min(frames_per_clip, clip.shape[0]))
        row = Image.new("RGB", (width, s + _CAPTION_H), (0, 0, 0))
        label = str(table["label"].iloc[r]) if "label" in table.columns else f"group {table['group'].iloc[r]}"
        row.paste(_caption(f"{label} | {Path(path).name}", width), (0, 0))
        for j, i in enumerate(idx):
            row.paste(Image.fromarray(clip[i]).convert("RGB"), (j * (s + _GAP), _CAPTION_H))
        tiles.append(row)
    sheet = Image.new("RGB", (width, len(tiles) * (s + _CAPTION_H + _GAP)), (40, 40, 40))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (0, k * (s + _CAPTION_H + _GAP)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = manifest.name.replace("/", "_").replace(" ", "_") or "manifest"
    path_out = out / f"{name}_contact_sheet.png"
    sheet.save(path_out)
    return path_out


def write_crop_check(path: str | Path, out_dir: str | Path, cfg: PreprocessConfig) -> Path:
    """PNG OUT/<stem>_crop.png: first frame with the detected region outlined (red) and its bbox (yellow) |
    the preprocessed first frame, scaled to the same height."""
    frames = read_clip(path, grayscale=True).frames
    region = detect_imaging_region(frames)
    first = np.asarray(Image.fromarray(frames[0]).convert("RGB")).copy()
    edge = region.mask & ~ndimage.binary_erosion(region.mask, iterations=2)
    first[edge] = (255, 0, 0)
    left = Image.fromarray(first)
    y0, y1, x0, x1 = region.bbox
    ImageDraw.Draw(left).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 0))
    h = left.height
    right = Image.fromarray(preprocess_clip(frames, cfg)[0]).convert("RGB").resize((h, h), Image.NEAREST)
    width = left.width + _GAP + right.width
    sheet = Image.new("RGB", (width, h + _CAPTION_H), (40, 40, 40))
    text = f"{Path(path).name}: {region.shape} bbox y{y0}:{y1} x{x0}:{x1} | preprocessed {cfg.size}px"
    sheet.paste(_caption(text, width), (0, 0))
    sheet.paste(left, (0, _CAPTION_H))
    sheet.paste(right, (left.width + _GAP, _CAPTION_H))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path_out = out / f"{Path(path).stem}_crop.png"
    sheet.save(path_out)
    return path_out
