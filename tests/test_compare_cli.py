"""`sonodistill compare`: constructed run directories with known answers, refusals, seeds, and a tiny real pair."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import SonoDistillError

CLASSES = ["a", "b", "c"]


def sonodistill(*argv: str) -> int:
    """Run `sonodistill ARGV` the way cli.main does (errors printed, exit 2), with the compare/score commands."""
    from sonodistill.commands import compare, score

    parser = argparse.ArgumentParser(prog="sonodistill")
    sub = parser.add_subparsers()
    compare.register(sub)
    score.register(sub)
    args = parser.parse_args([str(a) for a in argv])
    try:
        return int(args.func(args) or 0)
    except SonoDistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def make_run(root: Path, name: str, quality: np.ndarray | float = 0.5, n_groups: int = 24, per_group: int = 3,
             folds: int = 3, seed: int = 0, segmentation: bool = False, rng_seed: int = 0,
             y: np.ndarray | None = None) -> Path:
    """A finished run directory: config.yaml, manifest.csv, folds.json, predictions.csv.

    quality: per group, the share of its items predicted right (classification) or its Dice (segmentation); y: the
    items' class indices (default random)."""
    cfg = RunConfig(name=name, out_dir=str(root), recipe="hdc" if segmentation else "supervised")
    cfg.train.seed, cfg.train.folds = seed, folds
    run = cfg.run_dir
    cfg.save(run / "config.yaml")
    rng = np.random.default_rng(rng_seed)
    n = n_groups * per_group
    groups = np.repeat([f"p{g:03d}" for g in range(n_groups)], per_group)
    y = np.random.default_rng(99).integers(0, 3, n) if y is None else np.asarray(y)
    table = pd.DataFrame({"path": [f"/data/set/item{i:03d}.png" for i in range(n)], "group": groups})
    if segmentation:
        table["mask"] = [f"/data/set/mask{i:03d}.png" for i in range(n)]
        manifest = Manifest(table, [], "image", name)
    else:
        table["label"] = [CLASSES[k] for k in y]
        manifest = Manifest(table, CLASSES, "image", name)
    manifest.to_csv(run / "manifest.csv")
    fold_of = np.arange(n) // per_group % folds
    rows = np.arange(n)
    (run / "folds.json").write_text(json.dumps([
        {"fold": k, "train": rows[fold_of != k].tolist(), "test": rows[fold_of == k].tolist(),
         "test_groups": sorted(set(groups[fold_of == k]))} for k in range(folds)]))
    q = np.broadcast_to(np.asarray(quality, dtype=float), (n_groups,))
    pred = pd.DataFrame({"fold": fold_of, "index": rows, "path": table["path"], "group": groups})
    if segmentation:
        pred["dice"] = np.repeat(q, per_group) + rng.normal(0, 0.01, n)
        pred["iou"] = pred["dice"] / (2 - pred["dice"])
        pred["hd95"] = 5.0
        pred["asd"] = 1.0
    else:
        right = np.concatenate([np.arange(per_group) < round(qg * per_group) for qg in q])
        guess = np.where(right, y, (y + 1) % 3)
        probs = np.full((n, 3), 0.15)
        probs[rows, guess] = 0.7
        pred["y_true"] = y
        for k, c in enumerate(CLASSES):
            pred[f"prob_{c}"] = probs[:, k]
    pred.sort_values(["fold", "index"]).to_csv(run / "predictions.csv", index=False)
    return run


def _read(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "comparison.csv")


