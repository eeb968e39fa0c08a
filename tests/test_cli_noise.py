"""Lightning's start-up noise (tips, duplicated INFO lines, internal deprecation warnings) stays off the terminal."""

from __future__ import annotations

import subprocess
import sys


def test_train_output_has_no_lightning_tips_or_duplicate_lines(tmp_path):
    cmd = [sys.executable, "-m", "sonodistill", "train", "supervised", "--config", "demo", "--name", "quiet",
           "--out", str(tmp_path), "--set", "data.synthetic_n=12", "--set", "train.epochs=1", "--set", "train.folds=2",
           "--set", "data.size=32", "--set", "data.num_frames=4", "--set", f"data.cache_dir={tmp_path / 'cache'}",
           "--set", "train.fold=0", "--set", "data.synthetic_frames=8", "--set", "data.synthetic_size=48"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1",
                                                                                 "PATH": "/usr/bin:/bin",
                                                                                 "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "Tip:" not in text and "litlogger" not in text
    assert "LeafSpec" not in text
    lines = [ln for ln in text.splitlines() if "limit_train_batches" in ln]
    assert len(lines) <= 1  # once, not once per handler
