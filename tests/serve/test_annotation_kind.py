"""The "annotation" model kind: a dilbert run directory through predict, serve, export (ONNX) and explain.

The run directories are made without training: `export_annotator` writes annotator folders of tiny random DILBERT
models (the test_annotate.py fixture's sizes) into `final/` and `fold_0/`, `fold_1/` as the dilbert recipe lays them
out, beside a config.yaml (recipe dilbert) and a manifest.csv. Each member has its own weights, so which one is
served shows in the numbers. The trained tiny run is covered by tests/serve/test_every_recipe_serves.py.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sonodistill.cli import main
from sonodistill.config import RunConfig
from sonodistill.data.preprocess import PreprocessConfig
from sonodistill.data.sequences import AnnotationSpec
from sonodistill.data.text import TextTokenizer
from sonodistill.errors import CheckpointError, ConfigError
from sonodistill.knowledge import load_graph
from sonodistill.models.fusion import DILBERTModel, FusionConfig
from sonodistill.recipes.dilbert import export_annotator
from sonodistill.serve.annotate import annotate_path, clip_tensor, load_annotator
from sonodistill.serve.loading import load_model
from sonodistill.serve.predict import predict_file, predict_many

from .conftest import analyse_on_review_page, serving, synthetic_frames
from .test_browser import browser  # noqa: F401 - the fixture of the Chromium test below

pytestmark = pytest.mark.usefixtures("one_thread")

REPORTS = ["Lung ultrasound shows B-lines in the lung. No A-lines. Severity score: 2.",
           "Lung ultrasound shows A-lines in the lung. No B-lines. Severity score: 0.",
           "broken pleura line, consolidated areas, multiple B-lines"]
FIELDS = ("findings", "categorical", "entities", "description", "nearest_report", "retrieved_reports")


def _write_run(root: Path, name: str, members: dict[str, int]) -> Path:
    """A dilbert run directory: config.yaml, manifest.csv, and `<member>/export/{student,teacher}/` annotators whose
    weights come from seed `members[member]` (teacher: seed + 50)."""
    graph = load_graph("lung")
    tok = TextTokenizer.train(REPORTS, 250, extra_texts=graph.terms(), spelling=graph.spelling)
    spec = AnnotationSpec("lung", ["a-lines", "b-lines"], ["a_lines", "b_lines"],
                          {"severity score": ["0", "1", "2", "3"]})
    fcfg = FusionConfig(vocab_size=tok.vocab_size, dim=16, layers=2, heads=2, num_frames=4, max_text_len=32,
                        n_binary=2, categorical=[4], pad_id=tok.pad_id, cls_id=tok.cls_id, sep_id=tok.sep_id)
    cfg = RunConfig(name=name, out_dir=str(root), recipe="dilbert")
    cfg.data.spec, cfg.data.size, cfg.data.num_frames = "synthetic:test", 32, 4
    run = cfg.run_dir
    cfg.save(run / "config.yaml")
    (run / "manifest.csv").write_text("path,group,label\nclips/a.mp4,p0,a\nclips/b.mp4,p1,b\n")
    for member, seed in members.items():
        for variant, salt in (("student", 0), ("teacher", 50)):
            torch.manual_seed(seed + salt)
            annotator, retriever = DILBERTModel(fcfg), DILBERTModel(fcfg)
            with torch.no_grad():  # spread the finding logits, so presence does not sit at the threshold
                annotator.annotation.binary.weight.mul_(20.0)
            # the final member ranks its reports by a (unit) report bank, as exports since 2026-12-07 can
            bank = {"sequences": 2, "mean": [0.0] * 3, "std": [1.0] * 3} if member == "final" else None
            export_annotator(run / member / "export" / variant, annotator, retriever, fcfg, spec, tok, REPORTS,
                             PreprocessConfig(size=32), {"role": variant, "graph": "lung", "num_frames": 4,
                                                         "max_text_len": 32, "threshold": 0.5,
                                                         "report_ranking": "bank" if bank else "raw"}, bank)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dilbert-runs")
    return {"final": _write_run(root, "with-final", {"final": 100, "fold_0": 0, "fold_1": 1}),
            "folds": _write_run(root, "folds-only", {"fold_0": 0, "fold_1": 1}),
            "one_fold": _write_run(root, "one-fold", {"fold_1": 1})}


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames") / "seq"
    folder.mkdir()
    for i, f in enumerate(synthetic_frames(t=6, h=64, w=64, seed=3)):
        Image.fromarray(f).save(folder / f"frame_{i:03d}.png")
    return folder


def _annotate(folder: Path, item: Path) -> dict:
    return annotate_path(load_annotator(folder), item)


def _same_annotation(got: dict, want: dict) -> None:
    assert {k: got[k] for k in FIELDS} == {k: want[k] for k in FIELDS}


# ------------------------------------------------------------------------------------------- predict
def test_predict_serves_the_final_student_with_annotate_s_findings(runs, video_file):
    run = runs["final"]
    model = load_model(run)
    assert model.task == "annotation" and model.member_names == ["final"] and model.classes == []
    info = model.describe()["annotation"]
    assert info["member"] == "final" and info["variant"] == "student" and info["ensembled"] is False
    assert info["outputs"] == ["a-lines", "b-lines"] + [f"severity score={c}" for c in "0123"]
    payload = predict_many(model, [video_file])
    assert payload["warnings"] == [] and payload["model"]["annotation"]["member"] == "final"
    (result,) = payload["results"]
    assert result["task"] == "annotation" and result["frames"] == 20 and result["clip_mode"] == "uniform"
    for f in result["findings"]:
        assert 0.0 <= f["probability"] <= 1.0 and f["present"] == (f["probability"] >= 0.5)
    # the same content as `sonodistill annotate` with the final student annotator
    _same_annotation(result, _annotate(run / "final" / "export" / "student", video_file))
    # and the annotator's own network on the same clip, computed here without the serving code
    ann = load_annotator(run / "final" / "export" / "student")
    with torch.no_grad():
        logits = ann.annotator.annotate(clip_tensor(ann_frames(video_file), ann))
    np.testing.assert_allclose([f["probability"] for f in result["findings"]],
                               torch.sigmoid(logits.binary)[0].numpy(), atol=2e-6)
    np.testing.assert_allclose(list(result["categorical"][0]["probabilities"].values()),
                               torch.softmax(logits.categorical[0], 1)[0].numpy(), atol=2e-6)
    # not fold_0's annotator: the member choice shows in the numbers
    fold0 = _annotate(run / "fold_0" / "export" / "student", video_file)
    assert [f["probability"] for f in fold0["findings"]] != [f["probability"] for f in result["findings"]]


def ann_frames(path: Path) -> np.ndarray:
    from sonodistill.serve.predict import read_input

    return read_input(path).frames


def test_cli_predict_clip_and_folder_with_a_failure_entry(runs, video_file, frames_dir, tmp_path, capsys):
    run = runs["final"]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    out = tmp_path / "p.json"
    code = main(["predict", str(run), str(video_file), str(frames_dir), str(broken), "--folder-as-clip",
                 "--out", str(out)])
    assert code == 1  # one input failed, the others are predicted
    payload = json.loads(out.read_text())
    clip, folder, failed = payload["results"]
    assert set(failed) == {"input", "error"} and failed["input"] == str(broken)
    student = run / "final" / "export" / "student"
    _same_annotation(clip, _annotate(student, video_file))
    _same_annotation(folder, _annotate(student, frames_dir))  # a folder of frames is one sequence, as in annotate
    assert folder["frames"] == 6 and isinstance(folder["description"], str) and folder["description"]
    assert "could not be read" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- members
def test_members_asking_for_several_annotators_is_refused(runs, video_file, capsys):
    with pytest.raises(ConfigError, match="not ensembled"):
        load_model(runs["final"], members="folds")
    assert main(["predict", str(runs["folds"]), str(video_file), "--members", "folds"]) == 2
    err = capsys.readouterr().err
    assert "fold_0, fold_1" in err and "not ensembled" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="train.final=true"):
        load_model(runs["folds"], members="final")


def test_without_final_one_fold_annotator_is_served_and_the_json_says_so(runs, video_file):
    model = load_model(runs["folds"])  # auto: no final/ -> the lowest fold, with a warning naming the others
    assert model.member_names == ["fold_0"]
    payload = predict_many(model, [video_file])
    (warning,) = payload["warnings"]
    assert "one annotator served, fold_0" in warning and "fold_0, fold_1" in warning and "not ensembled" in warning
    _same_annotation(payload["results"][0], _annotate(runs["folds"] / "fold_0" / "export" / "student", video_file))
    single = load_model(runs["one_fold"], members="folds")  # one fold annotator: --members folds is that one
    assert single.member_names == ["fold_1"] and predict_many(single, [video_file])["warnings"] == []


# ------------------------------------------------------------------------------------------- export
def test_onnx_export_parity_and_predict_from_the_export(runs, video_file, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")
    from sonodistill.serve.export import export_model

    run = runs["final"]
    folder = export_model(run, tmp_path / "onnx", "onnx")
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["task"] == "annotation" and meta["output_name"] == "probabilities" and meta["members"] == ["final"]
    assert meta["max_abs_diff_vs_torch"] <= 1e-4 and meta["input_shape"] == [None, 1, 4, 32, 32]
    assert meta["annotation"]["folder"] == "annotator" and meta["annotation"]["variant"] == "student"
    assert sorted(p.name for p in (folder / "annotator").iterdir()) == sorted(
        ["dilbert.json", "tokenizer.json", "annotator.safetensors", "retriever.safetensors", "reports.json",
         "report_bank.json"])
    card = (folder / "MODEL_CARD.md").read_text()
    assert "not ensembled" in card and "Not in the graph" in card and "`severity score=3`" in card

    torch_model, onnx_model = load_model(run), load_model(folder)
    assert onnx_model.backend == "onnx" and onnx_model.describe()["annotation"]["member"] == "final"
    x = np.random.default_rng(0).random((3, *torch_model.input_shape), dtype=np.float32)
    ref, got = torch_model.probabilities(x), onnx_model.probabilities(x)
    assert ref.shape == got.shape == (3, 6) and np.abs(got - ref).max() <= 1e-4
    assert ((ref >= 0) & (ref <= 1)).all() and np.allclose(ref[:, 2:].sum(axis=1), 1.0, atol=1e-5)

    from_onnx, from_torch = predict_file(onnx_model, video_file), predict_file(torch_model, video_file)
    np.testing.assert_allclose([f["probability"] for f in from_onnx["findings"]],
                               [f["probability"] for f in from_torch["findings"]], atol=1e-4)
    assert from_onnx["description"] == from_torch["description"]
    assert from_onnx["nearest_report"]["text"] == from_torch["nearest_report"]["text"]
    assert from_onnx["reports_ranked_by"] == from_torch["reports_ranked_by"] == "bank"
    assert from_onnx["nearest_report"]["bank_score"] == from_torch["nearest_report"]["bank_score"]


def test_model_card_gives_the_served_variant_s_cross_validated_metrics(runs, tmp_path):
    """An annotation export's card: one annotator, outputs, what stays in Python, and the served variant's macro
    metrics from a dilbert metrics.json (shaped as the recipe's summary: pooled macro, per-fold [mean, std])."""
    import shutil

    from sonodistill.serve.model_card import model_card

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "manifest.csv"):
        shutil.copy(runs["final"] / name, run / name)
    variant = {"pooled": {"macro": {"sensitivity": 0.75, "precision": 0.25, "f1": 0.5}},
               "per_fold_macro": {"sensitivity": [0.7, 0.2], "precision": [0.3, 0.1], "f1": [0.4, 0.1]}}
    other = {"pooled": {"macro": {"sensitivity": 0.1, "precision": 0.1, "f1": 0.1}}, "per_fold_macro": {}}
    (run / "metrics.json").write_text(json.dumps({"variants": {"teacher": other, "student": variant},
                                                  "threshold": 0.5}))
    info = load_model(runs["final"]).describe()["annotation"]
    card = model_card(run, {"task": "annotation", "input_kind": "video", "input_shape": [None, 1, 4, 32, 32],
                            "members": ["final"], "annotation": {**info, "folder": "annotator"}})
    assert "Variant `student`" in card and "| f1 | 0.500 | 0.400 ± 0.100 |" in card
    assert "| sensitivity | 0.750 | 0.700 ± 0.200 |" in card and "| f1 | 0.100 | n/a |" not in card  # not teacher
    assert "fusion encoder of dim 16, 2 layers" in card and "frames per input, sampled over the whole" in card


