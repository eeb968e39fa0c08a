"""Ultrasound clip preprocessing: imaging-region (fan/sector or linear) crop, static-overlay removal,
grayscale, aspect-preserving resize with centred padding, intensity normalisation and frame sampling.

Clips are uint8 `T x H x W` (grayscale) or `T x H x W x 3` numpy arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from sonodistill.data.readers import rgb_to_gray
from sonodistill.errors import ConfigError

log = logging.getLogger(__name__)

# Region detection settings (pixel intensities on the 0..255 scale).
_MAX_STAT_FRAMES = 32         # temporal statistics use at most this many evenly spaced frames
_MOVING_STD = 0.5             # a pixel "moves" when its temporal std exceeds this (static pixels: exactly 0)
_MIN_MOVING_FRACTION = 0.01   # fewer moving pixels than this (fraction of frame): use intensity-only logic
_MIN_BRIGHT = 10.0            # intensity-only: 5x5 mean above this ...
_MIN_TEXTURE = 2.0            # ... and 5x5 std above this (speckle, not flat bars or background)
_STATIC_STD = 1.0             # overlay pixels inside the region: temporal std below this ...
_STATIC_BRIGHT = 180          # ... and never darker than this
_SECTOR_TAPER = 0.9           # end rows narrower than this fraction of the widest row -> 'sector'


@dataclass
class PreprocessConfig:
    """How clips are cleaned and resized; `key()` names the result in caches."""

    size: int = 112                 # output side (square, aspect preserved by padding)
    crop_region: bool = True        # crop to the detected imaging region's bounding box
    remove_overlay: bool = True     # blank static overlays (clips with T > 1)
    grayscale: bool = True
    mean: float = 0.0               # normalise: (x / 255 - mean) / std
    std: float = 1.0
    remove_overlay_images: bool = False  # also blank outside the region for single images (T = 1)

    def __post_init__(self) -> None:
        if int(self.size) < 1:
            raise ConfigError(f"PreprocessConfig.size must be >= 1, got {self.size}")
        if not self.std > 0:
            raise ConfigError(f"PreprocessConfig.std must be > 0, got {self.std}")

    @classmethod
    def from_data(cls, data: "object") -> "PreprocessConfig":
        """The preprocessing of a run, from its `DataConfig` (size, crop_region, remove_overlay): the one place
        training, evaluation and serving build it."""
        return cls(size=int(data.size), crop_region=bool(data.crop_region),  # type: ignore[attr-defined]
                   remove_overlay=bool(data.remove_overlay))  # type: ignore[attr-defined]

    def key(self) -> str:
        """Stable 12-hex-digit hash of every field (cache key)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


@dataclass
class Region:
    """The imaging region: bool H x W mask, half-open bbox (y0, y1, x0, x1), 'sector' | 'linear' | 'full'."""

    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    shape: str

    def __repr__(self) -> str:
        return f"Region(shape={self.shape!r}, bbox={self.bbox}, area={int(self.mask.sum())}/{self.mask.size})"


