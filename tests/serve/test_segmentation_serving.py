"""Segmentation runs through the serving path: a tiny synthetic fetal-head HDC run (1 epoch, 2 folds), then
predict (masks), export (ONNX parity 1e-4) and the review page's analysis, on fold models and a final model."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sonodistill.recipes import get_recipe

from tests.tiny_segmentation import seg_config

from .conftest import ellipse_runner

SEG_RECIPES = ["seg_supervised", "mean_teacher", "fixmatch", "cps", "hdc"]


@pytest.mark.parametrize(("recipe", "extra"), [(r, ()) for r in SEG_RECIPES]
                         + [("hdc", ("recipe_options.inference_decoders=both",))])
def test_inference_builder_matches_what_training_saves(recipe, extra, tmp_path):
    cls = get_recipe(recipe)
    cfg = seg_config(recipe, tmp_path, *extra)
    built = cls.build_inference_model(cfg, None)
    trained = cls(cfg, steps_per_epoch=1).inference_model()
    got, want = built.state_dict(), trained.state_dict()
    assert list(got) == list(want)
    assert all(got[k].shape == want[k].shape for k in got)
    x = torch.rand(2, 1, 32, 32)
    assert built.eval()(x).shape == (2, 2, 32, 32)


def _images(run: Path) -> list[Path]:
    from sonodistill.data.manifest import Manifest

    return [Path(p) for p in Manifest.from_csv(run / "manifest.csv").paths]


def test_predict_writes_masks_for_fold_models(seg_run, tmp_path):
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import PredictOptions, predict_many

    model = load_model(seg_run)
    assert model.task == "segmentation" and model.member_names == ["fold_0", "fold_1"]
    assert model.input_kind == "frame" and model.input_shape == (1, 32, 32)
    images = _images(seg_run)
    payload = predict_many(model, [images[0].parent], PredictOptions(mask_dir=tmp_path / "masks"))
    assert len(payload["results"]) == len(images) and not [r for r in payload["results"] if "error" in r]
    for r in payload["results"]:
        assert r["task"] == "segmentation" and len(r["masks"]) == 1
        mask = np.asarray(Image.open(r["masks"][0]["png"]))
        assert mask.shape == np.asarray(Image.open(r["input"])).shape[:2]  # original geometry
        assert set(np.unique(mask)) <= {0, 255}


@pytest.fixture(scope="module")
def final_masks(seg_run, tmp_path_factory) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """A run with a final/ model; (image, predict's mask, the CV evaluation's mask with that model) per image."""
    from sonodistill.config import load_config
    from sonodistill.data.manifest import Manifest
    from sonodistill.evaluation.segmentation_report import predict_segmentation
    from sonodistill.recipes.trainer import load_weights, save_weights
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import PredictOptions, predict_file

    tmp = tmp_path_factory.mktemp("final")
    run = tmp / "run"
    shutil.copytree(seg_run, run)
    cfg, manifest = load_config(run / "config.yaml"), Manifest.from_csv(run / "manifest.csv")
    net = load_weights(get_recipe("hdc").build_inference_model(cfg, manifest), run / "fold_0" / "model.safetensors")
    net.eval()
    with torch.no_grad():  # after one epoch the masks are nearly constant: centre the foreground logit
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("L").resize((32, 32)), np.float32) / 255)
                         for p in manifest.paths])[:, None]
        logits = net(x)
        net.decoder.head.bias[1] -= float((logits[:, 1] - logits[:, 0]).median())
    save_weights(net, run / "final" / "model.safetensors")
    model = load_model(run)
    assert model.member_names == ["final"]
    # predict runs one image at a time; the CV evaluation at batch size 1 too, since the centred logits above sit at
    # ~0, where the batch-dependent float rounding of the convolutions (~1e-7) flips scattered pixels
    cfg.data.batch_size = 1
    cv = predict_segmentation(net, cfg, manifest, np.arange(len(manifest)), 0, tmp / "cv", save_masks=True)
    assert cv["dice"].between(0, 1).all()
    out = []
    for path in manifest.paths:
        result = predict_file(model, path, PredictOptions(mask_dir=tmp / "masks"))
        out.append((path, np.asarray(Image.open(result["masks"][0]["png"])),
                    np.asarray(Image.open(tmp / "cv" / "masks" / f"{Path(path).stem}.png"))))
    return out


def test_final_model_masks_are_in_the_geometry_of_the_cross_validation_masks(final_masks):
    """Same size, same place: predict's mask agrees with the CV's up to outlines. The masks of this barely trained
    net are speckled: they agree with Dice 0.74-0.79, and predict's mask shifted by one pixel only 0.53-0.60."""
    from sonodistill.evaluation.metrics import segmentation_metrics

    fractions = []
    for path, got, want in final_masks:
        assert got.shape == want.shape, path
        assert segmentation_metrics(got > 0, want > 0)["dice"] >= 0.7, path
        fractions.append(np.mean(got > 0))
    assert 0.05 < np.mean(fractions) < 0.95  # masks with an inside and an outside, not a constant


