"""Disk cache of decoded, preprocessed clips: uint8 `T x S x S`, memory-mapped, keyed by file content + config.

Entry file = 8-byte magic, 4-byte header length, JSON header (shape, dtype, sha1 of the pixels, source, config key),
padding to a 64-byte boundary, raw pixels. Entries are written to a temporary file and moved into place with
`os.replace`, so readers (and several DataLoader workers building the same entry) never see a partial file.
Every `get` checks the header and the file size against the shape; the pixel checksum is verified the first
time a process opens an entry. A damaged entry is logged (warning naming the file) and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from sonodistill.errors import ConfigError, DataError

if TYPE_CHECKING:
    from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"SDCLIP01"
_ALIGN = 64

# In-process memos: content hash per (path, mtime_ns, size); verified entries per (entry, inode, mtime_ns, size).
_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_ENTRY_MEMO: dict[tuple[str, int, int, int], tuple[tuple[int, ...], int]] = {}


def default_cache_dir() -> Path:
    """`SONODISTILL_CACHE`, else `~/.cache/sonodistill`."""
    env = os.environ.get("SONODISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sonodistill"


def cache_root(cache_dir: str | Path | None) -> Path:
    """A config's `data.cache_dir` when set, else `default_cache_dir()`."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def file_sha1(path: str | Path) -> str:
    """sha1 of a file's bytes, memoised per (path, mtime, size) in this process."""
    p = os.path.abspath(str(path))
    try:
        st = os.stat(p)
    except FileNotFoundError as exc:
        raise DataError(path, "file not found") from exc
    key = (p, st.st_mtime_ns, st.st_size)
    digest = _HASH_MEMO.get(key)
    if digest is None:
        h = hashlib.sha1()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _HASH_MEMO[key] = h.hexdigest()
    return digest


