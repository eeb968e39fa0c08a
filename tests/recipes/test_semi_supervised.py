"""Semi-supervised segmentation recipes: every method's loss runs and is finite, EMA teacher, inference model,
options, and an end-to-end segmentation CV run that never reads an unlabelled mask and writes the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sonodistill.config import load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.recipes import get_recipe
from sonodistill.recipes.semi_supervised import EncoderD1, SemiSupervisedSegmentationRecipe

METHODS = ["seg_supervised", "mean_teacher", "fixmatch", "cps", "hdc"]


def write_ellipse_set(root: Path, n: int = 12, h: int = 40, w: int = 56, seed: int = 0) -> Manifest:
    """n speckled H x W PNGs with a bright elliptical ring, filled-ellipse masks, 2 images per group, HC target."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rows = []
    for i in range(n):
        a, b = rng.uniform(10, 16), rng.uniform(6, 10)
        cy, cx, th = rng.uniform(17, 23), rng.uniform(24, 32), rng.uniform(0, math.pi)
        u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
        v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        mask = r <= 1.0
        img = 40 + 30 * rng.random((h, w)) + 150 * (np.abs(r - 1.0) < 0.15) + 40 * mask
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"im{i:02d}.png")
        a_mm, b_mm = 0.5 * a, 0.5 * b
        hc = math.pi * (3 * (a_mm + b_mm) - math.sqrt((3 * a_mm + b_mm) * (a_mm + 3 * b_mm)))
        rows.append({"path": f"images/im{i:02d}.png", "group": f"s{i // 2}", "mask": f"masks/im{i:02d}.png",
                     "target": hc, "pixel_size_mm": 0.5})
    manifest = Manifest(pd.DataFrame(rows), [], "image", "ellipses")
    manifest.to_csv(root / "manifest.csv")
    return Manifest.from_csv(root / "manifest.csv")


_TINY_OVERRIDES = [
    "name=run", "data.size=32", "data.batch_size=4", "data.crop_region=false", "data.remove_overlay=false",
    "model.backbone=unet", "model.width=0.25", "train.epochs=1", "train.folds=3", "train.fold=0",
    "train.log_every_n_steps=1", "optim.warmup_epochs=0",
    "recipe_options={labelled_fraction: 0.3, iterations_per_epoch: 2, channels: [8, 16, 32]}",
]


def tiny_overrides(recipe: str, tmp_path: Path, *extra: str) -> list[str]:
    return [f"recipe={recipe}", f"out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
            *_TINY_OVERRIDES, *extra]


def tiny_cfg(recipe: str, tmp_path: Path, *extra: str):
    return load_config(None, tiny_overrides(recipe, tmp_path, *extra))


def synthetic_batch(n_l: int = 2, n_u: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n_l, 1, size, size)
    mask[:, :, 8:24, 6:20] = 1.0
    labelled = {"x": torch.rand(n_l, 1, size, size, generator=g) + mask, "mask": mask}
    xu = torch.rand(n_u, 1, size, size, generator=g)
    unlabelled = {"x_weak": xu, "x_strong": (xu * 1.2).clamp(0, 1)}
    return labelled, unlabelled