def test_identical_runs_difference_zero_p_one(tmp_path, capsys):
    a = make_run(tmp_path, "base")
    b = shutil.copytree(a, tmp_path / "copy")
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--resamples", 300, "--permutations", 200) == 0
    table = _read(out)
    assert list(table["metric"]) == ["accuracy", "balanced_accuracy", "f1", "roc_auc"]
    assert (table["difference"] == 0).all() and (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()
    assert (table["p_value"] == 1.0).all()
    assert (table["n_items"] == 72).all() and (table["n_groups"] == 24).all()
    assert (out / "comparison.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert printed.startswith("# Paired comparison with base (baseline)") and "## copy − base" in printed
    assert (out / "comparison.md").read_text() in printed


def test_better_run_interval_excludes_zero_and_p_small(tmp_path):
    a = make_run(tmp_path, "base", quality=1 / 3)
    b = make_run(tmp_path, "better", quality=1.0)
    worse = make_run(tmp_path, "worse", quality=0.0)
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, worse, "--out", out, "--resamples", 500, "--permutations", 500) == 0
    table = _read(out).set_index(["run", "metric"])
    acc = table.loc[("better", "accuracy")]
    assert acc["baseline"] == pytest.approx(1 / 3) and acc["other"] == 1.0
    assert acc["difference"] == pytest.approx(2 / 3) and acc["ci_low"] > 0.5 and acc["p_value"] < 0.01
    for metric in ("accuracy", "balanced_accuracy", "f1", "roc_auc"):
        assert table.loc[("better", metric), "ci_low"] > 0, metric
        assert table.loc[("worse", metric), "ci_high"] < 0, metric
        assert table.loc[("worse", metric), "p_value"] < 0.01, metric


def test_runs_with_the_same_folder_name_get_names_that_tell_them_apart(tmp_path, capsys):
    """Seed folders of three runs (all `seed_0`) and one folder given twice: the rows, the Markdown and the plot are
    keyed by names long enough to differ (three `seed_0` runs crashed the plot before)."""
    a = make_run(tmp_path / "a", "seed_0", quality=0.5)
    b = make_run(tmp_path / "b", "seed_0", quality=1.0)
    c = make_run(tmp_path / "c", "seed_0", quality=0.0)
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, c, a, "--out", out, "--resamples", 200, "--permutations", 100) == 0
    table = _read(out)
    assert sorted(set(table["run"])) == ["a/seed_0 (2)", "b/seed_0", "c/seed_0"]
    acc = table.set_index(["run", "metric"])["difference"]
    assert acc[("b/seed_0", "accuracy")] > 0 > acc[("c/seed_0", "accuracy")] and acc[("a/seed_0 (2)", "accuracy")] == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Paired comparison with a/seed_0 (baseline)")
    assert "## b/seed_0 − a/seed_0" in printed and "## c/seed_0 − a/seed_0" in printed
    assert (out / "comparison.png").stat().st_size > 1000
    assert sonodistill("compare", a, b, "--resamples", 50, "--permutations", 20) == 0   # the default --out folder
    assert (a.parent / "compare-a-seed_0-vs-b-seed_0" / "comparison.md").is_file()


def test_models_of_one_run_are_compared_as_run_colon_model(tmp_path):
    """A predictions.csv with a `model` column (medivlad's aggregators): RUN:MODEL selects one model; the bare run
    and an unknown model are errors that list the models."""
    good = pd.read_csv(make_run(tmp_path, "good", quality=1.0) / "predictions.csv").assign(model="dual_vlad")
    run = make_run(tmp_path, "aggregators", quality=1 / 3)
    poor = pd.read_csv(run / "predictions.csv").assign(model="mean")
    pd.concat([poor, good]).to_csv(run / "predictions.csv", index=False)
    out = tmp_path / "cmp"
    assert sonodistill("compare", f"{run}:mean", f"{run}:dual_vlad", "--out", out, "--resamples", 300,
                       "--permutations", 200) == 0
    acc = _read(out).set_index("metric").loc["accuracy"]
    assert acc["run"] == "aggregators:dual_vlad" and acc["baseline"] == pytest.approx(1 / 3)
    assert acc["difference"] == pytest.approx(2 / 3) and acc["ci_low"] > 0
    assert "## aggregators:dual_vlad − aggregators:mean" in (out / "comparison.md").read_text()
    from sonodistill.commands.compare import read_run

    with pytest.raises(SonoDistillError, match=r"holds 2 models \['dual_vlad', 'mean'\]: compare one of them as "
                                               r"RUN:MODEL"):
        read_run(run)
    with pytest.raises(SonoDistillError, match=r"no model 'max'; it holds \['dual_vlad', 'mean'\]"):
        read_run(f"{run}:max")
    with pytest.raises(SonoDistillError, match="no `model` or `variant` column"):
        read_run(f"{tmp_path / 'good'}:mean")