def _pixels_sha1(arr: np.ndarray) -> str:
    return hashlib.sha1(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


class DamagedEntry(Exception):
    """Internal: an entry failed a check (the message says which)."""


def read_entry_header(entry: Path) -> tuple[dict, int]:
    """(header dict, data offset) of an entry file; DamagedEntry when unreadable."""
    with open(entry, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:8] != MAGIC:
            raise DamagedEntry("bad magic (not a sonodistill cache entry or truncated)")
        (n,) = struct.unpack("<I", head[8:12])
        raw = f.read(n)
    if len(raw) != n:
        raise DamagedEntry("truncated header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedEntry(f"unreadable header: {exc}") from None
    return header, 12 + n


def write_entry(entry: Path, arr: np.ndarray, **meta: object) -> None:
    """Atomically write `arr` (uint8, 3-D) to `entry` with its checksum: temp file in the same folder + os.replace."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = {"version": FORMAT_VERSION, "shape": list(arr.shape), "dtype": "uint8", "sha1": _pixels_sha1(arr), **meta}
    raw = json.dumps(header, sort_keys=True).encode("utf-8")
    pad = (-(12 + len(raw))) % _ALIGN
    raw += b" " * pad
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(raw)) + raw)
            f.write(memoryview(arr).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, entry)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ClipCache:
    """Decode + preprocess each file once; later `get`s return a read-only memory map of the stored clip."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.builds = 0

    def entry_path(self, path: str | Path, cfg: "PreprocessConfig") -> Path:
        """Where the clip entry for (file content, config) lives."""
        return self._entry("clip", file_sha1(path), cfg)

    def mask_entry_path(self, image_path: str | Path, mask_path: str | Path, cfg: "PreprocessConfig") -> Path:
        """Where the mask entry lives: keyed by mask and image content (the image fixes the crop) and config."""
        digest = hashlib.sha1(f"{file_sha1(mask_path)}:{file_sha1(image_path)}".encode()).hexdigest()
        return self._entry("mask", digest, cfg)

    def _entry(self, kind: str, digest: str, cfg: "PreprocessConfig") -> Path:
        return self.cache_dir / f"v{FORMAT_VERSION}-{kind}-{cfg.key()}" / digest[:2] / f"{digest}.clip"

    def get(self, path: str | Path, cfg: "PreprocessConfig") -> np.ndarray:
        """uint8 `T x S x S` preprocessed clip of `path` (a read-only np.memmap)."""
        _check_cfg(cfg)
        return self._get(self.entry_path(path, cfg), cfg, lambda: produce_clip(path, cfg), str(path))

    def get_mask(self, image_path: str | Path, mask_path: str | Path, cfg: "PreprocessConfig") -> np.ndarray:
        """uint8 `1 x S x S` {0,1} mask with the same crop/resize/pad as `get(image_path, cfg)` (np.memmap)."""
        _check_cfg(cfg)
        entry = self.mask_entry_path(image_path, mask_path, cfg)
        return self._get(entry, cfg, lambda: produce_mask(image_path, mask_path, cfg), str(mask_path))

    def _get(self, entry: Path, cfg: "PreprocessConfig", build: Callable[[], np.ndarray], source: str) -> np.ndarray:
        try:
            arr = self._open(entry, cfg)
        except FileNotFoundError:
            arr = None
        except DamagedEntry as exc:
            log.warning("damaged cache entry %s (for %s): %s; rebuilding", entry, source, exc)
            arr = None
        if arr is not None:
            self.hits += 1
            return arr
        write_entry(entry, build(), source=source, config=cfg.key())
        self.builds += 1
        record_settings(entry.parent.parent, cfg)
        return self._open(entry, cfg)

    @staticmethod
    def _open(entry: Path, cfg: "PreprocessConfig") -> np.memmap:
        """Open and check an entry: header and size always, the pixel checksum once per process and file version."""
        st = os.stat(entry)
        key = (str(entry), st.st_ino, st.st_mtime_ns, st.st_size)
        known = _ENTRY_MEMO.get(key)
        if known is None:
            header, offset = read_entry_header(entry)
            shape = tuple(int(s) for s in header.get("shape", ()))
            if header.get("dtype") != "uint8" or len(shape) != 3:
                raise DamagedEntry(f"unexpected dtype/shape {header.get('dtype')} {shape}")
        else:
            shape, offset = known
        if shape[1:] != (cfg.size, cfg.size) or shape[0] < 1:
            raise DamagedEntry(f"wrong shape {shape}, expected T x {cfg.size} x {cfg.size}")
        expected = offset + int(np.prod(shape))
        if st.st_size != expected:
            raise DamagedEntry(f"size {st.st_size} bytes, expected {expected} for shape {shape} (truncated?)")
        arr = np.memmap(entry, dtype=np.uint8, mode="r", offset=offset, shape=shape)
        if known is None:
            if _pixels_sha1(arr) != header.get("sha1"):
                raise DamagedEntry("pixel checksum mismatch")
            _ENTRY_MEMO[key] = (shape, offset)
        return arr


SETTINGS_FILE = "settings.json"  # in each settings folder: the preprocessing its entries were built with


def record_settings(folder: Path, cfg: "PreprocessConfig") -> None:
    """Write `folder/settings.json` (the PreprocessConfig fields) once, atomically, so `sonodistill data cache` can
    say what a folder holds; the folder's name carries only their hash."""
    from dataclasses import asdict

    target = folder / SETTINGS_FILE
    if target.is_file():
        return
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".settings-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(cfg), f, sort_keys=True)
    os.replace(tmp, target)


def _check_cfg(cfg: "PreprocessConfig") -> None:
    if not cfg.grayscale:
        raise ConfigError("the clip cache and datasets store grayscale clips: set PreprocessConfig.grayscale=True")


# -- producing entries ------------------------------------------------------------------------------
def produce_clip(path: str | Path, cfg: "PreprocessConfig") -> np.ndarray:
    """Decode and preprocess one file: uint8 `T x S x S`."""
    from .preprocess import preprocess_clip
    from .readers import read_clip

    frames = read_clip(path, grayscale=True).frames
    return np.ascontiguousarray(preprocess_clip(frames, cfg), dtype=np.uint8)


def crop_box(frames: np.ndarray, cfg: "PreprocessConfig") -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) crop that `preprocess_clip(frames, cfg)` applies to uint8 T x H x W frames."""
    from .preprocess import detect_imaging_region

    if cfg.crop_region:
        return detect_imaging_region(frames).bbox
    return 0, frames.shape[-2], 0, frames.shape[-1]


def resize_pad_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """H x W mask -> size x size with `preprocess.resize_pad`'s geometry (longer side = size, centred, 0-padded),
    but nearest-neighbour so labels stay labels."""
    h, w = mask.shape
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8))[None, None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="nearest-exact")
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = x[0, 0].numpy()
    return out


def produce_mask(image_path: str | Path, mask_path: str | Path, cfg: "PreprocessConfig") -> np.ndarray:
    """uint8 `1 x S x S` {0,1}: the mask cropped with the image's region box, then nearest resize + pad."""
    from .readers import read_clip, read_mask

    frames = read_clip(image_path, grayscale=True).frames
    mask = read_mask(mask_path)
    if mask.shape != frames.shape[1:]:
        raise DataError(mask_path, f"mask size {mask.shape} differs from image {image_path} size {frames.shape[1:]}")
    y0, y1, x0, x1 = crop_box(frames, cfg)
    return resize_pad_nearest(mask[y0:y1, x0:x1], int(cfg.size))[None]
