"""benchmarks/keep_results.py: the scored results of a finished run, without weights, still compare and join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_scripts import benchmark_script
from tests.tiny_segmentation import trained_seg_run


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """seg_supervised trained 1 epoch on each of 2 folds of 8 synthetic fetal-head images."""
    return trained_seg_run(tmp_path_factory.mktemp("keep"), "seg_supervised")


def test_kept_results_hold_no_weights_and_compare_and_join_like_the_run(seg_run, tmp_path, capsys):
    from sonodistill.commands.compare import compare_runs
    from sonodistill.protocols.join import join_fold_runs

    with benchmark_script("keep_results") as script:
        assert script.main([str(seg_run), "--into", str(tmp_path / "kept")]) == 0
    kept = tmp_path / "kept" / seg_run.name
    assert f"-> {kept}" in capsys.readouterr().out
    names = {p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()}
    assert {"config.yaml", "folds.json", "manifest.csv", "predictions.csv", "fold_0/predictions.csv",
            "fold_1/split.json", "fold_1/logs/metrics.csv"} <= names
    heavy = [p for p in seg_run.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".safetensors", ".png")]
    assert heavy and not any(n.endswith((".ckpt", ".safetensors", ".png")) for n in names)
    manifest = (kept / "manifest.csv").read_text().splitlines()
    assert manifest[0] == (seg_run / "manifest.csv").read_text().splitlines()[0]  # the header line kept
    assert (seg_run / "manifest.csv").read_text().splitlines()[1].endswith(",text,findings")
    assert manifest[1] == "path,group,target,mask"  # a data set's other columns (its report text here) are not copied
    assert len(manifest) == len((seg_run / "manifest.csv").read_text().splitlines())
    table = compare_runs([seg_run, kept], metrics=["dice"], n_resamples=200)[1]
    assert len(table) == 1 and np.allclose(table["difference"], 0.0)
    joined = tmp_path / "joined"  # a later checkout joins kept folds into one run without the weights
    join_fold_runs(joined, [kept])
    np.testing.assert_allclose(
        compare_runs([seg_run, joined], metrics=["dice"], n_resamples=200)[1]["difference"], 0.0)


def test_a_folder_without_scored_runs_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "empty" / "fold_0").mkdir(parents=True)
    with benchmark_script("keep_results") as script:
        assert script.main([str(tmp_path / "empty"), "--into", str(tmp_path / "kept")]) == 2
        assert script.main([str(tmp_path / "missing"), "--into", str(tmp_path / "kept")]) == 2
    err = capsys.readouterr().err
    assert "empty: no predictions.csv" in err and "missing: not a folder" in err


def test_a_folds_own_record_is_kept():
    """fold_k/fold.json (DILBERT's per-fold retrieval recalls) is a scored result; weights and exports are not."""
    with benchmark_script("keep_results") as script:
        assert script.is_kept(Path("run/pocus/fold_0/fold.json"))
        assert not script.is_kept(Path("run/pocus/fold_0/export/student/annotator.safetensors"))
        assert not script.is_kept(Path("run/pocus/fold_0/export/student/dilbert.json"))
