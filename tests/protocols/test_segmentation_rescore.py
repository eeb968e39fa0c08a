"""Rescoring a finished segmentation run from its checkpoints: the same settings reproduce its predictions, the EMA
teacher and flip test-time augmentation score what they say, and training settings are refused."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sonodistill.errors import CheckpointError, ConfigError
from tests.tiny_segmentation import seg_config


def _cfg(root: Path, *extra: str):
    """The tiny HDC config of the serving tests, trained longer (2 epochs x 3 steps) with a fast EMA teacher."""
    return seg_config("hdc", root, "train.epochs=2", "optim.lr=0.01",
                      "recipe_options={labelled_fraction: 0.5, iterations_per_epoch: 3, channels: [8, 16, 32], "
                      "overlays: 0, ema_momentum: 0.5}", *extra)


@pytest.fixture(scope="module")
def hdc_run(tmp_path_factory) -> Path:
    """HDC trained 2 epochs x 3 steps on each of 2 folds of 8 synthetic fetal-head images (HC scored)."""
    from sonodistill.data.manifest import Manifest
    from sonodistill.data.synthetic import write_dataset
    from sonodistill.protocols.folds import run_protocol

    root = tmp_path_factory.mktemp("rescore")
    manifest = Manifest.from_csv(write_dataset("fetal-head", root / "data", n=8, seed=1, size=48, workers=1))
    cfg = _cfg(root)
    run_protocol(cfg, manifest=manifest, enable_progress_bar=False)
    return cfg.run_dir


def test_same_settings_reproduce_the_runs_predictions(hdc_run, tmp_path):
    from sonodistill.protocols.segmentation_rescore import rescore_segmentation_run

    out = tmp_path / "same"
    rescore_segmentation_run(hdc_run, out, [])
    got, want = pd.read_csv(out / "predictions.csv"), pd.read_csv(hdc_run / "predictions.csv")
    assert list(got["index"]) == list(want["index"]) and list(got["fold"]) == list(want["fold"])
    np.testing.assert_allclose(got["dice"], want["dice"], atol=1e-12)
    np.testing.assert_allclose(got["hc_pred_mm"], want["hc_pred_mm"], atol=1e-9)
    assert json.loads((out / "folds.json").read_text()) == json.loads((hdc_run / "folds.json").read_text())
    assert (out / "fold_1" / "hc_calibration.json").read_text() == (hdc_run / "fold_1" / "hc_calibration.json").read_text()
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()


def test_the_teacher_option_scores_the_ema_teachers_weights(hdc_run, tmp_path):
    from sonodistill.config import load_config
    from sonodistill.protocols.segmentation_rescore import LAST_CHECKPOINT, load_trained_recipe, rescore_segmentation_run

    cfg = load_config(hdc_run / "config.yaml", ["recipe_options.eval_model=teacher"])
    recipe = load_trained_recipe(cfg, hdc_run / "fold_0" / LAST_CHECKPOINT)
    served = recipe.inference_model().state_dict()
    teacher = recipe.teacher.module.state_dict()
    student = recipe.student.inference_model().state_dict()
    assert served.keys() == student.keys()  # the same names: the saved / exported model is interchangeable
    for name, value in served.items():
        assert torch.equal(value, teacher[name.replace("decoder.", "decoder1.", 1)]), name
    assert any(not torch.equal(served[k], student[k]) for k in served)  # momentum 0.5 over 6 steps: not the student

    out = tmp_path / "teacher"
    rescore_segmentation_run(hdc_run, out, ["recipe_options.eval_model=teacher"])
    assert load_config(out / "config.yaml").recipe_options["eval_model"] == "teacher"
    from sonodistill.serve.loading import load_model

    served_run = load_model(out)  # the rescored run serves the teacher's weights it scored
    assert served_run.member_names == ["fold_0", "fold_1"]
    for name, value in served_run.members[0].state_dict().items():
        assert torch.equal(value, served[name]), name
    got = pd.read_csv(out / "fold_0" / "predictions.csv")
    want = _scored(recipe.inference_model(), cfg, hdc_run, tmp_path / "direct")
    np.testing.assert_allclose(got["hc_pred_uncorrected_mm"], want["hc_pred_uncorrected_mm"], atol=1e-9)
    np.testing.assert_allclose(got["dice"], want["dice"], atol=1e-12)


def _scored(net, cfg, run: Path, out: Path, flip_tta: bool = False) -> pd.DataFrame:
    """Fold 0's test rows of `run` scored by `net` (its outline calibration applied)."""
    from sonodistill.data.manifest import Manifest
    from sonodistill.evaluation.segmentation_report import predict_segmentation

    split = json.loads((run / "fold_0" / "split.json").read_text())
    offset = json.loads((run / "fold_0" / "hc_calibration.json").read_text())["outline_offset_px"]
    return predict_segmentation(net, cfg, Manifest.from_csv(run / "manifest.csv"), np.asarray(split["test"]), 0, out,
                                hc_outline_offset_px=offset, flip_tta=flip_tta)