def test_final_model_masks_equal_the_cross_validation_masks(final_masks):
    for path, got, want in final_masks:
        assert np.mean(got != want) <= 0.002, path  # a resize rounding at the outline at most


def test_onnx_export_of_a_segmentation_run_equals_pytorch(seg_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")
    from sonodistill.serve.export import export_model
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import PredictOptions, predict_file

    folder = export_model(seg_run, tmp_path / "onnx", "onnx")
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["task"] == "segmentation" and meta["input_shape"] == [None, 1, 32, 32]
    assert meta["members"] == ["fold_0", "fold_1"] and meta["max_abs_diff_vs_torch"] <= 1e-4
    torch_model, onnx_model = load_model(seg_run), load_model(folder)
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    ref, got = torch_model.probabilities(x), onnx_model.probabilities(x)
    assert ref.shape == got.shape == (5, 2, 32, 32) and np.abs(got - ref).max() <= 1e-4
    image = _images(seg_run)[0]
    a = predict_file(torch_model, image, PredictOptions(mask_dir=tmp_path / "a"))
    b = predict_file(onnx_model, image, PredictOptions(mask_dir=tmp_path / "b"))
    ma, mb = (np.asarray(Image.open(r["masks"][0]["png"])) for r in (a, b))
    assert np.mean(ma != mb) <= 0.002


def test_seg_supervised_run_and_the_review_page_analysis(seg_run, tmp_path):
    """The same weights under recipe seg_supervised (same encoder + D1) load, predict and go through serve."""
    from sonodistill.config import load_config
    from sonodistill.serve.app import analyse_file
    from sonodistill.serve.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    cfg = load_config(run / "config.yaml")
    cfg.recipe = "seg_supervised"  # the HDC run's config.yaml records HDC's own options too: keep the shared ones
    from sonodistill.recipes.semi_supervised import SegmentationOptions

    shared = {f.name for f in dataclasses.fields(SegmentationOptions)}
    cfg.recipe_options = {k: v for k, v in cfg.recipe_options.items() if k in shared}
    cfg.save(run / "config.yaml")
    model = load_model(run, members="folds")
    assert model.recipe == "seg_supervised" and model.task == "segmentation"
    out = analyse_file(model, _images(run)[0], "head.png")
    assert out["result"]["masks"][0]["png"].startswith("data:image/png;base64,")
    assert out["gif"].startswith("data:image/gif;base64,")


def test_head_circumference_is_corrected_by_each_folds_labelled_masks(seg_run):
    """Every fold measures its labelled masks' outline offset (hc_calibration.json) and scores test HC with it."""
    import json
    import math

    import pandas as pd

    from sonodistill.data.manifest import Manifest

    pred = pd.read_csv(seg_run / "predictions.csv")
    table = Manifest.from_csv(seg_run / "manifest.csv").table
    assert {"hc_pred_mm", "hc_pred_uncorrected_mm", "hc_abs_err_mm"} <= set(pred.columns)
    for fold, rows in pred.groupby("fold"):
        calibration = json.loads((seg_run / f"fold_{fold}" / "hc_calibration.json").read_text())
        assert calibration["n_masks"] >= 1 and math.isfinite(calibration["outline_offset_px"])
        size = table["pixel_size_mm"].to_numpy()[rows["index"].to_numpy()]
        expected = rows["hc_pred_uncorrected_mm"] - 2 * math.pi * calibration["outline_offset_px"] * size
        np.testing.assert_allclose(rows["hc_pred_mm"], expected, rtol=1e-9, atol=1e-9)


def test_a_flip_tta_run_predicts_and_exports_the_mirror_averaged_probabilities(seg_run, tmp_path):
    """recipe_options.flip_tta: `predict` and the ONNX export both average the image's and its mirror's output."""
    from sonodistill.config import load_config
    from sonodistill.serve.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    cfg = load_config(run / "config.yaml", ["recipe_options.flip_tta=true"])
    cfg.save(run / "config.yaml")
    plain, flipped = load_model(seg_run), load_model(run)
    assert flipped.describe()["flip_tta"] is True and "flip_tta" not in plain.describe()
    x = np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32)
    p, mirrored = plain.probabilities(x), plain.probabilities(np.ascontiguousarray(x[..., ::-1]))[..., ::-1]
    gap = float(np.abs(p - mirrored).max())
    assert gap > 1e-5  # the fold models (one epoch: nearly constant) are not mirror-symmetric
    np.testing.assert_allclose(flipped.probabilities(x), (p + mirrored) / 2, rtol=0, atol=gap / 100)
    if importlib.util.find_spec("onnxruntime") is None:
        return
    from sonodistill.serve.export import export_model

    folder = export_model(run, tmp_path / "onnx", "onnx")
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["flip_tta"] is True and meta["max_abs_diff_vs_torch"] <= 1e-4
    np.testing.assert_allclose(load_model(folder).probabilities(x), (p + mirrored) / 2, rtol=0, atol=gap / 10)


