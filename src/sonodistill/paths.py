"""Where the shared real data lives: `SONODISTILL_DATA`, else `../shared/data` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path | None:
    """Root of the shared data sets, or None when none is found."""
    env = os.environ.get("SONODISTILL_DATA")
    candidates = [Path(env)] if env else []
    candidates += [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


def dataset_root(name: str) -> Path | None:
    """Folder of one shared data set (e.g. 'lus-blues'), or None when absent."""
    root = data_root()
    if root is None or not (root / name).is_dir():
        return None
    return root / name