class _Threshold(torch.nn.Module):
    """A fixed, mirror-asymmetric segmenter: foreground logit 20 (x - 0.3) + 3 (column position - 1/2)."""

    def __init__(self, mirrored: bool = False) -> None:
        super().__init__()
        self.mirrored = mirrored
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # predict_segmentation reads the device from a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mirrored:  # the same segmenter applied to the mirrored image, its output mirrored back
            return self.__class__()(x.flip(-1)).flip(-1)
        ramp = torch.linspace(0, 1, x.shape[-1])
        fg = 20 * (x[:, 0] - 0.3) + 3 * (ramp - 0.5)
        return torch.stack([torch.zeros_like(fg), fg], dim=1)


def test_flip_tta_scores_the_mean_of_the_image_and_its_mirror(hdc_run, tmp_path):
    from sonodistill.config import load_config
    from sonodistill.models.segmentation import FlipAveraged
    from sonodistill.protocols.segmentation_rescore import LAST_CHECKPOINT, load_trained_recipe, rescore_segmentation_run

    cfg = load_config(hdc_run / "config.yaml")
    net = _Threshold()
    x = torch.rand(2, 1, 32, 32)
    p = torch.softmax(net(x), dim=1)
    mirrored = torch.softmax(net(x.flip(-1)), dim=1).flip(-1)
    torch.testing.assert_close(FlipAveraged(lambda t: torch.softmax(net(t), dim=1))(x), (p + mirrored) / 2)
    assert not torch.allclose(p, mirrored)

    plain = _scored(net, cfg, hdc_run, tmp_path / "plain")
    plain_mirror = _scored(_Threshold(mirrored=True), cfg, hdc_run, tmp_path / "plain-mirror")
    tta = _scored(net, cfg, hdc_run, tmp_path / "tta", flip_tta=True)
    tta_mirror = _scored(_Threshold(mirrored=True), cfg, hdc_run, tmp_path / "tta-mirror", flip_tta=True)
    assert plain["dice"].between(0.05, 0.95).all()  # real masks: neither empty nor everything
    assert not np.allclose(plain["dice"], plain_mirror["dice"])  # the segmenter is not mirror-symmetric ...
    assert not np.allclose(plain["dice"], tta["dice"])           # ... so the average changes the masks ...
    np.testing.assert_allclose(tta["dice"], tta_mirror["dice"], atol=1e-9)  # ... into one both orders agree on

    out = tmp_path / "flip"  # the rescoring path scores the run's checkpoint with TTA
    rescore_segmentation_run(hdc_run, out, ["recipe_options.flip_tta=true"])
    assert load_config(out / "config.yaml").recipe_options["flip_tta"] is True
    trained = load_trained_recipe(cfg, hdc_run / "fold_0" / LAST_CHECKPOINT).inference_model()
    want = _scored(trained, cfg, hdc_run, tmp_path / "direct", flip_tta=True)
    got = pd.read_csv(out / "fold_0" / "predictions.csv")
    np.testing.assert_allclose(got["hc_pred_uncorrected_mm"], want["hc_pred_uncorrected_mm"], atol=1e-9)


