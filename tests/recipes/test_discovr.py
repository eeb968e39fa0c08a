"""DISCOVR: finite terms, gradient routing of SCD, EMA teachers, video-only variant, and the full protocol."""

from __future__ import annotations

import json

import pytest
import torch

from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.losses.dino import MaskedViewDINOLoss
from sonodistill.recipes.discovr import DISCOVRRecipe

TINY = [
    "recipe=discovr", "model.backbone=video_vit", "model.width=1.0", "data.size=32", "data.num_frames=4", "train.epochs=2",
    "model.kwargs={dim: 24, depth: 1, heads: 2, tubelet: [2, 8, 8], num_frames: 4, img_size: 32}",
]
TINY_OPTIONS = ("image_kwargs: {dim: 24, depth: 1, heads: 2}, out_dim: 64, head_hidden_dim: 32, "
                "head_bottleneck_dim: 16, decoder_dim: 12, decoder_heads: 2, n_prototypes: 8, "
                "video_mask_ratio: 0.75")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_recipe(extra: str = "", steps_per_epoch: int = 3, overrides: list[str] | None = None) -> DISCOVRRecipe:
    torch.manual_seed(0)
    opts = "{" + TINY_OPTIONS + (", " + extra if extra else "") + "}"
    return DISCOVRRecipe(load_config(None, TINY + [f"recipe_options={opts}"] + (overrides or [])),
                         steps_per_epoch=steps_per_epoch)


def clips(b: int = 3) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(b, 1, 4, 32, 32, generator=torch.Generator().manual_seed(1))}


def test_all_terms_finite_and_present():
    r = tiny_recipe("n_video_masks: 2, n_image_masks: 3")
    loss, parts = r.compute_loss(clips())
    assert torch.isfinite(loss)
    for k in ("loss_vid", "loss_img", "loss_scd"):
        assert torch.isfinite(parts[k]) and parts[k] > 0, k
    torch.testing.assert_close(loss, parts["loss_vid"] + parts["loss_img"] + parts["loss_scd"])
    assert parts["scd/clusters_used"] >= 1 and "vid/teacher_entropy" in parts and "img/teacher_entropy" in parts
    loss.backward()


def test_masked_view_dino_is_the_mean_over_views_of_h_pt_ps():
    crit = MaskedViewDINOLoss(3, out_dim=5, teacher_temp=0.07, student_temp=0.1).eval()
    t, s = torch.randn(4, 5), torch.randn(12, 5)
    p_t = torch.softmax(t / 0.07, dim=1)  # centre is 0 at start
    ref = torch.stack([-(p_t * torch.log_softmax(v / 0.1, dim=1)).sum(1).mean() for v in s.chunk(3)]).mean()
    torch.testing.assert_close(crit(s, t, 0).loss, ref)


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters() if p.requires_grad]


def test_scd_gradients_reach_video_model_decoder_prototypes_but_not_the_image_encoder():
    r = tiny_recipe("use_vid: false, use_img: false")  # the loss is L_SCD alone
    loss, parts = r.compute_loss(clips())
    assert set(k for k in parts if k.startswith("loss")) == {"loss_scd"}
    loss.backward()
    assert all(g is None for g in _grads(r.student_i)), "SCD must not train the image encoder"
    assert all(not p.requires_grad for p in r.teacher_i.parameters())
    assert r.prototypes.prototypes.grad is not None and r.prototypes.prototypes.grad.abs().sum() > 0
    assert r.decoder.embed.weight.grad.abs().sum() > 0
    assert r.student_v.backbone.patch_embed.weight.grad.abs().sum() > 0
    assert r.student_v.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_image_side_scd_term_sends_no_gradient_to_the_prototypes(monkeypatch):
    """The authors' routing: the image (teacher) side is scored against detached prototypes, so its cross-entropy
    CE(s_i, q_v) trains nothing; only the video side's CE(s_v, q_i) trains the prototypes."""
    from sonodistill.losses.base import LossOutput
    from sonodistill.losses.sinkhorn import sinkhorn_knopp, soft_cross_entropy

    r = tiny_recipe("use_vid: false, use_img: false")

    def image_side_only(video_scores, image_scores):
        q_video = sinkhorn_knopp(video_scores.detach(), 0.05, 10)
        loss = soft_cross_entropy(image_scores, q_video, 0.1)
        return LossOutput(loss, {"scd": loss.detach()})

    monkeypatch.setattr(r.loss_scd, "forward", image_side_only)
    loss, _ = r.compute_loss(clips())
    if loss.requires_grad:
        loss.backward()
    grad = r.prototypes.prototypes.grad
    assert grad is None or not grad.abs().sum() > 0


