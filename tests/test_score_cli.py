"""`sonodistill score`: hand-made predictions with known metrics, coverage counting, merge, segmentation with
HC, and predict -> score end to end on tiny run directories (classification videos, segmentation images)."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sonodistill.evaluation.metrics import classification_metrics, segmentation_metrics
from tests.test_compare_cli import sonodistill

CLASSES = ["a", "b", "c"]


def _result(name: str, probs: list[float]) -> dict:
    return {"input": name, "task": "classification", "prediction": CLASSES[int(np.argmax(probs))],
            "probabilities": dict(zip(CLASSES, probs))}


def _write_json(path: Path, results: list[dict], task: str = "classification", classes: list[str] = CLASSES) -> Path:
    path.write_text(json.dumps({"model": {"source": "runs/tiny", "task": task, "classes": classes},
                                "results": results}))
    return path


@pytest.fixture
def classification_case(tmp_path):
    """12 labelled clips in 6 groups, predictions for 11 of them (one failed), plus one unlabelled prediction."""
    rng = np.random.default_rng(0)
    y = np.arange(12) % 3
    probs = rng.dirichlet(np.ones(3), 12).round(4)
    probs[:, 2] = 1 - probs[:, :2].sum(axis=1)
    names = [f"clip{i:02d}.mp4" for i in range(12)]
    results = [_result(f"videos/{n}", p.tolist()) for n, p in zip(names[:10], probs[:10])]
    results.append({"input": f"videos/{names[10]}", "error": "videos/clip10.mp4: cannot decode"})
    results.append(_result("videos/other.mp4", [0.2, 0.3, 0.5]))  # no label
    pred = _write_json(tmp_path / "preds.json", results)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"file": names, "label": [CLASSES[k] for k in y],
                  "group": [f"p{i // 2}" for i in range(12)]}).to_csv(labels, index=False)
    return pred, labels, y, probs


def test_classification_metrics_coverage_and_exit_code(classification_case, tmp_path, capsys):
    pred, labels, y, probs = classification_case
    out = tmp_path / "score"
    assert sonodistill("score", pred, "--labels", labels, "--out", out, "--resamples", 300) == 1
    captured = capsys.readouterr()
    assert "2 labelled input(s) not scored (1 without a prediction, 1 failed)" in captured.err
    report = (out / "report.md").read_text()
    assert report in captured.out
    assert ("12 labelled input(s): 10 scored, 1 without a prediction, 1 with a prediction that failed or could not "
            "be scored; 1 prediction(s) without a label (not scored).") in report
    assert "- clip11.mp4" in report and "- clip10.mp4: videos/clip10.mp4: cannot decode" in report
    assert "bootstrap interval over 5 groups" in report  # p0..p4 hold the 10 scored clips
    for name in ("confusion_matrix.png", "roc.png", "calibration.png", "predictions.csv", "metrics.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["counts"] == {"labelled": 12, "scored": 10, "missing": 1, "errors": 1, "unlabelled_predictions": 1}
    ref = classification_metrics(y[:10], probs[:10], CLASSES)
    for m in ("accuracy", "balanced_accuracy", "f1", "roc_auc", "brier", "ece"):
        assert meta["metrics"][m] == pytest.approx(ref[m]), m
        ci = meta["intervals"][m]
        assert ci["ci_low"] <= ci["value"] <= ci["ci_high"] and ci["value"] == pytest.approx(ref[m])
    assert meta["metrics"]["confusion_matrix"] == ref["confusion_matrix"]
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns[:5]) == ["fold", "index", "path", "group", "y_true"]
    assert table["y_true"].tolist() == y[:10].tolist()
    assert f"| 10 items | {ref['accuracy']:.3f} [" in report


def test_complete_labels_exit_zero_and_items_bootstrap_without_groups(classification_case, tmp_path):
    pred, labels, *_ = classification_case
    table = pd.read_csv(labels).iloc[:10].drop(columns="group")
    table["file"] = [str(tmp_path / "videos" / f) for f in table["file"]]  # full paths match "videos/..." inputs
    table.to_csv(tmp_path / "complete.csv", index=False)
    out = tmp_path / "score"
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)  # predict ran here: its relative inputs resolve against this folder
    try:
        assert sonodistill("score", pred, "--labels", tmp_path / "complete.csv", "--out", out,
                           "--resamples", 200) == 0
    finally:
        os.chdir(cwd)
    assert "bootstrap interval over 10 items" in (out / "report.md").read_text()


def test_merged_classes(classification_case, tmp_path):
    pred, labels, y, probs = classification_case
    out = tmp_path / "merged"
    assert sonodistill("score", pred, "--labels", labels, "--out", out, "--merge", "a=a", "--merge", "bc=b,c",
                       "--resamples", 100) == 1
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["classes"] == ["a", "bc"]
    pd.read_csv(labels).to_csv(tmp_path / "excel.csv", sep=";", index=False, encoding="utf-8-sig")  # Excel, ';'
    assert sonodistill("score", pred, "--labels", tmp_path / "excel.csv", "--out", tmp_path / "semi", "--merge",
                       "a=a", "--merge", "bc=b,c", "--resamples", 100) == 1
    assert json.loads((tmp_path / "semi" / "metrics.json").read_text())["metrics"] == meta["metrics"]
    merged = np.stack([probs[:10, 0], probs[:10, 1:].sum(axis=1)], axis=1)
    ref = classification_metrics((y[:10] > 0).astype(int), merged, ["a", "bc"])
    assert meta["metrics"]["accuracy"] == pytest.approx(ref["accuracy"])
    assert sonodistill("score", pred, "--labels", labels, "--merge", "a=a,b") == 2  # c is in no new class


def test_label_errors_name_the_row(classification_case, tmp_path, capsys):
    pred, labels, *_ = classification_case
    table = pd.read_csv(labels)
    table.loc[3, "label"] = "zebra"
    table.to_csv(tmp_path / "bad.csv", index=False)
    assert sonodistill("score", pred, "--labels", tmp_path / "bad.csv", "--out", tmp_path / "o") == 2
    assert "labels row 3: label 'zebra' is not a class of the model" in capsys.readouterr().err
    table.drop(columns=["file"]).to_csv(tmp_path / "nocol.csv", index=False)
    assert sonodistill("score", pred, "--labels", tmp_path / "nocol.csv") == 2
    assert "no input column" in capsys.readouterr().err
    assert sonodistill("score", tmp_path / "none.json", "--labels", labels) == 2
    assert "file not found" in capsys.readouterr().err


def test_per_group_scores_one_row_a_patient(tmp_path, capsys):
    """A per-patient label: each group's probabilities averaged over its inputs, then scored as one row; a group whose
    inputs disagree on the label, labels without groups and segmentation predictions are refused with the cause."""
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), 12).round(4)
    probs[:, 2] = 1 - probs[:, :2].sum(axis=1)
    names = [f"clip{i:02d}.mp4" for i in range(12)]
    pred = _write_json(tmp_path / "preds.json", [_result(n, p.tolist()) for n, p in zip(names, probs)])
    groups = [f"p{i // 3}" for i in range(12)]  # 4 patients, 3 clips each
    y_group = np.array([0, 1, 2, 1])
    pd.DataFrame({"file": names, "label": [CLASSES[y_group[i // 3]] for i in range(12)],
                  "group": groups}).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "score"
    assert sonodistill("score", pred, "--labels", tmp_path / "labels.csv", "--out", out, "--per-group",
                       "--resamples", 100) == 0
    mean = probs.reshape(4, 3, 3).mean(axis=1)  # patient x class
    ref = classification_metrics(y_group, mean, CLASSES)
    meta = json.loads((out / "metrics.json").read_text())
    for m in ("accuracy", "balanced_accuracy", "f1", "brier"):
        assert meta["metrics"][m] == pytest.approx(ref[m]), m
    table = pd.read_csv(out / "predictions.csv")
    assert table["group"].tolist() == ["p0", "p1", "p2", "p3"] and table["n_items"].tolist() == [3, 3, 3, 3]
    np.testing.assert_allclose(table[[f"prob_{c}" for c in CLASSES]].to_numpy(), mean)
    assert "scored per group (4 groups" in (out / "report.md").read_text()

    bad = pd.read_csv(tmp_path / "labels.csv")
    bad.loc[1, "label"] = "c"
    bad.to_csv(tmp_path / "mixed.csv", index=False)
    capsys.readouterr()
    assert sonodistill("score", pred, "--labels", tmp_path / "mixed.csv", "--per-group") == 2
    assert "group 'p0' has items with different labels" in capsys.readouterr().err
    bad.drop(columns="group").to_csv(tmp_path / "nogroup.csv", index=False)
    assert sonodistill("score", pred, "--labels", tmp_path / "nogroup.csv", "--per-group") == 2
    assert "nogroup.csv has no 'group' column" in capsys.readouterr().err
    seg = _write_json(tmp_path / "seg.json", [{"input": "x.png", "task": "segmentation", "masks": []}],
                      task="segmentation", classes=[])
    assert sonodistill("score", seg, "--labels", tmp_path / "labels.csv", "--per-group") == 2
    assert "per patient; " in capsys.readouterr().err


def _png_uri(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray((mask * 255).astype(np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def test_segmentation_dice_hc_and_unscorable_items(tmp_path):
    (tmp_path / "masks").mkdir()
    truths = [_disc(40, 50, 20, 25, 10), _disc(40, 50, 18, 22, 8), _disc(40, 50, 20, 25, 12)]
    preds = [_disc(40, 50, 20, 27, 10), truths[1], _disc(30, 30, 15, 15, 5)]  # the last one has another size
    for i, t in enumerate(truths):
        Image.fromarray(t * 255).save(tmp_path / "masks" / f"im{i}.png")
    results = [{"input": f"images/im{i}.png", "task": "segmentation",
                "masks": [{"frame": 0, "png": _png_uri(p)}]} for i, p in enumerate(preds)]
    results.append({"input": "images/im3.png", "task": "segmentation", "masks": []})
    pred = _write_json(tmp_path / "preds.json", results, "segmentation", [])
    pd.DataFrame({"path": [f"im{i}.png" for i in range(4)], "mask": [f"masks/im{i}.png" for i in range(4)],
                  "pixel_size_mm": 0.5, "hc_mm": [31.4, 25.1, 37.7, 30.0]}).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "score"
    assert sonodistill("score", pred, "--labels", tmp_path / "labels.csv", "--out", out, "--resamples", 200) == 1
    report = (out / "report.md").read_text()
    assert "4 labelled input(s): 2 scored, 0 without a prediction, 2 with a prediction that failed" in report
    assert "im2.png: predicted mask (30, 30) and label mask (40, 50) differ in size" in report
    assert "im3.png: 0 predicted frames; score expects one mask per image" in report
    table = pd.read_csv(out / "predictions.csv")
    ref = [segmentation_metrics(p, t, 0.5) for p, t in zip(preds[:2], truths[:2])]
    np.testing.assert_allclose(table["dice"], [r["dice"] for r in ref])
    np.testing.assert_allclose(table["hd95"], [r["hd95"] for r in ref])
    assert table["hc_abs_err_mm"].notna().all() and "hc_abs_err_mm" in report and "hd95 and asd in mm" in report
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["intervals"]["dice"]["value"] == pytest.approx(np.mean([r["dice"] for r in ref]))
    assert math.isclose(meta["intervals"]["dice"]["ci_high"], 1.0)
    # the training masks' outline offset: each predicted HC 2 pi x 0.7 px x 0.5 mm shorter, the raw value kept
    out2 = tmp_path / "score-offset"
    assert sonodistill("score", pred, "--labels", tmp_path / "labels.csv", "--out", out2, "--resamples", 200,
                       "--hc-outline-offset-px", 0.7) == 1
    shifted = pd.read_csv(out2 / "predictions.csv")
    np.testing.assert_allclose(shifted["hc_pred_mm"], table["hc_pred_mm"] - 2 * math.pi * 0.7 * 0.5)
    np.testing.assert_allclose(shifted["hc_pred_uncorrected_mm"], table["hc_pred_mm"])
    assert "0.7 px inside" in (out2 / "report.md").read_text()


# ------------------------------------------------------------------------------------------- end to end
def test_predict_then_score_a_video_classifier(tmp_path, capsys):
    from tests.serve.conftest import CLASSES as RUN_CLASSES
    from tests.serve.conftest import make_run, synthetic_frames, write_video

    run = make_run(tmp_path / "runs", size=32, num_frames=4)
    for i in range(3):
        write_video(tmp_path / "new" / f"clip{i}.mp4", synthetic_frames(t=6, h=48, w=64, seed=i))
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import predict_many

    payload = predict_many(load_model(run), [tmp_path / "new"])
    (tmp_path / "preds.json").write_text(json.dumps(payload))
    pd.DataFrame({"path": [f"new/clip{i}.mp4" for i in range(3)],
                  "label": RUN_CLASSES[:3]}).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "score"
    assert sonodistill("score", tmp_path / "preds.json", "--labels", tmp_path / "labels.csv", "--out", out,
                       "--resamples", 100) == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["counts"]["scored"] == 3 and meta["task"] == "classification"
    assert "## Confusion matrix" in capsys.readouterr().out


def test_predict_then_score_segmentation_masks(tmp_path, monkeypatch):
    """Toy model (foreground where the image is > 0.5): predict's masks scored against the bright regions."""
    from sonodistill import recipes
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import PredictOptions, predict_many

    from tests.serve.conftest import make_run

    monkeypatch.setitem(recipes.RECIPES, "toyseg", "tests.serve.conftest:ToySegRecipe")
    run = make_run(tmp_path / "runs", recipe="toyseg", modality="image", size=32, crop_region=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = []
    for i in range(4):
        truth = _disc(64, 64, 30 + i, 32, 12 + i)
        Image.fromarray((40 + 180 * truth).astype(np.uint8)).save(tmp_path / "images" / f"im{i}.png")
        Image.fromarray(truth * 255).save(tmp_path / "masks" / f"im{i}.png")
        rows.append({"file": f"im{i}.png", "mask": str(tmp_path / "masks" / f"im{i}.png"), "group": f"s{i // 2}"})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    payload = predict_many(load_model(run), [tmp_path / "images"], PredictOptions(mask_dir=tmp_path / "pred"))
    (tmp_path / "preds.json").write_text(json.dumps(payload))
    out = tmp_path / "score"
    assert sonodistill("score", tmp_path / "preds.json", "--labels", tmp_path / "labels.csv", "--out", out,
                       "--resamples", 100) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 4 and (table["dice"] > 0.9).all()  # 64 -> 32 -> 64 px loses a little at the outline
    assert "hd95 and asd in px" in (out / "report.md").read_text()


def test_per_group_with_a_table_of_patients_scores_predicts_groups(tmp_path, capsys):
    """Labels one row a patient (group, label) against `predict --per-group`'s groups, matched by name (full, or
    the last part where unique); a group scored from part of its inputs is listed, a group whose every input failed
    counts as failed, and a JSON without groups is refused with what to do."""
    groups = [{"group": "export/p1", "inputs": ["export/p1/a.mp4"], "n_predicted": 1, "failed": [],
               "prediction": "a", "probabilities": {"a": 0.7, "b": 0.2, "c": 0.1}},
              {"group": "export/p2", "inputs": ["export/p2/b.mp4", "export/p2/x.mp4"], "n_predicted": 1,
               "failed": ["export/p2/x.mp4"], "prediction": "c", "probabilities": {"a": 0.1, "b": 0.3, "c": 0.6}},
              {"group": "export/p3", "inputs": ["export/p3/c.mp4"], "n_predicted": 1, "failed": [],
               "prediction": "b", "probabilities": {"a": 0.3, "b": 0.4, "c": 0.3}},
              {"group": "export/p4", "inputs": ["export/p4/d.mp4"], "n_predicted": 0,
               "failed": ["export/p4/d.mp4"], "error": "every input of the group failed (1)"}]
    pred = tmp_path / "preds.json"
    pred.write_text(json.dumps({"model": {"source": "runs/tiny", "task": "classification", "classes": CLASSES},
                                "results": [], "groups": groups}))
    pd.DataFrame({"group": ["p1", "export/p2", "p3", "p4"], "label": ["a", "c", "c", "b"]}).to_csv(
        tmp_path / "patients.csv", index=False)
    out = tmp_path / "score"
    assert sonodistill("score", pred, "--labels", tmp_path / "patients.csv", "--out", out, "--per-group",
                       "--resamples", 100) == 1  # p4 failed
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["counts"]["scored"] == 3 and meta["counts"]["errors"] == 1
    assert meta["metrics"]["accuracy"] == pytest.approx(2 / 3)
    report = (out / "report.md").read_text()
    assert "scored per group (3 groups of `predict --per-group`)" in report
    assert "- export/p2: 1 input(s) failed and were left out: export/p2/x.mp4" in report
    assert "- p4: every input of the group failed (1)" in report
    assert pd.read_csv(out / "predictions.csv")["group"].tolist() == ["p1", "export/p2", "p3"]

    capsys.readouterr()
    no_groups = _write_json(tmp_path / "plain.json", [_result("export/p1/a.mp4", [0.7, 0.2, 0.1])])
    assert sonodistill("score", no_groups, "--labels", tmp_path / "patients.csv", "--per-group") == 2
    assert "has no 'groups'" in capsys.readouterr().err
    assert sonodistill("score", no_groups, "--labels", tmp_path / "patients.csv") == 2  # without --per-group
    assert "no input column" in capsys.readouterr().err


def test_label_rows_naming_a_folder_label_every_input_below_it(tmp_path, monkeypatch, capsys):
    """One patients table (a folder a row, as the csv adapter trains on) scores predict's output: every file below
    a folder row takes its label, the folder its group; a file labelled twice is refused."""
    for rel in ("export/p1/a.mp4", "export/p1/day2/b.mp4", "export/p2/c.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"video")
    monkeypatch.chdir(tmp_path)  # predict ran here: its inputs are relative to this folder
    pred = _write_json(tmp_path / "preds.json", [_result("export/p1/a.mp4", [0.6, 0.3, 0.1]),
                                                 _result("export/p1/day2/b.mp4", [0.2, 0.7, 0.1]),
                                                 _result("export/p2/c.mp4", [0.1, 0.2, 0.7])])
    (tmp_path / "patients.csv").write_text("path,label\nexport/p1,a\nexport/p2,c\n")
    out = tmp_path / "items"
    assert sonodistill("score", pred, "--labels", tmp_path / "patients.csv", "--out", out, "--resamples", 50) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert table["group"].tolist() == ["p1", "p1", "p2"] and table["y_true"].tolist() == [0, 0, 2]
    assert "bootstrap interval over 2 groups" in (out / "report.md").read_text()
    assert sonodistill("score", pred, "--labels", tmp_path / "patients.csv", "--out", tmp_path / "patients",
                       "--per-group", "--resamples", 50) == 0
    per_patient = pd.read_csv(tmp_path / "patients" / "predictions.csv")
    assert per_patient["group"].tolist() == ["p1", "p2"] and per_patient["n_items"].tolist() == [2, 1]
    np.testing.assert_allclose(per_patient[[f"prob_{c}" for c in CLASSES]].iloc[0], [0.4, 0.5, 0.1])
    (tmp_path / "twice.csv").write_text("path,label\nexport/p1,a\nexport/p1/a.mp4,a\n")
    capsys.readouterr()
    assert sonodistill("score", pred, "--labels", tmp_path / "twice.csv") == 2
    assert "a.mp4: labelled twice (a file row and a folder row holding it" in capsys.readouterr().err
