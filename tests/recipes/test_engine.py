"""The supervised engine: CV run directory, resume equals uninterrupted, NaN stops with a named term."""

from __future__ import annotations

import json

import pytest
import torch

from sonodistill.config import load_config
from sonodistill.errors import ConfigError, NonFiniteLossError, SonoDistillError
from sonodistill.evaluation.run_dir import report_from_run_dir
from sonodistill.protocols.folds import run_protocol
from sonodistill.recipes import RECIPES
from sonodistill.recipes.supervised import SupervisedRecipe
from tests.recipes.conftest import read_weights
from tests.recipes.interrupt import kill_when_parked


def test_crossval_writes_run_directory(tiny_carotid, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["name=cv", "train.epochs=1"])
    summary = run_protocol(cfg, manifest=tiny_carotid)
    run = cfg.run_dir
    for name in ("config.yaml", "manifest.csv", "folds.json", "predictions.csv", "report.md",
                 "confusion_matrix.png", "roc.png"):
        assert (run / name).is_file(), name
    mode = (run / "config.yaml").stat().st_mode & 0o777
    for k in range(3):
        assert (run / f"fold_{k}" / "model.safetensors").stat().st_mode & 0o777 == mode  # 0644 under umask 022
        assert (run / f"fold_{k}" / "checkpoints" / "last.ckpt").is_file()
        assert (run / f"fold_{k}" / "logs" / "metrics.csv").is_file()
    folds = json.loads((run / "folds.json").read_text())
    tested = sorted(i for f in folds for i in f["test"])
    assert tested == list(range(len(tiny_carotid)))  # every item tested exactly once
    for f in folds:  # no group on both sides
        train_groups = set(tiny_carotid.groups[f["train"]])
        assert not train_groups & set(f["test_groups"])
    # eval rebuilds the same report from the run directory alone
    before = (run / "report.md").read_text()
    (run / "report.md").unlink()
    report_from_run_dir(run)
    assert (run / "report.md").read_text() == before
    assert summary is not None
    with pytest.raises(SonoDistillError, match="already holds a run"):
        run_protocol(cfg, manifest=tiny_carotid)