@pytest.mark.parametrize("method", METHODS)
def test_each_recipe_trains_a_few_steps_with_finite_parts(method, tmp_path):
    cfg = tiny_cfg(method, tmp_path)
    recipe = get_recipe(method)(cfg, num_classes=2, steps_per_epoch=3)
    assert recipe.task == "segmentation" and isinstance(recipe, SemiSupervisedSegmentationRecipe)
    opt = torch.optim.AdamW([p for p in recipe.parameters() if p.requires_grad], lr=1e-3)
    recipe.train()
    losses = []
    for step in range(3):
        labelled, unlabelled = synthetic_batch(seed=step)
        loss, parts = recipe.compute_loss(labelled, unlabelled if recipe.uses_unlabelled else None)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert "sup" in parts and all(torch.isfinite(v).all() for v in parts.values())
        if recipe.uses_unlabelled:
            assert "unsup" in parts and "weight" in parts
            # the collapse diagnostic: predicted foreground on unlabelled images beside the labelled masks'
            assert 0 <= float(parts["unsup/fg_fraction"]) <= 1
            assert float(parts["sup/fg_fraction"]) == pytest.approx(16 * 14 / 32**2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(recipe, "update_teacher"):
            recipe.update_teacher(step)
        losses.append(float(loss.detach()))
    x = torch.rand(2, 1, 32, 32)
    out = recipe.inference_model().eval()(x)
    assert out.shape == (2, 2, 32, 32)


def test_supervised_baseline_ignores_unlabelled_images(tmp_path):
    recipe = get_recipe("seg_supervised")(tiny_cfg("seg_supervised", tmp_path), steps_per_epoch=1)
    labelled, _ = synthetic_batch()
    torch.manual_seed(0)
    a, _ = recipe.compute_loss(labelled, None)
    assert recipe.uses_unlabelled is False and torch.isfinite(a)


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_inference_model_is_encoder_and_d1_only(method, tmp_path):
    recipe = get_recipe(method)(tiny_cfg(method, tmp_path), steps_per_epoch=1)
    inference = recipe.inference_model()
    expected = _param_count(recipe.student.encoder) + _param_count(recipe.student.decoder1)
    assert _param_count(inference) == expected
    trainable = sum(p.numel() for p in recipe.parameters() if p.requires_grad)
    if method in ("hdc", "cps"):  # D2 / network B are training-only
        assert trainable > expected
    names = set(dict(inference.named_parameters()))
    assert not any("decoder2" in n for n in names)
    # the inference model shares the student's parameters (saving it saves the trained weights)
    assert inference.encoder is recipe.student.encoder


def test_ema_teacher_follows_the_formula_for_parameters_and_buffers(tmp_path):
    recipe = get_recipe("mean_teacher")(tiny_cfg("mean_teacher", tmp_path), steps_per_epoch=1)
    teacher = recipe.teacher.module
    assert all(not p.requires_grad for p in teacher.parameters())
    opt = torch.optim.SGD([p for p in recipe.parameters() if p.requires_grad], lr=0.1)
    recipe.train()
    labelled, unlabelled = synthetic_batch()
    loss, _ = recipe.compute_loss(labelled, unlabelled)  # also updates the student's BN running stats
    opt.zero_grad()
    loss.backward()
    opt.step()
    before_params = {k: v.clone() for k, v in teacher.named_parameters()}
    before_buffers = {k: v.clone() for k, v in teacher.named_buffers()}
    student = EncoderD1(recipe.student)
    momentum = recipe.update_teacher(step=10)
    assert momentum == pytest.approx(min(1 - 1 / 11, 0.99))
    changed = 0
    for k, p in teacher.named_parameters():
        s = dict(student.named_parameters())[k]
        torch.testing.assert_close(p, momentum * before_params[k] + (1 - momentum) * s.detach(), rtol=0, atol=1e-6)
        changed += int(not torch.equal(p, before_params[k]))
    assert changed > 0
    for k, b in teacher.named_buffers():
        s = dict(student.named_buffers())[k]
        if b.is_floating_point():  # BatchNorm running mean/var: averaged too
            torch.testing.assert_close(b, momentum * before_buffers[k] + (1 - momentum) * s, rtol=0, atol=1e-6)
    assert recipe.ema_momentum(0) == 0.0  # first update copies the student (mean-teacher warm-up)
    assert recipe.ema_momentum(10_000) == 0.99


def test_teacher_gets_no_gradient(tmp_path):
    recipe = get_recipe("hdc")(tiny_cfg("hdc", tmp_path), steps_per_epoch=1)
    recipe.train()
    loss, _ = recipe.compute_loss(*synthetic_batch())
    loss.backward()
    assert all(p.grad is None for p in recipe.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in recipe.student.decoder2.parameters())


def test_unknown_or_bad_options_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe_options \(HDCRecipe\): unknown field\(s\) \['lamda_cg'\]"):
        get_recipe("hdc")(tiny_cfg("hdc", tmp_path, "recipe_options.lamda_cg=2"), steps_per_epoch=1)
    with pytest.raises(ConfigError, match=r"mi_marginal must be one of \('entropy', 'none', 'prior'\)"):
        get_recipe("hdc")(tiny_cfg("hdc", tmp_path, "recipe_options.mi_marginal=uniform"), steps_per_epoch=1)
    with pytest.raises(ConfigError, match=r"pc_loss must be one of \('mse', 'ce'\), got 'kl'"):
        get_recipe("hdc")(tiny_cfg("hdc", tmp_path, "recipe_options.pc_loss=kl"), steps_per_epoch=1)
    with pytest.raises(ConfigError, match=r"mi_prior_weight must be a finite number >= 0, got -1"):
        get_recipe("hdc")(tiny_cfg("hdc", tmp_path, "recipe_options.mi_prior_weight=-1"), steps_per_epoch=1)
    with pytest.raises(ConfigError, match="applies to mi_marginal 'prior' only"):
        get_recipe("hdc")(tiny_cfg("hdc", tmp_path, "recipe_options.mi_prior_weight=10"), steps_per_epoch=1)
    with pytest.raises(ConfigError, match="labelled_fraction"):
        get_recipe("fixmatch")(tiny_cfg("fixmatch", tmp_path, "recipe_options.labelled_fraction=0"), steps_per_epoch=1)
    with pytest.raises(ConfigError, match="model.backbone=unet, or one of .*efficientnet_lite2"):
        get_recipe("cps")(tiny_cfg("cps", tmp_path, "model.backbone=resnet18"), steps_per_epoch=1)


def test_a_larger_efficientnet_lite_encoder_builds_the_dual_decoder_student(tmp_path):
    recipe = get_recipe("hdc")(tiny_cfg("hdc", tmp_path, "model.backbone=efficientnet_lite2", "model.width=1.0"),
                               steps_per_epoch=1)
    assert recipe.student.encoder.trunk.stage_channels == [16, 24, 48, 120, 1280]  # Lite2's, not Lite0's
    assert recipe.inference_model().eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_labelled_fraction_is_a_set_override():
    cfg = load_config(None, ["recipe=hdc", "recipe_options.labelled_fraction=0.05"])
    assert get_recipe("hdc").resolve_options(cfg.recipe_options).labelled_fraction == 0.05


def test_segmentation_cv_never_reads_unlabelled_masks_and_writes_the_report(tmp_path):
    from sonodistill.data.folds import make_folds
    from sonodistill.protocols.folds import run_protocol
    from sonodistill.evaluation.segmentation_report import segmentation_report_from_run_dir
    from sonodistill.protocols.segmentation import split_labelled

    manifest = write_ellipse_set(tmp_path / "data", n=12)
    cfg = tiny_cfg("hdc", tmp_path)
    train, test = make_folds(manifest, cfg.train.folds, cfg.train.seed)[0]
    labelled, unlabelled = split_labelled(manifest, train, 0.3, seed=cfg.train.seed)
    assert len(labelled) and len(unlabelled) and not set(labelled) & set(unlabelled)
    assert not set(manifest.groups[labelled]) & set(manifest.groups[unlabelled])  # grouped choice
    for r in unlabelled:  # any read of these masks would raise
        Path(manifest.table["mask"].iloc[r]).write_bytes(b"not a png")

    summary = run_protocol(cfg, manifest=manifest)
    run = cfg.run_dir
    for name in ("report.md", "metrics.json", "metrics_per_fold.csv", "predictions.csv", "timing.json"):
        assert (run / name).is_file(), name
    fold = run / "fold_0"
    split = json.loads((fold / "split.json").read_text())
    assert sorted(split["labelled"]) == labelled.tolist() and sorted(split["unlabelled"]) == unlabelled.tolist()
    assert (fold / "model.safetensors").is_file() and (fold / "checkpoints" / "last.ckpt").is_file()
    assert len(list((fold / "overlays").glob("*.png"))) == min(4, len(test))
    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(pred["index"]) == sorted(test.tolist())
    assert {"dice", "iou", "hd95", "asd", "hc_true_mm", "hc_pred_mm", "hc_abs_err_mm"} <= set(pred.columns)
    assert pred["dice"].between(0, 1).all()
    assert set(summary) >= {"dice", "iou", "hd95", "asd", "hc_abs_err_mm"}
    before = (run / "report.md").read_text()
    assert "hdc" in before and "hc_abs_err_mm" in before
    (run / "report.md").unlink()
    segmentation_report_from_run_dir(run)
    assert (run / "report.md").read_text() == before
    # the training warnings read the fold's log: a student whose unlabelled foreground share drifts is reported
    log = pd.read_csv(fold / "logs" / "metrics.csv")
    assert {"train/unsup/fg_fraction", "train/sup/fg_fraction"} <= set(log.columns)
    drifted = log["train/unsup/fg_fraction"].notna()
    log.loc[drifted, "train/unsup/fg_fraction"] = 0.2 * log.loc[drifted, "train/sup/fg_fraction"].mean()
    log.to_csv(fold / "logs" / "metrics.csv", index=False)
    segmentation_report_from_run_dir(run)
    report = (run / "report.md").read_text()
    assert "## Training warnings" in report and "- fold_0: in epoch" in report and "0.20x" in report
    assert json.loads((run / "metrics.json").read_text())["warnings"][0].startswith("fold_0:")


def test_dice_background_option_reaches_the_supervised_loss(tmp_path):
    recipe = get_recipe("mean_teacher")(tiny_cfg("mean_teacher", tmp_path, "recipe_options.dice_background=true"),
                                        num_classes=2, steps_per_epoch=1)
    assert recipe.sup_loss.inner.dice.include_background is True
    default = get_recipe("mean_teacher")(tiny_cfg("mean_teacher", tmp_path), num_classes=2, steps_per_epoch=1)
    assert default.sup_loss.inner.dice.include_background is False


def test_cps_without_rampup_warns_of_its_locked_state(tmp_path, caplog):
    """CPS at full weight from step 0 can lock both networks (docs/hdc.md): said once at construction, not refused."""
    with caplog.at_level("WARNING", logger="sonodistill.recipes.semi_supervised"):
        get_recipe("cps")(tiny_cfg("cps", tmp_path, "recipe_options.rampup_fraction=0"), steps_per_epoch=1)
    assert any("rampup_fraction=0" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="sonodistill.recipes.semi_supervised"):
        get_recipe("cps")(tiny_cfg("cps", tmp_path), steps_per_epoch=1)
        get_recipe("fixmatch")(tiny_cfg("fixmatch", tmp_path, "recipe_options.rampup_fraction=0"), steps_per_epoch=1)
    assert not caplog.records


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mean_teacher", "fixmatch", "cps", "hdc"])
def test_resume_after_kill_equals_uninterrupted(method, tmp_path):
    """kill -9 in epoch 1 (random weak / strong views, both streams' permutations, EMA teacher, CPS's second network,
    HDC's feature noise and labelled-prior counts), then resume: the same weights and predictions as a run never
    stopped. Long grids (docs/hdc.md) resume their runs across sessions, so their numbers must not depend on it."""
    from sonodistill.protocols.folds import run_protocol
    from tests.recipes.conftest import read_weights
    from tests.recipes.interrupt import kill_when_parked

    manifest = write_ellipse_set(tmp_path / "data", n=12)
    extra = ["train.epochs=3", "data.augment=true"] + (["recipe_options.mi_marginal=prior"] if method == "hdc" else [])
    full = tiny_cfg(method, tmp_path, *extra, "name=full")
    run_protocol(full, manifest=manifest, enable_progress_bar=False)

    cut = tiny_cfg(method, tmp_path, *extra, "name=cut")
    assert method != "hdc" or cut.recipe_options["mi_marginal"] == "prior"
    kill_when_parked(tmp_path, tiny_overrides(method, tmp_path, *extra, "name=cut"), manifest)
    assert not (cut.run_dir / "fold_0" / "predictions.csv").exists()
    saved = torch.load(cut.run_dir / "fold_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0  # killed during epoch 1: epoch 0 was checkpointed
    torch.manual_seed(12345)  # this process's global RNG state must not matter
    run_protocol(cut, resume=True, manifest=manifest, enable_progress_bar=False)

    a = read_weights(full.run_dir / "fold_0" / "model.safetensors")
    b = read_weights(cut.run_dir / "fold_0" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert (full.run_dir / "predictions.csv").read_text() == (cut.run_dir / "predictions.csv").read_text()


def test_each_epoch_draws_new_two_stream_batches_and_reaches_every_unlabelled_image(tmp_path):
    """The two-stream sampler's epoch reaches it in a real run: batches differ between epochs, and with fewer
    iterations than one pass over the unlabelled images the epochs still cover them all (they repeated epoch 0's
    batches, leaving the same images unseen, while only Lightning was trusted to call its set_epoch)."""
    import lightning as L

    from sonodistill.protocols.folds import run_protocol

    manifest = write_ellipse_set(tmp_path / "data", n=24)
    seen: dict[int, list[int]] = {}

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).extend(batch["unlabelled"]["index"].tolist())

    cfg = tiny_cfg("mean_teacher", tmp_path, "train.epochs=6", "data.augment=false")
    run_protocol(cfg, manifest=manifest, enable_progress_bar=False, extra_callbacks=[Record()])
    split = json.loads((cfg.run_dir / "fold_0" / "split.json").read_text())
    n_unlabelled = len(split["unlabelled"])
    assert len(seen[0]) < n_unlabelled  # 2 iterations x 2 unlabelled images: less than one pass an epoch
    assert seen[1] != seen[0]
    assert set().union(*seen.values()) == set(range(n_unlabelled))


def test_labelled_rows_masks_trains_on_a_users_few_masks_among_many_images(tmp_path):
    """`labelled_rows: masks`: the rows with a mask are the labelled ones in every fold, the rows without one the
    unlabelled ones, and only masked test rows are scored (a row without a mask has nothing to score against).
    Before, a manifest with empty masks stopped with 'labelled row(s) ... have no mask file'."""
    from sonodistill.protocols.folds import run_protocol

    manifest = write_ellipse_set(tmp_path / "data", n=16)
    table = manifest.table.copy()
    unmasked = set(range(1, 16, 2)) | {2}  # 9 of 16 images without a mask
    table["mask"] = ["" if i in unmasked else m for i, m in enumerate(table["mask"])]
    mixed = Manifest(table, manifest.classes, manifest.modality, "mixed")
    cfg = tiny_cfg("fixmatch", tmp_path, "recipe_options.labelled_fraction=1.0")
    with pytest.raises(ConfigError, match=r"have no mask file .*labelled_rows=masks"):
        run_protocol(cfg, manifest=mixed)
    cfg = tiny_cfg("fixmatch", tmp_path, "recipe_options.labelled_rows=masks", "name=masks", "train.fold=null")
    run_protocol(cfg, manifest=mixed)
    folds = json.loads((cfg.run_dir / "folds.json").read_text())
    scored = []
    for fold in folds:
        split = json.loads((cfg.run_dir / f"fold_{fold['fold']}" / "split.json").read_text())
        assert split["labelled_rows"] == "masks"
        assert sorted(split["labelled"]) == [r for r in fold["train"] if r not in unmasked]
        assert sorted(split["unlabelled"]) == [r for r in fold["train"] if r in unmasked]
        assert sorted(split["test"]) == [r for r in fold["test"] if r not in unmasked]
        scored += split["test"]
    pred = pd.read_csv(cfg.run_dir / "predictions.csv")
    assert sorted(pred["index"]) == sorted(scored) == sorted(set(range(16)) - unmasked)
    assert "labelled: the items with a mask" in (cfg.run_dir / "report.md").read_text()
    with pytest.raises(ConfigError, match=r"labelled_rows must be one of \['fraction', 'masks'\]"):
        get_recipe("fixmatch").resolve_options({"labelled_rows": "some"})


def test_labelled_flag_takes_a_fraction_or_masks(capsys):
    from sonodistill.cli import build_parser
    from sonodistill.commands.train import config_from_args

    def options(*flags: str):
        args = build_parser().parse_args(["train", "hdc", "--name", "x", *flags])
        return get_recipe("hdc").resolve_options(config_from_args(args, "hdc").recipe_options)

    assert options("--labelled", "0.05").labelled_fraction == 0.05
    assert options("--labelled", "0.05").labelled_rows == "fraction"
    assert options("--labelled", "masks").labelled_rows == "masks"
    with pytest.raises(SystemExit):
        options("--labelled", "most")
    assert "expected a fraction such as 0.1, or 'masks', got 'most'" in capsys.readouterr().err
