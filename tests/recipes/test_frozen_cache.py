"""Partial finetuning from cached frozen stages (`train.frozen_cache_views`): exact, and refused where it does not fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sonodistill.config import load_config, packaged_config
from sonodistill.errors import ConfigError
from sonodistill.models.backbones import build_backbone
from sonodistill.models.heads import ClassificationHead
from sonodistill.models.stages import Classifier
from sonodistill.protocols.folds import run_protocol
from sonodistill.recipes.frozen_cache import FrozenPrefixCache
from tests.recipes.conftest import image_folder, read_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("frozen", [1, 2, 4])
def test_frame_encoder_from_its_frozen_prefix_equals_the_whole_forward(frozen):
    torch.manual_seed(0)
    bb = build_backbone("efficientnet_lite0", width=1.0, freeze_stages=frozen).train()
    model = Classifier(bb, ClassificationHead(bb.embed_dim, 3)).train()
    x = torch.rand(4, 1, 64, 64)
    whole = bb(x)
    h = bb.frozen_prefix(x)
    assert not h.requires_grad and h.shape[1] == bb.stage_channels[frozen - 1]
    part = bb.forward_from_prefix(h)
    assert len(part.stages) == 5 - frozen
    for a, b in zip(whole.stages[frozen:], part.stages):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(x), model.forward_from_prefix(h), rtol=0, atol=1e-5)


def test_video_encoder_from_its_frozen_prefix_equals_the_whole_forward_with_the_shift():
    torch.manual_seed(0)
    bb = build_backbone("tsm_efficientnet_lite0", width=1.0, freeze_stages=2).train()
    x = torch.rand(2, 1, 4, 64, 64)
    h = bb.frozen_prefix(x)
    assert h.shape == (2, 24, 4, 16, 16)
    whole, part = bb(x), bb.forward_from_prefix(h)
    for a, b in zip(whole.stages[2:], part.stages):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole.pooled, part.pooled, rtol=0, atol=1e-5)


def test_frozen_prefix_without_frozen_stages_is_refused():
    with pytest.raises(ConfigError, match="freeze_stages >= 1"):
        build_backbone("efficientnet_lite0", width=1.0).frozen_prefix(torch.rand(1, 1, 32, 32))


class _Augmented(torch.utils.data.Dataset):
    """Items whose `x` depends on (epoch, index), like the seeded augmentation of the real data sets."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        return {"x": torch.rand(1, 32, 32, generator=g), "y": i % 2, "index": i}


def test_the_cache_holds_view_v_of_every_item_and_epoch_e_reads_view_e_mod_k():
    torch.manual_seed(0)
    bb = build_backbone("efficientnet_lite0", width=1.0, freeze_stages=2)
    data = _Augmented(7)
    cache = FrozenPrefixCache(data, bb, views=3, batch_size=3)
    assert len(cache) == 7 and data.epoch == 0
    for epoch in (0, 1, 2, 4):
        cache.set_epoch(epoch)
        data.set_epoch(epoch % 3)
        for i in (0, 3, 6):
            item = cache[i]
            assert item["y"] == i % 2 and item["index"] == i
            expected = bb.frozen_prefix(data[i]["x"][None])[0]
            torch.testing.assert_close(item["x"], expected, rtol=0, atol=1e-5)
    cache.set_epoch(0)
    assert not torch.equal(cache[0]["x"], (cache.set_epoch(1), cache[0]["x"])[1])


def _cfg(tmp_path, name, *extra):
    data = tmp_path / "data"
    if not data.exists():
        image_folder(data, n_per_class=8)
    overrides = [f"out_dir={tmp_path / 'runs'}", f"name={name}", f"data.spec=folder:{data}", "data.size=32",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=4", "model.pretrained=none",
                 "train.folds=2", "train.fold=0", "train.epochs=2", "optim.warmup_epochs=0", *extra]
    return load_config(packaged_config("pocus-finetune-imagenet"), overrides)


def _epoch_losses(run_dir):
    log = pd.read_csv(run_dir / "fold_0" / "logs" / "metrics.csv")
    return log.dropna(subset=["train/loss_epoch"])["train/loss_epoch"].to_numpy()


def test_a_cached_run_trains_the_same_model_as_the_uncached_one(tmp_path, monkeypatch):
    """Two epochs, two cached views: the same augmented inputs in the same order, so the same losses and model."""
    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))
    run_protocol(_cfg(tmp_path, "plain"))
    run_protocol(_cfg(tmp_path, "cached", "train.frozen_cache_views=2"))
    runs = tmp_path / "runs"
    a, b = _epoch_losses(runs / "plain"), _epoch_losses(runs / "cached")
    assert len(a) == 2 and a[0] != a[1]  # it trained
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    wa = read_weights(runs / "plain" / "fold_0" / "model.safetensors")
    wb = read_weights(runs / "cached" / "fold_0" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-4, msg=k)
    pa, pb = (pd.read_csv(runs / r / "predictions.csv") for r in ("plain", "cached"))  # prediction takes images
    np.testing.assert_allclose(pa.filter(like="prob_").to_numpy(), pb.filter(like="prob_").to_numpy(), atol=1e-4)


@pytest.mark.parametrize("extra, message", [
    (["train.frozen_cache_views=2", "model.freeze_stages=0"], "model.freeze_stages >= 1"),
    (["train.frozen_cache_views=2", "data.augment=false"], "every view is the same"),
    (["train.frozen_cache_views=-1"], "must be >= 0"),
    (["train.frozen_cache_views=1", "recipe=dualdistill"], "plain supervised finetuning"),
])
def test_options_that_do_not_fit_the_cache_are_refused_before_the_run_is_written(tmp_path, monkeypatch, extra,
                                                                                  message):
    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(tmp_path, "bad", *extra)
    with pytest.raises(ConfigError, match=message):
        run_protocol(cfg)
    assert not (tmp_path / "runs" / "bad" / "fold_0").exists()


def test_a_backbone_that_cannot_run_its_frozen_stages_apart_is_refused(tmp_path):
    from sonodistill.recipes.frozen_cache import check_frozen_cache
    from sonodistill.recipes.supervised import SupervisedRecipe

    cfg = _cfg(tmp_path, "bad", "train.frozen_cache_views=1")
    with pytest.raises(ConfigError, match="no frozen_prefix"):
        check_frozen_cache(cfg, SupervisedRecipe, backbone=torch.nn.Identity())
