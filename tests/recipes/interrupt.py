"""A training run killed mid-fold (SIGKILL in epoch 1, after epoch 0's checkpoint), for the resume tests."""

from __future__ import annotations

import json

import torch

# A training process parked mid-epoch 1 (after epoch 0's checkpoint and one step of epoch 1), then killed.
_PARKED_DRIVER = """
import json, sys, time
from pathlib import Path
import lightning as L
import torch
from sonodistill.config import load_config
from sonodistill.data.manifest import Manifest
from sonodistill.protocols.folds import run_protocol

overrides, manifest, threads, mark = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])


class Park(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 1:
            mark.write_text("parked")
            time.sleep(600)


torch.set_num_threads(threads)
run_protocol(load_config(None, overrides), manifest=Manifest.from_csv(manifest), extra_callbacks=[Park()])
"""


def kill_when_parked(tmp_path, overrides: list[str], manifest) -> None:
    """Run the parked driver in a subprocess and SIGKILL it once it is mid-epoch 1 of fold 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    driver, csv, mark = tmp_path / "driver.py", tmp_path / "manifest.csv", tmp_path / "parked"
    driver.write_text(_PARKED_DRIVER)
    manifest.to_csv(csv)
    proc = subprocess.Popen([sys.executable, str(driver), json.dumps(overrides), str(csv),
                             str(torch.get_num_threads()), str(mark)])
    try:
        deadline = time.monotonic() + 300
        while not mark.exists():
            assert proc.poll() is None, f"driver exited with {proc.returncode} before epoch 1"
            assert time.monotonic() < deadline, "driver never reached epoch 1"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
