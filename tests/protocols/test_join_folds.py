"""`sonodistill eval DEST --join RUN...`: folds trained by separate jobs joined into one run equal the run trained in
one process, nothing is trained, and runs that do not belong together are refused naming the cause."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from sonodistill.cli import main
from sonodistill.errors import ConfigError, SonoDistillError
from sonodistill.protocols.folds import run_protocol, run_seeds
from sonodistill.protocols.join import join_fold_runs
from sonodistill.provenance import source_digest
from sonodistill.recipes.data import load_manifest
from tests.tiny_demo import demo_config

KEEP = 15  # the runs train on a subset of the data spec's 18 clips: the join must use the runs' own manifest


def _subset(cfg):
    return load_manifest(cfg.data).subset(np.arange(KEEP))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """RUN whole (3 folds in one process) and RUN f0 / f1 / f2 (one fold each), on the same 15 clips."""
    root = tmp_path_factory.mktemp("join")
    whole = demo_config(root, "whole")
    run_protocol(whole, manifest=_subset(whole), enable_progress_bar=False)
    for k in range(3):
        cfg = demo_config(root, f"f{k}", f"train.fold={k}")
        run_protocol(cfg, manifest=_subset(cfg), enable_progress_bar=False)
    return root


def _no_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the join trained a fold")

    monkeypatch.setattr("sonodistill.protocols.folds.fit_and_save", refuse)


def test_joined_folds_equal_the_run_trained_in_one_process(runs, tmp_path, monkeypatch, capsys) -> None:
    _no_training(monkeypatch)
    dest = tmp_path / "joined"
    assert main(["eval", str(dest), "--join", *(str(runs / f"f{k}") for k in range(3))]) == 0
    assert "joined run directory" in capsys.readouterr().out
    whole = runs / "whole"
    pd.testing.assert_frame_equal(pd.read_csv(dest / "predictions.csv"), pd.read_csv(whole / "predictions.csv"))
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, dest))
    assert {k: v for k, v in a.items() if k != "title"} == {k: v for k, v in b.items() if k != "title"}
    assert a["n_items"] == KEEP
    assert (dest / "manifest.csv").read_bytes() == (whole / "manifest.csv").read_bytes()  # the runs' 15 clips
    assert sorted(json.loads((dest / "timing.json").read_text())) == ["0", "1", "2"]
    for k in range(3):  # the same seeds on one thread: the fold trained alone is the fold trained in the loop
        assert (dest / f"fold_{k}" / "model.safetensors").read_bytes() == \
            (whole / f"fold_{k}" / "model.safetensors").read_bytes()
    assert (dest / "report.md").is_file()
    for k in range(3):  # each fold carries the record of the software that trained it
        env = json.loads((dest / f"fold_{k}" / "environment.json").read_text())
        assert env["source_sha256"] == source_digest() and env["seconds"] > 0


def test_a_partial_join_reports_its_folds_and_can_be_completed(runs, tmp_path, monkeypatch) -> None:
    _no_training(monkeypatch)
    dest = tmp_path / "part"
    join_fold_runs(dest, [runs / "f2"])
    assert set(pd.read_csv(dest / "predictions.csv")["fold"]) == {2}
    assert not (dest / "fold_0").exists()
    join_fold_runs(dest, [runs / "f0"])  # into the existing run: its fold 2 kept, fold 0 added
    assert set(pd.read_csv(dest / "predictions.csv")["fold"]) == {0, 2}
    assert sorted(json.loads((dest / "timing.json").read_text())) == ["0", "2"]
    monkeypatch.undo()  # `train --resume` of the joined run trains the missing fold 1 alone
    cfg = demo_config(tmp_path, "part", f"data.cache_dir={runs / 'cache'}")  # the runs' synthetic clips
    run_protocol(cfg, resume=True, manifest=_subset(cfg), enable_progress_bar=False)
    pd.testing.assert_frame_equal(pd.read_csv(dest / "predictions.csv"), pd.read_csv(runs / "whole" / "predictions.csv"))


def _copy(runs, tmp_path, name: str):
    return shutil.copytree(runs / name, tmp_path / f"{name}-copy")


def _edit_config(run, **train) -> None:
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["train"].update(train)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))


def _swap_test_folds(run) -> None:
    """`run`'s folds.json as if made by another split: the test rows of folds 0 and 1 swapped."""
    folds = json.loads((run / "folds.json").read_text())
    folds[0]["test"], folds[1]["test"] = folds[1]["test"], folds[0]["test"]
    (run / "folds.json").write_text(json.dumps(folds))


def test_runs_that_do_not_belong_together_are_refused(runs, tmp_path) -> None:
    dest = tmp_path / "bad"
    other_epochs = _copy(runs, tmp_path, "f1")
    _edit_config(other_epochs, epochs=2)
    with pytest.raises(ConfigError, match=r"f1-copy trains another config than .*train\.epochs: saved 1, now 2"):
        join_fold_runs(dest, [runs / "f0", other_epochs])
    other_folds = _copy(runs, tmp_path, "f2")
    _swap_test_folds(other_folds)
    with pytest.raises(ConfigError, match="f2-copy/folds.json differs .* another fold split"):
        join_fold_runs(dest, [runs / "f0", other_folds])
    with pytest.raises(ConfigError, match="fold 0 is finished in both"):
        join_fold_runs(dest, [runs / "f0", runs / "whole"])
    final_only = _copy(runs, tmp_path, "f0")
    _edit_config(final_only, cv=False)
    with pytest.raises(SonoDistillError, match="f0-copy holds a final model only"):
        join_fold_runs(dest, [runs / "f1", final_only])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty is not a cross-validation run directory"):
        join_fold_runs(dest, [runs / "f0", tmp_path / "empty"])
    with pytest.raises(ConfigError, match="run directory not found: .*nowhere"):
        join_fold_runs(dest, [runs / "f0", tmp_path / "nowhere"])
    assert not dest.exists()  # every refusal before anything is written


def test_a_failure_while_reporting_leaves_no_half_joined_run(runs, tmp_path, monkeypatch) -> None:
    def fails(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("sonodistill.protocols.join.run_protocol", fails)
    with pytest.raises(RuntimeError, match="disk full"):
        join_fold_runs(tmp_path / "half", [runs / "f0", runs / "f1"])
    assert not (tmp_path / "half").exists()


def test_multi_seed_runs_are_joined_seed_by_seed(tmp_path, monkeypatch) -> None:
    for k in (0, 2):
        cfg = demo_config(tmp_path, f"s{k}", f"train.fold={k}", "train.fold_seed=0")
        run_seeds(cfg, [0, 1], manifest=_subset(cfg), enable_progress_bar=False)
    _no_training(monkeypatch)
    dest = tmp_path / "seeds"
    join_fold_runs(dest, [tmp_path / "s0", tmp_path / "s2"])
    assert (dest / "config.yaml").is_file()
    for s in (0, 1):
        assert set(pd.read_csv(dest / f"seed_{s}" / "predictions.csv")["fold"]) == {0, 2}
    with pytest.raises(ConfigError, match="mix of multi-seed runs"):
        join_fold_runs(tmp_path / "mixed", [tmp_path / "s0", dest / "seed_0"])
    other = shutil.copytree(tmp_path / "s2", tmp_path / "s2-other-split")  # seed 1 on another split: refused
    _swap_test_folds(other / "seed_1")
    with pytest.raises(ConfigError, match="s2-other-split/seed_1/folds.json differs"):
        join_fold_runs(tmp_path / "refused", [tmp_path / "s0", other])
    assert not (tmp_path / "refused").exists()  # seed 0 was fine, but every seed is checked before writing
