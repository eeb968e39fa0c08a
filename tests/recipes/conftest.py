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
