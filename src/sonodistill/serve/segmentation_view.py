"""The review page's picture of a segmentation result: the masks `segment` returned, tinted and outlined over the
original frames, with the fitted head ellipse where the model measures head circumference."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from sonodistill.errors import SonoDistillError
from sonodistill.explain.overlay import draw_ellipse, mask_overlay

HEAD_ELLIPSE_COLOUR = (255, 0, 255)
DATA_URI_PNG = "data:image/png;base64,"


def mask_labels(entry: dict[str, Any], n_classes: int) -> np.ndarray:
    """The H x W class-index map of one `segment` mask entry (its `png`: a data URI or a file path; two classes are
    stored as 0/255, more as the class index)."""
    from PIL import Image

    png = entry["png"]
    data = base64.b64decode(png[len(DATA_URI_PNG):]) if png.startswith(DATA_URI_PNG) else Path(png).read_bytes()
    values = np.asarray(Image.open(io.BytesIO(data)))
    return (values > 0).astype(np.uint8) if n_classes == 2 else values.astype(np.uint8)


def display_scale(height: int, width: int, max_side: int) -> float:
    """The factor (<= 1) that fits an image's longer side into `max_side` pixels."""
    return min(1.0, max_side / max(height, width))


def segmentation_frames(frames: np.ndarray, result: dict[str, Any], idx: np.ndarray,
                        max_side: int = 512) -> np.ndarray:
    """uint8 original frames `T x H x W` + a `segment` result -> uint8 `len(idx) x h x w x 3` pictures of frames
    `idx`: each mask tinted and outlined in its class colour, the head ellipse (`head_ellipse_px`) in magenta;
    scaled so the longer side is at most `max_side` pixels."""
    from PIL import Image

    masks = result["masks"]
    if len(masks) != frames.shape[0]:
        raise SonoDistillError(f"{len(masks)} masks for {frames.shape[0]} frames: cannot draw them over the input")
    h, w = frames.shape[1:3]
    scale = display_scale(h, w, max_side)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
    n_classes = len(result["classes_in_mask"])
    gray, labels = [], []
    for i in idx:
        label = mask_labels(masks[i], n_classes)
        if label.shape != (h, w):
            raise SonoDistillError(f"mask of frame {i} is {label.shape}, the frame {(h, w)}")
        gray.append(np.asarray(Image.fromarray(frames[i]).resize(size, Image.BILINEAR)))
        labels.append(np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))
    pictures = mask_overlay(np.stack(gray), np.stack(labels))
    for picture, i in zip(pictures, idx):
        ellipse = masks[i].get("head_ellipse_px")
        if ellipse is not None:
            cx, cy = ellipse["center_xy"]
            a, b = ellipse["semi_axes"]
            draw_ellipse(picture, ((cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5), (a * scale, b * scale),
                         math.radians(ellipse["angle_deg"]), HEAD_ELLIPSE_COLOUR)
    return pictures