def test_annotation_variants_of_a_sequence_run_are_compared_on_macro_f1(tmp_path):
    """A DILBERT run: predictions of baseline / teacher / student in a `variant` column with y_<finding> /
    p_<finding> columns, indexing the sequences of sequences.csv (manifest.csv lists frames). compare scores macro
    F1 / sensitivity / precision of the findings at 0.5, as the run's report does."""
    from sonodistill.data.sequences import AnnotationSpec
    from sonodistill.evaluation.annotation import annotation_metrics

    run = make_run(tmp_path, "dilbert")
    shutil.copy(run / "manifest.csv", run / "sequences.csv")  # 72 sequences of 24 patients
    frames = Manifest.from_csv(run / "manifest.csv").table
    frames = pd.concat([frames.assign(group="one", path=frames["path"] + ".2"), frames],
                       ignore_index=True)  # 144 frames; read as the sequences, they would all be one patient
    Manifest(frames, CLASSES, "image", "dilbert").to_csv(run / "manifest.csv")
    base = pd.read_csv(run / "predictions.csv")[["fold", "index", "path", "group"]]
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 2, (len(base), 2)).astype(float)
    tables = {}
    for variant, noise in (("baseline", 0.6), ("student", 0.2)):  # the student is mostly right
        t = base.assign(variant=variant)
        for j, col in enumerate(("a_lines", "b_lines")):
            t[f"y_{col}"] = truth[:, j]
            t[f"p_{col}"] = np.clip(truth[:, j] + rng.normal(0, noise, len(t)), 0, 1)
        tables[variant] = t
    pd.concat(tables.values()).to_csv(run / "predictions.csv", index=False)
    out = tmp_path / "cmp"
    assert sonodistill("compare", f"{run}:baseline", f"{run}:student", "--out", out, "--resamples", 300,
                       "--permutations", 200) == 0
    table = _read(out).set_index("metric")
    assert list(table.index) == ["f1", "sensitivity", "precision"]
    assert (table["n_groups"] == 24).all() and (table["n_items"] == 72).all()
    spec = AnnotationSpec("lung", ["A-lines", "B-lines"], ["a_lines", "b_lines"])
    f1 = {v: annotation_metrics(t, spec, 0.5)["macro"]["f1"] for v, t in tables.items()}
    assert table.loc["f1", "baseline"] == pytest.approx(f1["baseline"])
    assert table.loc["f1", "difference"] == pytest.approx(f1["student"] - f1["baseline"]) and f1["student"] > f1["baseline"]
    assert table.loc["f1", "ci_low"] > 0
    assert sonodistill("compare", f"{run}:baseline", f"{run}:student", "--metrics", "accuracy", "--out", out) == 2


def test_anomaly_runs_are_compared_on_the_anomaly_class(tmp_path):
    """Two DISCOVR-like runs (predictions.csv with is_anomalous / anomaly_called / anomaly_score, as the discovr
    protocol writes): compare scores F1, AUROC, ... of the anomaly class; a run with another normal class is refused."""
    from sonodistill.evaluation.anomaly import anomaly_metrics

    runs, tables = {}, {}
    rng = np.random.default_rng(3)
    for name, noise in (("video_only", 1.5), ("full", 0.3)):
        run = make_run(tmp_path, name)
        t = pd.read_csv(run / "predictions.csv")[["fold", "index", "group", "y_true"]]
        t["is_anomalous"] = (t["y_true"] != 0).astype(int)
        t["anomaly_score"] = t["is_anomalous"] + rng.normal(0, noise, len(t))
        t["anomaly_called"] = (t["anomaly_score"] >= 0.5).astype(int)
        t.to_csv(run / "predictions.csv", index=False)
        runs[name], tables[name] = run, t
    out = tmp_path / "cmp"
    assert sonodistill("compare", runs["video_only"], runs["full"], "--out", out, "--resamples", 300,
                       "--permutations", 200) == 0
    table = _read(out).set_index("metric")
    assert list(table.index) == ["f1", "auroc", "balanced_accuracy", "precision", "recall"]
    ref = {k: anomaly_metrics(t["anomaly_score"], t["is_anomalous"].astype(bool), 0.5) for k, t in tables.items()}
    assert table.loc["f1", "baseline"] == pytest.approx(ref["video_only"]["f1"])
    assert table.loc["auroc", "difference"] == pytest.approx(ref["full"]["auroc"] - ref["video_only"]["auroc"])
    assert table.loc["auroc", "ci_low"] > 0
    other = tables["full"].assign(is_anomalous=(tables["full"]["y_true"] != 1).astype(int))
    other.to_csv(runs["full"] / "predictions.csv", index=False)
    assert sonodistill("compare", runs["video_only"], runs["full"], "--out", out) == 2