def test_sinkhorn_defaults_to_the_authors_10_iterations():
    from sonodistill.config import packaged_config
    from sonodistill.losses.sinkhorn import SemanticClusterDistillationLoss

    assert tiny_recipe().loss_scd.n_iters == 10 and SemanticClusterDistillationLoss().n_iters == 10
    assert load_config(packaged_config("discovr-cpu")).recipe_options["sinkhorn_iters"] == 10


def test_image_encoder_gradient_comes_from_l_img_only():
    r = tiny_recipe()
    state = {k: v.clone() for k, v in r.state_dict().items()}
    loss, _ = r.compute_loss(clips())
    loss.backward()
    full = [g.clone() for g in _grads(r.student_i.backbone)]
    r.load_state_dict(state)  # same DINO centres; masks are seeded by the step, so the same masks
    r.zero_grad()
    r.o.use_scd = False
    loss, parts = r.compute_loss(clips())
    assert "loss_scd" not in parts
    loss.backward()
    for a, b in zip(full, _grads(r.student_i.backbone)):
        torch.testing.assert_close(a, b)


def test_teacher_follows_the_student_by_ema():
    r = tiny_recipe(steps_per_epoch=4)
    opt = torch.optim.SGD([p for p in r.parameters() if p.requires_grad], lr=0.1)
    before = {k: v.clone() for k, v in r.teacher_v.state_dict().items()}
    loss, _ = r.compute_loss(clips())
    loss.backward()
    opt.step()
    m = r.ema_step(0)
    assert m == pytest.approx(0.996)
    name = "backbone.blocks.0.mlp.0.weight"
    student = dict(r.student_v.named_parameters())[name]
    teacher = dict(r.teacher_v.named_parameters())[name]
    assert not torch.equal(teacher, before[name])
    torch.testing.assert_close(teacher, m * before[name] + (1 - m) * student.detach())
    with pytest.raises(IndexError):
        r.ema_step(2 * 4)  # the momentum schedule covers epochs x steps only


def test_image_teacher_follows_its_student_by_ema():
    r = tiny_recipe(steps_per_epoch=4)
    name = "backbone.patch_embed.weight"
    before = dict(r.teacher_i.named_parameters())[name].detach().clone()
    with torch.no_grad():
        dict(r.student_i.named_parameters())[name].add_(1.0)
    m = r.ema_step(3)
    assert 0.996 < m < 1.0  # cosine ramp towards 1
    torch.testing.assert_close(dict(r.teacher_i.named_parameters())[name], before + (1 - m) * 1.0)


def test_video_only_variant_builds_no_image_branch():
    r = tiny_recipe("use_img: false, use_scd: false")
    assert not hasattr(r, "student_i") and not hasattr(r, "decoder")
    loss, parts = r.compute_loss(clips())
    assert set(k for k in parts if k.startswith("loss")) == {"loss_vid"}
    assert r.inference_model().image is None


