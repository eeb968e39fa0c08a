"""--seeds: the same folds trained with several seeds in one run directory, compared seed by seed."""

from __future__ import annotations

import json

import pytest

from sonodistill.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.size=32", "data.num_frames=4", "data.batch_size=4", "data.augment=false", "data.sampling=uniform",
        "model.backbone=resnet10_3d", "model.width=0.125", "model.kwargs={temporal_stride: 1}", "train.epochs=1",
        "train.folds=3", "optim.warmup_epochs=0"]


def _train(tmp_path, csv, name: str, extra: list[str]) -> int:
    argv = ["train", "supervised", "--data", f"csv:{csv}", "--name", name, "--out", str(tmp_path / "runs"),
            "--seeds", "3,5"]
    for o in TINY + [f"data.cache_dir={tmp_path / 'cache'}"] + extra:
        argv += ["--set", o]
    return main(argv)


def test_seeds_share_folds_and_compare_pairs_them(tmp_path, tiny_carotid, capsys):
    csv = tmp_path / "manifest.csv"
    tiny_carotid.to_csv(csv)
    assert _train(tmp_path, csv, "a", []) == 0
    assert _train(tmp_path, csv, "b", ["optim.lr=0.01"]) == 0
    run = tmp_path / "runs" / "a"
    folds = [json.loads((run / f"seed_{s}" / "folds.json").read_text()) for s in (3, 5)]
    assert folds[0] == folds[1]  # same folds (fold_seed = the first seed), different training seeds
    w3 = (run / "seed_3" / "fold_0" / "model.safetensors").read_bytes()
    w5 = (run / "seed_5" / "fold_0" / "model.safetensors").read_bytes()
    assert w3 != w5
    assert (run / "config.yaml").is_file() and "fold_seed: 3" in (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["compare", str(run), str(tmp_path / "runs" / "b"), "--out", str(tmp_path / "cmp")]) == 0
    text = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| accuracy | 3 |" in text and "| accuracy | 5 |" in text and "| accuracy | mean |" in text
    # a second call without --resume refuses to overwrite; with --resume it keeps the finished seeds
    assert _train(tmp_path, csv, "a", []) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_run_seeds_trains_on_the_manifest_it_is_given(tmp_path, tiny_carotid):
    """A benchmark's own manifest (a subset, e.g. BUSI lesions or a validation part) reaches every seed's folds."""
    from sonodistill.config import load_config
    from sonodistill.protocols.folds import run_seeds

    part = tiny_carotid.subset(list(range(12)))
    cfg = load_config(None, [f"out_dir={tmp_path / 'runs'}", "name=part", "data.spec=synthetic:none",
                              f"data.cache_dir={tmp_path / 'cache'}"] + TINY)
    run_seeds(cfg, [0, 1], manifest=part)
    for s in (0, 1):
        predicted = json.loads((tmp_path / "runs" / "part" / f"seed_{s}" / "metrics.json").read_text())["n_items"]
        assert predicted == 12  # the 12 given items, not the data spec's (which does not exist)


def test_a_one_seed_run_is_adopted_as_a_seed_of_a_multi_seed_run(tmp_path, tiny_carotid):
    """A finished one-seed run moved to RUN/seed_<s> is kept by `--seeds ... --resume` (its name and unset fold seed
    do not count as changes), and the new seeds train on its folds."""
    csv = tmp_path / "manifest.csv"
    tiny_carotid.to_csv(csv)
    argv = ["train", "supervised", "--data", f"csv:{csv}", "--name", "one", "--out", str(tmp_path / "runs")]
    for o in TINY + [f"data.cache_dir={tmp_path / 'cache'}", "train.seed=3"]:
        argv += ["--set", o]
    assert main(argv) == 0
    one = tmp_path / "runs" / "one"
    weights = (one / "fold_0" / "model.safetensors").read_bytes()
    (tmp_path / "runs" / "multi").mkdir()
    one.rename(tmp_path / "runs" / "multi" / "seed_3")
    assert _train(tmp_path, csv, "multi", []) == 2  # without --resume: refused, the adopted seed is a run
    argv = ["train", "supervised", "--data", f"csv:{csv}", "--name", "multi", "--out", str(tmp_path / "runs"),
            "--seeds", "3,5", "--resume"]
    for o in TINY + [f"data.cache_dir={tmp_path / 'cache'}"]:
        argv += ["--set", o]
    assert main(argv) == 0
    run = tmp_path / "runs" / "multi"
    assert (run / "seed_3" / "fold_0" / "model.safetensors").read_bytes() == weights  # not retrained
    folds = [json.loads((run / f"seed_{s}" / "folds.json").read_text()) for s in (3, 5)]
    assert folds[0] == folds[1]
    assert (run / "seed_5" / "metrics.json").is_file()
