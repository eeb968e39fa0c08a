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
