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
