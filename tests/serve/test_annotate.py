"""`sonodistill annotate`: the JSON schema on a tiny annotator (random weights), inputs and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sonodistill.cli import main
from sonodistill.data.preprocess import PreprocessConfig
from sonodistill.data.sequences import AnnotationSpec
from sonodistill.data.text import TextTokenizer
from sonodistill.errors import CheckpointError, ConfigError
from sonodistill.knowledge import load_graph
from sonodistill.models.fusion import DILBERTModel, FusionConfig
from sonodistill.recipes.dilbert import export_annotator
from sonodistill.serve.annotate import annotate_frames, annotate_path, load_annotator

REPORTS = ["Lung ultrasound shows B-lines in the lung. No A-lines. Severity score: 2.",
           "Lung ultrasound shows A-lines in the lung. No B-lines. Severity score: 0.",
           "broken pleura line, consolidated areas, multiple B-lines"]


@pytest.fixture(scope="module")
def annotator_dir(tmp_path_factory) -> Path:
    graph = load_graph("lung")
    tok = TextTokenizer.train(REPORTS, 250, extra_texts=graph.terms(), spelling=graph.spelling)
    spec = AnnotationSpec("lung", ["a-lines", "b-lines"], ["a_lines", "b_lines"], {"severity score": ["0", "1", "2", "3"]})
    fcfg = FusionConfig(vocab_size=tok.vocab_size, dim=16, layers=2, heads=2, num_frames=4, max_text_len=32,
                        n_binary=2, categorical=[4], pad_id=tok.pad_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    torch.manual_seed(0)
    annotator, retriever = DILBERTModel(fcfg), DILBERTModel(fcfg)
    out = tmp_path_factory.mktemp("ckpt") / "export" / "student"
    return export_annotator(out, annotator, retriever, fcfg, spec, tok, REPORTS, PreprocessConfig(size=32),
                            {"role": "student", "graph": "lung", "num_frames": 4, "max_text_len": 32, "threshold": 0.5})


def check_schema(result: dict, n_reports: int = 3) -> None:
    assert set(result) == {"input", "frames", "model", "findings", "categorical", "entities", "description",
                           "nearest_report", "retrieved_reports", "reports_ranked_by"}
    assert [f["name"] for f in result["findings"]] == ["a-lines", "b-lines"]
    for f in result["findings"]:
        assert set(f) == {"name", "label", "column", "probability", "present"}
        assert 0.0 <= f["probability"] <= 1.0 and f["present"] == (f["probability"] >= 0.5)
    (sev,) = result["categorical"]
    assert sev["name"] == "severity score" and sev["prediction"] in "0123"
    assert sum(sev["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert sev["prediction"] == max(sev["probabilities"], key=sev["probabilities"].get)
    assert result["entities"] == [f["name"] for f in result["findings"] if f["present"]]
    expected = load_graph("lung").describe(result["entities"], extras={"severity score": sev["prediction"]})
    assert result["description"] == expected
    assert result["nearest_report"]["text"] in REPORTS
    scores = [r["score"] for r in result["retrieved_reports"]]
    assert len(scores) == n_reports
    if result["reports_ranked_by"] == "raw":
        assert scores == sorted(scores, reverse=True)
    assert result["nearest_report"] == result["retrieved_reports"][0]


def test_annotate_video_file_json_schema(annotator_dir, video_file):
    ann = load_annotator(annotator_dir)
    result = annotate_path(ann, video_file)
    check_schema(result)
    assert result["frames"] == 20 and result["model"]["role"] == "student"
    json.dumps(result)  # serialisable


def test_annotate_folder_of_frames_equals_the_same_frames(annotator_dir, tmp_path):
    from tests.serve.conftest import synthetic_frames

    frames = synthetic_frames(t=6, h=64, w=64)
    folder = tmp_path / "seq"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame_{i:03d}.png")
    ann = load_annotator(annotator_dir)
    from_folder = annotate_path(ann, folder, top_k=2)
    check_schema(from_folder, n_reports=2)
    direct = annotate_frames(ann, frames, str(folder), top_k=2)
    assert from_folder["findings"] == direct["findings"] and from_folder["frames"] == 6


def test_threshold_changes_presence_only(annotator_dir):
    ann = load_annotator(annotator_dir)
    frames = np.random.default_rng(0).integers(0, 255, (5, 48, 48), dtype=np.uint8)
    low, high = annotate_frames(ann, frames, top_k=1, threshold=0.0), annotate_frames(ann, frames, top_k=1, threshold=1.01)
    assert all(f["present"] for f in low["findings"]) and not any(f["present"] for f in high["findings"])
    assert [f["probability"] for f in low["findings"]] == [f["probability"] for f in high["findings"]]


def test_cli_prints_and_writes_json(annotator_dir, video_file, tmp_path, capsys):
    out = tmp_path / "a.json"
    # the run-directory form: CKPT/export/student is found
    assert main(["annotate", str(annotator_dir.parent.parent), str(video_file), "--top-k", "1", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    check_schema(printed, n_reports=1)


def test_errors_name_what_is_missing(annotator_dir, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="no DILBERT annotator"):
        load_annotator(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dilbert.json").write_text(json.loads(json.dumps("{}")))
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        load_annotator(broken)
    assert main(["annotate", str(annotator_dir), str(tmp_path / "none.mp4")]) == 2
    assert "not found" in capsys.readouterr().err


def logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def test_reports_ranked_by_the_bank_normalised_score(annotator_dir, video_file, tmp_path):
    """An annotator with a report bank ranks by (logit(score) - mean) / std per report: a bank built to reverse the
    raw order reverses it; `--ranking raw` still ranks by the probability; the export copies the bank."""
    raw = annotate_path(load_annotator(annotator_dir), video_file)
    assert raw["reports_ranked_by"] == "raw" and all("bank_score" not in r for r in raw["retrieved_reports"])
    order = [r["text"] for r in raw["retrieved_reports"]]
    score = {r["text"]: r["score"] for r in raw["retrieved_reports"]}
    assert len(set(score.values())) == 3  # distinct, so that reversing is a test
    # mean = 2 logit(score), std = 1: the z-score is -logit(score), the raw order reversed
    bank = {"sequences": 5, "mean": [2 * logit(score[r]) for r in REPORTS], "std": [1.0, 1.0, 1.0]}
    folder = tmp_path / "banked"
    for name in ("annotator.safetensors", "retriever.safetensors", "tokenizer.json", "reports.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((annotator_dir / name).read_bytes())
    info = json.loads((annotator_dir / "dilbert.json").read_text())
    (folder / "dilbert.json").write_text(json.dumps({**info, "report_ranking": "bank"}))
    (folder / "report_bank.json").write_text(json.dumps(bank))
    ann = load_annotator(folder)
    banked = annotate_path(ann, video_file)
    check_schema(banked)
    assert banked["reports_ranked_by"] == "bank"
    assert [r["text"] for r in banked["retrieved_reports"]] == order[::-1]
    for r in banked["retrieved_reports"]:
        assert r["score"] == score[r["text"]]
        assert r["bank_score"] == pytest.approx(-logit(r["score"]), abs=1e-3)
    again = annotate_path(ann, video_file, ranking="raw")
    assert [r["text"] for r in again["retrieved_reports"]] == order and again["reports_ranked_by"] == "raw"


def test_report_bank_errors_name_the_file(annotator_dir, video_file, tmp_path):
    with pytest.raises(ConfigError, match="report_bank.json"):  # asked for, never exported
        annotate_path(load_annotator(annotator_dir), video_file, ranking="bank")
    folder = tmp_path / "a"
    folder.mkdir()
    for f in annotator_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    info = json.loads((annotator_dir / "dilbert.json").read_text())
    (folder / "dilbert.json").write_text(json.dumps({**info, "report_ranking": "bank"}))
    with pytest.raises(CheckpointError, match="report_bank.json is missing"):
        load_annotator(folder)
    (folder / "report_bank.json").write_text(json.dumps({"sequences": 2, "mean": [0.0, 0.0], "std": [1.0, 1.0]}))
    with pytest.raises(CheckpointError, match="2 means and 2 standard deviations for 3 reports"):
        load_annotator(folder)
    (folder / "report_bank.json").write_text(json.dumps({"sequences": 2, "mean": [0.0] * 3, "std": [1.0, 0.0, 1.0]}))
    with pytest.raises(CheckpointError, match="not positive"):
        load_annotator(folder)
    (folder / "dilbert.json").write_text(json.dumps({**info, "report_ranking": "best"}))
    with pytest.raises(CheckpointError, match="report_ranking 'best'"):
        load_annotator(folder)