@pytest.mark.parametrize("shape", [(3, 5, 1, 1), (2, 4, 2, 2), (2, 3, 3, 5), (1, 2, 7, 4)])
def test_region_pooling_traced_for_export_equals_adaptive_pooling(shape):
    """The exported graph pools region tokens with constant matrices; eager code uses adaptive_avg_pool2d."""
    import torch.nn.functional as F

    from sonodistill.models.fusion import region_pool

    fmap = torch.randn(*shape)

    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return region_pool(x, 2)

    with pytest.warns(torch.jit.TracerWarning):  # the feature map size becomes a constant of the graph
        traced = torch.jit.trace(Pool(), (fmap,), check_trace=False)
    assert "adaptive_avg_pool2d" not in str(traced.graph)
    torch.testing.assert_close(traced(fmap), F.adaptive_avg_pool2d(fmap, 2), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- serve, explain
def test_review_server_answers_with_findings(runs, video_file):
    from sonodistill.serve.app import make_server

    srv = make_server(load_model(runs["final"]), "127.0.0.1", 0)
    with serving(srv) as (host, port):
        with urllib.request.urlopen(f"http://{host}:{port}/api/info", timeout=30) as r:
            info = json.loads(r.read())
        assert info["task"] == "annotation" and not info["heatmaps"] and info["classes"] == []
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.request("POST", "/api/predict", body=video_file.read_bytes(),
                     headers={"X-File-Extension": ".mp4", "Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        status, payload = resp.status, json.loads(resp.read())
        conn.close()
    assert status == 200, payload
    result = payload["result"]
    _same_annotation(result, _annotate(runs["final"] / "final" / "export" / "student", video_file))
    assert payload["gif"].startswith("data:image/gif;base64,") and payload["heatmap"] is None
    assert "Grad-CAM does not apply to DILBERT annotators" in payload["note"]


def test_explain_occludes_the_annotators_own_input(runs, video_file, tmp_path):
    """`explain` on a dilbert run: occlusion sensitivity of the chosen output (here a categorical class) on the
    annotator's one input (T frames at segment centres, pixel / 255), the same maps as `occlusion_map` computed by
    hand on `clip_tensor`, scaled to peak 1; Grad-CAM is not offered."""
    from sonodistill.data.readers import read_clip
    from sonodistill.data.sequences import sample_indices
    from sonodistill.explain.occlusion import OutputProbability, occlusion_map
    from sonodistill.serve.annotate import AnnotationProbabilities

    out = tmp_path / "x"
    assert main(["explain", str(runs["final"]), str(video_file), "--out", str(out), "--target",
                 "severity score=2", "--occlusion-mask", "8"]) == 0
    summary = json.loads((out / "explain.json").read_text())
    assert set(summary["methods"]) == {"occlusion"} and summary["target"] == "severity score=2"
    assert summary["targets"] == ["a-lines", "b-lines", *[f"severity score={k}" for k in "0123"]]
    frames = read_clip(video_file, grayscale=True).frames
    assert summary["explained_frames"] == np.unique(sample_indices(len(frames), 4, None)).tolist()
    ann = load_annotator(runs["final"] / "final" / "export" / "student")
    x = clip_tensor(frames, ann)
    expected = occlusion_map(OutputProbability(AnnotationProbabilities(ann.annotator)), x, 4, mask=8).numpy()
    maps = np.load(out / "occlusion_maps.npy").astype(np.float32)
    assert expected.max() > 0
    np.testing.assert_allclose(maps, expected / expected.max(), atol=2e-3)


@pytest.mark.slow
def test_review_page_shows_the_findings_table_in_chromium(runs, video_file, tmp_path, browser):
    """The review page renders an annotation: a findings table (label, probability bar, present/absent), the
    categorical target, the description and the nearest report. `browser`: test_browser.py's fixture (skips
    without Chromium and Playwright)."""
    from sonodistill.serve.app import make_server

    srv = make_server(load_model(runs["final"]), "127.0.0.1", 0, tmp_root=tmp_path)
    with serving(srv) as address:
        page, errors = analyse_on_review_page(browser, address, "annotation", video_file)
        want = _annotate(runs["final"] / "final" / "export" / "student", video_file)
        rows = page.locator("#findings tr")
        assert rows.count() == len(want["findings"]) + len(want["categorical"])  # a-lines, b-lines, severity
        first = want["findings"][0]
        assert rows.nth(0).inner_text().split("\t")[0] == first["label"]
        assert f"{first['probability']:.3f}" in rows.nth(0).inner_text()
        assert ("present" if first["present"] else "absent") in rows.nth(0).inner_text()
        assert page.inner_text("#description") == want["description"]
        assert want["nearest_report"]["text"] in page.inner_text("#nearest")
        assert page.inner_text("#prediction-class").startswith("Findings present (threshold 0.5)")
        assert "Grad-CAM does not apply" in page.inner_text("#heatmap-note") and errors == []


def test_annotate_takes_a_run_directory_as_predict_does(runs, caplog):
    """`sonodistill annotate RUN` on a run without final/ (trained by fold) used to stop with 'no DILBERT annotator
    here': it now annotates with the annotator predict serves, and says so when the run has several."""
    from sonodistill.serve.annotate import resolve_annotator

    assert resolve_annotator(runs["final"]) == runs["final"] / "final" / "export" / "student"
    assert resolve_annotator(runs["one_fold"]) == runs["one_fold"] / "fold_1" / "export" / "student"
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert resolve_annotator(runs["folds"]) == runs["folds"] / "fold_0" / "export" / "student"
    assert "one annotator served, fold_0 (student), of the run's 2 fold annotators" in caplog.text
    assert resolve_annotator(runs["folds"] / "fold_1") == runs["folds"] / "fold_1" / "export" / "student"
    teacher = runs["folds"] / "fold_1" / "export" / "teacher"
    assert resolve_annotator(teacher / "dilbert.json") == teacher
