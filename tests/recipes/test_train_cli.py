"""`sonodistill train` as a user runs it: refused options, and (in subprocesses) a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sonodistill.cli import main


def test_resume_without_a_name_is_refused(tmp_path, capsys):
    rc = main(["train", "supervised", "--data", "synthetic:carotid", "--out", str(tmp_path), "--resume"])
    assert rc == 2
    assert "--resume needs --name NAME" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc/<pid>/task/*/children (no psutil needed)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = {int(k) for k in children.read_text().split()}
            except OSError:  # the task ended meanwhile
                continue
            todo += sorted(kids - found)
            found |= kids
    return found


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_when(proc: subprocess.Popen, ready: list[Path], signum: int, min_children: int) -> set[int]:
    """Once every file in `ready` exists and `proc` has `min_children` descendants, record them and send `signum`."""
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode} before it was stopped:\n{proc.stderr.read()}"
        assert time.monotonic() < deadline, f"not ready after 240 s: {[str(p) for p in ready]}"
        children = _descendants(proc.pid)
        if all(p.exists() for p in ready) and len(children) >= min_children:
            break
        time.sleep(0.1)
    proc.send_signal(signum)
    return children


def _assert_all_ended(pids: set[int]) -> None:
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "child processes survived the stop"


DEMO_TINY = ["--set", "data.synthetic_n=18", "--set", "data.synthetic_frames=4", "--set", "data.synthetic_size=32",
             "--set", "data.size=32", "--set", "data.num_frames=4", "--set", "data.batch_size=2",
             "--set", "train.epochs=50"]  # the demo's network (ImageNet TSM EfficientNet) has a fixed width
TINY = DEMO_TINY + ["--set", "model.width=0.125"]


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sonodistill.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_training_cleanly(tmp_path, signum):
    """After epoch 0 of fold 0, with a DataLoader worker running: exit 128 + signal, a message saying how to
    resume, the epoch's checkpoint intact, and no child process left."""
    from sonodistill.recipes.trainer import check_checkpoint

    run = tmp_path / "runs" / "stop"
    proc = _cli("train", "supervised", "--data", "synthetic:carotid", "--name", "stop", "--out", str(tmp_path / "runs"),
                "--folds", "3", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.num_workers=1", *TINY)
    last = run / "fold_0" / "checkpoints" / "last.ckpt"
    children = _stop_when(proc, [last], signum, min_children=1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name} in fold_0" in err
    assert "run the same command again with --resume" in err
    check_checkpoint(last)
    assert not (run / "fold_0" / "predictions.csv").exists()
    _assert_all_ended(children)


def test_sigterm_stops_the_demo_and_its_worker_processes(tmp_path):
    out = tmp_path / "demo"
    proc = _cli("demo", "--out", str(out), "--jobs", "2", "--set", f"data.cache_dir={tmp_path / 'cache'}", *DEMO_TINY)
    ready = [out / r / "fold_0" / "checkpoints" / "last.ckpt" for r in ("supervised", "dualdistill")]
    children = _stop_when(proc, ready, signal.SIGTERM, min_children=2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "run the same command again to continue" in err
    _assert_all_ended(children)
