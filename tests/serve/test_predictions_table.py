"""`predict --csv`: the predictions JSON as one table (serve/predictions_table.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sonodistill.serve.predictions_table import predictions_table

CLASSIFICATION = {"input": "a.mp4", "task": "classification", "frames": 20, "fps": 25.0, "duration_s": 0.8,
                  "windows": {"length": 16, "stride": 8, "starts": [0, 4], "probabilities": [[0.5, 0.5], [0.7, 0.3]]},
                  "prediction": "hypo", "probabilities": {"hypo": 0.6, "hyper": 0.4}, "clip_mode": "windows",
                  "per_frame": [[0.5, 0.5]] * 20}
SEGMENTATION = {"input": "head.dcm", "task": "segmentation", "frames": 2, "fps": None, "duration_s": None,
                "classes_in_mask": ["background", "head"], "pixel_spacing_mm": [0.1, 0.12],
                "pixel_spacing_source": "dicom",
                "masks": [{"frame": 0, "area_fraction": {"background": 0.75, "head": 0.25},
                           "head_circumference_mm": 170.5,
                           "head_ellipse_px": {"center_xy": [40.0, 30.0], "semi_axes": [20.0, 15.0], "angle_deg": 3.0},
                           "png": "data:image/png;base64,iVBORw0KGgo="},
                          {"frame": 1, "area_fraction": {"background": 1.0, "head": 0.0},
                           "head_circumference_mm": None, "head_circumference_failure": "no head in the mask",
                           "png": "masks/head.frame0001.mask.png"}]}
ANNOTATION = {"input": "lung.mp4", "task": "annotation", "frames": 30,
              "findings": [{"name": "b_lines", "label": "B-lines", "column": "b_lines", "probability": 0.9,
                            "present": True},
                           {"name": "consolidation", "label": "consolidation", "column": "consolidation",
                            "probability": 0.2, "present": False}],
              "categorical": [{"name": "severity", "prediction": "2", "probabilities": {"0": 0.1, "2": 0.9}}],
              "entities": ["b_lines", "pleural_line"], "description": "B-lines are seen."}
FAILED = {"input": "broken.mp4", "error": "broken.mp4: cannot open as video"}
EMBEDDING = {"input": "x.png", "task": "features", "frames": 1, "embedding": [0.1] * 64}


def test_a_row_an_input_with_dotted_columns_and_the_failure_kept():
    table = predictions_table([CLASSIFICATION, FAILED, ANNOTATION, EMBEDDING])
    assert list(table["input"]) == ["a.mp4", "broken.mp4", "lung.mp4", "x.png"]
    assert list(table.columns[:2]) == ["input", "error"]
    a, failed, lung, emb = (table.iloc[i] for i in range(4))
    assert a["prediction"] == "hypo" and a["probabilities.hypo"] == 0.6 and a["probabilities.hyper"] == 0.4
    assert a["clip_mode"] == "windows" and pd.isna(a["error"])
    assert failed["error"] == "broken.mp4: cannot open as video" and pd.isna(failed["probabilities.hypo"])
    assert lung["findings.b_lines.probability"] == 0.9 and lung["findings.b_lines.present"] is True
    assert lung["findings.consolidation.label"] == "consolidation"
    assert lung["categorical.severity.prediction"] == "2" and lung["categorical.severity.probabilities.2"] == 0.9
    assert lung["entities"] == "b_lines; pleural_line" and lung["description"] == "B-lines are seen."
    assert emb["frames"] == 1
    # arrays stay in the JSON only: per-frame and per-window scores, window starts, embeddings
    assert not [c for c in table.columns if c.startswith(("per_frame", "embedding", "windows"))]


def test_segmentation_gives_a_row_a_frame_without_inline_images():
    table = predictions_table([SEGMENTATION, FAILED])
    assert list(table["input"]) == ["head.dcm", "head.dcm", "broken.mp4"]
    first, second, failed = (table.iloc[i] for i in range(3))
    assert (first["frame"], second["frame"]) == (0, 1)
    assert first["area_fraction.head"] == 0.25 and first["head_circumference_mm"] == 170.5
    assert first["head_ellipse_px.center_xy.0"] == 40.0 and first["head_ellipse_px.center_xy.1"] == 30.0
    assert first["pixel_spacing_mm.1"] == 0.12 and second["pixel_spacing_mm.1"] == 0.12  # input's values on each row
    assert pd.isna(first["png"]) and second["png"] == "masks/head.frame0001.mask.png"  # data: URIs are no cell
    assert pd.isna(second["head_circumference_mm"]) and second["head_circumference_failure"] == "no head in the mask"
    assert "classes_in_mask" in table.columns and first["classes_in_mask"] == "background; head"
    assert failed["error"].startswith("broken.mp4") and pd.isna(failed["frame"])


def test_cli_writes_the_table_beside_the_json(tiny_run, video_file, tmp_path, capsys):
    from sonodistill.cli import main

    out, csv = tmp_path / "p.json", tmp_path / "tables" / "p.csv"
    assert main(["predict", str(tiny_run), str(video_file), str(tmp_path / "gone.mp4"), "--out", str(out),
                 "--csv", str(csv)]) == 1
    payload = json.loads(out.read_text())
    table = pd.read_csv(csv)
    assert list(table["input"]) == [str(video_file), str(tmp_path / "gone.mp4")]
    probs = payload["results"][0]["probabilities"]
    np.testing.assert_allclose([table.loc[0, f"probabilities.{c}"] for c in probs], list(probs.values()))
    assert table.loc[0, "prediction"] == payload["results"][0]["prediction"]
    assert "file not found" in table.loc[1, "error"]
    assert "wrote " + str(csv) + " (2 row(s))" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(video_file), "--csv", str(csv)]) == 0
    assert capsys.readouterr().out == ""  # the table replaces the JSON on stdout


@pytest.mark.parametrize("value", [[1, 2, 3, 4, 5], [[1, 2]], [{"no": "name"}]])
def test_arrays_make_no_column(value):
    assert list(predictions_table([{"input": "x", "v": value}]).columns) == ["input", "error"]


def test_an_empty_list_of_words_is_an_empty_cell():
    assert predictions_table([{"input": "x", "entities": []}]).loc[0, "entities"] == ""
