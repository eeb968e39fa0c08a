"""The `dino` recipe: EMA teacher step, frozen last layer in epoch 0, schedule lengths, a pretraining run directory."""

from __future__ import annotations

import logging
import re

import lightning as L
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.protocols.folds import run_protocol
from sonodistill.recipes.dino import DINORecipe, clip_gradients_per_parameter
from sonodistill.recipes.schedules import ScheduleRangeError
from tests.recipes.conftest import read_weights

TINY = ["recipe=dino", "model.backbone=vit_tiny_p8", "model.width=0.25", "model.kwargs={img_size: 32, depth: 2}",
        "optim.lr=0.001", "optim.weight_decay=0.04", "optim.warmup_epochs=1", "optim.grad_clip=3.0",
        "recipe_options={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_size: 32, local_size: 16, "
        "n_local: 2, warmup_teacher_temp_epochs: 1, momentum_teacher: 0.9}",
        "train.log_every_n_steps=1"]


class _RandomViews(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"x": [torch.rand(1, 32, 32, generator=g) for _ in range(2)]
                + [torch.rand(1, 16, 16, generator=g) for _ in range(2)], "index": i}


def _trainer(tmp_path, callbacks=(), **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), **kw)


class _Spy(L.Callback):
    """Records teacher/student weights around the first step and the gradients left after it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.teacher_before = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}
            self.student_before = {k: v.clone() for k, v in pl_module.student.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            self.teacher_after = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}
            self.student_after = {k: v.clone() for k, v in pl_module.student.state_dict().items()}
            self.grads = {n: p.grad for n, p in pl_module.student.named_parameters()}
            self.momentum = pl_module.momentum_schedule(0)

    def on_train_epoch_end(self, trainer, pl_module):
        w = pl_module.student.head.last_layer.parametrizations.weight.original1.detach().clone()
        self.last_layer_at_epoch_end = getattr(self, "last_layer_at_epoch_end", []) + [w]


def test_first_step_ema_teacher_and_frozen_last_layer(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, TINY + ["train.epochs=2", "optim.warmup_epochs=0"])  # lr > 0 at step 0
    recipe = DINORecipe(cfg, steps_per_epoch=1)
    spy = _Spy()
    w0 = recipe.student.head.last_layer.parametrizations.weight.original1.detach().clone()
    _trainer(tmp_path, [spy], max_epochs=2, limit_train_batches=1).fit(
        recipe, DataLoader(_RandomViews(4), batch_size=4))
    m = spy.momentum
    assert m == pytest.approx(0.9)
    changed = 0
    for k, t_new in spy.teacher_after.items():  # theta_t <- m theta_t + (1 - m) theta_s, by name
        expected = m * spy.teacher_before[k] + (1 - m) * spy.student_after[k]
        torch.testing.assert_close(t_new, expected, rtol=1e-5, atol=1e-6, msg=k)
        changed += int(not torch.equal(t_new, spy.teacher_before[k]))
    assert changed > 0
    last = [n for n in spy.grads if n.startswith("head.last_layer")]
    assert last and all(spy.grads[n] is None for n in last)            # cancelled in epoch 0
    for n in last:  # so the last layer did not move (AdamW makes no update without a gradient)
        torch.testing.assert_close(spy.student_after[n], spy.student_before[n], rtol=0, atol=0)
    assert any(spy.grads[n] is not None and spy.grads[n].abs().sum() > 0 for n in spy.grads if n.startswith("backbone"))
    # frozen for freeze_last_layer=1 epoch, trained afterwards
    after0, after1 = spy.last_layer_at_epoch_end
    torch.testing.assert_close(after0, w0, rtol=0, atol=0)
    assert not torch.equal(after1, w0)


def test_schedules_cover_exactly_the_run(tmp_path):
    cfg = load_config(None, TINY + ["train.epochs=2"])
    recipe = DINORecipe(cfg, steps_per_epoch=3)
    for s in (recipe.lr_schedule, recipe.wd_schedule, recipe.momentum_schedule):
        assert len(s) == 6
    assert len(recipe.temp_schedule) == 2
    assert recipe.lr_schedule(0) == 0.0 and recipe.lr_schedule(3) == pytest.approx(1e-3)  # 1 warm-up epoch
    assert recipe.wd_schedule(0) == pytest.approx(0.04)
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(recipe, DataLoader(_RandomViews(9), batch_size=3))
    assert trainer.global_step == 6
    # a loader longer than the schedule was built for is refused, not clamped
    short = DINORecipe(cfg, steps_per_epoch=1)
    with pytest.raises(ScheduleRangeError):
        _trainer(tmp_path, max_epochs=2).fit(short, DataLoader(_RandomViews(9), batch_size=3))


def test_per_parameter_clipping_matches_dino():
    lin = torch.nn.Linear(3, 2)
    lin.weight.grad = torch.full((2, 3), 2.0)   # norm sqrt(24) ~ 4.9
    lin.bias.grad = torch.tensor([0.1, 0.0])     # norm 0.1: untouched
    clip_gradients_per_parameter(lin, 1.0)
    assert float(lin.weight.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(lin.bias.grad, torch.tensor([0.1, 0.0]))


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"recipe_options \(dino\): unknown field\(s\) \['out_dims'\]"):
        DINORecipe(load_config(None, TINY + ["recipe_options.out_dims=3"]))
    with pytest.raises(ConfigError, match=r"recipe_options \(dino\).local_scale must be \[low, high\]"):
        DINORecipe(load_config(None, TINY + ["recipe_options.local_scale=[0.4, 0.05]"]))
    with pytest.raises(ConfigError, match="frame backbone"):
        DINORecipe(load_config(None, TINY + ["model.backbone=resnet10_3d", "model.kwargs={}"]))


@pytest.mark.slow
def test_pretraining_run_directory_and_collapse_warning(tiny_carotid, tiny_overrides, tmp_path, caplog):
    # a near-zero teacher temperature makes the teacher one-hot: the run must say so
    over = tiny_overrides + TINY + [
        "name=dino", "train.epochs=1", "data.size=32", "data.batch_size=6",
        "recipe_options.frames_per_video=1", "recipe_options.teacher_temp=0.0001",
        "recipe_options.warmup_teacher_temp=0.0001"]
    cfg = load_config(None, over)
    with caplog.at_level(logging.WARNING, logger="sonodistill"):
        summary = run_protocol(cfg, manifest=tiny_carotid, enable_progress_bar=False)
    run = cfg.run_dir
    for name in ("config.yaml", "teacher_backbone.safetensors", "student_backbone.safetensors", "model.safetensors",
                 "diagnostics.csv", "pretrain.json", "train.log", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    diag = pd.read_csv(run / "diagnostics.csv")
    assert list(diag["epoch"]) == [0] and diag["steps"].iloc[0] == 3  # 18 frames / 6
    for col in ("teacher_entropy", "teacher_kl_to_mean", "teacher_feature_std", "images_per_s", "peak_rss_mib"):
        assert diag[col].notna().all(), col
    assert summary["frames_per_epoch"] == 18 and summary["collapsed_epochs"] == [0]
    assert "collapse" in caplog.text and "collapse" in (run / "train.log").read_text()
    epoch_lines = [line for line in (run / "train.log").read_text().splitlines() if re.search(r"epoch 1\b", line)]
    assert len(epoch_lines) == 1 and "DINO collapse detected at epoch 1/1 (diagnostics.csv epoch 0):" in epoch_lines[0]  # one line an epoch
    # the saved teacher is the exported inference model
    t, m = read_weights(run / "teacher_backbone.safetensors"), read_weights(run / "model.safetensors")
    assert t.keys() == m.keys() and all(torch.equal(t[k], m[k]) for k in t)


def test_epoch_reaches_the_frame_choice_through_the_sampler():
    from sonodistill.data.pretraining import EpochConcat, EpochIndexSampler, ViewsOnly
    from sonodistill.recipes.data import EpochSeededSampler

    class _Frames(Dataset):
        def __init__(self, n: int) -> None:
            self.n, self.epoch = n, 0

        def __len__(self) -> int:
            return self.n

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __getitem__(self, i: int) -> dict:
            return {"x": (self.epoch, i)}

    ds = EpochConcat([ViewsOnly(_Frames(3)), ViewsOnly(_Frames(2))])
    sampler = EpochIndexSampler(EpochSeededSampler(len(ds), seed=0))
    seen = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        seen[epoch] = sorted(ds[k]["x"] for k in sampler)
    # each epoch visits every frame of both parts once, with that epoch passed on
    assert seen[0] == sorted([(0, 0), (0, 1), (0, 2), (0, 0), (0, 1)])
    assert seen[1] == sorted([(1, 0), (1, 1), (1, 2), (1, 0), (1, 1)])


def test_dino_continues_from_imagenet_on_the_efficientnet(tmp_path, monkeypatch):
    """ImageNet -> ultrasound DINO: student and teacher both start from the ImageNet weights, and a step trains."""
    from sonodistill.models.pretrained import imagenet_state_dict

    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))
    cfg = load_config(None, [o for o in TINY if not o.startswith(("model.", "recipe_options"))] + [
        "model.backbone=efficientnet_lite0", "model.width=1.0", "model.pretrained=imagenet", "train.epochs=1",
        "recipe_options={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_size: 32, local_size: 32, "
        "n_local: 2, warmup_teacher_temp_epochs: 1, momentum_teacher: 0.9}"])
    recipe = DINORecipe(cfg, steps_per_epoch=2)
    state, _ = imagenet_state_dict("efficientnet_lite0")
    for side in (recipe.student, recipe.teacher):
        assert torch.equal(side.backbone.net.stem_conv.weight, state["stem_conv.weight"])

    class _Views(_RandomViews):
        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            return {"x": [torch.rand(1, 32, 32, generator=g) for _ in range(4)], "index": i}

    _trainer(tmp_path, max_epochs=1).fit(recipe, DataLoader(_Views(4), batch_size=2))
    assert not torch.equal(recipe.student.backbone.net.head_conv.weight, state["head_conv.weight"])


def test_image_sets_with_masks_join_pretraining_without_their_masks(tmp_path):
    """hc18 / busi style manifests (a mask column) give multi-crop views of the image; their masks are not read."""
    from sonodistill.data.manifest import Manifest
    from sonodistill.data.multicrop import MultiCropAugment, MultiCropConfig
    from sonodistill.data.preprocess import PreprocessConfig
    from sonodistill.data.pretraining import pretraining_dataset
    from sonodistill.data.synthetic import write_dataset

    m = Manifest.from_csv(write_dataset("fetal-head", tmp_path / "heads", n=2, seed=0, size=48, workers=1))
    assert "mask" in m.table.columns
    m.table["mask"] = [str(tmp_path / "no-such-mask.png")] * len(m)  # would fail if a mask were loaded
    crops = MultiCropAugment(MultiCropConfig(global_size=32, local_size=16, n_local=2))
    ds = pretraining_dataset([m], PreprocessConfig(size=48), None, crops, frames_per_video=1, seed=0)
    views = ds[0]["x"]
    assert [tuple(v.shape) for v in views] == [(1, 32, 32)] * 2 + [(1, 16, 16)] * 2
    assert "mask" in m.table.columns  # the caller's manifest is left as it was
