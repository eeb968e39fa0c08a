"""Config of tiny runs of the packaged demo recipe (18 synthetic clips, 32 px, 1 epoch, 3 folds, one thread), shared
by the fold-loop tests (parallel folds, joined folds)."""

from __future__ import annotations

from pathlib import Path

from sonodistill.config import RunConfig, load_config, packaged_config

TINY_DEMO = ["data.synthetic_n=18", "data.synthetic_frames=4", "data.synthetic_size=32", "data.size=32",
             "data.num_frames=4", "train.epochs=1", "train.folds=3", "train.threads=1"]


def demo_config(root: Path, name: str, *extra: str) -> RunConfig:
    """The demo config at TINY_DEMO size, run ROOT/NAME, its synthetic clips cached under ROOT/cache."""
    return load_config(packaged_config("demo"), TINY_DEMO + [f"name={name}", f"out_dir={root}",
                                                             f"data.cache_dir={root / 'cache'}", *extra])