def test_mask_postprocess_is_served_by_predict_and_recorded_in_the_export(seg_run, tmp_path):
    """recipe_options.mask_postprocess: `predict` (run directory and export folder) applies it after the model, the
    export's metadata and model card record it, and a bad value in the metadata is refused naming the file."""
    from scipy import ndimage

    from sonodistill.config import load_config
    from sonodistill.errors import CheckpointError
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import PredictOptions, predict_many

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    cfg = load_config(run / "config.yaml", ["recipe_options.mask_postprocess=largest_nonempty"])
    cfg.save(run / "config.yaml")
    model = load_model(run)
    assert model.describe()["mask_postprocess"] == "largest_nonempty"
    assert "mask_postprocess" not in load_model(seg_run).describe()
    folder = tmp_path / "images"
    folder.mkdir()
    for i, path in enumerate(_images(run)):
        shutil.copyfile(path, folder / f"{i}{path.suffix}")

    def components(result: dict) -> int:
        mask = np.asarray(Image.open(result["masks"][0]["png"])) > 0
        return int(ndimage.label(mask, structure=np.ones((3, 3), bool))[1])

    def blobs(level: float):  # probabilities of a fixed segmenter: two squares, foreground where level > 0
        def runner(x: np.ndarray) -> np.ndarray:
            fg = np.full((x.shape[0], 32, 32), -8.0, dtype=np.float32)
            fg[:, 4:14, 4:14], fg[:, 20:24, 20:24] = level, level - 1.0
            return np.stack([1 / (1 + np.exp(fg)), 1 / (1 + np.exp(-fg))], axis=1)  # softmax of (0, fg)
        return runner

    def counts(loaded, name: str) -> list[int]:
        payload = predict_many(loaded, [folder], PredictOptions(mask_dir=tmp_path / name))
        return [components(r) for r in payload["results"]]

    assert set(counts(dataclasses.replace(model, runner=blobs(5.0), mask_postprocess="none"), "a")) == {2}
    assert set(counts(dataclasses.replace(model, runner=blobs(5.0), mask_postprocess="largest"), "b")) == {1}
    assert set(counts(dataclasses.replace(model, runner=blobs(-1.0), mask_postprocess="largest"), "c")) == {0}
    assert set(counts(dataclasses.replace(model, runner=blobs(-1.0)), "d")) == {1}  # largest_nonempty: the peak

    def masks(mode: str, name: str) -> list[np.ndarray]:
        loaded = dataclasses.replace(model, runner=blobs(5.0), mask_postprocess=mode)
        return [np.asarray(Image.open(r["masks"][0]["png"])) > 0
                for r in predict_many(loaded, [folder], PredictOptions(mask_dir=tmp_path / name))["results"]]

    for square, rounded in zip(masks("largest", "e"), masks("ellipse", "f")):  # ellipse: the square's corners cut
        assert ndimage.label(rounded, structure=np.ones((3, 3), bool))[1] == 1 and (square ^ rounded).any()
    payload = predict_many(model, [folder], PredictOptions(mask_dir=tmp_path / "masks"))  # the run's own models
    assert all(components(r) == 1 for r in payload["results"])
    if importlib.util.find_spec("onnxruntime") is None:
        return
    from sonodistill.serve.export import export_model

    exported = export_model(run, tmp_path / "onnx", "onnx")
    meta = json.loads((exported / "sonodistill-model.json").read_text())
    assert meta["mask_postprocess"] == "largest_nonempty"
    assert "Mask post-processing `largest_nonempty`" in (exported / "MODEL_CARD.md").read_text()
    served = predict_many(load_model(exported), [folder], PredictOptions(mask_dir=tmp_path / "masks-onnx"))
    for a, b in zip(payload["results"], served["results"]):
        assert np.array_equal(np.asarray(Image.open(a["masks"][0]["png"])),
                              np.asarray(Image.open(b["masks"][0]["png"]))), a["input"]
    meta["mask_postprocess"] = "biggest"
    (exported / "sonodistill-model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="sonodistill-model.json: recipe_options.mask_postprocess must be"):
        load_model(exported)


def test_predict_reports_head_circumference_and_areas_in_mm(seg_run, tmp_path):
    """A head-circumference run: `predict` with a pixel size gives each mask's HC as the CV evaluation measures it
    (outer-contour ellipse, less the folds' mean outline offset) and its area in mm^2; without one it says why."""
    from sonodistill.data.manifest import Manifest
    from sonodistill.evaluation.head_circumference import head_circumference_mm, ramanujan_perimeter
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import PredictOptions, predict_file

    model = load_model(seg_run)
    offsets = [json.loads((seg_run / f"fold_{k}" / "hc_calibration.json").read_text())["outline_offset_px"]
               for k in (0, 1)]
    assert model.head_circumference.outline_offset_px == pytest.approx(np.mean(offsets))
    assert model.describe()["head_circumference"]["outline_offset_px"] == pytest.approx(np.mean(offsets))
    hcs = Manifest.from_csv(seg_run / "manifest.csv").table["target"]
    assert model.head_circumference.range_mm == (pytest.approx(hcs.min()), pytest.approx(hcs.max()))
    fixed = dataclasses.replace(model, runner=ellipse_runner())
    image = _images(seg_run)[0]  # 48 x 48: the model's 32 px ellipse of semi-axes 12 x 8 is 18 x 12 pixels there
    result = predict_file(fixed, image, PredictOptions(mask_dir=tmp_path / "m", pixel_size_mm=0.5))
    assert result["pixel_spacing_mm"] == [0.5, 0.5] and result["pixel_spacing_source"] == "option"
    entry = result["masks"][0]
    mask = np.asarray(Image.open(entry["png"])) > 0
    offset = fixed.head_circumference.outline_offset_px
    assert entry["head_circumference_mm"] == pytest.approx(head_circumference_mm(mask, 0.5, offset), abs=0.006)
    analytic = ramanujan_perimeter(18, 12) * 0.5 - 2 * np.pi * offset * 0.5
    assert entry["head_circumference_mm"] == pytest.approx(analytic, rel=0.03)
    background, foreground = result["classes_in_mask"]
    assert entry["area_mm2"][foreground] == pytest.approx(mask.sum() * 0.25, abs=1e-6)
    assert entry["area_mm2"][foreground] == pytest.approx(np.pi * 18 * 12 * 0.25, rel=0.05)
    assert entry["area_mm2"][background] == pytest.approx((~mask).sum() * 0.25, abs=1e-6)

    from sonodistill.serve.loading import HeadCircumferenceModel

    for (low, high), flagged in (((100.0, 200.0), True), ((10.0, 400.0), False)):  # HC here: about 45 mm
        ranged = dataclasses.replace(fixed, head_circumference=HeadCircumferenceModel(offset, (low, high)))
        got = predict_file(ranged, image, PredictOptions(mask_dir=tmp_path / f"r{low}", pixel_size_mm=0.5))["masks"][0]
        assert got["head_circumference_mm"] == entry["head_circumference_mm"]
        assert ("outside the 100-200 mm of the heads" in got.get("head_circumference_warning", "")) is flagged
    plain = predict_file(fixed, image, PredictOptions(mask_dir=tmp_path / "n"))  # a PNG says no pixel size
    assert "pixel size is unknown" in plain["head_circumference_unavailable"]
    assert "head_circumference_mm" not in plain["masks"][0] and "area_mm2" not in plain["masks"][0]
    empty = predict_file(dataclasses.replace(model, runner=ellipse_runner(a=0.1, b=0.1)), image,
                         PredictOptions(mask_dir=tmp_path / "e", pixel_size_mm=0.5))
    assert empty["masks"][0]["head_circumference_mm"] is None
    assert empty["masks"][0]["head_circumference_failure"] == "no head in the mask"
    with pytest.raises(Exception, match="pixel_size_mm must be a positive number"):
        PredictOptions(pixel_size_mm=-0.2)


def test_predict_reads_the_pixel_size_of_a_real_obstetric_dicom(seg_run, shared_data, tmp_path):
    from sonodistill.evaluation.head_circumference import ramanujan_perimeter
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import PredictOptions, predict_file

    model = dataclasses.replace(load_model(seg_run), runner=ellipse_runner())
    result = predict_file(model, shared_data / "dicom" / "OBXXXX1A.dcm", PredictOptions(mask_dir=tmp_path))
    assert result["pixel_spacing_source"] == "dicom"
    assert result["pixel_spacing_mm"] == pytest.approx([0.26229, 0.26229], abs=1e-5)
    # 800 x 600 pixels resized to 32 x 24 (scale 25): the ellipse is 300 x 200 pixels of 0.262 mm
    hc = result["masks"][0]["head_circumference_mm"]
    assert hc == pytest.approx(ramanujan_perimeter(300, 200) * 0.26229, rel=0.02)
    given = predict_file(model, shared_data / "dicom" / "OBXXXX1A.dcm",
                         PredictOptions(mask_dir=tmp_path / "given", pixel_size_mm=0.1))  # the option wins
    assert given["pixel_spacing_source"] == "option"
    assert given["masks"][0]["head_circumference_mm"] == pytest.approx(hc * 0.1 / 0.26229, rel=0.01)


def test_head_circumference_calibration_travels_with_the_export(seg_run, tmp_path):
    from sonodistill.errors import CheckpointError
    from sonodistill.serve.loading import load_model

    run = tmp_path / "run"
    shutil.copytree(seg_run, run)
    (run / "fold_1" / "hc_calibration.json").unlink()  # a run scored before the calibration was saved
    old = load_model(run)
    assert old.head_circumference is None
    assert "fold_1/hc_calibration.json is missing" in old.describe()["head_circumference_unavailable"]
    if importlib.util.find_spec("onnxruntime") is None:
        return
    from sonodistill.serve.export import export_model

    old_export = load_model(export_model(run, tmp_path / "old-onnx", "onnx"))  # says why, as the run does
    assert old_export.head_circumference is None
    assert "fold_1/hc_calibration.json is missing" in old_export.describe()["head_circumference_unavailable"]
    model = load_model(seg_run)
    folder = export_model(seg_run, tmp_path / "onnx", "onnx")
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["head_circumference"] == model.head_circumference.to_json()
    assert "- Head circumference: `sonodistill predict` reports it in mm" in (folder / "MODEL_CARD.md").read_text()
    assert load_model(folder).head_circumference == model.head_circumference
    for bad in ({"outline_offset_px": "x", "range_mm": [40, 300]}, {"outline_offset_px": 0.6},
                {"outline_offset_px": 0.6, "range_mm": [300, 40]}):
        meta["head_circumference"] = bad
        (folder / "sonodistill-model.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="sonodistill-model.json: head_circumference"):
            load_model(folder)
