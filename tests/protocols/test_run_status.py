"""`sonodistill runs`: each run directory's state read from its files alone (folds finished, final model, score,
the last log line and an error that stopped it), seed by seed for multi-seed runs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sonodistill.cli import main
from sonodistill.protocols.run_status import find_runs, run_status


def _run(root: Path, name: str, recipe: str = "supervised", folds_done: int = 0, folds: int = 3, log: str = "",
         metrics: dict | None = None, report: bool = False, final: bool = False, cv: bool = True) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": recipe, "data": {"spec": "busi"},
                                                     "train": {"folds": folds, "cv": cv, "fold": None}}))
    for k in range(folds_done):
        (run / f"fold_{k}").mkdir()
        (run / f"fold_{k}" / "environment.json").write_text("{}")
    if final:
        (run / "final").mkdir()
        (run / "final" / "done").write_text("trained\n")
    if log:
        (run / "train.log").write_text(log)
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if report:
        (run / "report.md").write_text("# report\n")
    return run


LOG = "2026-12-07 06:00:01,123 INFO sonodistill.protocols.folds: runs/x: supervised on busi, started\n"
STOPPED = LOG + ("2026-12-07 06:10:02,456 INFO sonodistill.recipes.trainer: fold_0 epoch 1/5: train/loss 0.7 (9 s)\n"
                 "Traceback-free continuation line\n"
                 "2026-12-07 06:12:03,789 ERROR sonodistill: the run stopped: DataError: cut.mp4: video decode failed\n")


def test_states_from_the_files(tmp_path):
    done = _run(tmp_path, "a-done", folds_done=3, report=True, log=LOG,
                metrics={"summary": {"accuracy": {"mean": 0.8125}, "balanced_accuracy": {"mean": 0.75}}})
    seg = _run(tmp_path, "b-seg", recipe="hdc", folds_done=3, report=True, metrics={"items": {"dice": {"mean": 0.67}}})
    stopped = _run(tmp_path, "c-stopped", folds_done=1, log=STOPPED)
    resumed = _run(tmp_path, "d-resumed", folds_done=1,
                   log=STOPPED + "2026-12-07 07:00:00,000 INFO sonodistill.protocols.folds: runs/x: supervised on "
                                 "busi, resumed\n")
    dino = _run(tmp_path, "e-dino", recipe="dino", final=True, log=LOG)
    final_only = _run(tmp_path, "f-final", cv=False)
    a = run_status(done)
    assert (a.folds, a.score, a.state, a.last_log) == ("3/3", "accuracy 0.812, balanced 0.750", "finished",
                                                       "2026-12-07 06:00:01")
    assert run_status(seg).score == "dice 0.670"
    c = run_status(stopped)
    assert c.folds == "1/3" and c.state == "stopped: DataError: cut.mp4: video decode failed"
    assert c.last_log == "2026-12-07 06:12:03"
    assert run_status(resumed).state.startswith("unfinished")  # an error followed by a resume: not its end
    e = run_status(dino)
    assert (e.folds, e.final, e.state) == ("none (one run on every item)", "done", "finished")
    f = run_status(final_only)
    assert (f.folds, f.final) == ("none (final only)", "wanted") and f.state.startswith("unfinished")


def test_multi_seed_runs_are_listed_seed_by_seed(tmp_path, capsys):
    parent = tmp_path / "runs" / "sweep"
    parent.mkdir(parents=True)
    (parent / "config.yaml").write_text(yaml.safe_dump({"recipe": "supervised"}))
    for s in (0, 1):
        _run(parent, f"seed_{s}", folds_done=s + 1)
    _run(tmp_path / "runs", "plain", folds_done=2, log=STOPPED)
    (tmp_path / "runs" / "notes").mkdir()  # a folder that is no run
    assert [p.relative_to(tmp_path / "runs").as_posix() for p in find_runs(tmp_path / "runs")] == [
        "plain", "sweep/seed_0", "sweep/seed_1"]
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "| plain | supervised | busi | 2/3 | - | - | 2026-12-07 06:12:03 | stopped: DataError: cut.mp4" in out
    assert "| sweep/seed_1 | supervised | busi | 2/3 |" in out
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_progress_of_a_training_run_and_its_time_left(tmp_path):
    """The epoch a running run is at, from its train.log's epoch lines since it last started or resumed, and the
    time left at the mean epoch time of the current training (its first epoch, which builds the cache, left out once
    there are more): the rest of this fold, then the folds and final model still to train."""
    epochs = "".join(f"2026-12-07 06:0{i}:00,000 INFO sonodistill.recipes.trainer: fold_1 epoch {i}/10: train/loss "
                     f"0.5 ({s} s)\n" for i, s in ((1, 50), (2, 70)))
    old = "2026-12-07 05:00:00,000 INFO sonodistill.recipes.trainer: fold_0 epoch 1/10: train/loss 0.9 (900 s)\n"
    resumed = "2026-12-07 05:59:00,000 INFO sonodistill.protocols.folds: runs/x: supervised on busi, resumed\n"
    run = _run(tmp_path, "r", folds_done=1, folds=3, log=LOG + old + resumed + epochs)
    # 8 epochs x 70 s left in fold_1 = 9 min; then fold_2: 10 x 70 s: 21 min in all
    assert run_status(run).progress == "fold_1 epoch 2/10, ~9 min left in it, ~21 min in all (1 more to train)"
    with_final = _run(tmp_path, "f", folds_done=1, folds=3, log=LOG + epochs)
    with_final_cfg = yaml.safe_load((with_final / "config.yaml").read_text())
    with_final_cfg["train"]["final"] = True
    (with_final / "config.yaml").write_text(yaml.safe_dump(with_final_cfg))
    assert run_status(with_final).progress.endswith("~33 min in all (2 more to train)")
    dino = _run(tmp_path, "d", recipe="dino", log=LOG + "2026-12-07 06:01:00,000 INFO sonodistill.protocols.dino: "
                "dino epoch 3/100: loss 9.1, teacher entropy 4.2 nats, 12.0 images/s (7200 s)\n")
    assert run_status(dino).progress == "dino epoch 3/100, ~194.0 h left in it"
    stopped = _run(tmp_path, "s", folds_done=1, folds=3, log=LOG + epochs + STOPPED.splitlines(True)[-1])
    assert run_status(stopped).progress == "stopped at fold_1 epoch 2/10"
    finished = _run(tmp_path, "done", folds_done=3, folds=3, report=True, log=LOG + epochs)
    assert run_status(finished).progress == ""


def test_an_unreadable_config_is_a_row_that_says_so(tmp_path, capsys):
    """One broken run (a half-written or foreign config.yaml) does not hide the others."""
    _run(tmp_path, "good", folds_done=1, log=LOG)
    for name, text in (("broken", "recipe: [\n"), ("list", "- 1\n- 2\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(text)
    assert run_status(tmp_path / "broken").state.startswith("unreadable config.yaml: ")
    assert run_status(tmp_path / "list").state == "unreadable config.yaml: a list, not a mapping of config sections"
    half = _run(tmp_path, "half-metrics", folds_done=3, report=True)
    (half / "metrics.json").write_text('{"summary": {"accuracy": ')
    assert run_status(half).score == "unreadable metrics.json (JSONDecodeError)"
    assert main(["runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| good | supervised | busi | 1/3 |" in out and "| broken | ? |" in out and "| list | ? |" in out
