"""`train.parallel_folds`: folds trained in worker processes give the same run as one after another; bad values and
a failing worker are errors naming the cause."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sonodistill.errors import ConfigError
from sonodistill.protocols.folds import run_protocol
from tests.tiny_demo import demo_config


def test_parallel_folds_equal_sequential_folds(tmp_path) -> None:
    run_protocol(demo_config(tmp_path, "one_by_one"), enable_progress_bar=False)
    run_protocol(demo_config(tmp_path, "parallel", "train.parallel_folds=2"), enable_progress_bar=False)
    seq, par = tmp_path / "one_by_one", tmp_path / "parallel"
    for k in range(3):  # same seeds, one thread each: byte-identical weights
        assert (seq / f"fold_{k}" / "model.safetensors").read_bytes() == \
            (par / f"fold_{k}" / "model.safetensors").read_bytes(), k
    a, b = pd.read_csv(seq / "predictions.csv"), pd.read_csv(par / "predictions.csv")
    pd.testing.assert_frame_equal(a, b)
    metrics_seq, metrics_par = (json.loads((d / "metrics.json").read_text()) for d in (seq, par))
    assert {k: v for k, v in metrics_par.items() if k != "title"} == \
        {k: v for k, v in metrics_seq.items() if k != "title"}
    assert sorted(json.loads((par / "timing.json").read_text())) == ["0", "1", "2"]
    log = (par / "train.log").read_text()  # the workers' lines reach the run's log too
    assert "parallel: supervised on synthetic:carotid, started" in log
    for k in range(3):
        assert f"fold_{k} epoch 1/" in log and f"fold {k} done in" in log, k


def test_parallel_folds_resume_keeps_finished_folds(tmp_path) -> None:
    run_protocol(demo_config(tmp_path, "r", "train.fold=1"), enable_progress_bar=False)
    kept = (tmp_path / "r" / "fold_1" / "model.safetensors").stat().st_mtime_ns
    run_protocol(demo_config(tmp_path, "r", "train.parallel_folds=2"), resume=True, enable_progress_bar=False)
    assert (tmp_path / "r" / "fold_1" / "model.safetensors").stat().st_mtime_ns == kept
    assert len(pd.read_csv(tmp_path / "r" / "predictions.csv")) == 18
    log = (tmp_path / "r" / "train.log").read_text()  # one log, appended by each invocation
    assert log.index("on synthetic:carotid, started") < log.index("on synthetic:carotid, resumed")


@pytest.mark.parametrize("extra, message", [
    (["train.parallel_folds=0"], "train.parallel_folds must be 'auto' or an integer >= 1"),
    (["train.threads=fast"], "train.threads must be 'auto' or an integer >= 0, got 'fast'"),
    (["train.parallel_folds=2", "train.devices=2"], "DDP already runs one process per device"),
])
def test_bad_parallel_folds_refused_before_anything_is_written(tmp_path, extra, message) -> None:
    with pytest.raises(ConfigError, match=message):
        run_protocol(demo_config(tmp_path, "bad", *extra))
    assert not (tmp_path / "bad").exists()


def test_a_failing_worker_is_the_error(tmp_path) -> None:
    """A corrupt video met inside a worker process: its DataError, naming the file, is raised here, and the run
    has no predictions."""
    from sonodistill.errors import DataError
    from sonodistill.recipes.data import load_manifest

    cfg = demo_config(tmp_path, "fails", "train.parallel_folds=2")
    manifest = load_manifest(cfg.data)
    bad = tmp_path / "corrupt_clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 4000)
    manifest.table.loc[0, "path"] = str(bad)
    with pytest.raises(DataError, match="corrupt_clip.mp4"):
        run_protocol(cfg, manifest=manifest, enable_progress_bar=False)
    assert not (tmp_path / "fails" / "predictions.csv").exists()
    log = (tmp_path / "fails" / "train.log").read_text()  # a run left in the background says why it stopped
    assert "ERROR" in log and "the run stopped: DataError" in log and "corrupt_clip.mp4" in log
    assert log.count("the run stopped") == 1  # said once, by the run, not again by the fold's worker


def test_every_error_type_survives_pickling() -> None:
    """A worker's error reaches the parent by pickle: each type comes back as itself with its message."""
    import pickle

    from sonodistill.errors import (CheckpointError, ConfigError as CfgError, DataError, LeakageError,
                                    ManifestError, NonFiniteLossError, SonoDistillError)
    from sonodistill.protocols.dilbert_stages import CollapseError
    from sonodistill.recipes.trainer import TrainingStopped

    errors = [DataError("/x/clip.mp4", "moov atom not found"), ManifestError("empty class 'b'", row=7),
              ManifestError("no rows"), NonFiniteLossError(12, "kl", float("inf")), CheckpointError("damaged"),
              CfgError("bad"), LeakageError("p1 on both sides"), SonoDistillError("x"), CollapseError("constant"),
              TrainingStopped(15, " in fold_1")]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e), e
    assert pickle.loads(pickle.dumps(errors[0])).path == "/x/clip.mp4"
