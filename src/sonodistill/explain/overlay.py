"""Heat maps and segmentation masks over ultrasound frames: colour overlays, a fitted ellipse, a PNG strip of frames
and an animated GIF (Pillow)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _lut(name: str = "turbo") -> np.ndarray:
    """256 x 3 uint8 colour table of a matplotlib colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)


def colorize(cam: np.ndarray, colormap: str = "turbo") -> np.ndarray:
    """float maps in [0, 1] (any shape `...`) -> uint8 `... x 3` colours."""
    idx = np.clip(np.rint(np.asarray(cam, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return _lut(colormap)[idx]


def overlay(clip: np.ndarray, cam: np.ndarray, alpha: float = 0.45, colormap: str = "turbo") -> np.ndarray:
    """uint8 frames `T x H x W` + maps `T x H x W` in [0, 1] -> uint8 `T x H x W x 3`.

    Each pixel blends gray and colour with weight `alpha * cam`, so cold regions keep the B-mode image.
    """
    clip = np.asarray(clip)
    cam = np.asarray(cam, dtype=np.float32)
    if clip.shape != cam.shape:
        raise ValueError(f"frames {clip.shape} and heat maps {cam.shape} differ in shape")
    gray = np.repeat(clip.astype(np.float32)[..., None], 3, axis=-1)
    w = (alpha * np.clip(cam, 0.0, 1.0))[..., None]
    out = (1.0 - w) * gray + w * colorize(cam, colormap).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# Colours of the foreground classes 1, 2, ... of a label mask (cycled), chosen to stand out on gray B-mode images.
CLASS_COLOURS = np.array([[255, 140, 0], [30, 144, 255], [50, 205, 50], [220, 20, 60], [186, 85, 211],
                          [255, 215, 0]], dtype=np.uint8)


def class_colour(label: int) -> np.ndarray:
    """RGB uint8 colour of foreground class `label` (>= 1) in `mask_overlay`."""
    if label < 1:
        raise ValueError(f"class 0 is the background and has no colour, got {label}")
    return CLASS_COLOURS[(label - 1) % len(CLASS_COLOURS)]


def mask_overlay(frames: np.ndarray, labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """uint8 frames `T x H x W` + integer label maps `T x H x W` (0 = background) -> uint8 `T x H x W x 3`.

    Each foreground class is tinted with its colour (weight `alpha`) and its outline (pixels of the class with a
    4-neighbour outside it) drawn in that colour at full strength; background pixels keep the gray image.
    """
    from scipy import ndimage

    frames, labels = np.asarray(frames), np.asarray(labels)
    if frames.shape != labels.shape or frames.ndim != 3:
        raise ValueError(f"frames {frames.shape} and label maps {labels.shape} must both be T x H x W")
    out = np.repeat(frames.astype(np.float32)[..., None], 3, axis=-1)
    for c in np.unique(labels):
        if c == 0:
            continue
        colour = class_colour(int(c)).astype(np.float32)
        region = labels == c
        out[region] = (1.0 - alpha) * out[region] + alpha * colour
        inner = np.stack([ndimage.binary_erosion(r, border_value=0) for r in region])
        out[region & ~inner] = colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_ellipse(image: np.ndarray, center_xy: tuple[float, float], semi_axes: tuple[float, float], angle: float,
                 colour: tuple[int, int, int] = (255, 0, 255)) -> np.ndarray:
    """Draw the outline of an ellipse (centre (x, y) and semi-axes (a, b) in pixels, the a axis at `angle` radians
    from the x axis, y pointing down) onto a uint8 `H x W x 3` image, in place; returns the image. Points outside
    the image are skipped."""
    h, w = image.shape[:2]
    (cx, cy), (a, b) = center_xy, semi_axes
    t = np.linspace(0.0, 2.0 * np.pi, max(64, int(np.ceil(8.0 * max(a, b)))), endpoint=False)
    x = cx + a * np.cos(angle) * np.cos(t) - b * np.sin(angle) * np.sin(t)
    y = cy + a * np.sin(angle) * np.cos(t) + b * np.cos(angle) * np.sin(t)
    xi, yi = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    keep = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    image[yi[keep], xi[keep]] = colour
    return image


def strip_indices(n: int, max_frames: int) -> np.ndarray:
    """At most `max_frames` evenly spaced frame indices of `n` (first and last included)."""
    if n < 1 or max_frames < 1:
        raise ValueError(f"need n >= 1 and max_frames >= 1, got {n}, {max_frames}")
    return np.unique(np.rint(np.linspace(0, n - 1, min(n, max_frames))).astype(np.int64))


def write_strip(frames: np.ndarray, path: str | Path, max_frames: int = 16, gap: int = 2) -> Path:
    """Evenly spaced frames of uint8 `T x H x W x 3` side by side (white gaps) as one PNG."""
    from PIL import Image

    frames = np.asarray(frames)
    idx = strip_indices(frames.shape[0], max_frames)
    h, w = frames.shape[1:3]
    canvas = np.full((h, len(idx) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for j, i in enumerate(idx):
        canvas[:, j * (w + gap) : j * (w + gap) + w] = frames[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def gif_bytes(frames: np.ndarray, fps: float | None = None) -> bytes:
    """uint8 `T x H x W x 3` (or `T x H x W`) -> an endlessly looping GIF (default 10 frames per second)."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] == 0:
        raise ValueError(f"expected non-empty T x H x W[x 3] frames, got {frames.shape}")
    images = [Image.fromarray(f) for f in frames]
    duration = int(round(1000.0 / fps)) if fps and fps > 0 else 100
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=max(20, duration), loop=0)
    return buf.getvalue()


def write_gif(frames: np.ndarray, path: str | Path, fps: float | None = None) -> Path:
    """Write `gif_bytes(frames, fps)` to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(frames, fps))
    return path
