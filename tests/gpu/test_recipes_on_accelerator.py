"""Every recipe end to end on an accelerator: `sonodistill train ... --accelerator gpu` on a small synthetic set.

Skipped without CUDA. `SONODISTILL_TEST_ACCELERATOR=cpu` runs the same cases on the CPU (how their arguments were
checked on a machine without a GPU). What fails only on a GPU: a tensor a loss, teacher or sampler creates on the
CPU and mixes with the model's, a NumPy conversion of a device tensor, a buffer left behind by `.to(device)`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

ACCELERATOR = os.environ.get("SONODISTILL_TEST_ACCELERATOR", "gpu")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(ACCELERATOR == "gpu" and not torch.cuda.is_available(), reason="no CUDA device"),
]

SEG = ["--config", "seg-hc18-cpu", "--set", "train.fold=null", "--set", "data.size=64", "--set", "data.batch_size=4",
       "--set", "recipe_options.labelled_bs=2", "--set", "recipe_options.labelled_fraction=0.5",
       "--set", "recipe_options.iterations_per_epoch=4"]
VIDEO = ["--set", "data.batch_size=4", "--set", "data.num_frames=8", "--set", "data.size=64"]
DILBERT_OPTIONS = ("{teacher: {dim: 24, layers: 2, heads: 2, frame_width: 0.125, clip_width: 0.125}, "
                   "student: {dim: 16, layers: 2, heads: 2}, vocab_size: 250, n_region_classes: 4, max_text_len: 32}")

# recipe -> (synthetic preset and its options, train arguments)
CASES = {
    "supervised": (["carotid", "--frames", "8", "--size", "64"], ["--config", "supervised-cpu", *VIDEO]),
    "dualdistill": (["carotid", "--frames", "8", "--size", "64"], ["--config", "dualdistill-cpu", *VIDEO]),
    "dino": (["carotid", "--frames", "8", "--size", "64"], ["--config", "dino-cpu", "--set", "data.batch_size=4"]),
    "medivlad": (["carotid", "--frames", "8", "--size", "64"], ["--config", "medivlad-cpu", *VIDEO]),
    "discovr": (["carotid", "--frames", "8", "--size", "64"],
                ["--config", "discovr-cpu", "--set", "data.batch_size=2", "--set", "data.target=null",
                 "--set", "recipe_options.train_on_label=hyperechoic",
                 "--set", "recipe_options.normal_label=hyperechoic"]),
    "dilbert": (["lung", "--frames", "8", "--size", "48"],
                ["--set", "data.num_frames=4", "--set", "data.size=32", "--set", "data.batch_size=4",
                 "--set", "optim.warmup_epochs=0", "--set", f"recipe_options={DILBERT_OPTIONS}"]),
    "seg_supervised": (["fetal-head", "--size", "64"], SEG),
    "mean_teacher": (["fetal-head", "--size", "64"], SEG),
    "fixmatch": (["fetal-head", "--size", "64"], SEG),
    "cps": (["fetal-head", "--size", "64"], SEG),
    "hdc": (["fetal-head", "--size", "64"], SEG),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(CASES))
def test_recipe_trains_and_predicts_on_the_accelerator(tmp_path, recipe):
    """Two folds of one epoch each on the accelerator: exit code 0, every item of both test folds predicted once,
    every score (probability, Dice, anomaly score) finite; DINO: finite student weights."""
    synth, train = CASES[recipe]
    env = {**os.environ, "SONODISTILL_CACHE": str(tmp_path / "cache")}
    run = [sys.executable, "-m", "sonodistill"]
    subprocess.run(run + ["data", "synth", synth[0], "-n", "12", *synth[1:], "--out", str(tmp_path / "synth")],
                   check=True, env=env, capture_output=True)
    done = subprocess.run(run + ["train", recipe, *train, "--data", f"csv:{tmp_path / 'synth' / 'manifest.csv'}",
                                 "--folds", "2", "--epochs", "1", "--accelerator", ACCELERATOR, "--name", "acc",
                                 "--out", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = tmp_path / "runs" / "acc"
    if recipe == "dino":  # pretraining: no predictions, finite weights of the student backbone
        from safetensors.torch import load_file

        weights = load_file(str(run_dir / "student_backbone.safetensors"))
        assert weights and all(torch.isfinite(w.float()).all() for w in weights.values())
        return
    pred = pd.read_csv(run_dir / "predictions.csv")
    for _, part in pred.groupby("variant") if "variant" in pred else [(None, pred)]:
        assert sorted(part["index"]) == list(range(12)), recipe
    scores = [c for c in pred if c.startswith(("prob_", "p_")) or c in ("dice", "anomaly_score")]
    values = pred[scores].to_numpy(dtype=float)
    assert values.size and np.isfinite(values).all(), recipe
