"""`train.channels_last`: convolution weights in channels-last order train the same model (up to float rounding)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sonodistill.recipes.trainer import ChannelsLast, build_trainer, to_channels_last
from sonodistill.recipes import get_recipe
from tests.tiny_segmentation import seg_config, trained_seg_run

from .conftest import read_weights
from .test_semi_supervised import synthetic_batch, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv3d = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.conv2d = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B x 1 x T x H x W
        y = self.conv3d(x).mean(2)
        return self.fc(self.conv2d(torch.relu(self.norm(y))).mean((2, 3)))


def test_to_channels_last_reorders_4d_and_5d_weights_and_keeps_the_model():
    torch.manual_seed(0)
    model = TwoConvs().eval()
    reference = copy.deepcopy(model)
    params = {name: p for name, p in model.named_parameters()}
    assert not model.conv2d.weight.is_contiguous(memory_format=torch.channels_last)
    assert to_channels_last(model) is model
    assert model.conv2d.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv3d.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert all(p is params[name] for name, p in model.named_parameters())  # optimisers keep their parameters
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 1, 3, 8, 8)
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_the_option_adds_the_callback(tmp_path):
    with_it = build_trainer(seg_config("hdc", tmp_path, "train.channels_last=true"), tmp_path / "a")
    without = build_trainer(seg_config("hdc", tmp_path), tmp_path / "b")
    assert any(isinstance(c, ChannelsLast) for c in with_it.callbacks)
    assert not any(isinstance(c, ChannelsLast) for c in without.callbacks)


@pytest.mark.parametrize("method", ["seg_supervised", "mean_teacher", "fixmatch", "cps", "hdc"])
def test_a_step_gives_the_same_loss_and_gradients_in_channels_last_order(method, tmp_path):
    """One step of each segmentation recipe from the same weights and random draws: the same loss and gradients up
    to float rounding, so the option changes speed, not the method (HDC's feature noise is drawn in logical order:
    `empty_like(x).uniform_()` would fill a channels-last map in memory order, other values at each position)."""
    cfg = tiny_cfg(method, tmp_path)
    torch.manual_seed(0)
    default = get_recipe(method)(cfg, num_classes=2, steps_per_epoch=3).train()
    reordered = to_channels_last(copy.deepcopy(default))
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in reordered.parameters())
    labelled, unlabelled = synthetic_batch(seed=1)
    grads = []
    for recipe in (default, reordered):
        torch.manual_seed(7)  # the same draws (dropout, augmentation of the strong view) for both
        loss, _ = recipe.compute_loss(labelled, unlabelled if recipe.uses_unlabelled else None)
        loss.backward()
        grads.append((float(loss), {n: p.grad for n, p in recipe.named_parameters() if p.grad is not None}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_b == pytest.approx(loss_a, rel=1e-5) and grad_a.keys() == grad_b.keys() and grad_a
    for name in grad_a:
        torch.testing.assert_close(grad_b[name], grad_a[name], atol=1e-5, rtol=1e-3, msg=name)


def test_a_channels_last_run_trains_to_the_default_runs_masks(tmp_path):
    """HDC trained end to end both ways from the same seed: the same test metrics; the weights differ by rounding,
    most where Adam's step follows the sign of a near-zero gradient (at most a few learning-rate steps)."""
    runs = {name: trained_seg_run(tmp_path / name, "hdc", *extra)
            for name, extra in (("default", ()), ("channels_last", ("train.channels_last=true",)))}
    for fold in ("fold_0", "fold_1"):
        a = read_weights(runs["default"] / fold / "model.safetensors")
        b = read_weights(runs["channels_last"] / fold / "model.safetensors")
        assert a.keys() == b.keys()
        diffs = [float((a[k].float() - b[k].float()).abs().max()) for k in a]
        assert max(diffs) < 0.01 and float(np.median(diffs)) < 1e-3, (max(diffs), float(np.median(diffs)))
    pa, pb = (pd.read_csv(r / "predictions.csv") for r in runs.values())
    cols = ["dice", "iou", "hc_pred_mm"]
    assert list(pa.columns) == list(pb.columns)
    np.testing.assert_allclose(pa[cols].to_numpy(float), pb[cols].to_numpy(float), atol=1e-3)