def test_segmentation_runs_compare_dice_and_iou(tmp_path):
    a = make_run(tmp_path, "seg_a", quality=0.7, segmentation=True, rng_seed=1)
    b = make_run(tmp_path, "seg_b", quality=0.8, segmentation=True, rng_seed=2)
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--resamples", 300, "--permutations", 300) == 0
    table = _read(out).set_index("metric")
    assert list(table.index) == ["dice", "iou"]  # no hc_abs_err_mm column in these runs
    assert table.loc["dice", "difference"] == pytest.approx(0.1, abs=0.01)
    assert table.loc["dice", "ci_low"] > 0.08 and table.loc["dice", "p_value"] < 0.01


@pytest.mark.parametrize("change, message", [
    ("folds", "folds differ: fold 0 test rows differ"),
    ("paths", "items (manifest paths) differ: 1 row(s) differ, first row 5"),
    ("labels", "targets ('label') differ"),
    ("classes", "classes differ"),
    ("groups", "groups differ"),
    ("one_fold", "predicted items differ"),
])
def test_runs_on_other_items_or_folds_are_refused_naming_the_difference(tmp_path, capsys, change, message):
    a = make_run(tmp_path, "base")
    b = shutil.copytree(a, tmp_path / "other")
    if change == "folds":
        folds = json.loads((b / "folds.json").read_text())
        folds[0]["test"], folds[1]["test"] = folds[0]["test"][1:], folds[1]["test"] + folds[0]["test"][:1]
        (b / "folds.json").write_text(json.dumps(folds))
    elif change == "one_fold":
        pred = pd.read_csv(b / "predictions.csv")
        pred[pred["fold"] == 0].to_csv(b / "predictions.csv", index=False)
    else:
        m = Manifest.from_csv(b / "manifest.csv")
        t = m.table.copy()
        if change == "paths":
            t.loc[5, "path"] = "/data/set/elsewhere.png"
        elif change == "labels":
            t.loc[0, "label"] = "c" if t.loc[0, "label"] != "c" else "a"
        elif change == "groups":
            t.loc[3, "group"] = "p999"
        classes = ["a", "b", "c", "d"] if change == "classes" else m.classes
        Manifest(t, classes, m.modality, m.name).to_csv(b / "manifest.csv")
    assert sonodistill("compare", a, b, "--out", tmp_path / "cmp") == 2
    err = capsys.readouterr().err
    assert f"cannot compare {b} with {a}" in err and message in err
    assert not (tmp_path / "cmp").exists()


def test_folds_option_compares_a_one_fold_run_with_that_fold_of_a_cross_validated_run(tmp_path, capsys):
    """--folds 0: a run trained on fold 0 only is paired with fold 0 of a 3-fold run; other folds are dropped."""
    quality = np.tile([1 / 3, 1.0, 0.0], 8)  # group g sits in fold g % 3: fold 0 right 1/3, fold 1 all, fold 2 none
    a = make_run(tmp_path, "base", quality=quality)
    b = make_run(tmp_path, "one_fold", quality=1.0)
    pred = pd.read_csv(b / "predictions.csv")
    pred[pred["fold"] == 0].to_csv(b / "predictions.csv", index=False)
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--folds", "0", "--metrics", "accuracy",
                       "--resamples", 200, "--permutations", 200) == 0
    row = _read(out).iloc[0]
    assert row["n_items"] == 24 and row["n_groups"] == 8  # fold 0 only: 8 groups x 3 items
    assert row["baseline"] == pytest.approx(1 / 3) and row["other"] == 1.0
    assert row["difference"] == pytest.approx(2 / 3)
    assert "in 1 fold (0)" in (out / "comparison.md").read_text()
    capsys.readouterr()
    assert sonodistill("compare", a, b, "--out", tmp_path / "cmp1", "--folds", "0,1") == 2
    err = capsys.readouterr().err
    assert "has no predictions on fold 1" in err and "one_fold" in err
    assert sonodistill("compare", a, b, "--out", tmp_path / "cmp2", "--folds", "7") == 2
    assert "has no fold 7" in capsys.readouterr().err
    assert sonodistill("compare", a, b, "--out", tmp_path / "cmp3", "--folds", "zero") == 2
    assert "comma-separated fold numbers" in capsys.readouterr().err
    assert not any((tmp_path / f"cmp{k}").exists() for k in (1, 2, 3))