def test_image_only_variant_trains_the_image_branch_alone():
    r = tiny_recipe("use_vid: false, use_scd: false")
    loss, parts = r.compute_loss(clips())
    assert set(k for k in parts if k.startswith("loss")) == {"loss_img"}
    loss.backward()
    assert all(g is None for g in _grads(r.student_v)), "the video student is not run"
    assert r.student_i.backbone.patch_embed.weight.grad.abs().sum() > 0


def test_bad_options_are_errors():
    with pytest.raises(ConfigError, match="unknown field"):
        tiny_recipe("use_image: true")
    with pytest.raises(ConfigError, match="must divide"):
        tiny_recipe("image_backbone: vit_tiny_p16, image_kwargs: {dim: 24, depth: 1, heads: 2}")
    with pytest.raises(ConfigError, match="nothing to train"):
        tiny_recipe("use_vid: false, use_img: false, use_scd: false")


CNN_OPTIONS = ("image_backbone: efficientnet_lite0, image_kwargs: {}, out_dim: 64, head_hidden_dim: 32, "
               "head_bottleneck_dim: 16, decoder_dim: 12, decoder_heads: 2, n_prototypes: 8, video_mask_ratio: 0.75, "
               "image_mask_patch: 8")


def tiny_cnn_recipe(extra: str = "") -> DISCOVRRecipe:
    """The tiny recipe with an EfficientNet-Lite0 image branch (tokens: its stride-16 map, 2x2 at 32 px)."""
    torch.manual_seed(0)
    opts = "{" + CNN_OPTIONS + (", " + extra if extra else "") + "}"
    return DISCOVRRecipe(load_config(None, TINY + [f"recipe_options={opts}"]), steps_per_epoch=3)


def test_cnn_image_branch_trains_by_masked_pixels_and_keeps_the_scd_routing():
    """A CNN image branch: L_img trains it on frames with masked squares, SCD reads its stride-16 map (112
    channels, pooled onto the 4x4 video grid) and still sends it no gradient."""
    r = tiny_cnn_recipe()
    assert r.decoder.head.out_features == 112 and r.prototypes.prototypes.shape[1] == 112
    loss, parts = r.compute_loss(clips())
    assert {"loss_vid", "loss_img", "loss_scd"} <= set(parts) and torch.isfinite(loss)
    loss.backward()
    assert r.student_i.backbone.net.stem_conv.weight.grad.abs().sum() > 0  # from L_img
    scd_only = tiny_cnn_recipe("use_vid: false, use_img: false")
    loss, _ = scd_only.compute_loss(clips())
    loss.backward()
    assert all(g is None for g in _grads(scd_only.student_i)), "SCD must not train the image encoder"
    assert scd_only.student_v.backbone.patch_embed.weight.grad.abs().sum() > 0


def test_cnn_image_branch_starts_from_imagenet_in_training_only():
    """image_pretrained=imagenet loads the ImageNet weights into the image student and its teacher when the
    recipe is built for training; the inference model (which then loads the trained weights) stays random; frozen
    stages do not train."""
    from sonodistill.models import pretrained as pt

    ref = pt.imagenet_state_dict("efficientnet_lite0")[0]["stem_conv.weight"]
    r = tiny_cnn_recipe("image_pretrained: imagenet, image_freeze_stages: 2")
    for branch in (r.student_i, r.teacher_i):
        assert torch.equal(branch.backbone.net.stem_conv.weight, ref)
    assert not r.student_i.backbone.net.stem_conv.weight.requires_grad
    assert r.student_i.backbone.net.head_conv.weight.requires_grad
    cfg = load_config(None, TINY + ["recipe_options={" + CNN_OPTIONS + ", image_pretrained: imagenet}"])
    assert not torch.equal(DISCOVRRecipe.build_inference_model(cfg).image.net.stem_conv.weight, ref)
    from sonodistill.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        tiny_cnn_recipe("image_pretrained: /nonexistent/teacher.safetensors")
    with pytest.raises(ConfigError, match="image_token_stage"):
        tiny_cnn_recipe("image_token_stage: 5")


