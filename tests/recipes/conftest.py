"""A tiny synthetic carotid set shared by the engine tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sonodistill.data.manifest import Manifest


@pytest.fixture(scope="session")
def tiny_carotid(tmp_path_factory) -> Manifest:
    from sonodistill.data.synthetic import write_dataset

    out = tmp_path_factory.mktemp("tiny-carotid")
    csv = write_dataset("carotid", out, n=18, seed=3, frames=8, size=48)
    return Manifest.from_csv(csv)


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Config overrides for a seconds-long CPU run under tmp_path."""
    return [
        f"out_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.size=32", "data.num_frames=4", "data.batch_size=4", "data.augment=false", "data.sampling=uniform",
        "model.backbone=resnet10_3d", "model.width=0.125", "model.kwargs={temporal_stride: 1}", "train.epochs=2", "train.folds=3",
        "optim.warmup_epochs=0", "train.log_every_n_steps=1",
    ]


def read_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def image_folder(root: Path, n_per_class: int = 12) -> Path:
    """A folder set of two classes that differ in brightness (bright / dark speckle, 40 px), one group per image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, base in (("bright", 170), ("dark", 60)):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.clip(base + rng.normal(0, 25, (40, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"{cls}{i}.png")
    return root
