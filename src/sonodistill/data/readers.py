"""Read ultrasound files into uint8 arrays: videos (PyAV), DICOM (pydicom), images and masks (Pillow).

Every failure (missing, empty, truncated, corrupt or unsupported file) raises `DataError(path, cause)`.
DICOM patient-identifying values never appear in errors, warnings or reprs.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from sonodistill.errors import DataError

log = logging.getLogger(__name__)

# The one table of file formats (lower-case suffixes); DICOM files of other names are sniffed (`is_dicom_file`).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".gif")  # PyAV
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
SUPPORTED_EXTENSIONS = VIDEO_EXTENSIONS + DICOM_EXTENSIONS + IMAGE_EXTENSIONS
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
# Tags whose values must never reach a message (values are redacted if a library echoes them).
_PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "IssuerOfPatientID", "PatientSex",
    "PatientAge", "AccessionNumber", "ReferringPhysicianName", "InstitutionName", "StudyID", "MedicalRecordLocator",
)


@dataclass
class Video:
    """A decoded clip: `frames` uint8 T x H x W (grayscale) or T x H x W x 3, frame rate if known, and the size of
    a pixel in mm, (rows, columns), where the file says it (DICOM: `dicom_pixel_spacing_mm`)."""

    frames: np.ndarray
    fps: float | None
    source: str
    pixel_spacing_mm: tuple[float, float] | None = None

    def __repr__(self) -> str:  # never dump pixels
        spacing = "" if self.pixel_spacing_mm is None else f", pixel_spacing_mm={self.pixel_spacing_mm}"
        shape = f"{self.frames.dtype}{list(self.frames.shape)}"
        return f"Video(frames={shape}, fps={self.fps}, source={self.source!r}{spacing})"


@dataclass
class ProbeResult:
    """What a complete decode of one file gave: frame count, size, channels (1 or 3) and fps."""

    path: str
    frames: int
    height: int
    width: int
    channels: int
    fps: float | None


# -- helpers ----------------------------------------------------------------------------------------
_FLOAT_CHUNK_VALUES = 16 * 1024**2  # values `_to_uint8_in_chunks` turns into float32 at a time (64 MiB)


def _to_uint8_in_chunks(arr: np.ndarray, out_shape: tuple[int, ...],
                        transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """uint8 `out_shape` from `arr`, a chunk of its first axis (frames, or an image's rows) at a time:
    `transform(float32 chunk)` rounded and clipped to 0..255. A long cine is never a float copy whole."""
    out = np.empty(out_shape, dtype=np.uint8)
    step = max(1, _FLOAT_CHUNK_VALUES // max(1, int(np.prod(arr.shape[1:], dtype=np.int64))))
    for start in range(0, arr.shape[0], step):
        values = transform(arr[start : start + step].astype(np.float32))
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        out[start : start + step] = values
    return out


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of `... x 3` uint8 RGB -> `...` uint8 (rounded)."""
    if rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected ... x 3 RGB, got shape {rgb.shape}")
    return _to_uint8_in_chunks(rgb, rgb.shape[:-1], lambda values: values @ _LUMA)


def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(path, "file not found")
    if not p.is_file():
        raise DataError(path, "not a regular file")
    if p.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    return p


def _has_dicom_preamble(p: Path) -> bool:
    """Whether the file holds 'DICM' at byte 128 (DICOM Part 10); False for a file that cannot be opened."""
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_file(p: Path) -> bool:
    """Whether `p` is read as DICOM: a `.dcm` / `.dicom` name, or 'DICM' at byte 128 whatever the name."""
    return p.suffix.lower() in DICOM_EXTENSIONS or _has_dicom_preamble(p)


def is_supported_file(p: Path) -> bool:
    """Whether `p` is a file the readers take: a listed suffix, or a DICOM preamble whatever the name (scanner
    exports name images `IM000001` or by their UID, `1.2.840...`). A `DICOMDIR` (an export's index) is not."""
    if is_dicomdir(p):
        return False
    return p.suffix.lower() in SUPPORTED_EXTENSIONS or _has_dicom_preamble(p)


def is_dicomdir(p: Path) -> bool:
    """Whether `p` is a DICOM export's index file (`DICOMDIR`: records of the other files, no pixels)."""
    return p.name.upper() == "DICOMDIR"


def files_in_folder(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The supported files of a folder (`is_supported_file`), sorted by path; hidden files and folders skipped.
    With `recursive`, those of every sub-folder too (symbolic links to folders are not followed). A folder without
    any is a DataError naming it."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(folder, "not a folder")
    found: list[Path] = []
    has_subfolders = False
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        has_subfolders = has_subfolders or bool(dirs)
        if not recursive:
            dirs.clear()
        found.extend(Path(here) / f for f in files if not f.startswith(".") and is_supported_file(Path(here) / f))
    if not found:
        where = ("in it or its sub-folders" if recursive else
                 "in it (its sub-folders are read with --recursive)" if has_subfolders else "in it")
        raise DataError(folder, f"no supported files {where}; supported: {', '.join(SUPPORTED_EXTENSIONS)} "
                                "and DICOM files of any name")
    return sorted(found)


# -- video ------------------------------------------------------------------------------------------
# 8-bit luma-plane formats: their gray image is plane 0, expanded from limited range (16..235) unless full range.
# Bit-identical to `frame.to_ndarray(format="gray")` (swscale), without a conversion pass (tests check all values).
_LUMA_PLANE_FORMATS = frozenset(
    {"gray", "nv12", "nv21"}
    | {f"yuv{s}p" for s in ("420", "422", "444", "410", "411", "440")}
    | {f"yuvj{s}p" for s in ("420", "422", "444", "440")}
)
_LIMITED_TO_FULL = np.clip(np.rint((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def _gray_into(frame, out: np.ndarray) -> None:
    """Write the ITU-R 601 gray image of a decoded frame into `out` (H x W uint8)."""
    name = frame.format.name
    if name not in _LUMA_PLANE_FORMATS:
        out[...] = frame.to_ndarray(format="gray")
        return
    plane = frame.planes[0]
    h, w, stride = out.shape[0], out.shape[1], plane.line_size
    luma = np.frombuffer(plane, np.uint8, count=h * stride).reshape(h, stride)[:, :w]
    if name == "gray" or name.startswith("yuvj") or frame.color_range == _FULL_RANGE:
        out[...] = luma
    else:
        np.take(_LIMITED_TO_FULL, luma, out=out, mode="clip")


@contextmanager
def open_video_stream(path: str | Path) -> Iterator[tuple[Any, Any]]:
    """Open a video file with PyAV: yields (container, first video stream, threaded decoding); DataError naming
    the file when it is missing, not a video or has no video stream. The container is closed on exit."""
    import av

    p = _check_file(path)
    try:
        container = av.open(str(p))
    except av.FFmpegError as exc:
        raise DataError(path, f"cannot open as video: {exc.strerror or exc}") from exc
    with container:
        if not container.streams.video:
            raise DataError(path, "no video stream in file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream


# Limits against files whose header declares more than they hold (e.g. an 8 KB AVI claiming 2^31-1 frames): the
# declared frame count only sizes the first buffer (at most _PREALLOC_BYTES); the buffer then grows with what is
# actually decoded. A declared frame larger than MAX_FRAME_PIXELS, or more than MAX_DECODED_BYTES decoded in all,
# is a DataError naming the file.
MAX_FRAME_PIXELS = 8192 * 8192
MAX_DECODED_BYTES = 8 * 1024**3
_PREALLOC_BYTES = 64 * 1024**2


def _first_capacity(declared: int, frame_bytes: int) -> int:
    """Frames to allocate before decoding: the declared count (at least 16), bounded by _PREALLOC_BYTES."""
    return max(1, min(max(16, declared), _PREALLOC_BYTES // frame_bytes, MAX_DECODED_BYTES // frame_bytes))


def _join_blocks(blocks: list[np.ndarray], n: int) -> np.ndarray:
    """The first `n` frames of the filled `blocks` as one array; each block is freed once copied, so joining needs
    about one block beyond the clip itself (a single block is returned as it is when full)."""
    if len(blocks) == 1 and len(blocks[0]) == n:
        return blocks[0]
    out = np.empty((n,) + blocks[0].shape[1:], dtype=np.uint8)
    at = 0
    while blocks:
        block = blocks.pop(0)
        take = min(len(block), n - at)
        out[at : at + take] = block[:take]
        at += take
    return out


def _decode_video(path: str | Path, grayscale: bool) -> tuple[np.ndarray, float | None, str]:
    """Decode every frame: (T x H x W[x3] uint8, fps, pixel format name). Frames go into blocks of at most
    _PREALLOC_BYTES, joined once at the end: a long clip peaks at about its own size plus one block."""
    import av

    with open_video_stream(path) as (container, stream):
        expected = max(int(stream.frames or 0), 0)
        ctx = stream.codec_context
        h, w = int(ctx.height), int(ctx.width)
        if h <= 0 or w <= 0:
            raise DataError(path, f"video stream has invalid size {w}x{h}")
        if h * w > MAX_FRAME_PIXELS:
            raise DataError(path, f"video stream declares {w}x{h} frames, above the limit of {MAX_FRAME_PIXELS} "
                                  "pixels per frame")
        tail = (h, w) if grayscale else (h, w, 3)
        frame_bytes = int(np.prod(tail))
        limit = MAX_DECODED_BYTES // frame_bytes
        block = np.empty((_first_capacity(expected, frame_bytes),) + tail, dtype=np.uint8)
        blocks, n, at = [block], 0, 0
        try:
            for frame in container.decode(stream):
                if at == len(block):
                    if n >= limit:
                        raise DataError(path, f"more than {n} frames of {w}x{h}: the decoded clip would exceed "
                                              f"the limit of {MAX_DECODED_BYTES / 1024**3:.3g} GiB")
                    # grow geometrically up to blocks of _PREALLOC_BYTES
                    size = min(max(n, 16), max(1, _PREALLOC_BYTES // frame_bytes), limit - n)
                    block = np.empty((size,) + tail, dtype=np.uint8)
                    blocks.append(block)
                    at = 0
                if frame.height != h or frame.width != w:
                    raise DataError(path, f"frame {n} is {frame.width}x{frame.height}, the stream {w}x{h}")
                if grayscale:
                    _gray_into(frame, block[at])
                else:
                    block[at] = frame.to_ndarray(format="rgb24")
                n += 1
                at += 1
        except av.FFmpegError as exc:
            raise DataError(path, f"video decode failed after {n} frame(s): {exc.strerror or exc}") from exc
        rate = stream.average_rate or stream.guessed_rate
        pix_fmt = stream.format.name if stream.format is not None else ""
    if n == 0:
        raise DataError(path, "no decodable video frames")
    if expected and n < expected:
        raise DataError(path, f"truncated or corrupt: decoded {n} of the {expected} frames its header declares")
    fps = float(rate) if rate else None
    del block
    return _join_blocks(blocks, n), fps, pix_fmt


def read_video(path: str | Path, grayscale: bool = True) -> Video:
    """Decode a video (mp4/avi/mov/gif/... via PyAV) into uint8 T x H x W (or T x H x W x 3) plus fps."""
    frames, fps, _ = _decode_video(path, grayscale)
    return Video(frames, fps, str(path))


# -- DICOM ------------------------------------------------------------------------------------------
def _redactor(ds) -> list[str]:
    """Identifying values of `ds` (raw text, before any conversion), longest first, for `_redact`."""
    from pydicom.datadict import tag_for_keyword

    values: set[str] = set()
    for kw in _PHI_KEYWORDS:
        item = ds.get_item(tag_for_keyword(kw))  # raw element: no value conversion, no validation warnings
        if item is None or item.value is None:
            continue
        raw = item.value
        text = raw.decode("latin-1", errors="replace") if isinstance(raw, bytes) else str(raw)
        for part in text.replace("\\", "^").replace("=", "^").split("^"):
            part = part.strip(" \0")
            if len(part) >= 3:
                values.add(part)
        whole = text.strip(" \0")
        values.update({whole, whole.replace("^", " ")} if len(whole) >= 3 else set())
    return sorted(values, key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "<redacted>")
    return text


def _dicom_fps(ds, path: str | Path) -> float | None:
    """Frames per second from FrameTime (ms), else CineRate, else RecommendedDisplayFrameRate; None if absent."""
    for kw in ("FrameTime", "CineRate", "RecommendedDisplayFrameRate"):
        value = ds.get(kw)
        if value is None or str(value).strip() == "":
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            log.warning("%s: DICOM %s is not a number; ignored for the frame rate", path, kw)
            continue
        if v > 0:
            return 1000.0 / v if kw == "FrameTime" else v
    return None


_CM = 3            # DICOM PhysicalUnits code for centimetres
_TISSUE_2D = 1     # DICOM RegionSpatialFormat code for a 2D (B-mode) region


def _positive(value: Any) -> float | None:
    try:
        v = abs(float(value))
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def dicom_pixel_spacing_mm(ds: Any) -> tuple[float, float] | None:
    """(rows, columns) mm per pixel of a DICOM dataset: from its ultrasound regions (`SequenceOfUltrasoundRegions`:
    the largest 2D region whose physical units are centimetres, `PhysicalDeltaY/X` x 10), else `PixelSpacing` (mm);
    None when neither says it. Doppler / M-mode regions (time or velocity units) are never used."""
    best: tuple[float, tuple[float, float]] | None = None
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        if region.get("PhysicalUnitsXDirection") != _CM or region.get("PhysicalUnitsYDirection") != _CM:
            continue
        if region.get("RegionSpatialFormat", _TISSUE_2D) != _TISSUE_2D:
            continue
        dy, dx = _positive(region.get("PhysicalDeltaY")), _positive(region.get("PhysicalDeltaX"))
        if dy is None or dx is None:
            continue
        try:
            area = float((int(region.RegionLocationMaxX1) - int(region.RegionLocationMinX0)) *
                         (int(region.RegionLocationMaxY1) - int(region.RegionLocationMinY0)))
        except (AttributeError, TypeError, ValueError):
            area = 0.0
        if best is None or area > best[0]:
            best = (area, (10.0 * dy, 10.0 * dx))
    if best is not None:
        return best[1]
    spacing = ds.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        dy, dx = _positive(spacing[0]), _positive(spacing[1])
        if dy is not None and dx is not None:
            return (dy, dx)
    return None


def _mono_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    """Monochrome pixels of any integer depth -> uint8 over the BitsStored range; MONOCHROME1 inverted."""
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"unsupported monochrome pixel type {arr.dtype}")
        bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

        def scale(values: np.ndarray) -> np.ndarray:  # in place: lo..hi -> 0..255
            values -= lo
            values *= 255.0 / (hi - lo)
            return values

        arr = _to_uint8_in_chunks(arr, arr.shape, scale)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = 255 - arr
    return arr


def _dicom_pixels(ds, grayscale: bool) -> np.ndarray:
    """Decoded pixels as T x H x W (or T x H x W x 3) uint8."""
    from pydicom.pixels import apply_color_lut, convert_color_space, get_decoder

    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None:
        raise ValueError("no Transfer Syntax UID in the file meta information")
    arr, meta = get_decoder(tsyntax).as_array(ds, as_rgb=False)
    photometric = str(meta.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    spp = int(meta.get("samples_per_pixel", ds.get("SamplesPerPixel", 1)) or 1)
    if arr.ndim == (2 if spp == 1 else 3):  # a single frame: add T
        arr = arr[None]
    if photometric.startswith("MONOCHROME"):
        return _mono_to_uint8(arr, ds)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:  # 16-bit LUT entries span 0..65535: keep the high byte
            rgb = (rgb >> 8).astype(np.uint8)
        return rgb_to_gray(rgb) if grayscale else rgb
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        if grayscale:  # Y of YBR_FULL is the ITU-R 601 luma already
            return np.ascontiguousarray(arr[..., 0])
        return convert_color_space(arr, photometric, "RGB", per_frame=True)
    if photometric == "RGB":
        if arr.dtype != np.uint8:
            raise ValueError(f"unsupported RGB pixel type {arr.dtype}")
        return rgb_to_gray(arr) if grayscale else arr
    raise NotImplementedError(f"unsupported photometric interpretation {photometric!r}")


def read_dicom(path: str | Path, grayscale: bool = True) -> Video:
    """Decode a single- or multi-frame DICOM into uint8 T x H x W (or T x H x W x 3) plus fps.

    Colour (RGB, YBR, PALETTE COLOR applied) is kept with grayscale=False; monochrome stays T x H x W.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = _check_file(path)
    try:
        ds = pydicom.dcmread(str(p))
    except InvalidDicomError as exc:
        raise DataError(path, "not a DICOM file (no 'DICM' preamble or unreadable header)") from exc
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(path, f"cannot read DICOM header: {type(exc).__name__}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(path, "DICOM file has no pixel data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        secrets = _redactor(ds)
        try:
            frames = _dicom_pixels(ds, grayscale)
            fps = _dicom_fps(ds, path)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise many types; all re-raised as DataError
            # `from None`: the original message is kept (redacted) but not chained, so no unredacted text leaks
            cause = _redact(f"DICOM pixel decode failed: {type(exc).__name__}: {exc}", secrets)
            raise DataError(path, cause) from None
    for w in caught:  # re-issue library warnings with identifying values removed
        warnings.warn(_redact(str(w.message), secrets), w.category, stacklevel=2)
    if frames.ndim not in (3, 4) or frames.shape[0] == 0:
        raise DataError(path, f"unexpected decoded pixel shape {frames.shape}")
    return Video(np.ascontiguousarray(frames), fps, str(path), dicom_pixel_spacing_mm(ds))


# -- images and masks -------------------------------------------------------------------------------
def _open_image(path: str | Path):
    from PIL import Image, UnidentifiedImageError

    p = _check_file(path)
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"not a readable image: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt data
        raise DataError(path, f"image decode failed: {exc}") from exc
    pages = int(getattr(img, "n_frames", 1))
    if pages > 1:  # a multi-page TIFF or animated PNG: reading its first page alone would drop the rest unsaid
        img.close()
        raise DataError(path, f"{pages} frames in one {img.format} image: only single images are read as images "
                              "(save a cine as mp4 or DICOM, or each frame as its own image)")
    return img


def _image_array(img, path: str | Path) -> np.ndarray:
    """Pillow image -> H x W or H x W x 3 uint8 in its native colour (alpha dropped)."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode == "LA":
        return np.asarray(img)[..., 0].copy()
    if mode.startswith("I"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(path, f"unsupported integer image range [{arr.min()}, {arr.max()}] in mode {mode}")
        if not (mode.startswith("I;16") or arr.max() > 255):
            return arr.astype(np.uint8)
        if arr.size and arr.max() < 4096:  # e.g. 12-bit scanner data in a 16-bit file: its high byte is near black
            log.warning("%s: 16-bit image with values only up to %d: reduced to its high byte (0..%d of 255), as "
                        "every 16-bit image is; rescale the files to the 16-bit range (or 8 bits) if this is "
                        "12-bit data", path, int(arr.max()), int(arr.max()) >> 8)
        return (arr >> 8).astype(np.uint8)
    if mode == "F":
        raise DataError(path, "unsupported image mode F (32-bit float)")
    return np.asarray(img.convert("RGB"))


def read_image(path: str | Path, grayscale: bool = True) -> np.ndarray:
    """Read PNG/JPEG/BMP/TIFF (Pillow): H x W uint8, or with grayscale=False H x W x 3 for colour files."""
    with _open_image(path) as img:
        arr = _image_array(img, path)
    if grayscale and arr.ndim == 3:
        arr = rgb_to_gray(arr)
    return np.ascontiguousarray(arr)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask image: H x W uint8 in {0, 1} (nonzero -> 1; >= 128 -> 1 for lossy JPEG)."""
    with _open_image(path) as img:
        lossy = img.format == "JPEG"
        arr = _image_array(img, path)
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    return (arr >= (128 if lossy else 1)).astype(np.uint8)


# -- dispatch ---------------------------------------------------------------------------------------
def read_clip(path: str | Path, grayscale: bool = True) -> Video:
    """Read any supported file as a clip: DICOM ('DICM' at byte 128 or .dcm), image (T=1) or video."""
    p = _check_file(path)
    if is_dicom_file(p):
        return read_dicom(path, grayscale)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return Video(read_image(path, grayscale)[None], None, str(path))
    return read_video(path, grayscale)


def read_dicom_header(path: str | Path, tags: list[str] | None = None) -> Any:
    """A DICOM file's header, pixel data not read (only `tags` when given); DataError naming the file when pydicom
    cannot read it."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=tags)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged header
        raise DataError(path, f"cannot read DICOM header: {type(exc).__name__}") from None


#: the header values `dicom_header_values` reads once per file and keeps (a data set's load reads each DICOM's
#: frame count, image size, patient and instance number: one header read for all, not one each)
HEADER_VALUE_TAGS = ("Columns", "InstanceNumber", "NumberOfFrames", "PatientID", "Rows")
_HEADER_MEMO_SIZE = 50_000  # files; each entry is a few small values
_header_memo: OrderedDict[tuple[str, int, int, int], dict[str, Any]] = OrderedDict()
_header_memo_lock = threading.Lock()


def dicom_header_values(path: str | Path) -> dict[str, Any]:
    """{keyword: value} of the `HEADER_VALUE_TAGS` a DICOM's header holds (absent tags left out), read once per
    process while the file is unchanged (path, size, modification time, inode); DataError as `read_dicom_header`."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise DataError(path, f"cannot read DICOM header: {type(exc).__name__}") from None
    key = (str(p.absolute()), st.st_size, st.st_mtime_ns, st.st_ino)
    with _header_memo_lock:
        if key in _header_memo:
            _header_memo.move_to_end(key)
            return dict(_header_memo[key])
    ds = read_dicom_header(p, list(HEADER_VALUE_TAGS))
    values = {k: ds.get(k) for k in HEADER_VALUE_TAGS if k in ds}
    with _header_memo_lock:
        _header_memo[key] = values
        while len(_header_memo) > _HEADER_MEMO_SIZE:
            _header_memo.popitem(last=False)
    return dict(values)


def read_dicom_series(files: list[Path]) -> Video:
    """Single-frame DICOMs of one series (a cine some scanners export one file a frame) as one clip, ordered by
    InstanceNumber (by name where a file has none): uint8 `T x H x W`, fps from the first file's frame time. A
    multi-frame file, or frames of different sizes, is a DataError naming the file."""
    def instance(f: Path) -> tuple[int, str]:
        try:
            number = dicom_header_values(f).get("InstanceNumber")
            return (int(number), f.name) if number not in (None, "") else (2**31, f.name)
        except (DataError, TypeError, ValueError):  # an unreadable header fails below, in read_dicom, naming the file
            return (2**31, f.name)

    ordered = sorted(files, key=instance)
    clips = [read_dicom(f) for f in ordered]
    for f, clip in zip(ordered, clips):
        if clip.frames.shape[0] != 1:
            raise DataError(f, f"holds {clip.frames.shape[0]} frames: a series read as one clip joins single-frame "
                               "files (give a multi-frame DICOM as a file of its own)")
        if clip.frames.shape[1:] != clips[0].frames.shape[1:]:
            raise DataError(f, f"frame size {clip.frames.shape[1:]} differs from the first frame's "
                               f"{clips[0].frames.shape[1:]} ({ordered[0].name})")
    return Video(np.concatenate([c.frames for c in clips]), clips[0].fps, str(ordered[0].parent),
                 clips[0].pixel_spacing_mm)


def declared_frames(path: str | Path) -> int | None:
    """The frame count a file's header declares, nothing decoded: an image 1, a DICOM its NumberOfFrames (1 when
    absent: a still), a video its stream's count (None where the container does not say). A header that cannot be
    read is a DataError naming the file."""
    p = _check_file(path)
    if is_dicom_file(p):
        ds = dicom_header_values(p)
        if "Rows" not in ds or "Columns" not in ds:  # pydicom reads a cut header leniently: no image in it
            raise DataError(path, "DICOM header describes no image (no Rows / Columns)")
        try:
            return max(int(ds.get("NumberOfFrames") or 1), 1)
        except (TypeError, ValueError):
            raise DataError(path, "DICOM NumberOfFrames is not a number") from None
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return 1
    with open_video_stream(p) as (_, stream):
        return int(stream.frames) if stream.frames and stream.frames > 0 else None


def probe_file(path: str | Path) -> ProbeResult:
    """Decode a file completely and report frames, height, width, channels (1 or 3) and fps."""
    p = _check_file(path)
    if not is_dicom_file(p) and p.suffix.lower() not in IMAGE_EXTENSIONS:
        frames, fps, pix_fmt = _decode_video(path, grayscale=True)  # gray decode is faster; colour from pix_fmt
        channels = 1 if pix_fmt.startswith(("gray", "y8", "ya")) else 3
    else:
        clip = read_clip(path, grayscale=False)
        frames, fps = clip.frames, clip.fps
        channels = 3 if frames.ndim == 4 else 1
    return ProbeResult(str(path), int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2]), channels, fps)
