"""HDC recipe: loss composition (supervised on both decoders + ramped HDC terms), ramp-up, teacher view."""

from __future__ import annotations

import math

import pytest
import torch

from sonodistill.losses.consistency import DiceCELoss, HDCLoss
from sonodistill.models.segmentation import DualDecoderUNet
from sonodistill.recipes.hdc import HDCRecipe
from sonodistill.recipes.semi_supervised import slice_outputs
from tests.recipes.test_semi_supervised import synthetic_batch, tiny_cfg


def test_student_is_dual_decoder_and_teacher_is_encoder_plus_d1(tmp_path):
    recipe = HDCRecipe(tiny_cfg("hdc", tmp_path, "recipe_options.feature_noise=0.2"), steps_per_epoch=1)
    assert isinstance(recipe.student, DualDecoderUNet)
    assert recipe.student.perturb.noise.amplitude == 0.2
    names = {n.split(".")[0] for n, _ in recipe.teacher.module.named_parameters()}
    assert names == {"encoder", "decoder1"}
    # teacher starts as an exact copy of the student's encoder + D1
    for (n, t), (_, s) in zip(recipe.teacher.module.named_parameters(),
                              [(n, p) for n, p in recipe.student.named_parameters() if n.split(".")[0] in names]):
        torch.testing.assert_close(t, s, msg=n)


def test_loss_equals_sup_on_both_decoders_plus_weighted_hdc_terms(tmp_path):
    recipe = HDCRecipe(tiny_cfg("hdc", tmp_path, "recipe_options.feature_dropout=0.0",
                                "recipe_options.feature_noise=0.0"), steps_per_epoch=10)
    recipe.train()
    labelled, unlabelled = synthetic_batch()
    torch.manual_seed(0)
    loss, parts = recipe.compute_loss(labelled, unlabelled)
    # recompute by hand with the same (deterministic, noise-free) forward passes
    n = labelled["x"].shape[0]
    recipe_out = recipe.student(torch.cat([labelled["x"], unlabelled["x_strong"]]), dual=True)
    target = labelled["mask"].long()
    dice_ce = DiceCELoss(include_background=False)  # the default: supervised Dice on the foreground only
    sup = dice_ce(recipe_out.logits1[:n], target)[0] + dice_ce(recipe_out.logits2[:n], target)[0]
    with torch.no_grad():
        teacher = recipe.teacher.module.eval()(unlabelled["x_weak"])
    w = 1.0 * math.exp(-5.0)  # sigmoid ramp-up at step 0
    unsup = HDCLoss(mi_marginal="none")(slice_outputs(recipe_out, n), teacher, weight=w)[0]  # the recipe's default
    # BatchNorm in train mode: the second forward sees the same batch, so outputs match
    torch.testing.assert_close(loss, sup + unsup, rtol=1e-4, atol=1e-5)
    assert float(parts["weight"]) == pytest.approx(w)
    for key in ("sup", "sup_d2", "hdc/cg", "hdc/mi", "hdc/pc", "unsup"):
        assert key in parts, key
    assert -1e-6 <= float(parts["hdc/mi"]) <= math.log(2) + 1e-6  # I >= 0 up to float32 rounding


def test_pc_loss_ce_routes_hard_pseudo_labels_into_the_hdc_loss(tmp_path):
    recipe = HDCRecipe(tiny_cfg("hdc", tmp_path, "recipe_options.pc_loss=ce", "recipe_options.pc_threshold=0.5",
                                "recipe_options.feature_dropout=0.0", "recipe_options.feature_noise=0.0"),
                       steps_per_epoch=10)
    assert recipe.hdc_loss.pc.kind == "ce" and recipe.hdc_loss.pc.threshold == 0.5
    recipe.train()
    labelled, unlabelled = synthetic_batch()
    _, parts = recipe.compute_loss(labelled, unlabelled)
    n = labelled["x"].shape[0]
    with torch.no_grad():
        student = recipe.student(torch.cat([labelled["x"], unlabelled["x_strong"]]), dual=True).logits1[n:]
        teacher = recipe.teacher.module.eval()(unlabelled["x_weak"]).logits1
    expected = torch.nn.functional.cross_entropy(student, teacher.argmax(dim=1))  # threshold 0.5: every pixel
    torch.testing.assert_close(parts["hdc/pc"], expected, rtol=1e-4, atol=1e-5)


def test_consistency_weight_ramps_up_to_the_configured_value(tmp_path):
    recipe = HDCRecipe(tiny_cfg("hdc", tmp_path, "recipe_options.consistency=0.5",
                                "recipe_options.rampup_fraction=0.5", "train.epochs=2"), steps_per_epoch=10)
    assert recipe.total_steps == 20 and recipe.rampup_steps == 10
    assert recipe.consistency_weight() == pytest.approx(0.5 * math.exp(-5))  # global_step is 0 without a trainer
    from sonodistill.recipes.schedules import sigmoid_rampup

    assert sigmoid_rampup(10, recipe.rampup_steps) == 1.0


def test_prior_marginal_uses_the_labelled_masks_pixel_frequencies(tmp_path):
    recipe = HDCRecipe(tiny_cfg("hdc", tmp_path, "recipe_options.mi_marginal=prior"), steps_per_epoch=10)
    recipe.train()
    labelled, unlabelled = synthetic_batch()
    fg = float(labelled["mask"].mean())
    assert 0.0 < fg < 0.5
    loss, parts = recipe.compute_loss(labelled, unlabelled)
    assert torch.isfinite(loss) and "hdc/mi/marginal_kl" in parts
    torch.testing.assert_close(recipe.labelled_class_pixels.sum(), torch.tensor(float(labelled["mask"].numel()),
                                                                                dtype=torch.float64))
    # the running prior adds every labelled batch: an all-background batch of the same size halves the foreground
    prior = recipe.labelled_prior(torch.zeros_like(labelled["mask"]))
    torch.testing.assert_close(prior, torch.tensor([1 - fg / 2, fg / 2]))
    assert "labelled_class_pixels" in recipe.state_dict()  # kept across a resumed run
    assert recipe.hdc_loss.mi.prior_weight == 1.0
    weighted = HDCRecipe(tiny_cfg("hdc", tmp_path, "recipe_options.mi_marginal=prior",
                                  "recipe_options.mi_prior_weight=10"), steps_per_epoch=10)
    assert weighted.hdc_loss.mi.prior_weight == 10.0
    # a checkpoint from before the prior existed still resumes (strictly), with the counts from zero
    old = {"state_dict": {k: v for k, v in recipe.state_dict().items() if k != "labelled_class_pixels"}}
    recipe.on_load_checkpoint(old)
    recipe.load_state_dict(old["state_dict"], strict=True)
    assert float(recipe.labelled_class_pixels.sum()) == 0.0