# -- helpers ----------------------------------------------------------------------------------------
def _as_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 T x H x W[x C] -> uint8 T x H x W (ITU-R 601 luma for RGB, first channel for 1 channel)."""
    if frames.ndim == 3:
        return frames
    if frames.ndim == 4 and frames.shape[-1] in (3, 4):
        return rgb_to_gray(np.ascontiguousarray(frames[..., :3]))
    if frames.ndim == 4 and frames.shape[-1] == 1:
        return frames[..., 0]
    raise ValueError(f"expected T x H x W or T x H x W x 3 frames, got shape {frames.shape}")


def _stat_index(t: int) -> np.ndarray:
    """The <= _MAX_STAT_FRAMES evenly spaced frame indices of a T-frame clip that temporal statistics use."""
    return np.unique(np.linspace(0, t - 1, min(t, _MAX_STAT_FRAMES)).round().astype(np.int64))


def _stat_frames(frames: np.ndarray) -> np.ndarray:
    return frames[_stat_index(frames.shape[0])].astype(np.float32)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a bool H x W mask (pixel centres), rasterised with Pillow."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    edge = mask & ~ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(edge)
    if len(ys) < 3:
        return mask.copy()
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear points: the mask is a line, its own hull
        return mask.copy()
    poly = [tuple(p) for p in pts[hull.vertices]]
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(poly, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _classify(mask: np.ndarray, bbox: tuple[int, int, int, int]) -> str:
    if mask.all():
        return "full"
    y0, y1, x0, x1 = bbox
    widths = mask[y0:y1, x0:x1].sum(1).astype(np.float64)
    k = max(1, (y1 - y0) // 10)
    taper = min(widths[:k].mean(), widths[-k:].mean()) / max(widths.max(), 1.0)
    return "sector" if taper < _SECTOR_TAPER else "linear"


def _full_region(h: int, w: int) -> Region:
    return Region(np.ones((h, w), dtype=bool), (0, h, 0, w), "full")


def _intensity_mask(image: np.ndarray) -> np.ndarray:
    """Intensity-only candidate region of one H x W image: bright, textured pixels, opened to cut text off."""
    x = image.astype(np.float32)
    mean = ndimage.uniform_filter(x, size=5)
    var = ndimage.uniform_filter(x * x, size=5) - mean * mean
    cand = (mean > _MIN_BRIGHT) & (var > _MIN_TEXTURE**2)
    cand = ndimage.binary_opening(cand, structure=np.ones((7, 7), bool))
    # the 5x5 windows spread the region by up to 2 px: take that back (image borders are not edges)
    return ndimage.binary_erosion(cand, structure=np.ones((5, 5), bool), border_value=1)


def _moving_mask(stack: np.ndarray) -> np.ndarray:
    """Pixels whose temporal std (over the F x H x W stack) exceeds _MOVING_STD, opened to drop specks."""
    return ndimage.binary_opening(stack.std(axis=0) > _MOVING_STD, structure=np.ones((3, 3), bool))


# -- public API -------------------------------------------------------------------------------------
def detect_imaging_region(frames: np.ndarray) -> Region:
    """Find the imaging region of a uint8 T x H x W clip from temporal variance (T > 1) or intensity (T = 1).

    Candidates are moving pixels (temporal std > 0.5 over <= 32 frames) or, for single images and clips with
    < 1% moving pixels, bright textured pixels. The largest connected candidate component is hole-filled and
    replaced by its convex hull (exact for linear rectangles, sector fans up to the small near-field arc).
    No candidate at all gives the whole frame with shape 'full'.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    frames = _as_gray(frames)
    t, h, w = frames.shape
    if t > 1:
        stack = _stat_frames(frames)
        mask = _moving_mask(stack)
        if mask.sum() < _MIN_MOVING_FRACTION * h * w:
            log.debug("too few moving pixels (%d): intensity-only region detection", int(mask.sum()))
            mask = _intensity_mask(stack[len(stack) // 2])
    else:
        mask = _intensity_mask(frames[0])
    if not mask.any():
        return _full_region(h, w)
    mask = _convex_hull_mask(ndimage.binary_fill_holes(_largest_component(mask)))
    bbox = _bbox(mask)
    return Region(mask, bbox, _classify(mask, bbox))


@dataclass(frozen=True)
class _OverlayPlan:
    """What `remove_static_overlay` does to every frame of one clip: keep the region (bool H x W) and, where static
    overlay pixels (`ys`, `xs`) were found, copy each from its nearest moving-tissue pixel (`src_ys`, `src_xs`;
    None: no tissue left, the overlay is zeroed)."""

    region_mask: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    src_ys: np.ndarray | None
    src_xs: np.ndarray | None


def _overlay_plan(stat_gray: np.ndarray, n_frames: int, region: Region) -> _OverlayPlan:
    """The overlay removal of a clip of `n_frames` frames from its statistics frames (uint8 F x H x W gray, the
    frames at `_stat_index(n_frames)`); static pixels are looked for only when the clip has more than one frame."""
    none = np.zeros(0, np.int64)
    if n_frames <= 1:
        return _OverlayPlan(region.mask, none, none, None, None)
    stack = stat_gray.astype(np.float32)
    static = (stack.std(axis=0) < _STATIC_STD) & (stack.min(axis=0) >= _STATIC_BRIGHT) & region.mask
    if not static.any():
        return _OverlayPlan(region.mask, none, none, None, None)
    static = ndimage.binary_dilation(static, iterations=1) & region.mask
    ys, xs = np.nonzero(static)
    tissue = region.mask & ~static
    if not tissue.any():
        return _OverlayPlan(region.mask, ys, xs, None, None)
    _, (iy, ix) = ndimage.distance_transform_edt(~tissue, return_indices=True)
    return _OverlayPlan(region.mask, ys, xs, iy[ys, xs], ix[ys, xs])


def _apply_overlay_plan(frames: np.ndarray, plan: _OverlayPlan) -> np.ndarray:
    """A new uint8 T x H x W[x 3] array: `frames` zeroed outside the region, static overlays replaced."""
    keep = plan.region_mask if frames.ndim == 3 else plan.region_mask[..., None]
    out = np.multiply(frames, keep, dtype=frames.dtype)  # one pass: zero outside the region
    if len(plan.ys):
        out[:, plan.ys, plan.xs] = 0 if plan.src_ys is None else out[:, plan.src_ys, plan.src_xs]
    return out


def remove_static_overlay(frames: np.ndarray, region: Region) -> np.ndarray:
    """Blank static overlays of a uint8 T x H x W[x 3] clip; returns a new array of the same shape.

    Outside the region every pixel is set to 0. Inside (T > 1 only), bright pixels with ~zero temporal
    variance (markers, calipers, text) are replaced by the nearest moving-tissue pixel.
    """
    frames = np.asarray(frames)
    if frames.shape[1:3] != region.mask.shape:
        raise ValueError(f"region mask {region.mask.shape} does not match frames {frames.shape}")
    stat_gray = _as_gray(frames[_stat_index(frames.shape[0])])
    return _apply_overlay_plan(frames, _overlay_plan(stat_gray, frames.shape[0], region))


def resize_pad(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 T x H x W[x C] so the longer side is `size` (antialiased bilinear), pad centred with 0.

    Returns uint8 T x size x size[x C].
    """
    frames = np.asarray(frames)
    if frames.ndim not in (3, 4) or frames.shape[0] == 0:
        raise ValueError(f"expected non-empty T x H x W[x C] frames, got shape {frames.shape}")
    t, h, w = frames.shape[:3]
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    arr = np.ascontiguousarray(frames, dtype=np.uint8)
    x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    x = x.unsqueeze(1) if frames.ndim == 3 else x.permute(0, 3, 1, 2)
    if (nh, nw) != (h, w):  # uint8 in, uint8 out: torch's fast antialiased path, no float copy
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    out = torch.zeros((t, x.shape[1], size, size), dtype=torch.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[:, :, top : top + nh, left : left + nw] = x
    out = out[:, 0] if frames.ndim == 3 else out.permute(0, 2, 3, 1)
    return out.contiguous().numpy()


#: preprocess_clip works through a clip this many bytes of input frames at a time, so that a long clip needs
#: little memory beyond its own frames and the output (a 5-minute 800 x 600 clip is 4.3 GB of frames)
_CHUNK_BYTES = 32 * 1024**2


def preprocess_clip(frames: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 T x H x W (or T x H x W x C, or one H x W image) -> uint8 T x size x size.

    Steps: grayscale (luma), region detection, overlay removal, crop to the region's bbox, resize_pad.
    With cfg.grayscale=False colour input gives T x size x size x 3. The region and the overlay come from <= 32
    evenly spaced frames; the frames are then processed in chunks of about `_CHUNK_BYTES` into the output, never
    copied whole.
    """
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(f"preprocess_clip expects uint8 frames, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (3, 4) or arr.shape[0] == 0:
        raise ValueError(f"expected non-empty T x H x W[x C] frames, got shape {arr.shape}")
    to_gray = cfg.grayscale or arr.ndim == 4 and arr.shape[-1] == 1
    t = arr.shape[0]
    overlay = cfg.remove_overlay and (t > 1 or cfg.remove_overlay_images)
    plan, (y0, y1, x0, x1) = None, (0, arr.shape[1], 0, arr.shape[2])
    if cfg.crop_region or overlay:
        stat_gray = _as_gray(arr[_stat_index(t)])
        region = detect_imaging_region(stat_gray)
        if overlay:
            plan = _overlay_plan(stat_gray, t, region)
        if cfg.crop_region:
            y0, y1, x0, x1 = region.bbox
    step = max(1, _CHUNK_BYTES // max(1, arr[0].nbytes))
    out = None
    for start in range(0, t, step):
        chunk = arr[start : start + step]
        if to_gray:
            chunk = _as_gray(chunk)
        if plan is not None:
            chunk = _apply_overlay_plan(chunk, plan)
        done = resize_pad(chunk[:, y0:y1, x0:x1], int(cfg.size))
        if out is None:
            out = np.empty((t,) + done.shape[1:], dtype=np.uint8)
        out[start : start + len(done)] = done
    assert out is not None
    return out


def sample_frame_indices(
    n_frames: int,
    num: int,
    mode: str = "uniform",
    stride: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Pick `num` frame indices (int64 [num]) from a clip of `n_frames`.

    'uniform': centres of `num` equal segments; 'stride': 0, stride, 2*stride, ...; 'random': a strided
    window at a random start (rng; unseeded when None). A clip shorter than needed is stretched by
    nearest-neighbour, so frames repeat.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if num < 1:
        raise ConfigError(f"number of frames to sample must be >= 1, got {num}")
    if stride < 1:
        raise ConfigError(f"frame stride must be >= 1, got {stride}")
    if mode == "uniform":
        return np.floor((np.arange(num) + 0.5) * n_frames / num).astype(np.int64)
    if mode not in ("stride", "random"):
        raise ConfigError(f"unknown frame sampling mode {mode!r}: use 'uniform', 'stride' or 'random'")
    span = (num - 1) * stride + 1
    if span > n_frames:  # too short: stretch the window over the whole clip (nearest neighbour)
        pos = np.arange(num) * stride * ((n_frames - 1) / max(span - 1, 1))
        return np.rint(pos).astype(np.int64)
    start = 0
    if mode == "random":
        rng = rng if rng is not None else np.random.default_rng()
        start = int(rng.integers(0, n_frames - span + 1))
    return (start + np.arange(num) * stride).astype(np.int64)


def normalise(clip: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 clip -> float32 (x / 255 - cfg.mean) / cfg.std, same shape."""
    out = np.asarray(clip, dtype=np.float32) / 255.0
    out -= np.float32(cfg.mean)
    out /= np.float32(cfg.std)
    return out