def test_exclude_items_leaves_the_listed_items_out_of_every_run(tmp_path, capsys):
    """--exclude-items FILE: the items it lists (e.g. those a validation split chose a setting on) are dropped from
    both runs before pairing; a plain list and a CSV with a path column give the same table."""
    a = make_run(tmp_path, "base", quality=1 / 3)
    b = make_run(tmp_path, "other", quality=np.tile([1.0, 0.0, 0.0], 8))  # group g in fold g % 3: fold 0 all right
    pred = pd.read_csv(b / "predictions.csv")
    seen = pred[pred["fold"] != 0]
    listed = tmp_path / "seen.txt"
    listed.write_text("# items of folds 1-2\n" + "\n".join(seen["path"]) + "\n/data/elsewhere/x.png\n\n")
    seen.to_csv(tmp_path / "seen.csv", index=False)
    seen.to_csv(tmp_path / "excel.csv", index=False, sep=";", encoding="utf-8-sig")  # Excel's ';' with a BOM
    for k, file in enumerate((listed, tmp_path / "seen.csv", tmp_path / "excel.csv")):
        out = tmp_path / f"cmp{k}"
        assert sonodistill("compare", a, b, "--out", out, "--exclude-items", file, "--metrics", "accuracy",
                           "--resamples", 200, "--permutations", 200) == 0
        row = _read(out).iloc[0]
        assert row["n_items"] == 24 and row["n_groups"] == 8
        assert row["baseline"] == pytest.approx(1 / 3) and row["other"] == 1.0
        assert f"Items excluded: those listed in `{file}`" in (out / "comparison.md").read_text()
    capsys.readouterr()
    (tmp_path / "elsewhere.txt").write_text("/other/root/item000.png\n")
    assert sonodistill("compare", a, b, "--out", tmp_path / "bad1", "--exclude-items", tmp_path / "elsewhere.txt") == 2
    assert "none of the 1 listed paths is a scored item" in capsys.readouterr().err
    pred.to_csv(tmp_path / "all.csv", index=False)
    assert sonodistill("compare", a, b, "--out", tmp_path / "bad2", "--exclude-items", tmp_path / "all.csv") == 2
    assert "leaves no scored item" in capsys.readouterr().err
    assert sonodistill("compare", a, b, "--out", tmp_path / "bad3", "--exclude-items", tmp_path / "no.txt") == 2
    assert "--exclude-items: file not found" in capsys.readouterr().err
    (tmp_path / "latin.txt").write_bytes("/data/caf\xe9/x.png\n".encode("cp1252"))
    assert sonodistill("compare", a, b, "--out", tmp_path / "bad4", "--exclude-items", tmp_path / "latin.txt") == 2
    assert "latin.txt is not UTF-8 text" in capsys.readouterr().err
    assert not any((tmp_path / f"bad{k}").exists() for k in (1, 2, 3, 4))


def test_same_data_under_another_root_is_comparable(tmp_path):
    a = make_run(tmp_path, "base")
    b = shutil.copytree(a, tmp_path / "moved")
    m = Manifest.from_csv(b / "manifest.csv")
    t = m.table.assign(path=[p.replace("/data/set", "/mnt/copy/of/set") for p in m.table["path"]])
    Manifest(t, m.classes, m.modality, m.name).to_csv(b / "manifest.csv")
    assert sonodistill("compare", a, b, "--out", tmp_path / "cmp", "--resamples", 50, "--permutations", 50) == 0