def test_mask_pixel_patches_blacks_out_the_ratio_of_squares():
    from sonodistill.data.masking import mask_pixel_patches

    x = torch.rand(3, 1, 30, 32) + 0.5  # no zero pixels; 30 rows: the last row of squares is cut to 6
    out = mask_pixel_patches(x, 8, 0.75, torch.Generator().manual_seed(0))
    squares = (out == 0).float().reshape(3, 30, 32)[:, ::8, ::8]  # one pixel per 8x8 square (4 x 4 grid)
    assert squares.shape == (3, 4, 4) and torch.equal(squares.sum(dim=(1, 2)), torch.full((3,), 12.0))
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # what is not masked is untouched
    again = mask_pixel_patches(x, 8, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(squares[0], squares[1])  # one mask per image


def test_image_branch_embeddings_average_the_frames():
    """eval_branch=image: the exported encoders embed a clip with the image encoder per frame, averaged."""
    r = tiny_cnn_recipe("eval_branch: image").eval()
    x = clips(2)["x"]
    enc = r.inference_model()
    per_frame = torch.stack([enc.image(x[:, :, t]).pooled for t in range(x.shape[2])], dim=1)
    torch.testing.assert_close(enc(x).pooled, per_frame.mean(dim=1))
    with pytest.raises(ConfigError, match="needs an image branch"):
        tiny_recipe("use_img: false, use_scd: false, eval_branch: image")


@pytest.mark.slow
def test_protocol_pretrains_on_one_label_and_evaluates(tiny_carotid, tmp_path):
    from sonodistill.protocols.folds import run_protocol

    opts = "{" + TINY_OPTIONS + ", train_on_label: hyperechoic, knn_k: 2, run_folds: [0, 1]}"
    cfg = load_config(None, TINY + [
        f"recipe_options={opts}", "name=discovr", f"out_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=2", "data.augment=false", "train.epochs=2",
        "train.folds=3", "optim.warmup_epochs=0", "train.log_every_n_steps=1"])
    summary = run_protocol(cfg, manifest=tiny_carotid)
    run = cfg.run_dir
    for name in ("folds.json", "metrics.json", "report.md"):
        assert (run / name).is_file(), name
    assert "fold_2" not in {p.name for p in run.iterdir()}
    folds = json.loads((run / "folds.json").read_text())
    for k in (0, 1):
        record = json.loads((run / f"fold_{k}" / "eval.json").read_text())
        train = folds[k]["train"]
        normal_train = [i for i in train if tiny_carotid.table["label"].iloc[i] == "hyperechoic"]
        assert record["pretrain_items"] == len(normal_train)  # pretrained on the normal label only
        assert 0.0 <= record["anomaly"]["auroc"] <= 1.0
    assert summary["anomaly"]["f1"].n == 2 and "linear" in summary and "knn" in summary
    # predictions.csv: the anomaly call of every test clip of the folds run, at each fold's threshold (compare's input)
    import pandas as pd

    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(pred["fold"].unique()) == [0, 1] and len(pred) == sum(len(folds[k]["test"]) for k in (0, 1))
    labels = tiny_carotid.table["label"].iloc[pred["index"]].to_numpy()
    assert (pred["is_anomalous"].to_numpy() == (labels != "hyperechoic")).all()
    for k in (0, 1):
        threshold = json.loads((run / f"fold_{k}" / "eval.json").read_text())["anomaly"]["threshold"]
        part = pred[pred["fold"] == k]
        assert ((part["anomaly_score"] >= threshold).astype(int) == part["anomaly_called"]).all()
    # the exported encoders load back and the teacher moved away from its initialisation
    from sonodistill.recipes.discovr import load_encoders

    enc = load_encoders(cfg, run / "fold_0" / "model.safetensors")
    assert enc.image is not None
    assert enc(torch.randn(1, 1, 4, 32, 32)).pooled.shape == (1, 24)
