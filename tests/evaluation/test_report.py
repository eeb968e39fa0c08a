"""Markdown tables, cross-validation report files and the predictions.csv contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sonodistill.errors import DataError
from sonodistill.evaluation.metrics import MeanStd
from sonodistill.evaluation.report import markdown_table, read_predictions, write_cv_report

CLASSES = ["normal", "b_lines"]


def fold_rows(fold: int, y: list[int], pred: list[int], model: str | None = None) -> list[dict]:
    rows = []
    for i, (t, p) in enumerate(zip(y, pred)):
        p1 = 0.8 if p == 1 else 0.3 - 0.05 * i  # distinct scores so ROC curves are not degenerate
        row = {"fold": fold, "index": 10 * fold + i, "group": f"patient{fold}_{i}", "y_true": t,
               "prob_normal": 1 - p1, "prob_b_lines": p1}
        if model is not None:
            row = {"model": model, **row}
        rows.append(row)
    return rows


def hand_predictions(model: str | None = None) -> pd.DataFrame:
    """Fold 0: 4/4 correct; fold 1: 2/4 correct -> accuracy 0.750 ± 0.354 (ddof=1)."""
    return pd.DataFrame(
        fold_rows(0, [0, 0, 1, 1], [0, 0, 1, 1], model) + fold_rows(1, [0, 0, 1, 1], [0, 1, 0, 1], model)
    )


def strict_json(path) -> dict:
    def reject(c):
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_markdown_table_cells():
    rows = {"ours": {"acc": MeanStd(0.8123, 0.0341, 5, 0), "auc": (0.9, 0.01)}, "other": {"acc": (0.5, 0.1)}}
    text = markdown_table(rows, ["acc", "auc"], extra={"ours": {"auc": "ignored"}, "paper": {"acc": "0.85"}})
    lines = text.strip().splitlines()
    assert lines[0] == "|  | acc | auc |"
    assert lines[2] == "| ours | 0.812 ± 0.034 | 0.900 ± 0.010 |"
    assert lines[3] == "| other | 0.500 ± 0.100 | – |"
    assert lines[4] == "| paper | 0.85 | – |"
    pct = markdown_table({"ours": {"acc": (0.8123, 0.0341)}}, ["acc"], percent=True, index_name="model")
    assert "| ours | 81.2 ± 3.4 |" in pct and pct.startswith("| model | acc |")


def test_markdown_table_nan_and_skipped_folds():
    rows = {"r": {"a": MeanStd(math.nan, math.nan, 0, 3), "b": MeanStd(0.7, 0.1, 2, 1)}}
    assert "| r | n/a | 0.700 ± 0.100 (1 n/a) |" in markdown_table(rows, ["a", "b"])


def test_write_cv_report_files_and_values(tmp_path):
    summary = write_cv_report(tmp_path, hand_predictions(), CLASSES, "Hand case", extra_rows={"paper": {"f1": "0.9"}})
    for name in ("metrics_per_fold.csv", "metrics.json", "report.md", "confusion_matrix.png", "roc.png",
                 "calibration.png"):
        assert (tmp_path / name).is_file(), name
    for png in ("confusion_matrix.png", "roc.png", "calibration.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and min(im.size) > 200

    assert summary["accuracy"] == pytest.approx((0.75, math.sqrt(0.125)))
    # Brier (two classes: 2 (p_b_lines - y)^2 per item): fold 0 0.465 / 4, fold 1 2.82 / 4. ECE: fold 0 confidences
    # 0.7 | 0.75, 0.8, 0.8 all right -> (0.3 + 0.65) / 4; fold 1 0.7 right | 0.8 wrong, 0.8 wrong, 0.8 right ->
    # (0.3 + |-0.8 - 0.8 + 0.2|) / 4
    assert summary["brier"].mean == pytest.approx((0.465 / 4 + 2.82 / 4) / 2)
    assert summary["ece"].mean == pytest.approx((0.95 / 4 + 1.7 / 4) / 2)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Hand case")
    assert "| 2-fold CV | 0.750 ± 0.354 | 0.750 ± 0.354 |" in report
    assert "| paper | – | – | – | – | – | 0.9 | – | – | – |" in report
    assert "| brier | ece |" in report and "![reliability diagram, pooled over folds](calibration.png)" in report
    assert "| normal | 3 | 1 |" in report and "| b_lines | 1 | 3 |" in report  # summed confusion
    assert "![confusion matrix](confusion_matrix.png)" in report and "roc.png)" in report

    per_fold = pd.read_csv(tmp_path / "metrics_per_fold.csv")
    assert per_fold["accuracy"].tolist() == [1.0, 0.5]
    assert per_fold["n_items"].tolist() == [4, 4]
    data = strict_json(tmp_path / "metrics.json")
    assert data["summary"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert data["confusion_matrix"] == [[3, 1], [1, 3]]
    assert [f["fold"] for f in data["per_fold"]] == [0, 1]


def test_write_cv_report_marks_undefined_folds(tmp_path):
    # fold 1 has no b_lines item: its b_lines sensitivity and AUC are undefined (NaN, left out, counted)
    df = pd.DataFrame(fold_rows(0, [0, 1, 1], [0, 1, 0]) + fold_rows(1, [0, 0], [0, 1]))
    summary = write_cv_report(tmp_path, df, CLASSES, "Absent class")
    assert summary["sensitivity/b_lines"].n_nan == 1
    assert summary["sensitivity/b_lines"] == pytest.approx((0.5, 0.0))
    assert "| b_lines | 0.500 ± 0.000 (1 n/a) |" in (tmp_path / "report.md").read_text()
    data = strict_json(tmp_path / "metrics.json")
    assert data["per_fold"][1]["sensitivity/b_lines"] is None


def test_write_cv_report_model_comparison(tmp_path):
    df = pd.concat([hand_predictions("base"), hand_predictions("distilled")], ignore_index=True)
    right = df["model"] == "distilled"
    df.loc[right, "prob_b_lines"] = np.where(df.loc[right, "y_true"] == 1, 0.9, 0.1)
    df.loc[right, "prob_normal"] = 1 - df.loc[right, "prob_b_lines"]
    summary = write_cv_report(tmp_path, df, CLASSES, "Comparison")

    assert set(summary) == {"base", "distilled"}
    assert summary["distilled"]["accuracy"] == (1.0, 0.0)
    report = (tmp_path / "report.md").read_text()
    assert "| base | 0.750 ± 0.354 |" in report
    assert "| distilled | 1.000 ± 0.000 |" in report
    assert "## base" in report and "## distilled" in report
    for m in ("base", "distilled"):
        assert (tmp_path / f"confusion_matrix_{m}.png").is_file()
        assert (tmp_path / f"roc_{m}.png").is_file() and (tmp_path / f"calibration_{m}.png").is_file()
    per_fold = pd.read_csv(tmp_path / "metrics_per_fold.csv")
    assert per_fold[["model", "fold"]].values.tolist() == [["base", 0], ["base", 1], ["distilled", 0], ["distilled", 1]]
    assert set(strict_json(tmp_path / "metrics.json")["models"]) == {"base", "distilled"}


def test_model_comparison_needs_same_folds(tmp_path):
    df = pd.concat([hand_predictions("a"), hand_predictions("b")], ignore_index=True)
    df = df[~((df["model"] == "b") & (df["fold"] == 1))]
    with pytest.raises(ValueError, match="folds"):
        write_cv_report(tmp_path, df, CLASSES, "t")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.drop(columns="prob_b_lines"), r"lack columns \['prob_b_lines'\]"),
        (lambda d: d.assign(prob_extra=0.0), "not in"),
        (lambda d: d.assign(y_true=[0, 0, 1, 5, 0, 0, 1, 1]), "row 3 .*y_true 5"),
        (lambda d: d.assign(prob_normal=0.9), "row 0 .*sum to 1"),
        (lambda d: d.assign(index=[0, 0, 1, 2, 10, 11, 12, 13]), "row 1 .*twice"),
    ],
)
def test_write_cv_report_rejects_bad_predictions(tmp_path, mutate, match):
    with pytest.raises(ValueError, match=match):
        write_cv_report(tmp_path, mutate(hand_predictions()), CLASSES, "t")


def test_read_predictions_roundtrip_and_errors(tmp_path):
    df = hand_predictions()
    df.to_csv(tmp_path / "predictions.csv", index=False)
    back = read_predictions(tmp_path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["group"].dtype == object or pd.api.types.is_string_dtype(back["group"])

    with pytest.raises(DataError, match="no predictions.csv"):
        read_predictions(tmp_path / "missing_run")
    df.drop(columns=["group"]).to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(DataError, match=r"missing columns \['group'\]"):
        read_predictions(tmp_path)
