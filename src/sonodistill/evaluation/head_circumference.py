"""Head circumference (HC18) from a segmentation mask, and the geometry that maps model-resolution masks back.

HC is measured as the HC18 annotators did, on the head's outline: the ellipse is fitted by **least squares to the
outer contour** of the largest connected component of the mask (holes filled; scikit-image's `find_contours` at the
0.5 level, then `fit_ellipse_points`: the direct least-squares fit of scikit-image's `EllipseModel`), in physical
units (pixel spacing may differ per axis after resizing), and HC is Ramanujan's perimeter
`pi (3(a+b) - sqrt((3a+b)(a+3b)))` of its semi-axes, in mm. An empty mask, or a contour no ellipse fits, gives NaN:
a failure to count, not a number.

A data set's masks may lie a fixed distance outside the ellipse its `hc_mm` was measured on (HC18's do: about
0.68 pixel, so the outline of a perfect mask reads about 1.2 mm too long). `outline_offset_px` measures that
distance on labelled masks and `head_circumference_mm(..., outline_offset_px=d)` removes it: the curve at distance
d inside a convex outline of perimeter P has perimeter P - 2 pi d. `fit_ellipse_moments` (the second moments of the filled
region, the method used before) is kept for comparison: it under-reads heads whose mask is not a full ellipse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "Ellipse",
    "ramanujan_perimeter",
    "largest_component",
    "fit_ellipse_moments",
    "fit_ellipse_points",
    "fit_ellipse_contour",
    "filled_ellipse",
    "head_circumference_mm",
    "outline_offset_px",
    "hc_scores",
    "PreprocessGeometry",
    "preprocess_geometry",
]


@dataclass(frozen=True)
class Ellipse:
    """Centre (y, x), semi-axes a >= b and the major axis' angle (radians, from the x axis), in spacing units."""

    center: tuple[float, float]
    a: float
    b: float
    angle: float

    @property
    def perimeter(self) -> float:
        return ramanujan_perimeter(self.a, self.b)


