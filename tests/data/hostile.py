"""Builders of hostile or careless inputs, shared by the reader, serve and bad-input catalogue tests."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

HUGE_FRAMES = 2**31 - 1


def write_small_avi(path: Path, frames: int = 3, size: int = 32) -> Path:
    """A valid MJPEG AVI of `frames` grey frames (`size` x `size`), a few KB."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuvj420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), (40 * i) % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_huge_frame_count_avi(path: Path, declared: int = HUGE_FRAMES) -> Path:
    """A small valid AVI whose headers declare `declared` frames: `avih.dwTotalFrames` and `strh.dwLength`."""
    write_small_avi(path)
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")  # chunk id, size, then dwMicroSecPerFrame, dwMaxBytesPerSec, dwPaddingGranularity,
    strh = data.find(b"strh")  # dwFlags, dwTotalFrames | fccType, fccHandler, dwFlags, wPriority+wLanguage,
    assert avih > 0 and strh > 0  # dwInitialFrames, dwScale, dwRate, dwStart, dwLength
    struct.pack_into("<I", data, avih + 8 + 16, declared)
    struct.pack_into("<I", data, strh + 8 + 32, declared)
    path.write_bytes(bytes(data))
    return path


def failing_for(name: str, real: Callable[[Any], Any], error: BaseException) -> Callable[[Any], Any]:
    """`real`, except that it raises `error` for the file called `name` (an unexpected per-file failure)."""

    def wrapped(path: Any) -> Any:
        if Path(path).name == name:
            raise error
        return real(path)

    return wrapped