def test_seed_folders_give_per_seed_rows_and_a_mean(tmp_path):
    def seeded(name: str, qualities: list[float]) -> Path:
        run = tmp_path / name
        for s, q in enumerate(qualities):
            one = make_run(tmp_path / "tmp", f"{name}_{s}", quality=q, seed=s)
            if s == 0:
                run.mkdir()
                for f in ("config.yaml", "manifest.csv", "folds.json"):
                    shutil.copy(one / f, run / f)
            (run / f"seed_{s}").mkdir()
            shutil.copy(one / "predictions.csv", run / f"seed_{s}" / "predictions.csv")
        return run

    a, b = seeded("a", [1 / 3, 1 / 3]), seeded("b", [2 / 3, 1.0])
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--metrics", "accuracy", "--resamples", 200,
                       "--permutations", 200) == 0
    table = _read(out).set_index("seed")
    assert list(table.index.astype(str)) == ["0", "1", "mean"]
    assert table.loc["0", "difference"] == pytest.approx(1 / 3)
    assert table.loc["1", "difference"] == pytest.approx(2 / 3)
    assert table.loc["mean", "difference"] == pytest.approx(0.5) and table.loc["mean", "n_seeds"] == 2
    assert "Seed 'mean'" in (out / "comparison.md").read_text()
    c = seeded("c", [0.5, 0.5, 0.5])
    with pytest.raises(SonoDistillError, match=r"seeds differ: \[0, 1, 2\] vs \[0, 1\]"):
        from sonodistill.commands.compare import compare_runs

        compare_runs([a, c])

    # seeds trained on other fold splits score other items: per-seed rows only, never row k of one seed paired
    # with row k of another (seed 1 here predicted only the items of its folds 1 and 2)
    for run in (a, b):
        pred = pd.read_csv(run / "seed_1" / "predictions.csv")
        pred[pred["fold"] != 0].to_csv(run / "seed_1" / "predictions.csv", index=False)
    out = tmp_path / "cmp-other-items"
    assert sonodistill("compare", a, b, "--out", out, "--metrics", "accuracy", "--resamples", 50,
                       "--permutations", 50) == 0
    assert list(_read(out)["seed"].astype(str)) == ["0", "1"]
    assert "no seed-averaged row" in (out / "comparison.md").read_text()


def test_bad_arguments_are_errors(tmp_path, capsys):
    a = make_run(tmp_path, "base")
    assert sonodistill("compare", a) == 2
    assert "at least two run directories" in capsys.readouterr().err
    assert sonodistill("compare", a, tmp_path / "nothing") == 2
    assert "config.yaml is missing" in capsys.readouterr().err
    assert sonodistill("compare", a, a, "--metrics", "dice") == 2
    assert "unknown classification metric" in capsys.readouterr().err
    seg = make_run(tmp_path, "seg", segmentation=True)
    assert sonodistill("compare", a, seg) == 2
    assert "tasks differ" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- a real pair
@pytest.fixture(scope="module")
def real_pair(tmp_path_factory) -> tuple[Path, Path]:
    """supervised and dualdistill trained for 1 epoch on the same 2 folds of a tiny synthetic carotid set."""
    from sonodistill.config import load_config
    from sonodistill.data.synthetic import write_dataset
    from sonodistill.protocols.folds import run_protocol

    root = tmp_path_factory.mktemp("real-pair")
    manifest = Manifest.from_csv(write_dataset("carotid", root / "data", n=12, seed=3, frames=4, size=32, workers=1))
    runs = []
    for recipe in ("supervised", "dualdistill"):
        cfg = load_config(None, [
            f"recipe={recipe}", f"name={recipe}", f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}",
            "data.size=32", "data.num_frames=4", "data.batch_size=4", "data.augment=false", "data.sampling=uniform",
            "model.backbone=resnet10_3d", "model.width=0.125", "model.kwargs={temporal_stride: 1}",
            "train.epochs=1", "train.folds=2", "optim.warmup_epochs=0"])
        run_protocol(cfg, manifest=manifest, enable_progress_bar=False)
        runs.append(cfg.run_dir)
    return runs[0], runs[1]


