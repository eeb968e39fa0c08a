"""`sonodistill train --devices 2 --strategy ddp` end to end: every test item predicted once, one report."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow
def test_ddp_cross_validation_from_the_command_line(tmp_path):
    env = {**os.environ, "SONODISTILL_CACHE": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "sonodistill"]
    subprocess.run(run + ["data", "synth", "carotid", "--out", str(tmp_path / "synth"), "-n", "12",
                          "--frames", "8", "--size", "48"], check=True, env=env, capture_output=True)
    done = subprocess.run(run + ["train", "supervised", "--data", f"csv:{tmp_path / 'synth' / 'manifest.csv'}",
                                 "--folds", "2", "--epochs", "1", "--devices", "2", "--strategy", "ddp",
                                 "--name", "ddp", "--out", str(tmp_path / "runs"),
                                 "--set", "model.width=0.125", "--set", "model.norm=group", "--set", "data.size=32",
                                 "--set", "data.num_frames=4", "--set", "data.batch_size=2",
                                 "--set", "data.augment=false"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pred = pd.read_csv(tmp_path / "runs" / "ddp" / "predictions.csv")
    assert sorted(pred["index"]) == list(range(12))  # the whole test fold, not one rank's shard
    assert (tmp_path / "runs" / "ddp" / "report.md").is_file()


@pytest.mark.slow
def test_ddp_segmentation_trains_every_fold(tmp_path):
    """Both DDP ranks go through every fold (a worker that stopped after fold 0 left rank 0 without its peer)."""
    env = {**os.environ, "SONODISTILL_CACHE": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "sonodistill"]
    subprocess.run(run + ["data", "synth", "fetal-head", "--out", str(tmp_path / "synth"), "-n", "12", "--size", "48"],
                   check=True, env=env, capture_output=True)
    done = subprocess.run(run + ["train", "seg_supervised", "--config", "seg-hc18-cpu",
                                 "--data", f"csv:{tmp_path / 'synth' / 'manifest.csv'}", "--folds", "2",
                                 "--epochs", "1", "--devices", "2", "--strategy", "ddp", "--name", "seg",
                                 "--out", str(tmp_path / "runs"), "--set", "train.fold=null",
                                 "--set", "data.size=32", "--set", "data.batch_size=2", "--set", "model.norm=group",
                                 "--set", "recipe_options.labelled_bs=2", "--set", "recipe_options.labelled_fraction=1.0",
                                 "--set", "recipe_options.iterations_per_epoch=3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pred = pd.read_csv(tmp_path / "runs" / "seg" / "predictions.csv")
    assert sorted(pred["index"]) == list(range(12)) and sorted(pred["fold"].unique()) == [0, 1]
