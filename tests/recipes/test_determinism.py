"""What "deterministic" means in the README: the same command in two fresh processes, with the same torch thread
count on the same machine, gives bit-identical weights and predictions (augmentation and random frames on)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from .conftest import read_weights


def _train(tmp_path, csv, name: str, threads: int) -> None:
    overrides = ["data.size=32", "data.num_frames=4", "data.batch_size=4", "data.augment=true",
                 "data.sampling=random", "model.backbone=resnet10_3d", "model.width=0.125",
                 "model.kwargs={temporal_stride: 1}", "train.epochs=2", "train.folds=3", "train.fold=0",
                 "optim.warmup_epochs=0", f"data.cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "sonodistill", "train", "supervised", "--data", f"csv:{csv}", "--name", name,
           "--out", str(tmp_path / "runs")] + [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=600)


def test_same_command_same_threads_gives_identical_weights(tiny_carotid, tmp_path):
    csv = tmp_path / "manifest.csv"
    tiny_carotid.to_csv(csv)
    for name in ("first", "second"):
        _train(tmp_path, csv, name, threads=1)
    a = read_weights(tmp_path / "runs" / "first" / "fold_0" / "model.safetensors")
    b = read_weights(tmp_path / "runs" / "second" / "fold_0" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pa = (tmp_path / "runs" / "first" / "predictions.csv").read_text()
    pb = (tmp_path / "runs" / "second" / "predictions.csv").read_text()
    assert pa == pb
