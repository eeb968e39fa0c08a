"""Physics-inspired B-mode simulator: the built-in data sets (carotid plaque videos, lung score videos, fetal heads).

Per video: tissue scatterers in world mm (moving with the probe, decorrelating in elevation) -> RF lines by
convolution with a Gaussian-modulated cosine pulse (axial) and a Gaussian beam (lateral) -> depth attenuation,
electronic noise -> envelope (Hilbert along depth) -> time-gain compensation -> log compression -> scan conversion
of the beam-space image (samples x lines) to a linear rectangle or convex sector. Scenes: `synthetic_scenes.py`.
"""

from __future__ import annotations

import json
import math
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d

from sonodistill.data.manifest import Manifest
from sonodistill.data.synthetic_scenes import SCENES, Geometry, MotionStyle, Scene, SceneContext, ramanujan_perimeter
from sonodistill.errors import ConfigError

__all__ = ["SynthItem", "PRESETS", "PRESET_CLASSES", "FPS", "synthesize", "write_dataset", "label_for", "group_for",
           "ramanujan_perimeter", "Geometry"]

FPS = 25.0
PRESETS: dict[str, Scene] = SCENES
PRESET_CLASSES: dict[str, list[str]] = {name: list(scene.classes) for name, scene in SCENES.items()}


@dataclass
class SynthItem:
    """One simulated clip with its ground truth (masks and geometry refer to frame 0)."""

    frames: np.ndarray  # uint8 T x H x W
    label: str | None  # class name, None for unlabelled presets
    mask: np.ndarray | None  # uint8 H x W in {0, 1}
    region: np.ndarray  # bool H x W imaging region (rectangle or sector)
    target: float | None  # regression target (fetal-head: head circumference, mm)
    pixel_size_mm: float
    findings: dict
    report: str
    aux: dict = field(default_factory=dict)  # extra ground truth (lumen mask, apex, B-line angles, ellipse)


# -- seeding, labels, groups ------------------------------------------------------------------------
def _scene(preset: str) -> Scene:
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def _rng(seed: int, preset: str, *keys: int) -> np.random.Generator:
    if int(seed) < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(preset.encode()), *map(int, keys)]))


def label_for(preset: str, index: int, seed: int = 0) -> str | None:
    """Class of item `index`: every block of n_classes consecutive indices holds each class once (seeded order)."""
    classes = PRESET_CLASSES[_scene(preset).name]
    if not classes:
        return None
    block, pos = divmod(int(index), len(classes))
    return classes[int(_rng(seed, preset, 1, block).permutation(len(classes))[pos])]


def group_for(preset: str, index: int) -> str:
    """Subject id of item `index` (carotid and lung: 3 consecutive items share a subject's anatomy)."""
    return f"synth-{preset}-{int(index) // _scene(preset).group_size:05d}"