def test_real_run_pair(real_pair, tmp_path, capsys):
    sup, dd = real_pair
    out = tmp_path / "cmp"
    assert sonodistill("compare", sup, dd, "--out", out, "--resamples", 200, "--permutations", 200) == 0
    table = _read(out)
    assert len(table) == 4 and (table["n_items"] == 12).all()
    assert ((table["ci_low"] <= table["difference"]) & (table["difference"] <= table["ci_high"])).all()
    assert table["p_value"].between(0, 1).all()
    # the pooled values are the metrics of the runs' own predictions
    from sonodistill.evaluation.metrics import classification_metrics

    pred = pd.read_csv(sup / "predictions.csv").sort_values(["fold", "index"])
    classes = Manifest.from_csv(sup / "manifest.csv").classes
    ref = classification_metrics(pred["y_true"].to_numpy(), pred[[f"prob_{c}" for c in classes]].to_numpy(), classes)
    assert table.set_index("metric").loc["f1", "baseline"] == pytest.approx(ref["f1"])
    assert "## dualdistill − supervised" in capsys.readouterr().out


def test_merge_rescores_both_runs_with_merged_classes(tmp_path):
    """--merge a=a --merge bc=b,c: a run always predicting the next class is right exactly on the true-b items
    (b -> c is inside bc), so its merged accuracy is the share of b; the refusal names a segmentation run."""
    wrong = make_run(tmp_path, "wrong", quality=0.0)
    right = make_run(tmp_path, "right", quality=1.0)
    out = tmp_path / "cmp"
    assert sonodistill("compare", wrong, right, "--out", out, "--merge", "a=a", "--merge", "bc=b,c",
                       "--resamples", 200, "--permutations", 200) == 0
    table = _read(out).set_index("metric")
    y = pd.read_csv(wrong / "predictions.csv")["y_true"].to_numpy()
    assert table.loc["accuracy", "baseline"] == pytest.approx(float(np.mean(y == 1)))
    assert table.loc["accuracy", "other"] == 1.0
    assert "Classes merged: {'a': ['a'], 'bc': ['b', 'c']}" in (out / "comparison.md").read_text()
    seg = make_run(tmp_path, "seg", segmentation=True)
    assert sonodistill("compare", seg, seg, "--merge", "x=a,b,c", "--out", tmp_path / "c2") == 2


def test_merge_must_use_every_class_once(tmp_path, capsys):
    a = make_run(tmp_path, "base")
    assert sonodistill("compare", a, a, "--merge", "ab=a,b", "--out", tmp_path / "c") == 2
    assert "must use each class of ['a', 'b', 'c'] exactly once" in capsys.readouterr().err


def test_by_column_compares_within_each_subgroup(tmp_path, capsys):
    """--by label: the rows on all items equal those without --by; each class's rows score only that class's items
    (accuracy there = the share of them predicted right, by hand), with their own item and group counts."""
    a = make_run(tmp_path, "base", quality=1 / 3)
    b = make_run(tmp_path, "other", quality=np.tile([1.0, 0.0, 0.0], 8))
    plain, by = tmp_path / "plain", tmp_path / "by"
    common = ("--metrics", "accuracy,f1", "--resamples", 200, "--permutations", 200)
    assert sonodistill("compare", a, b, "--out", plain, *common) == 0
    assert sonodistill("compare", a, b, "--out", by, "--by", "label", *common) == 0
    table, whole = _read(by), _read(plain)
    assert list(dict.fromkeys(table["subgroup"])) == ["all items", "a", "b", "c"]
    everything = table[table["subgroup"] == "all items"].drop(columns="subgroup").reset_index(drop=True)
    pd.testing.assert_frame_equal(everything, whole)
    manifest = pd.read_csv(a / "manifest.csv", comment="#")
    for name, run in (("baseline", a), ("other", b)):
        pred = pd.read_csv(run / "predictions.csv")
        label = manifest["label"].to_numpy()[pred["index"]]
        right = pred[[f"prob_{c}" for c in CLASSES]].to_numpy().argmax(axis=1) == pred["y_true"]
        for k, c in enumerate(CLASSES):
            row = table[(table["subgroup"] == c) & (table["metric"] == "accuracy")].iloc[0]
            assert row[name] == pytest.approx(right[label == c].mean())
            assert row["n_items"] == (label == c).sum()
            assert row["n_groups"] == len(set(pred["group"][label == c]))
    text = (by / "comparison.md").read_text()
    assert "| label (items) | metric | seed |" in text and "Subgroups by the manifest's `label`" in text
    assert f"| a ({(manifest['label'] == 'a').sum()}) | accuracy | 0 |" in text
    capsys.readouterr()
    assert sonodistill("compare", a, b, "--out", tmp_path / "bad1", "--by", "site") == 2
    assert "no 'site' column; they have ['path', 'group', 'label']" in capsys.readouterr().err
    assert sonodistill("compare", a, b, "--out", tmp_path / "bad2", "--by", "group") == 2
    assert "24 different values over the scored items (at most 12)" in capsys.readouterr().err
    assert not any((tmp_path / f"bad{k}").exists() for k in (1, 2))


