"""Peak memory of decoding and preprocessing one long clip, as `predict`, the cache and training do it.

    python benchmarks/long_clip_memory.py [--frames 3000] [--width 640] [--height 480] [--size 112]

Writes an uncompressed grey AVI of `--frames` frames (a scanner recording of that length) to a temporary folder,
then, each in a fresh process (so that one step's freed memory does not hide the next one's peak), measures the
peak resident memory above the process's size after its imports: `read_clip` alone, and `read_clip` followed by
`preprocess_clip` (crop, overlay removal, resize to `--size`). Prints MiB and the peak as a multiple of the decoded
clip's size: a ratio measured in the same run, so the machine's other jobs do not change it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

CHILD = """
import re, sys
from sonodistill.data.readers import read_clip
size = int(sys.argv[2])
if size:
    from sonodistill.data.preprocess import PreprocessConfig, preprocess_clip
before = int(open("/proc/self/statm").read().split()[1]) * 4096
frames = read_clip(sys.argv[1]).frames
if size:
    preprocess_clip(frames, PreprocessConfig(size=size))
# VmHWM: this process's own peak (Linux carries the parent's peak into ru_maxrss across exec)
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(frames.shape[0], frames.nbytes, peak - before, "torch" in sys.modules)
"""


class Peak(NamedTuple):
    """One fresh process's measurement: frames decoded, the decoded clip's bytes, the peak resident growth above
    the process's size after its imports (bytes), and whether torch was imported (decoding alone should not)."""

    frames: int
    clip_bytes: int
    growth: int
    torch_loaded: bool


def write_clip(path: Path, frames: int, width: int, height: int) -> None:
    """An uncompressed grey AVI whose content moves (a rolled noise image) inside a static border."""
    import av

    base = np.zeros((height, width), np.uint8)
    base[height // 8 : -height // 8, width // 8 : -width // 8] = np.random.default_rng(0).integers(
        0, 255, (height - 2 * (height // 8), width - 2 * (width // 8)), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("rawvideo", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "gray"
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, i % 16, 1), format="gray")):
                out.mux(packet)


def measure(path: Path, size: int) -> Peak:
    """`read_clip` (size 0: decode only), or `read_clip` + `preprocess_clip` to `size`, in one fresh process."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(size)], capture_output=True, text=True,
                          check=True)
    frames, clip, growth, torch_loaded = done.stdout.split()
    return Peak(int(frames), int(clip), int(growth), torch_loaded == "True")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--size", type=int, default=112)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.avi"
        write_clip(path, a.frames, a.width, a.height)
        print(f"{a.frames} frames of {a.width} x {a.height} (uncompressed AVI), preprocessed to {a.size} px")
        print("| step | decoded clip (MiB) | peak memory above imports (MiB) | peak / clip |")
        print("|---|---:|---:|---:|")
        for name, size in (("read_clip", 0), ("read_clip + preprocess_clip", a.size)):
            peak = measure(path, size)
            print(f"| {name} | {peak.clip_bytes / 2**20:.0f} | {peak.growth / 2**20:.0f} | "
                  f"{peak.growth / peak.clip_bytes:.2f} |")


if __name__ == "__main__":
    main()