# -- geometry and motion ----------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _display_map(g: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scan-conversion map computed once per geometry: for the N region pixels, flat beam-space indices of the 4
    bilinear neighbours (4 x N) and their weights (4 x N float32), plus the region mask (size x size)."""
    s, line, inside = g.display_to_beam()
    s, line = s[inside], line[inside]
    s0 = np.clip(np.floor(s), 0, g.n_samples - 2).astype(np.int64)
    l0 = np.clip(np.floor(line), 0, g.n_lines - 2).astype(np.int64)
    ws, wl = s - s0, line - l0
    base = s0 * g.n_lines + l0
    idx = np.stack([base, base + 1, base + g.n_lines, base + g.n_lines + 1])
    w = np.stack([(1 - ws) * (1 - wl), (1 - ws) * wl, ws * (1 - wl), ws * wl]).astype(np.float32)
    for a in (idx, w, inside):
        a.setflags(write=False)
    return idx, w, inside


def _walk(rng: np.random.Generator, n: int, amp: float) -> np.ndarray:
    """Smooth random walk of n steps starting at 0 with peak |value| up to amp."""
    w = np.cumsum(rng.standard_normal(n))
    if n > 2:
        w = gaussian_filter1d(w, 2.0)
    w -= w[0]
    return w * amp * rng.uniform(0.3, 1.0) / (np.abs(w).max() + 1e-9)


def _motion(rng: np.random.Generator, style: MotionStyle, n: int) -> tuple[np.ndarray, ...]:
    """Per-frame probe pose (lateral mm, axial mm, tilt rad; identity at frame 0) and elevation (slice units)."""
    tx = _walk(rng, n, style.shift_mm)
    tz = _walk(rng, n, style.lift_mm)
    phi = np.radians(_walk(rng, n, style.tilt_deg))
    top = style.n_slices - 1.001
    elev = np.empty(n)
    elev[0] = rng.uniform(0, top)
    v = rng.uniform(*style.speed) * (1 if rng.random() < 0.5 else -1)
    jumps = rng.random(n) < style.jump_prob
    targets = rng.uniform(0, top, n)
    for t in range(1, n):
        e = elev[t - 1] + v
        if e < 0 or e > top:  # sweep back
            v, e = -v, elev[t - 1] - v
        elev[t] = targets[t] if jumps[t] else e
    return tx, tz, phi, np.clip(elev, 0, top)


class _Texture:
    """Stack of independent white-noise slices in world mm; sampled with variance-preserving (cos/sin) blending
    laterally and in elevation, nearest axially, so speckle moves with the tissue and decorrelates smoothly."""

    def __init__(self, rng: np.random.Generator, x: np.ndarray, z: np.ndarray, hz: float, hx: float, n_slices: int):
        self.hz, self.hx = hz, hx
        self.z0, self.x0 = float(z.min()) - 2 * hz, float(x.min()) - 2 * hx
        self.nz = int(math.ceil((float(z.max()) - self.z0) / hz)) + 3
        self.nx = int(math.ceil((float(x.max()) - self.x0) / hx)) + 3
        self.k = max(2, n_slices)
        self.data = rng.standard_normal((self.k, self.nz, self.nx), dtype=np.float32).ravel()

    def sample(self, x: np.ndarray, z: np.ndarray, elev: np.ndarray) -> np.ndarray:
        """Scatterer amplitudes (unit variance) at world positions x, z (T x Z x X) and elevations (T x 1 x 1)."""
        iz = np.rint((z - self.z0) / self.hz).astype(np.int64)
        fx = (x - self.x0) / self.hx
        ix = np.floor(fx).astype(np.int64)
        wx = (fx - ix).astype(np.float32)
        k = np.minimum(np.floor(elev).astype(np.int64), self.k - 2)
        we = (elev - k).astype(np.float32)
        flat = (k * self.nz + iz) * self.nx + ix
        d, step = self.data, self.nz * self.nx
        cx, sx = np.cos(0.5 * np.pi * wx), np.sin(0.5 * np.pi * wx)
        lo = cx * d[flat] + sx * d[flat + 1]
        hi = cx * d[flat + step] + sx * d[flat + step + 1]
        return np.cos(0.5 * np.pi * we) * lo + np.sin(0.5 * np.pi * we) * hi


# -- B-mode formation -------------------------------------------------------------------------------
def _pulse_spectrum(n: int, sigma: float, f0: float) -> np.ndarray:
    """One-sided spectrum (n//2+1 bins) of a Gaussian-modulated cosine pulse with envelope sigma (samples) and
    carrier f0 (cycles/sample), smoothly tapered to 0 at DC and Nyquist (no Hilbert ringing); unit noise gain."""
    f = np.fft.rfftfreq(n)
    bw = 1.0 / (2 * np.pi * sigma)
    taper = (1 - np.exp(-((f / 0.07) ** 2))) * (1 - np.exp(-(((0.5 - f) / 0.07) ** 2)))
    spec = np.exp(-0.5 * ((f - f0) / bw) ** 2) * taper
    return (spec / np.sqrt(2 * (spec[1:] ** 2).sum() / n)).astype(np.float32)


def _analytic_rf(rf: np.ndarray, sigma: float, f0: float) -> np.ndarray:
    """Convolve RF lines (axis 1) with the pulse and return the analytic signal (Hilbert transform via FFT)."""
    n_z = rf.shape[1]
    n = int(2 ** math.ceil(math.log2(n_z + 16)))  # zero padding: no wrap-around between top and bottom
    spec = np.fft.rfft(rf, n=n, axis=1)
    spec *= 2 * _pulse_spectrum(n, sigma, f0)[None, :, None]
    full = np.zeros((rf.shape[0], n, rf.shape[2]), np.complex64)
    full[:, : spec.shape[1]] = spec  # negative frequencies stay 0: analytic signal
    return np.fft.ifft(full, axis=1)[:, :n_z]


def _lateral_beam(rf: np.ndarray, sigma: float, depth_frac: np.ndarray) -> np.ndarray:
    """Gaussian lateral beam profile (lines), widening away from the focus at 40 % depth; unit noise gain."""
    sharp = gaussian_filter1d(rf, sigma, axis=2, mode="nearest") * math.sqrt(2 * sigma * math.sqrt(math.pi))
    s2 = 1.8 * sigma
    wide = gaussian_filter1d(rf, s2, axis=2, mode="nearest") * math.sqrt(2 * s2 * math.sqrt(math.pi))
    w = np.clip(np.abs(depth_frac - 0.4) / 0.6, 0, 1).astype(np.float32)[None, :, None]
    return (1 - w) * sharp + w * wide


def _bmode(scene: Scene, p: dict, n_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Log-compressed beam-space frames (float32 T x Z x X, display grey levels) and elevation of frame 0."""
    g: Geometry = p["geometry"]
    tx, tz, phi, elev = _motion(rng, scene.motion, n_frames)
    bx, bz = (a.astype(np.float32) for a in g.beam_coords())
    c, s = (f(phi).astype(np.float32)[:, None, None] for f in (np.cos, np.sin))
    x = c * bx - s * bz + tx.astype(np.float32)[:, None, None]
    z = s * bx + c * bz + tz.astype(np.float32)[:, None, None]
    e3 = elev.astype(np.float32)[:, None, None]
    tex = _Texture(rng, x, z, g.dz, g.line_spacing_mm, scene.motion.n_slices).sample(x, z, e3)
    time = (np.arange(n_frames, dtype=np.float32) / np.float32(FPS))[:, None, None]
    ctx = SceneContext(g, x, z, e3, time, tex)
    echo, spec, att = scene.tissue(p, ctx)
    scat = echo * tex
    if spec is not None:
        scat = scat + spec
    extra = scene.artifacts(p, ctx)
    if extra is not None:
        scat = scat + extra
    depth = np.arange(g.n_samples, dtype=np.float32) * g.dz
    trans = (10 ** (-p["alpha_db_mm"] * depth / 20)).astype(np.float32)[None, :, None]
    if att is not None:  # two-way shadowing behind strong absorbers/reflectors
        trans = trans * np.exp(-2 * np.cumsum(np.broadcast_to(att, scat.shape), axis=1) * g.dz)
    rf = _lateral_beam((scat * trans).astype(np.float32), p["psf_lateral"], depth / g.depth_mm)
    rf += (10 ** (p["noise_db"] / 20)) * rng.standard_normal(rf.shape, dtype=np.float32)
    env = np.abs(_analytic_rf(rf, p["psf_axial"], p["psf_f0"])).astype(np.float32)
    tgc_db = p["alpha_db_mm"] * p["tgc"] * depth + p["gain_db"]
    level = 20 * np.log10(env / math.sqrt(2) + 1e-9) + tgc_db[None, :, None]
    dr = p["dr_db"]
    top = dr * (1 - scene.tissue_grey / 255)  # 0 dB tissue -> tissue_grey
    grey = (level - (top - dr)) * (255.0 / dr)
    return grey.astype(np.float32), float(elev[0])


def _scan_convert(grey: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Beam space (T x Z x X grey) -> display uint8 T x size x size by bilinear interpolation
    (0 outside the region, >= 1 inside)."""
    idx, w, region = _display_map(g)
    flat = grey.reshape(grey.shape[0], -1)
    vals = sum(w[k] * flat[:, idx[k]] for k in range(4))
    out = np.zeros((grey.shape[0], g.size, g.size), np.uint8)
    out[:, region] = np.clip(np.rint(vals), 1, 255).astype(np.uint8)
    return out, region


# -- public API -------------------------------------------------------------------------------------
def _check_args(frames: int, size: int, seed: int) -> None:
    if int(frames) < 1:
        raise ConfigError(f"frames must be >= 1, got {frames}")
    if int(size) < 32 or int(size) % 2:
        raise ConfigError(f"size must be an even number >= 32, got {size}")
    if int(seed) < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")


def synthesize(preset: str, index: int, seed: int = 0, frames: int = 32, size: int = 128) -> SynthItem:
    """Simulate item `index` of `preset`: the same (preset, index, seed, frames, size) gives identical pixels.

    Image presets (fetal-head) always have T=1. `size` must be even (yuv420p video) and >= 32."""
    scene = _scene(preset)
    _check_args(frames, size, seed)
    if int(index) < 0:
        raise ConfigError(f"index must be >= 0, got {index}")
    n_frames = scene.frames_fixed or int(frames)
    label = label_for(preset, index, seed)
    subject = scene.sample_subject(_rng(seed, preset, 2, int(index) // scene.group_size), int(size))
    rng = _rng(seed, preset, 3, int(index))
    p = scene.sample(rng, label, subject, int(size))
    g: Geometry = p["geometry"]
    grey, elev0 = _bmode(scene, p, n_frames, rng)
    video, region = _scan_convert(grey, g)
    x, z = g.display_coords()
    mask, aux = scene.masks(p, x, z, elev0)
    if mask is not None:
        mask = (np.asarray(mask) & region).astype(np.uint8)
    for key, val in list(aux.items()):
        if isinstance(val, np.ndarray) and val.shape == region.shape:
            aux[key] = (val.astype(bool) & region).astype(np.uint8)
    findings = scene.findings(p)
    return SynthItem(video, label, mask, region.copy(), scene.target(p), g.pixel_size_mm, findings,
                     scene.report(findings), aux)


_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def _write_mp4(path: Path, frames: np.ndarray) -> None:
    """uint8 T x H x W grayscale -> lossless H.264 mp4 at FPS (libx264 qp 0, full-range yuv420p, neutral chroma).

    Lossless, so every reader gets exactly the simulated pixels (and the masks stay exact ground truth): lossy
    libx264 output was not reproducible here (a few files per hundred differed between two identical syntheses,
    up to 15 grey levels). The gray values go into the Y plane as they are, marked full range.
    """
    import av

    h, w = frames.shape[1:]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=int(FPS))
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.color_range = _FULL_RANGE
        stream.options = {"qp": "0", "preset": "veryfast", "threads": "1"}
        planes = np.full((h * 3 // 2, w), 128, dtype=np.uint8)  # Y, then U and V at the neutral 128
        for t, img in enumerate(frames):
            planes[:h] = img
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = t
            frame.color_range = _FULL_RANGE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(img)).save(path, optimize=False, compress_level=3)


def _simulate_item(job: tuple[str, Path, int, int, int, int]) -> tuple[tuple, SynthItem]:
    """Worker side: simulate one item (pure numpy/scipy, bit-identical in any process)."""
    preset, _, index, seed, frames, size = job
    return job, synthesize(preset, index, seed, frames, size)


def _write_item(job: tuple[str, Path, int, int, int, int], item: SynthItem) -> dict:
    """Write one simulated item (in the calling process, in index order); returns its manifest row (paths
    relative to the output folder)."""
    preset, out_dir, index, _, _, _ = job
    stem = f"{preset}-{index:05d}"
    if PRESETS[preset].frames_fixed == 1:  # image presets: PNG; video presets stay mp4 even with 1 frame
        rel = f"images/{stem}.png"
        _write_png(out_dir / rel, item.frames[0])
    else:
        rel = f"videos/{stem}.mp4"
        _write_mp4(out_dir / rel, item.frames)
    row = {"path": rel, "label": item.label, "group": group_for(preset, index), "mask": "",
           "target": item.target, "pixel_size_mm": round(item.pixel_size_mm, 6), "text": item.report,
           "findings": json.dumps(item.findings, sort_keys=True)}
    if item.mask is not None:
        row["mask"] = f"masks/{stem}.png"
        _write_png(out_dir / row["mask"], item.mask * np.uint8(255))
    return row


def write_dataset(preset: str, out_dir: str | Path, n: int, seed: int = 0, frames: int = 32, size: int = 128,
                  workers: int = 2) -> Path:
    """Write n items (mp4 videos or PNG images, PNG masks 0/255) and `manifest.csv`; returns the manifest path.

    Output is identical for any number of worker processes."""
    scene = _scene(preset)
    if int(n) < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    _check_args(frames, size, seed)
    out = Path(out_dir)
    for sub in ("images" if scene.frames_fixed == 1 else "videos", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(preset, out, i, int(seed), int(frames), int(size)) for i in range(int(n))]
    workers = max(1, min(int(workers), len(jobs)))
    if workers == 1:
        rows = [_write_item(*_simulate_item(j)) for j in jobs]
    else:
        # workers simulate, this process encodes and writes, in index order as results arrive; fork (where
        # available) also works from notebooks and stdin scripts; workers use numpy/scipy only
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method)) as pool:
            chunk = max(1, len(jobs) // (4 * workers))
            rows = [_write_item(*done) for done in pool.map(_simulate_item, jobs, chunksize=chunk)]
    table = pd.DataFrame(rows)
    classes = PRESET_CLASSES[preset]
    if not classes:
        table = table.drop(columns=["label"])
    if table["mask"].eq("").all():
        table = table.drop(columns=["mask"])
    if table["target"].isna().all():
        table = table.drop(columns=["target"])
    modality = "image" if scene.frames_fixed == 1 else "video"
    manifest = Manifest(table, list(classes), modality, f"synth-{preset}")
    path = out / "manifest.csv"
    manifest.to_csv(path)
    return path
