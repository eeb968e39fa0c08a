"""benchmarks/hdc_table.py: the table built from finished run directories (medians, signed HC error, seed rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.benchmark_scripts import benchmark_script



@pytest.fixture(scope="module")
def hdc_table():
    with benchmark_script("hdc_table") as module:
        yield module


def _finished_run(run: Path, dice: list[float], hc_pred: list[float] | None = None,
                  hc_true: list[float] | None = None) -> None:
    """The files the table reads: metrics.json, timing.json, predictions.csv, fold_0/split.json (no HC columns
    without `hc_pred`)."""
    (run / "fold_0").mkdir(parents=True)
    values = {"dice": np.asarray(dice)}
    pred = pd.DataFrame({"fold": 0, "index": range(len(dice)), "dice": dice})
    if hc_pred is not None:
        values["hc_abs_err_mm"] = np.abs(np.asarray(hc_pred) - np.asarray(hc_true))
        pred = pred.assign(hc_true_mm=hc_true, hc_pred_mm=hc_pred, hc_abs_err_mm=values["hc_abs_err_mm"])
    summary = {c: {"mean": float(v.mean()), "std": 0.0, "n": 1, "n_nan": 0} for c, v in values.items()}
    items = {c: {"mean": float(v.mean()), "std": float(v.std()), "n": len(v), "n_nan": 0} for c, v in values.items()}
    (run / "metrics.json").write_text(json.dumps({"n_folds": 1, "n_items": len(dice), "summary": summary,
                                                  "items": items}))
    (run / "timing.json").write_text(json.dumps({"0": 10.0}))
    (run / "fold_0" / "split.json").write_text(json.dumps({"labelled": [0, 1], "unlabelled": [2, 3, 4]}))
    pred.to_csv(run / "predictions.csv", index=False)


def test_table_reports_the_median_signed_hc_error_and_seed_means(tmp_path, hdc_table):
    # supervised over-segments: HC(pred) - HC(true) = +1, +2, +6 (median +2); HDC's seeds -1, 0, +3 and 0, +1, +1
    _finished_run(tmp_path / "hc18-seg_supervised-10pct", [0.90, 0.92, 0.94], [101, 102, 106], [100, 100, 100])
    _finished_run(tmp_path / "hc18-hdc-10pct" / "seed_0", [0.95, 0.96, 0.97], [99, 100, 103], [100, 100, 100])
    _finished_run(tmp_path / "hc18-hdc-10pct" / "seed_1", [0.93, 0.95, 0.97], [100, 101, 101], [100, 100, 100])
    df = hdc_table.collect(tmp_path, "hc18", ["seg_supervised", "hdc"], [0.1])
    sup = df[df["method"] == "seg_supervised"].iloc[0]
    assert sup["hc_signed_err_mm_median"] == pytest.approx(2.0)
    assert sup["hc_abs_err_mm_median"] == pytest.approx(2.0)
    hdc = df[df["method"] == "hdc"].set_index("seed")
    assert hdc.loc[0, "hc_signed_err_mm_median"] == pytest.approx(0.0)
    assert hdc.loc[1, "hc_signed_err_mm_median"] == pytest.approx(1.0)
    text = hdc_table.markdown(df, "hc18", "python benchmarks/hdc_table.py ...", validation=False)
    assert "| method | dice | hc_abs_err_mm | median dice | median hc_abs_err_mm | median hc_signed_err_mm |" in text
    sup_line = next(line for line in text.splitlines() if line.startswith("| Supervised only |"))
    assert sup_line.split(" | ")[-2:] == ["2.00", "10 |"]  # median signed, then train+eval seconds
    mean_line = next(line for line in text.splitlines() if "HDC, mean of 2 seeds" in line)
    assert "95.50 ± 0.71 (over seeds)" in mean_line  # the two seeds' Dice means 96.0 and 95.0, std over seeds


def test_table_without_head_circumference_has_no_hc_columns(tmp_path, hdc_table):
    _finished_run(tmp_path / "busi-seg_supervised-10pct", [0.6, 0.7])
    df = hdc_table.collect(tmp_path, "busi", ["seg_supervised"], [0.1])
    assert "hc_signed_err_mm_median" not in df.columns
    assert "median hc_signed_err_mm" not in hdc_table.markdown(df, "busi", "cmd", validation=False)


def test_paired_rows_give_hdc_minus_each_method_and_say_which_pair_is_not_comparable(tmp_path, hdc_table):
    """HDC (Dice 0.8 per group, hd95 3 px) vs supervised-only (0.6, 5 px): +20 Dice points with an interval above
    0 and -2 px hd95 (BUSI has no HC column); a run on other items is listed as not comparable, with compare's
    reason, not dropped."""
    from tests.test_compare_cli import make_run

    make_run(tmp_path, "busi-seg_supervised-10pct", quality=0.6, segmentation=True, rng_seed=1)
    hdc = make_run(tmp_path, "busi-hdc-10pct", quality=0.8, segmentation=True, rng_seed=2)
    pd.read_csv(hdc / "predictions.csv").assign(hd95=3.0).to_csv(hdc / "predictions.csv", index=False)
    make_run(tmp_path, "busi-fixmatch-10pct", quality=0.7, segmentation=True, n_groups=20)
    make_run(tmp_path, "busi-cps-10pct", quality=0.7, segmentation=True)
    for name in ("seg_supervised", "hdc", "fixmatch"):  # CPS unfinished: no metrics.json, no row
        (tmp_path / f"busi-{name}-10pct" / "metrics.json").write_text("{}")
    lines = hdc_table.paired_lines(tmp_path, "busi", ["seg_supervised", "fixmatch", "cps", "hdc"], 0.1)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"HDC minus", "Supervised only", "FixMatch"}
    sup = rows["Supervised only"].split(" | ")
    assert sup[1] == "0" and sup[3].startswith("-2.00 [-2.00, -2.00]")  # seed 0; hd95 in px, HDC 2 px tighter
    assert "| hd95, px [95 % interval], p |" in next(line for line in lines if line.startswith("| HDC minus"))
    diff, low = float(sup[2].split(" ")[0]), float(sup[2].split("[")[1].split(",")[0])
    assert diff == pytest.approx(20.0, abs=1.0) and low > 0
    assert "not comparable" in rows["FixMatch"] and "items differ" in rows["FixMatch"]
    assert all("\n" not in line for line in lines if line.startswith("| "))  # every row one Markdown line
    assert hdc_table.paired_lines(tmp_path, "busi", ["seg_supervised", "fixmatch"], 0.1) == []  # no HDC: no rows


def test_paired_rows_per_seed_when_the_seeds_scored_other_items(tmp_path, hdc_table):
    """Seeds on their own fold splits (`train.fold_seed` = the seed) test other images: one paired row per seed,
    no seed average (which would pair image k of one split with image k of another)."""
    import shutil

    from tests.test_compare_cli import make_run

    for method, quality in (("seg_supervised", 0.6), ("hdc", 0.8)):
        run = tmp_path / f"busi-{method}-10pct"
        for seed in (0, 1):
            one = make_run(tmp_path / "tmp", f"{method}_{seed}", quality=quality, segmentation=True, seed=seed)
            (run / f"seed_{seed}").mkdir(parents=True)
            for f in ("config.yaml", "manifest.csv", "folds.json", "predictions.csv"):
                shutil.copy(one / f, run / f"seed_{seed}" / f)
            (run / f"seed_{seed}" / "metrics.json").write_text("{}")
        shutil.copy(run / "seed_0" / "config.yaml", run / "config.yaml")
        pred = pd.read_csv(run / "seed_1" / "predictions.csv")
        pred[pred["fold"] != 0].to_csv(run / "seed_1" / "predictions.csv", index=False)
    lines = hdc_table.paired_lines(tmp_path, "busi", ["seg_supervised", "hdc"], 0.1)
    rows = [line.split(" | ") for line in lines if line.startswith("| Supervised only")]
    assert [r[1] for r in rows] == ["0", "1"]
    assert all(float(r[2].split(" ")[0]) == pytest.approx(20.0, abs=1.0) for r in rows)


def test_table_names_every_command_that_trained_its_runs(tmp_path, hdc_table):
    """Runs of one table trained by several invocations (one method each): the table lists all their commands."""
    _finished_run(tmp_path / "busi-seg_supervised-10pct", [0.6, 0.7])
    _finished_run(tmp_path / "busi-hdc-10pct", [0.7, 0.8])
    (tmp_path / "busi-command.txt").write_text("python benchmarks/hdc_table.py --methods seg_supervised\n"
                                               "python benchmarks/hdc_table.py --methods hdc\n")
    assert hdc_table.main(["--data", "busi", "--fractions", "0.1", "--out", str(tmp_path), "--table-only",
                           "--methods", "seg_supervised,hdc"]) == 0
    text = (tmp_path / "busi-table.md").read_text()
    assert ("Command(s): `python benchmarks/hdc_table.py --methods seg_supervised`; "
            "`python benchmarks/hdc_table.py --methods hdc`") in text


def test_a_run_of_fold_0_alone_is_not_finished_for_a_command_that_asks_every_fold(tmp_path, hdc_table):
    """A seed trained on fold 0 alone, asked again with train.fold=null, is resumed for folds 1-4, not kept."""
    run = tmp_path / "busi-hdc-10pct" / "seed_1"
    _finished_run(run, [0.7, 0.8])
    cfg = hdc_table.load_config(hdc_table.packaged_config("seg-busi-cpu"), ["train.fold=null"])
    assert hdc_table.wanted_folds(cfg) == [0, 1, 2, 3, 4]
    assert not hdc_table.covers_folds(run, hdc_table.wanted_folds(cfg))
    assert hdc_table.covers_folds(run, [0])
    pd.DataFrame({"fold": [0, 1, 2, 3, 4], "index": range(5), "dice": 0.5}).to_csv(run / "predictions.csv", index=False)
    assert hdc_table.covers_folds(run, hdc_table.wanted_folds(cfg))
    assert not hdc_table.covers_folds(tmp_path / "busi-hdc-10pct" / "seed_2", [0])  # never run


def test_seeds_run_by_separate_commands_share_the_tables_folds(tmp_path, hdc_table, monkeypatch):
    """`--seeds 1` alone splits with the config's seed (0), as `--seeds 0,1,2` does, unless train.fold_seed is set:
    before, a one-seed command took its own seed as the fold seed and tested other images."""
    from sonodistill.data.manifest import Manifest

    table = pd.DataFrame({"path": [f"img{i}.png" for i in range(20)], "label": ["head"] * 20,
                          "group": [f"s{i // 2}" for i in range(20)]})
    monkeypatch.setattr(hdc_table, "load_manifest", lambda data: Manifest(table, ["head"], "image", "tiny"))
    monkeypatch.setattr(hdc_table, "write_table", lambda *a, **k: None)
    trained: list[tuple[int | None, list[int], int]] = []

    def fake_run_seeds(cfg, seeds, resume=False, manifest=None, **kw):
        trained.append((cfg.train.fold_seed, seeds, len(manifest)))

    monkeypatch.setattr(hdc_table, "run_seeds", fake_run_seeds)
    base = ["--data", "hc18", "--fractions", "0.1", "--methods", "hdc", "--out", str(tmp_path)]
    assert hdc_table.main([*base, "--seeds", "1"]) == 0
    assert hdc_table.main([*base, "--seeds", "0,1,2"]) == 0
    assert hdc_table.main([*base, "--seeds", "1", "--set", "train.fold_seed=1", "--tag", "own"]) == 0
    assert hdc_table.main([*base, "--seeds", "2", "--set", "train.seed=3", "--tag", "s3"]) == 0
    assert [(f, s) for f, s, _ in trained] == [(0, [1]), (0, [0, 1, 2]), (1, [1]), (3, [2])]
    trained.clear()  # --validation: the outer split (the training rows kept) follows the same fold seed
    assert hdc_table.main([*base, "--validation", "--seeds", "1"]) == 0
    assert hdc_table.main([*base, "--validation", "--seeds", "1", "--set", "train.fold_seed=1", "--tag", "own"]) == 0
    assert trained[0][0] == 0 and trained[1][0] == 1 and trained[0][2] == trained[1][2] == 16
    keep = [hdc_table.validation_manifest(Manifest(table, ["head"], "image", "tiny"),
                                          hdc_table.load_config(None, [f"train.fold_seed={f}", "train.folds=5"]))
            for f in (0, 1)]
    assert set(keep[0].table["path"]) != set(keep[1].table["path"])


def test_paired_rows_give_the_hc_error_where_the_predictions_have_one(tmp_path, hdc_table):
    """HC18 predictions carry both hd95 and the HC error: the second paired column is the HC error (mm)."""
    from tests.test_compare_cli import make_run

    for method, hc_err in (("seg_supervised", 4.0), ("hdc", 3.0)):
        run = make_run(tmp_path, f"hc18-{method}-10pct", quality=0.9, segmentation=True)
        pd.read_csv(run / "predictions.csv").assign(hc_abs_err_mm=hc_err).to_csv(run / "predictions.csv", index=False)
        (run / "metrics.json").write_text("{}")
    lines = hdc_table.paired_lines(tmp_path, "hc18", ["seg_supervised", "hdc"], 0.1)
    assert "| HC MAE, mm [95 % interval], p |" in next(line for line in lines if line.startswith("| HDC minus"))
    sup = next(line for line in lines if line.startswith("| Supervised only")).split(" | ")
    assert sup[3].startswith("-1.00 [-1.00, -1.00]")