def test_both_decoders_score_and_serve_the_mean_of_d1_and_d2(hdc_run, tmp_path):
    """inference_decoders=both: the rescored run scores and serves the mean of the checkpoint's D1 and D2
    probabilities (not D1's), and its ONNX export gives the same probabilities."""
    from sonodistill.config import load_config
    from sonodistill.protocols.segmentation_rescore import LAST_CHECKPOINT, load_trained_recipe, rescore_segmentation_run
    from sonodistill.serve.loading import load_model

    out = tmp_path / "both"
    rescore_segmentation_run(hdc_run, out, ["recipe_options.inference_decoders=both"])
    assert load_config(out / "config.yaml").recipe_options["inference_decoders"] == "both"
    student = load_trained_recipe(load_config(hdc_run / "config.yaml"), hdc_run / "fold_0" / LAST_CHECKPOINT).student
    x = torch.rand(3, 1, 32, 32)  # the run's data.size
    with torch.no_grad():
        features = student.encoder(x)
        p1, p2 = (d(features)[0].softmax(dim=1) for d in (student.decoder1, student.decoder2))
    assert (p1 - p2).abs().max() > 1e-4  # D2 learned something else than D1
    served = load_model(out)
    assert served.member_names == ["fold_0", "fold_1"]
    fold0 = served.members[0]
    with torch.no_grad():
        torch.testing.assert_close(fold0(x).softmax(dim=1), (p1 + p2) / 2, rtol=0, atol=1e-6)
    want = _scored(fold0, load_config(out / "config.yaml"), hdc_run, tmp_path / "direct")
    np.testing.assert_allclose(pd.read_csv(out / "fold_0" / "predictions.csv")["dice"], want["dice"], atol=1e-12)
    if importlib.util.find_spec("onnxruntime") is not None:
        from sonodistill.serve.export import export_model

        folder = export_model(out, tmp_path / "onnx", "onnx")
        assert json.loads((folder / "sonodistill-model.json").read_text())["max_abs_diff_vs_torch"] <= 1e-4
        np.testing.assert_allclose(load_model(folder).probabilities(x.numpy()), served.probabilities(x.numpy()),
                                   rtol=0, atol=1e-4)
    with pytest.raises(ConfigError, match="EMA teacher"):
        rescore_segmentation_run(hdc_run, tmp_path / "x", ["recipe_options.inference_decoders=both",
                                                           "recipe_options.eval_model=teacher"])
    with pytest.raises(ConfigError, match="inference_decoders must be one of"):
        rescore_segmentation_run(hdc_run, tmp_path / "y", ["recipe_options.inference_decoders=d2"])


