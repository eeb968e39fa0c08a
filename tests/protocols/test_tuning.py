"""`train.threads: auto` / `train.parallel_folds: auto` (protocols/tuning.py): which settings are tried, the fastest
measured one chosen and remembered per machine and network, and a real run that measures and records its choice."""

from __future__ import annotations

import json

import pytest

from sonodistill.config import load_config, packaged_config
from sonodistill.errors import ConfigError
from sonodistill.protocols import tuning
from sonodistill.protocols.folds import run_protocol
from sonodistill.protocols.tuning import candidates, choose_setting, resolve_parallelism

TINY = ["data.synthetic_n=12", "data.synthetic_frames=4", "data.synthetic_size=32", "data.size=32",
        "data.num_frames=4", "data.batch_size=4", "train.epochs=1", "train.folds=2"]


def _cfg(tmp_path, *extra: str):
    return load_config(packaged_config("demo"), TINY + [f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}",
                                                        *extra])


@pytest.mark.parametrize("cpus, folds, threads, processes, expected", [
    (2, 5, "auto", "auto", [(1, 1), (1, 2), (2, 1)]),
    (2, 1, "auto", "auto", [(1, 1), (1, 2)]),           # one model: no second process
    (2, 5, "auto", 1, [(1, 1), (1, 2)]),                # processes given
    (2, 5, 1, "auto", [(1, 1), (2, 1)]),                # threads given
    (2, 5, 0, "auto", [(1, 2), (2, 1)]),                # threads 0: the CPUs shared evenly
    (4, 3, "auto", "auto", [(1, 1), (1, 4), (2, 1), (2, 2), (3, 1)]),
])
def test_candidates(cpus, folds, threads, processes, expected):
    assert candidates(cpus, folds, threads, processes) == expected


def test_the_fastest_is_chosen_and_remembered_per_network(tmp_path, monkeypatch):
    speed = {(1, 1): 10.0, (1, 2): 14.0, (2, 1): 17.0, (2, 2): 30.0}  # (2, 2) is not a candidate on 2 CPUs
    timed = []

    def fake(cfg, p, t):
        timed.append((p, t))
        return {"train_items_per_s": speed[(p, t)], "train_step_s": 1.0 / speed[(p, t)]}

    monkeypatch.setattr(tuning, "time_setting", fake)
    cfg = _cfg(tmp_path, "train.threads=auto", "train.parallel_folds=auto")
    chosen = choose_setting(cfg, folds=2, cpus=2, cache_dir=tmp_path / "cache")
    assert (chosen["processes"], chosen["threads"], chosen["items_per_s"]) == (2, 1, 17.0)
    assert sorted(timed) == [(1, 1), (1, 2), (2, 1)]
    stored = json.loads(open(chosen["file"]).read())
    assert stored["key"]["size"] == 32 and len(stored["rows"]) == 3
    timed.clear()
    again = choose_setting(cfg, folds=2, cpus=2, cache_dir=tmp_path / "cache")  # read back, nothing timed
    assert timed == [] and (again["processes"], again["threads"]) == (2, 1)
    one = choose_setting(cfg, folds=1, cpus=2, cache_dir=tmp_path / "cache")  # a single model: 1 process
    assert timed == [] and (one["processes"], one["threads"]) == (1, 2)
    bigger = load_config(packaged_config("demo"), TINY + ["data.size=48", "train.threads=auto"])
    choose_setting(bigger, folds=2, cpus=2, cache_dir=tmp_path / "cache")  # another input shape: measured again
    assert sorted(timed) == [(1, 1), (1, 2)]


def test_numbers_are_kept_and_bad_values_refused(tmp_path):
    cfg = _cfg(tmp_path, "train.threads=1", "train.parallel_folds=2")
    same, info = resolve_parallelism(cfg, folds=2)
    assert same is cfg and info is None
    with pytest.raises(ConfigError, match="train.parallel_folds must be 'auto' or an integer >= 1, got 'many'"):
        resolve_parallelism(_cfg(tmp_path, "train.parallel_folds=many"), folds=2)
    gpu, info = resolve_parallelism(_cfg(tmp_path, "train.threads=auto", "train.accelerator=gpu"), folds=2)
    assert (gpu.train.threads, gpu.train.parallel_folds) == (0, 1) and "not measured: an accelerator" in info["why"]


def test_a_run_with_auto_measures_records_and_trains(tmp_path):
    from sonodistill.protocols.processes import usable_cpus

    cfg = _cfg(tmp_path, "name=auto", "train.threads=auto", "train.parallel_folds=auto")
    run_protocol(cfg, enable_progress_bar=False)
    run = tmp_path / "auto"
    chosen = json.loads((run / "parallelism.json").read_text())
    assert isinstance(chosen["threads"], int) and isinstance(chosen["parallel_folds"], int)
    saved = load_config(run / "config.yaml", [])
    assert saved.train.threads == "auto" and saved.train.parallel_folds == "auto"  # the intent, not the machine's
    assert (run / "fold_0" / "model.safetensors").is_file() and (run / "fold_1" / "model.safetensors").is_file()
    if usable_cpus() > 1:
        rows = json.loads(open(chosen["file"]).read())["rows"]
        assert {(r["processes"], r["threads"]) for r in rows} == set(candidates(usable_cpus(), 2, "auto", "auto"))
        best = max(rows, key=lambda r: r["items_per_s"])
        assert (chosen["parallel_folds"], chosen["threads"]) == (best["processes"], best["threads"])
        assert all(r["items_per_s"] > 0 for r in rows)
