"""Foreground drift read from a semi-supervised run's training log, and its lines in the segmentation report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sonodistill.config import load_config
from sonodistill.evaluation.foreground_drift import (
    first_epoch_after_ramp,
    foreground_drift_warnings,
    worst_drift,
)
from sonodistill.evaluation.segmentation_report import training_warnings, write_segmentation_report


def _log(fold_dir: Path, unlabelled_by_epoch: list[float], labelled: float = 0.2, steps: int = 3) -> Path:
    """A Lightning CSV log: `steps` rows an epoch with the two foreground columns, plus the epoch-end rows (NaN)."""
    rows = []
    for epoch, share in enumerate(unlabelled_by_epoch):
        for k in range(steps):  # the step values average to `share`
            rows.append({"epoch": epoch, "step": epoch * steps + k, "train/unsup/fg_fraction": share + (k - 1) * 0.01,
                         "train/sup/fg_fraction": labelled + (k - 1) * 0.02, "train/loss_step": 1.0})
        rows.append({"epoch": epoch, "step": epoch * steps + steps - 1, "train/loss_epoch": 1.0})
    (fold_dir / "logs").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(fold_dir / "logs" / "metrics.csv", index=False)
    return fold_dir / "logs" / "metrics.csv"


def test_the_ramp_ends_in_the_epoch_before_the_first_one_checked():
    assert first_epoch_after_ramp(0.4, 8) == 4  # the ramp ends at step 3.2 epochs' worth: inside epoch 3
    assert first_epoch_after_ramp(0.5, 8) == 4 and first_epoch_after_ramp(0.0, 8) == 0
    assert first_epoch_after_ramp(1.0, 8) == 7  # a ramp over the whole run: the last epoch still checked


def test_worst_epoch_after_the_ramp_by_ratio_to_the_labelled_share(tmp_path):
    # epoch 1 (inside the ramp) is far lower but not checked; of epochs 4-7, epoch 5 is furthest from 0.2
    log = _log(tmp_path / "fold_0", [0.22, 0.05, 0.15, 0.18, 0.19, 0.09, 0.17, 0.19])
    drift = worst_drift(log, first_epoch=4)
    assert drift.epoch == 5 and drift.unlabelled == pytest.approx(0.09) and drift.labelled == pytest.approx(0.2)
    assert drift.ratio == pytest.approx(0.45)
    # in log-ratio distance 0.09 / 0.2 (0.45x) is further than 0.36 / 0.2 (1.8x)? |ln 0.45| = 0.80 > |ln 1.8| = 0.59
    log2 = _log(tmp_path / "fold_1", [0.2] * 4 + [0.36, 0.09, 0.2, 0.2])
    assert worst_drift(log2, 4).epoch == 5


def test_warnings_name_the_fold_the_epoch_and_the_direction(tmp_path):
    _log(tmp_path / "fold_0", [0.2, 0.1, 0.15, 0.18, 0.07, 0.12, 0.15, 0.17])  # session 23's failure, in shape
    _log(tmp_path / "fold_1", [0.5, 0.3, 0.22, 0.2, 0.21, 0.2, 0.19, 0.2])     # held: 0.95-1.05x after the ramp
    _log(tmp_path / "fold_2", [0.2, 0.2, 0.3, 0.4, 0.3, 0.3, 0.3, 0.3])        # 1.5x: over-segmentation
    _log(tmp_path / "final", [0.2] * 7 + [0.1])
    lines = foreground_drift_warnings(tmp_path, rampup_fraction=0.4, epochs=8)
    assert len(lines) == 3
    assert lines[0].startswith("fold_0: in epoch 4") and "7.0 %" in lines[0] and "20.0 %" in lines[0]
    assert "0.35x" in lines[0] and "towards background" in lines[0]
    assert lines[1].startswith("fold_2:") and "1.50x" in lines[1] and "towards foreground" in lines[1]
    assert lines[2].startswith("final: in epoch 7")
    assert foreground_drift_warnings(tmp_path, rampup_fraction=0.4, epochs=8) == lines  # read-only, repeatable


def test_runs_without_foreground_columns_or_ramp_give_no_warning(tmp_path):
    (tmp_path / "fold_0" / "logs").mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 0], "step": [0, 1], "train/sup": [0.5, 0.4]}).to_csv(
        tmp_path / "fold_0" / "logs" / "metrics.csv", index=False)  # supervised-only
    assert foreground_drift_warnings(tmp_path, 0.4, 8) == []
    _log(tmp_path / "fold_1", [0.2, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02, 0.02])
    hdc = load_config(None, ["recipe=hdc", "train.epochs=8", "recipe_options={rampup_fraction: 0.4}"])
    supervised = load_config(None, ["recipe=seg_supervised", "train.epochs=8"])
    assert len(training_warnings(tmp_path, hdc)) == 1 and training_warnings(tmp_path, supervised) == []


def test_the_report_carries_the_warnings(tmp_path):
    predictions = pd.DataFrame({"fold": 0, "index": range(4), "dice": [0.9, 0.8, 0.95, 0.1], "iou": 0.5,
                                "hd95": 2.0, "asd": 1.0})
    write_segmentation_report(tmp_path, predictions, "t", warnings=["fold_0: drift"])
    assert "## Training warnings\n\n- fold_0: drift" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["warnings"] == ["fold_0: drift"]
    write_segmentation_report(tmp_path, predictions, "t")
    assert "Training warnings" not in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["warnings"] == []
    assert np.isfinite(json.loads((tmp_path / "metrics.json").read_text())["items"]["dice"]["mean"])