def ramanujan_perimeter(a: float, b: float) -> float:
    """Ellipse perimeter from semi-axes a, b (Ramanujan's first approximation; relative error < 4e-4 at b/a = 0.5)."""
    return math.pi * (3.0 * (a + b) - math.sqrt((3.0 * a + b) * (a + 3.0 * b)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Bool H x W: the largest 8-connected component of a binary mask, holes filled (all False if empty)."""
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def _spacing(spacing: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(spacing, (int, float, np.floating)):
        sy = sx = float(spacing)
    else:
        sy, sx = (float(s) for s in spacing)
    if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
        raise ValueError(f"pixel spacing must be positive and finite, got {spacing}")
    return sy, sx


def fit_ellipse_moments(mask: np.ndarray, spacing: float | Sequence[float] = 1.0) -> Ellipse | None:
    """Ellipse of the largest component of an H x W mask by second moments, in units of `spacing` ((sy, sx) or one
    value per pixel). None when the mask is empty."""
    sy, sx = _spacing(spacing)
    region = largest_component(mask)
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return None
    y = ys.astype(np.float64) * sy
    x = xs.astype(np.float64) * sx
    cy, cx = float(y.mean()), float(x.mean())
    cov = np.cov(np.stack([x - cx, y - cy]), bias=True)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    l2, l1 = max(float(evals[0]), 0.0), max(float(evals[1]), 0.0)
    major = evecs[:, 1]
    return Ellipse((cy, cx), 2.0 * math.sqrt(l1), 2.0 * math.sqrt(l2), float(math.atan2(major[1], major[0])))


def fit_ellipse_points(x: np.ndarray, y: np.ndarray) -> Ellipse | None:
    """Direct least-squares ellipse through points (x, y) (Fitzgibbon's constrained fit in Halir and Flusser's
    numerically stable form, the method of scikit-image's `EllipseModel`), in their units; None when no ellipse
    fits (fewer than 5 points, collinear points, or a conic that is not an ellipse).

    Written here because `EllipseModel` breaks with NumPy 2.5 (its eigenvectors come back complex and its angle
    arithmetic raises TypeError): only real eigenvectors enter this fit."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 5:
        return None
    ox, oy = x.mean(), y.mean()  # centre and scale the points: the scatter matrices stay well conditioned
    scale = math.sqrt(((x - ox) ** 2 + (y - oy) ** 2).mean())
    if not scale > 0:
        return None
    x, y = (x - ox) / scale, (y - oy) / scale
    d1 = np.stack([x * x, x * y, y * y], axis=1)  # quadratic part of the conic A x^2 + B xy + C y^2 + D x + E y + F
    d2 = np.stack([x, y, np.ones_like(x)], axis=1)
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        return None
    m = s1 + s2 @ t
    m = np.stack([m[2] / 2.0, -m[1], m[0] / 2.0])  # C1^-1 M, C1 the constraint 4AC - B^2 = 1
    evals, evecs = np.linalg.eig(m)
    real = np.abs(np.imag(evals)) <= 1e-12 * max(1.0, float(np.abs(evals).max()))
    evecs = np.real(evecs[:, real])
    cond = 4.0 * evecs[0] * evecs[2] - evecs[1] ** 2
    if not (cond > 0).any():
        return None
    quad = evecs[:, int(np.argmax(cond))]
    (a, b, c), (d, e, f) = quad, t @ quad
    disc = b * b - 4.0 * a * c
    if not disc < 0:
        return None
    cx, cy = (2.0 * c * d - b * e) / disc, (2.0 * a * e - b * d) / disc
    level = f + (d * cx + e * cy) / 2.0  # the conic's value at the centre: (p - c)^T Q (p - c) = -level on it
    evals_q, evecs_q = np.linalg.eigh(np.array([[a, b / 2.0], [b / 2.0, c]]))
    sq = -level / evals_q  # squared semi-axes along Q's eigenvectors
    if not (sq > 0).all():
        return None
    minor, major = np.sqrt(np.sort(sq))
    direction = evecs_q[:, int(np.argmax(sq))]  # the major axis: Q's eigenvalue of smaller magnitude
    angle = math.atan2(direction[1], direction[0])
    return Ellipse((float(cy * scale + oy), float(cx * scale + ox)), float(major * scale), float(minor * scale),
                   float(angle % math.pi))


def fit_ellipse_contour(mask: np.ndarray, spacing: float | Sequence[float] = 1.0) -> Ellipse | None:
    """Least-squares ellipse through the outer contour of the largest component of an H x W mask, in units of
    `spacing` ((sy, sx) or one value per pixel). None when the mask is empty or no ellipse fits."""
    from skimage.measure import find_contours

    sy, sx = _spacing(spacing)
    region = largest_component(mask)
    if not region.any():
        return None
    contour = max(find_contours(np.pad(region, 1).astype(np.float64), 0.5), key=len) - 1.0  # (row, col)
    return fit_ellipse_points(contour[:, 1] * sx, contour[:, 0] * sy)


def filled_ellipse(shape: tuple[int, int], ellipse: Ellipse) -> np.ndarray:
    """Bool H x W: the pixels whose centres lie inside `ellipse` (fitted in pixel units: centre (row, column),
    semi-axes a, b, angle from the column axis with rows pointing down, as `fit_ellipse_contour` gives it)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    cy, cx = ellipse.center
    c, s = math.cos(ellipse.angle), math.sin(ellipse.angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / ellipse.a) ** 2 + (v / ellipse.b) ** 2 <= 1.0


def head_circumference_mm(mask: np.ndarray, pixel_size_mm: float | Sequence[float],
                          outline_offset_px: float = 0.0, ellipse_px: Ellipse | None = None) -> float:
    """HC in mm of an H x W head mask whose pixels measure `pixel_size_mm` ((sy, sx) mm, or one value), from the
    ellipse fitted to its outer contour, minus 2 pi `outline_offset_px` pixels (the masks' outline convention, see
    `outline_offset_px`); NaN if the mask is empty or no ellipse fits (a failure, to be counted).

    For a mask at model resolution pass `PreprocessGeometry.mm_per_pixel(pixel_size_mm)` (the resize factor).
    `ellipse_px`: the mask's ellipse already fitted in pixels (`fit_ellipse_contour(mask)`); with square pixels it is
    scaled instead of fitted again (the least-squares fit commutes with a uniform scale), else it is not used."""
    sy, sx = _spacing(pixel_size_mm)
    if ellipse_px is not None and sy == sx:
        perimeter = ellipse_px.perimeter * sy
    else:
        ellipse = fit_ellipse_contour(mask, (sy, sx))
        if ellipse is None:
            return math.nan
        perimeter = ellipse.perimeter
    return perimeter - outline_offset_px * _mm_per_outline_px((sy, sx))


def _mm_per_outline_px(pixel_size_mm: float | Sequence[float]) -> float:
    """HC in mm that moving a convex outline by one pixel (mean of the two spacings) adds: 2 pi x pixel size."""
    sy, sx = _spacing(pixel_size_mm)
    return 2.0 * math.pi * (sy + sx) / 2.0


def outline_offset_px(mask: np.ndarray, pixel_size_mm: float | Sequence[float], hc_mm: float) -> float:
    """How far (pixels) a labelled mask's outline lies outside the ellipse whose perimeter is its `hc_mm`:
    (HC of the mask - hc_mm) / (2 pi pixel size). NaN when no ellipse fits the mask."""
    return (head_circumference_mm(mask, pixel_size_mm) - float(hc_mm)) / _mm_per_outline_px(pixel_size_mm)


def hc_scores(mask: np.ndarray, pixel_size_mm: float | Sequence[float], hc_true_mm: float,
              outline_offset_px: float = 0.0) -> dict[str, float]:
    """The HC columns of one scored prediction (one ellipse fit): hc_true_mm, hc_pred_mm (less the outline offset),
    hc_abs_err_mm and hc_pred_uncorrected_mm; NaN HC when no head is predicted."""
    raw = head_circumference_mm(mask, pixel_size_mm)
    pred = raw - outline_offset_px * _mm_per_outline_px(pixel_size_mm)
    return {"hc_true_mm": float(hc_true_mm), "hc_pred_mm": pred, "hc_abs_err_mm": abs(pred - float(hc_true_mm)),
            "hc_pred_uncorrected_mm": raw}


@dataclass(frozen=True)
class PreprocessGeometry:
    """Where a preprocessed `size x size` image came from: original H x W, crop box, resized nh x nw at (top, left)."""

    height: int
    width: int
    crop: tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open) in the original image
    size: int
    nh: int
    nw: int
    top: int
    left: int

    def mm_per_pixel(self, pixel_size_mm: float) -> tuple[float, float]:
        """(sy, sx) mm per model-resolution pixel for an original pixel of `pixel_size_mm`."""
        y0, y1, x0, x1 = self.crop
        return pixel_size_mm * (y1 - y0) / self.nh, pixel_size_mm * (x1 - x0) / self.nw

    def to_original(self, probs: torch.Tensor | np.ndarray) -> np.ndarray:
        """`K x size x size` class probabilities -> int64 `H x W` label map in the original image (argmax after
        bilinear resampling of the un-padded part back to the crop; outside the crop: class 0)."""
        return self.probabilities_to_original(probs).argmax(axis=0)

    def probabilities_to_original(self, probs: torch.Tensor | np.ndarray) -> np.ndarray:
        """`K x size x size` class probabilities -> float32 `K x H x W` in the original image: the un-padded part
        resampled bilinearly back to the crop; outside the crop, class 0 with probability 1."""
        p = torch.as_tensor(np.asarray(probs) if not isinstance(probs, torch.Tensor) else probs).float()
        if p.dim() != 3 or p.shape[-2:] != (self.size, self.size):
            raise ValueError(f"expected K x {self.size} x {self.size} probabilities, got {tuple(p.shape)}")
        y0, y1, x0, x1 = self.crop
        inner = p[:, self.top:self.top + self.nh, self.left:self.left + self.nw]
        if (self.nh, self.nw) != (y1 - y0, x1 - x0):
            inner = F.interpolate(inner[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
        out = np.zeros((p.shape[0], self.height, self.width), dtype=np.float32)
        out[0] = 1.0
        out[:, y0:y1, x0:x1] = inner.numpy()
        return out


def preprocess_geometry(image_path: str | Path, cfg: "object") -> PreprocessGeometry:
    """The crop/resize/pad geometry that `preprocess_clip(read_clip(image_path), cfg)` applies.

    cfg: a `PreprocessConfig` (size, crop_region). Reads the image (the crop box may depend on its content)."""
    from sonodistill.data.readers import read_clip

    return geometry_from_frames(read_clip(image_path, grayscale=True).frames, cfg)


def geometry_from_frames(frames: np.ndarray, cfg: "object") -> PreprocessGeometry:
    """The crop/resize/pad geometry that preprocessing applies to decoded grey frames `T x H x W` (uint8)."""
    from sonodistill.data.cache import crop_box

    h_full, w_full = frames.shape[1:3]
    y0, y1, x0, x1 = crop_box(frames, cfg)  # type: ignore[arg-type]
    h, w = y1 - y0, x1 - x0
    size = int(cfg.size)  # type: ignore[attr-defined]
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    return PreprocessGeometry(int(h_full), int(w_full), (int(y0), int(y1), int(x0), int(x1)), size, nh, nw,
                              (size - nh) // 2, (size - nw) // 2)