def test_calibration_metrics_compare_like_the_others(tmp_path):
    """--metrics brier,ece: every item at 0.7 / 0.15 / 0.15, a run right on all of them against one right on a
    third. Brier by hand: right 0.3^2 + 2 x 0.15^2 = 0.135, wrong 0.85^2 + 0.7^2 + 0.15^2 = 1.235; ECE (one bin):
    |1 - 0.7| = 0.3 vs |1/3 - 0.7| = |1 - 3 x 0.7| / 3."""
    a = make_run(tmp_path, "base", quality=1 / 3)
    b = make_run(tmp_path, "better", quality=1.0)
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--metrics", "brier,ece", "--resamples", 200,
                       "--permutations", 200) == 0
    table = _read(out).set_index("metric")
    assert table.loc["brier", "other"] == pytest.approx(0.135)
    assert table.loc["brier", "baseline"] == pytest.approx((0.135 + 2 * 1.235) / 3)
    assert table.loc["brier", "ci_high"] < 0 and table.loc["ece", "difference"] < 0
    assert table.loc["ece", "other"] == pytest.approx(0.3)
    assert table.loc["ece", "baseline"] == pytest.approx(abs(1 - 3 * 0.7) / 3)


def test_per_group_compares_patients_with_averaged_probabilities(tmp_path, capsys):
    """A per-patient label: each run scored a row a group, its items' probabilities averaged. Base: 1 of 3 items
    right in every group (each group's mean favours a wrong class), other: 2 of 3 (every group right); per item
    1/3 vs 2/3, per group 0 vs 1, over 8 groups."""
    y = np.repeat(np.arange(8) % 3, 3)
    a = make_run(tmp_path, "base", quality=1 / 3, n_groups=8, folds=2, y=y)
    b = make_run(tmp_path, "better", quality=2 / 3, n_groups=8, folds=2, y=y)
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--metrics", "accuracy", "--resamples", 200,
                       "--permutations", 200, "--per-group") == 0
    row = _read(out).iloc[0]
    assert row["baseline"] == 0.0 and row["other"] == 1.0 and row["difference"] == 1.0
    assert row["n_items"] == 8 and row["n_groups"] == 8
    assert "Scored per group (--per-group)" in (out / "comparison.md").read_text()
    assert sonodistill("compare", a, b, "--out", tmp_path / "items", "--metrics", "accuracy", "--resamples", 50,
                       "--permutations", 50) == 0
    assert _read(tmp_path / "items").iloc[0]["difference"] == pytest.approx(1 / 3)

    capsys.readouterr()
    assert sonodistill("compare", a, b, "--per-group", "--by", "label") == 2
    assert "--per-group and --by" in capsys.readouterr().err
    mixed = make_run(tmp_path, "mixed", n_groups=8, folds=2)  # random labels: a group's items disagree
    other = make_run(tmp_path, "other", n_groups=8, folds=2, rng_seed=1)
    assert sonodistill("compare", mixed, other, "--per-group") == 2
    err = capsys.readouterr().err
    assert "--per-group:" in err and "predictions.csv" in err and "has items with different labels" in err
    seg_a = make_run(tmp_path, "seg_a", segmentation=True)
    seg_b = make_run(tmp_path, "seg_b", segmentation=True, rng_seed=1)
    assert sonodistill("compare", seg_a, seg_b, "--per-group") == 2
    assert "is a segmentation run" in capsys.readouterr().err