class _Blobs(torch.nn.Module):
    """A fixed segmenter: foreground where `level` > 0 (a 10 x 10 square and a separate 3 x 3 one), or, with
    `level` < 0 everywhere, no foreground at all but a probability peak on the big square."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = torch.full(x.shape[:1] + x.shape[-2:], -8.0)
        fg[:, 6:16, 6:16] = self.level
        fg[:, 24:27, 24:27] = self.level - 1.0
        return torch.stack([torch.zeros_like(fg), fg], dim=1)


def _components(png: Path) -> int:
    from PIL import Image
    from scipy import ndimage

    return int(ndimage.label(np.asarray(Image.open(png)) > 0, structure=np.ones((3, 3), bool))[1])


def _masks_of(net, cfg, run: Path, out: Path, mode: str) -> tuple[pd.DataFrame, list[Path]]:
    from sonodistill.data.manifest import Manifest
    from sonodistill.evaluation.segmentation_report import predict_segmentation

    split = json.loads((run / "fold_0" / "split.json").read_text())
    pred = predict_segmentation(net, cfg, Manifest.from_csv(run / "manifest.csv"), np.asarray(split["test"]), 0, out,
                                save_masks=True, mask_postprocess=mode)
    return pred, sorted((out / "masks").glob("*.png"))


def test_mask_postprocess_scores_one_object_per_image(hdc_run, tmp_path):
    from sonodistill.config import load_config
    from sonodistill.protocols.segmentation_rescore import rescore_segmentation_run

    cfg = load_config(hdc_run / "config.yaml")
    _, plain = _masks_of(_Blobs(5.0), cfg, hdc_run, tmp_path / "plain", "none")
    assert plain and all(_components(m) == 2 for m in plain)
    pred, largest = _masks_of(_Blobs(5.0), cfg, hdc_run, tmp_path / "largest", "largest")
    assert all(_components(m) == 1 for m in largest)
    from PIL import Image

    for a, b in zip(plain, largest):  # the small square removed, the big one kept as it was
        pa, pb = np.asarray(Image.open(a)) > 0, np.asarray(Image.open(b)) > 0
        assert (pb <= pa).all() and 0 < pb.sum() < pa.sum()
    empty, _ = _masks_of(_Blobs(-1.0), cfg, hdc_run, tmp_path / "empty", "largest")
    assert (empty["dice"] == 0).all() and empty["hd95"].isna().all()  # no object: a failure, scored as one
    found, peaks = _masks_of(_Blobs(-1.0), cfg, hdc_run, tmp_path / "peak", "largest_nonempty")
    assert all(_components(m) == 1 for m in peaks) and (found["dice"] > 0).all()
    for p, b in zip(peaks, largest):  # the peak region lies on the big square
        pp, pb = np.asarray(Image.open(p)) > 0, np.asarray(Image.open(b)) > 0
        assert (pp & pb).sum() >= 0.5 * pp.sum()

    out = tmp_path / "rescored"  # the rescoring path takes it as an inference setting and records it
    rescore_segmentation_run(hdc_run, out, ["recipe_options.mask_postprocess=largest_nonempty",
                                            "recipe_options.save_masks=true"])
    assert load_config(out / "config.yaml").recipe_options["mask_postprocess"] == "largest_nonempty"
    assert all(_components(m) == 1 for m in (out / "fold_1" / "masks").glob("*.png"))
    with pytest.raises(ConfigError, match="mask_postprocess must be one of"):
        rescore_segmentation_run(hdc_run, tmp_path / "x", ["recipe_options.mask_postprocess=all"])


def test_training_settings_and_bad_values_are_refused(hdc_run, tmp_path):
    from sonodistill.protocols.segmentation_rescore import rescore_segmentation_run

    with pytest.raises(ConfigError, match="inference settings only"):
        rescore_segmentation_run(hdc_run, tmp_path / "x", ["recipe_options.lambda_mi=0"])
    with pytest.raises(ConfigError, match="inference settings only"):
        rescore_segmentation_run(hdc_run, tmp_path / "x", ["train.epochs=1"])
    with pytest.raises(ConfigError, match="eval_model must be 'student' or 'teacher'"):
        rescore_segmentation_run(hdc_run, tmp_path / "x", ["recipe_options.eval_model=ema"])
    with pytest.raises(ConfigError, match="not over its source"):
        rescore_segmentation_run(hdc_run, hdc_run, [])


def test_an_unfinished_or_missing_checkpoint_is_an_error_naming_it(hdc_run, tmp_path):
    from sonodistill.config import load_config
    from sonodistill.protocols.segmentation_rescore import LAST_CHECKPOINT, load_trained_recipe, rescore_segmentation_run

    run = tmp_path / "run"
    shutil.copytree(hdc_run, run)
    cfg = load_config(run / "config.yaml")
    cfg.train.epochs = 3  # the checkpoint holds 2 of 3 epochs
    with pytest.raises(CheckpointError, match="epoch 2 of 3"):
        load_trained_recipe(cfg, run / "fold_0" / LAST_CHECKPOINT)
    (run / "fold_1" / LAST_CHECKPOINT).unlink()
    with pytest.raises(CheckpointError, match=r"fold_1/checkpoints/last.ckpt: not found"):
        rescore_segmentation_run(run, tmp_path / "out", [])
    shutil.rmtree(run / "fold_1")  # a fold the run's config trains but whose folder is gone: not skipped
    with pytest.raises(CheckpointError, match=r"fold_1/checkpoints/last.ckpt: not found"):
        rescore_segmentation_run(run, tmp_path / "out2", [])


def test_a_multi_seed_run_is_rescored_seed_by_seed(hdc_run, tmp_path):
    from sonodistill.commands.compare import compare_runs
    from sonodistill.protocols.segmentation_rescore import rescore_segmentation_run

    run = tmp_path / "seeds"
    run.mkdir()
    shutil.copyfile(hdc_run / "config.yaml", run / "config.yaml")
    shutil.copytree(hdc_run, run / "seed_0")
    done = rescore_segmentation_run(run, tmp_path / "out", ["recipe_options.flip_tta=true"])
    assert done == {0: tmp_path / "out" / "seed_0"} and (tmp_path / "out" / "config.yaml").is_file()
    table = compare_runs([run, tmp_path / "out"], metrics=["dice"], n_resamples=200)[1]
    assert len(table) == 1 and np.isfinite(table["difference"]).all()