def test_resume_after_kill_equals_uninterrupted(tiny_carotid, tiny_overrides, tmp_path):
    """kill -9 mid-fold with augmentation and random frame sampling on, then --resume: same weights and predictions."""
    base = tiny_overrides + ["train.fold=0", "train.epochs=3", "data.augment=true", "data.sampling=random"]
    full = load_config(None, base + ["name=full"])
    run_protocol(full, manifest=tiny_carotid)

    cut = load_config(None, base + ["name=cut"])
    kill_when_parked(tmp_path, base + ["name=cut"], tiny_carotid)
    assert not (cut.run_dir / "fold_0" / "predictions.csv").exists()
    saved = torch.load(cut.run_dir / "fold_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0  # killed during epoch 1: epoch 0 was checkpointed
    torch.manual_seed(12345)  # whatever state this process's global RNG is in must not matter
    run_protocol(cut, resume=True, manifest=tiny_carotid)

    a = read_weights(full.run_dir / "fold_0" / "model.safetensors")
    b = read_weights(cut.run_dir / "fold_0" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    pa = (full.run_dir / "predictions.csv").read_text()
    pb = (cut.run_dir / "predictions.csv").read_text()
    assert pa == pb


class _NaNAtStep3(SupervisedRecipe):
    def compute_loss(self, batch):
        loss, parts = super().compute_loss(batch)
        if self.global_step >= 3:
            parts["ce"] = loss * float("nan")
            loss = parts["ce"]
        return loss, parts


def test_nan_loss_stops_naming_step_and_term(tiny_carotid, tiny_overrides, monkeypatch):
    monkeypatch.setitem(RECIPES, "nanny", f"{__name__}:_NaNAtStep3")
    cfg = load_config(None, tiny_overrides + ["name=nan", "recipe=nanny", "train.fold=0", "train.epochs=4"])
    with pytest.raises(NonFiniteLossError, match=r"step 3: term 'loss'"):
        run_protocol(cfg, manifest=tiny_carotid)
    fold = cfg.run_dir / "fold_0"
    ckpt = torch.load(fold / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] <= 3  # the last checkpoint predates the bad step
    weights = read_weights(fold / "model.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


class _NonFiniteAfterCheckpoint(SupervisedRecipe):
    """Epoch 0 (steps 0-2) trains and is checkpointed; epoch 1 takes good steps, then step `bad_step` goes bad:
    a NaN loss, or (`bad_gradient`) a finite loss whose gradient is NaN (d sqrt(z)/dz at z = 0)."""

    bad_step, bad_gradient = 4, False

    def compute_loss(self, batch):
        loss, parts = super().compute_loss(batch)
        if self.global_step == self.bad_step:
            if self.bad_gradient:
                zero = (self.model.head.parameters().__next__() * 0.0).sum()
                loss = loss + torch.sqrt(zero)
            else:
                parts["ce"] = loss = loss * float("nan")
        return loss, parts


class _NaNGradientAtEpochEnd(_NonFiniteAfterCheckpoint):
    bad_step, bad_gradient = 5, True  # the last step of epoch 1: its weights would be checkpointed next


@pytest.mark.parametrize("recipe, message", [
    ("_NonFiniteAfterCheckpoint", r"step 4: term 'loss'"),
    ("_NaNGradientAtEpochEnd", r"step 5: term 'gradient norm'"),
])
def test_non_finite_step_keeps_the_last_good_checkpoint(tiny_carotid, tiny_overrides, monkeypatch, recipe, message):
    """The run stops at the bad step; last.ckpt and model.safetensors are epoch 0's, bit for bit."""
    monkeypatch.setitem(RECIPES, "bad", f"{__name__}:{recipe}")
    cfg = load_config(None, tiny_overrides + ["name=bad", "recipe=bad", "train.fold=0", "train.epochs=3"])
    with pytest.raises(NonFiniteLossError, match=message):
        run_protocol(cfg, manifest=tiny_carotid)
    fold = cfg.run_dir / "fold_0"
    ckpt = torch.load(fold / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 3)
    weights = read_weights(fold / "model.safetensors")
    assert weights.keys() == {k.removeprefix("model.") for k in ckpt["state_dict"] if k.startswith("model.")}
    for k, v in weights.items():
        assert torch.equal(v, ckpt["state_dict"][f"model.{k}"]), k


def test_merged_report_sums_probabilities(tiny_carotid, tiny_overrides):
    import pandas as pd

    from sonodistill.errors import ConfigError, SonoDistillError
    from sonodistill.evaluation.run_dir import merged_report, parse_merge

    cfg = load_config(None, tiny_overrides + ["name=merge", "train.epochs=1"])
    run_protocol(cfg, manifest=tiny_carotid)
    merge = parse_merge(["echo=hyperechoic", "other=mixed,hypoechoic"])
    merged_report(cfg.run_dir, merge)
    before = pd.read_csv(cfg.run_dir / "predictions.csv")
    after = pd.read_csv(cfg.run_dir / "merged" / "predictions.csv")
    assert list(after["y_true"]) == [0 if y == 0 else 1 for y in before["y_true"]]
    assert (after["prob_other"] - before["prob_mixed"] - before["prob_hypoechoic"]).abs().max() < 1e-9
    assert (cfg.run_dir / "merged" / "report.md").is_file()
    with pytest.raises(ConfigError, match="exactly once"):
        merged_report(cfg.run_dir, parse_merge(["a=hyperechoic", "b=mixed"]))
    (cfg.run_dir / "predictions.csv").unlink()  # an unfinished run: say which file is missing
    with pytest.raises(SonoDistillError, match="predictions.csv is missing"):
        merged_report(cfg.run_dir, merge)


@pytest.mark.parametrize("bad, message", [
    ("train.folds=1", "train.folds must be >= 2"),
    ("train.fold=5", "train.fold=5 but there are 3 folds"),
    ("train.epochs=0", "train.epochs must be >= 1"),
    ("optim.name=adam", "optim.name: unknown optimiser"),
    ("model.backbone=nonesuch", "nonesuch"),
])
def test_refused_start_writes_nothing(tiny_carotid, tiny_overrides, bad, message):
    """A refused command leaves no run directory, so the corrected command starts without --resume."""
    cfg = load_config(None, tiny_overrides + ["name=refused", "train.fold=0", "train.epochs=1", bad])
    with pytest.raises(SonoDistillError, match=message):
        run_protocol(cfg, manifest=tiny_carotid)
    assert not cfg.run_dir.exists()
    with pytest.raises(SonoDistillError, match=message):  # --resume of the refused start is refused the same way
        run_protocol(cfg, resume=True, manifest=tiny_carotid)
    assert not cfg.run_dir.exists()


def test_resume_with_another_config_names_the_fields(tiny_carotid, tiny_overrides):
    from sonodistill.errors import ConfigError

    base = tiny_overrides + ["name=changed", "train.epochs=1", "train.fold=0"]
    cfg = load_config(None, base)
    run_protocol(cfg, manifest=tiny_carotid)
    saved = (cfg.run_dir / "config.yaml").read_text()
    changed = load_config(None, base + ["train.folds=4", "optim.lr=0.5"])
    with pytest.raises(ConfigError, match=r"2 field\(s\): optim.lr: saved 0.001, now 0.5; train.folds: saved 3, now 4"):
        run_protocol(changed, resume=True, manifest=tiny_carotid)
    assert (cfg.run_dir / "config.yaml").read_text() == saved
    assert not (cfg.run_dir / "config.resumed.yaml").exists()
    # where files go and which fold to run now may change: fold 0 is kept, fold 1 trains
    run_protocol(load_config(None, base + ["train.fold=1", "data.num_workers=0"]), resume=True, manifest=tiny_carotid)
    assert (cfg.run_dir / "fold_1" / "predictions.csv").is_file()


def test_config_yaml_records_every_recipe_option_so_a_changed_default_cannot_change_a_resumed_run(
        tiny_carotid, tiny_overrides):
    """config.yaml holds the recipe's options with their defaults; resuming after a default moved (simulated by
    the saved value differing from today's default) is refused, naming the option and how to keep the saved value."""
    import dataclasses

    import yaml

    from sonodistill.errors import ConfigError
    from sonodistill.recipes.dualdistill import DualDistillOptions

    base = tiny_overrides + ["recipe=dualdistill", "name=defaults", "train.epochs=1", "train.fold=0",
                             "recipe_options={beta: 0.5}"]
    cfg = load_config(None, base)
    run_protocol(cfg, manifest=tiny_carotid)
    saved_file = cfg.run_dir / "config.yaml"
    saved = yaml.safe_load(saved_file.read_text())
    assert set(saved["recipe_options"]) == {f.name for f in dataclasses.fields(DualDistillOptions)}
    assert saved["recipe_options"]["beta"] == 0.5 and saved["recipe_options"]["temperature"] == 3.0
    assert saved["recipe_options"]["student_stages"] == [1, 2, 3]
    # the same command resumes (fold 1 trains): options left to their defaults compare equal to the recorded ones
    run_protocol(load_config(None, base + ["train.fold=1"]), resume=True, manifest=tiny_carotid)
    assert (cfg.run_dir / "fold_1" / "predictions.csv").is_file()
    saved["recipe_options"]["temperature"] = 4.0  # as if the run had started when the default was 4
    saved_file.write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(ConfigError, match=r"recipe_options.temperature: saved 4.0, now 3.0.*default has changed"):
        run_protocol(load_config(None, base + ["train.fold=2"]), resume=True, manifest=tiny_carotid)
    with pytest.raises(ConfigError, match=r"recipe_options.beta: saved 0.5, now 0.7") as refused:
        run_protocol(load_config(None, base + ["train.fold=2", "recipe_options.beta=0.7",
                                               "recipe_options.temperature=4.0"]), resume=True, manifest=tiny_carotid)
    assert "default has changed" not in str(refused.value)  # beta was given, not defaulted
    run_protocol(load_config(None, base + ["train.fold=2", "recipe_options.temperature=4.0"]), resume=True,
                 manifest=tiny_carotid)
    assert (cfg.run_dir / "fold_2" / "predictions.csv").is_file()


def test_resume_of_a_run_that_never_started_says_so(tiny_carotid, tiny_overrides, caplog):
    cfg = load_config(None, tiny_overrides + ["name=never", "train.epochs=1", "train.fold=0"])
    with caplog.at_level("WARNING", logger="sonodistill.evaluation.crossval"):
        run_protocol(cfg, resume=True, manifest=tiny_carotid)
    assert f"--resume: {cfg.run_dir} holds no run yet (no config.yaml); starting it from scratch" in caplog.text
    assert (cfg.run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "dangling link"])
def test_resume_from_a_damaged_checkpoint_names_the_file_and_what_to_do(tiny_carotid, tiny_overrides, damage):
    from sonodistill.errors import CheckpointError

    cfg = load_config(None, tiny_overrides + ["name=damaged", "train.epochs=1", "train.fold=0"])
    run_protocol(cfg, manifest=tiny_carotid)
    fold = cfg.run_dir / "fold_0"
    (fold / "predictions.csv").unlink()  # fold 0 unfinished: --resume continues it from last.ckpt
    last = fold / "checkpoints" / "last.ckpt"
    target = last.resolve()
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "garbage":
        data = bytearray(target.read_bytes())
        data[len(data) // 3: len(data) // 3 + 64] = b"\x00" * 64
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=rf"{last}: .*delete .*checkpoints.* or start a new run") as err:
        run_protocol(cfg, resume=True, manifest=tiny_carotid)
    assert "Traceback" not in str(err.value)


def test_train_threads_sets_torch_threads_and_may_change_on_resume(tiny_carotid, tiny_overrides):
    before = torch.get_num_threads()
    try:
        cfg = load_config(None, tiny_overrides + ["name=threads", "train.fold=0", "train.epochs=1", "train.threads=1"])
        run_protocol(cfg, manifest=tiny_carotid)
        assert torch.get_num_threads() == 1
        again = load_config(None, tiny_overrides + ["name=threads", "train.fold=0", "train.epochs=1",
                                                    "train.threads=2"])
        run_protocol(again, resume=True, manifest=tiny_carotid)  # not a config difference that refuses the resume
        assert torch.get_num_threads() == 2
        with pytest.raises(ConfigError, match="train.threads must be 'auto' or an integer >= 0, got -1"):
            run_protocol(load_config(None, tiny_overrides + ["name=bad", "train.threads=-1"]), manifest=tiny_carotid)
    finally:
        torch.set_num_threads(before)


def test_on_validation_trains_on_fit_rows_and_scores_validation_rows_only(tiny_carotid, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["name=val", "train.epochs=1", "train.on_validation=true",
                                              "train.val_fraction=0.34"])
    run_protocol(cfg, manifest=tiny_carotid)
    folds = json.loads((cfg.run_dir / "folds.json").read_text())
    import pandas as pd

    pred = pd.read_csv(cfg.run_dir / "predictions.csv")
    for fold in folds:  # the saved folds are the real ones; predictions only on their training rows
        scored = set(pred.loc[pred["fold"] == fold["fold"], "index"])
        assert scored and scored <= set(fold["train"]) and not scored & set(fold["test"])
    assert "VALIDATION" in (cfg.run_dir / "report.md").read_text()
    with pytest.raises(ConfigError, match="cannot train a final model"):
        run_protocol(load_config(None, tiny_overrides + ["name=v2", "train.on_validation=true", "train.final=true"]),
                     manifest=tiny_carotid)
    with pytest.raises(ConfigError, match="trains no folds to score on validation splits"):
        run_protocol(load_config(None, tiny_overrides + ["name=v3", "recipe=dino", "train.on_validation=true"]),
                     manifest=tiny_carotid)
