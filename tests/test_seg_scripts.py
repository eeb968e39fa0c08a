"""benchmarks/hc18_by_size.py (scores by head size, averaged over seeds) and benchmarks/seg_rescore.py's refusals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.benchmark_scripts import benchmark_script


def _seed(folder: Path, dice: list[float], err: list[float]) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "hc_true_mm": [60.0, 170.0, 180.0], "dice": dice,
                  "hc_abs_err_mm": err}).to_csv(folder / "predictions.csv", index=False)


def test_hc18_by_size_averages_seeds_image_by_image_and_bands_by_true_hc(tmp_path, capsys):
    with benchmark_script("hc18_by_size") as script:
        run = tmp_path / "run"
        _seed(run / "seed_0", [0.80, 0.96, 0.98], [6.0, 2.0, 1.0])
        _seed(run / "seed_1", [0.90, 0.98, 0.98], [4.0, 2.0, 3.0])
        scores = script.seed_averaged(run)
        assert scores.loc["a.png", "dice"] == pytest.approx(0.85) and scores.loc["c.png", "hc_abs_err_mm"] == 2.0
        table = script.by_size(scores)
        assert list(table["images"]) == [1, 2]
        assert table["dice"].tolist() == pytest.approx([0.85, 0.975])
        assert script.main([str(run)]) == 0
        out = capsys.readouterr().out
        assert "| run | 0-80 | 1 | 85.00 | 5.00 |" in out
        assert "93.33 (smallest band at the others' mean: 97.50)" in out  # (0.85 + 0.97 + 0.98) / 3; (3 x 0.975) / 3


def test_hc18_by_size_refuses_seeds_that_score_other_images(tmp_path):
    with benchmark_script("hc18_by_size") as script:
        run = tmp_path / "run"
        _seed(run / "seed_0", [0.8, 0.9, 0.9], [1.0, 1.0, 1.0])
        (run / "seed_1").mkdir(parents=True)
        pd.DataFrame({"path": ["x.png"], "hc_true_mm": [60.0], "dice": [0.9], "hc_abs_err_mm": [1.0]}).to_csv(
            run / "seed_1" / "predictions.csv", index=False)
        with pytest.raises(SystemExit, match="score different images"):
            script.seed_averaged(run)


def test_seg_rescore_refuses_a_training_setting_with_a_message(tmp_path, capsys):
    with benchmark_script("seg_rescore") as script:
        assert script.main([str(tmp_path), "--out", str(tmp_path / "out"), "--set", "optim.lr=0.1"]) == 2
        assert "inference settings only" in capsys.readouterr().err


def test_seg_train_shares_reads_the_last_epoch_of_every_fold(tmp_path, capsys):
    log = tmp_path / "run" / "seed_0" / "fold_0" / "logs"
    log.mkdir(parents=True)
    pd.DataFrame({"epoch": [0, 0, 1, 1, 1], "step": [0, 1, 2, 3, 4],
                  "train/unsup/fg_fraction": [0.5, 0.4, 0.1, float("nan"), 0.3],  # epoch-end rows have NaN
                  "train/sup/fg_fraction": [0.1, 0.1, 0.08, 0.12, 0.1],
                  "train/hdc/mi/marginal_entropy": [0.6, 0.6, 0.3251, 0.3251, 0.3251]}).to_csv(log / "metrics.csv")
    with benchmark_script("seg_train_shares") as script:
        row = script.last_epoch_shares(log / "metrics.csv")
        assert row["unlabelled fg"] == pytest.approx(0.2) and row["labelled fg"] == pytest.approx(0.1)
        assert row["marginal fg"] == pytest.approx(0.1, abs=1e-4)  # H(0.1, 0.9) = 0.3251 nats
        assert script.main([str(tmp_path / "run")]) == 0
        assert "seed_0/fold_0" in capsys.readouterr().out
        assert script.main([str(tmp_path)]) == 0  # the folder above finds the same log
        (tmp_path / "empty").mkdir()
        assert script.main([str(tmp_path / "empty")]) == 2
        assert "no fold_*/logs/metrics.csv" in capsys.readouterr().err
