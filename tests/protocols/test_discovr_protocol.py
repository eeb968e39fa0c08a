"""DISCOVR on the one fold loop (issues 15 and 20): the final model on all `train_on_label` items with train.final
and with --final-only (served by `sonodistill predict`), resume re-evaluating finished folds from their saved
embeddings without pretraining again, and the checks made before anything is written. Tiny synthetic carotid runs
(video ViT of one block, 2 epochs, 32 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sonodistill.cli import main
from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.protocols.folds import run_protocol
from tests.recipes.conftest import read_weights, tiny_carotid  # noqa: F401 (a fixture)
from tests.recipes.test_discovr import TINY, TINY_OPTIONS

NORMAL = "hyperechoic"


def _cfg(root: Path, name: str, *extra: str, options: str = "") -> object:
    opts = "{" + TINY_OPTIONS + f", train_on_label: {NORMAL}, knn_k: 2" + (", " + options if options else "") + "}"
    return load_config(None, TINY + [
        f"recipe_options={opts}", f"name={name}", f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}",
        "data.batch_size=2", "data.augment=false", "data.sampling=uniform", "train.folds=2",
        "optim.warmup_epochs=0", "train.log_every_n_steps=1", *extra])


class FitSpy:
    """Records every `fit_fold` call (its training rows and folder), then runs it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import sonodistill.recipes.trainer as trainer

        self.calls: list[tuple[Path, list[int]]] = []
        real = trainer.fit_fold

        def spy(cfg, manifest, train_rows, test_rows, fold, fold_dir, *args, **kwargs):
            self.calls.append((Path(fold_dir), sorted(int(r) for r in train_rows)))
            return real(cfg, manifest, train_rows, test_rows, fold, fold_dir, *args, **kwargs)

        monkeypatch.setattr(trainer, "fit_fold", spy)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_carotid):  # noqa: F811
    """A CV run, then `--resume --set train.final=true` on it (the folds are kept: re-evaluated only), and the same
    config with --final-only. Returns (cv run, final-only run, fit_fold calls of the resume, the normal rows)."""
    root = tmp_path_factory.mktemp("discovr-final")
    mp = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cv = _cfg(root, "cv")
        run_protocol(cv, manifest=tiny_carotid)
        weights = {k: (cv.run_dir / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns for k in (0, 1)}
        spy = FitSpy(mp)
        resumed = _cfg(root, "cv", "train.final=true")
        summary = run_protocol(resumed, resume=True, manifest=tiny_carotid)
        for k in (0, 1):  # not retrained
            assert (cv.run_dir / f"fold_{k}" / "model.safetensors").stat().st_mtime_ns == weights[k]
        resume_calls = list(spy.calls)
        only = _cfg(root, "final-only", "train.cv=false")
        run_protocol(only, manifest=tiny_carotid)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    normal = [i for i in range(len(tiny_carotid)) if tiny_carotid.table["label"].iloc[i] == NORMAL]
    return cv.run_dir, only.run_dir, resume_calls, normal, summary


def test_resume_re_evaluates_finished_folds_and_adds_the_final_model_on_all_normal_items(runs):
    run, _, calls, normal, summary = runs
    # the resume pretrained only the final model, on every item of the normal label
    assert calls == [(run / "final", normal)]
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "done").is_file()
    folds = json.loads((run / "folds.json").read_text())
    for k in (0, 1):
        fold = run / f"fold_{k}"
        record = json.loads((fold / "eval.json").read_text())
        assert record["fold"] == k and 0.0 <= record["anomaly"]["auroc"] <= 1.0 and "linear" in record
        train = [i for i in folds[k]["train"] if i in normal]
        assert record["pretrain_items"] == len(train)
        rows = np.load(fold / "embedding_rows.npy")
        assert list(rows) == folds[k]["train"] + folds[k]["test"]
        assert np.load(fold / "embeddings.npy").shape == (len(rows), 24)
        table = pd.read_csv(fold / "test_predictions.csv")
        assert list(table["index"]) == folds[k]["test"] and set(table["fold"]) == {k}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["folds"] == [0, 1] and summary["anomaly"]["auroc"].n == 2
    report = (run / "report.md").read_text()
    assert report.startswith("# cv: discovr on ") and "## anomaly" in report
    assert f"pretrained on all {len(normal)} items with label '{NORMAL}'" in report
    # predictions.csv holds the anomaly calls of both folds' test clips (re-evaluated folds included), no class
    # probabilities: DISCOVR's folds score embeddings
    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(pred["fold"].unique()) == [0, 1] and not any(c.startswith("prob_") for c in pred.columns)
    assert {"is_anomalous", "anomaly_score", "anomaly_called"} <= set(pred.columns)


def test_final_only_pretrains_the_same_final_model_and_nothing_else(runs):
    cv_run, run, _, _, _ = runs
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "final", "manifest.csv", "report.md",
                                                     "timing.json", "train.log"]
    assert "NO_CV_ESTIMATE" in (run / "report.md").read_text()
    got = read_weights(run / "final" / "model.safetensors")
    want = read_weights(cv_run / "final" / "model.safetensors")
    assert list(got) == list(want) and all(bool((got[k] == want[k]).all()) for k in got)


@pytest.mark.parametrize("which", [0, 1])
def test_predict_embeds_with_the_final_model(runs, tiny_carotid, tmp_path, which):  # noqa: F811
    from sonodistill.recipes.discovr import load_encoders

    run = runs[which]
    clip = tiny_carotid.paths[0]
    out = tmp_path / "x.json"
    assert main(["predict", str(run), str(clip), "--out", str(out), "--clip-mode", "uniform"]) == 0
    payload = json.loads(out.read_text())
    assert payload["model"]["members"] == ["final"]
    (result,) = payload["results"]
    assert result["embedding_members"] == ["final"] and result["embedding_dim"] == 24
    # the embedding is the final video encoder's: the one the folds' evaluation uses (fold_k/embeddings.npy)
    cfg = load_config(run / "config.yaml")
    encoder = load_encoders(cfg, run / "final" / "model.safetensors").video
    from sonodistill.protocols.discovr import clip_embeddings

    want = clip_embeddings(encoder, cfg, tiny_carotid, np.array([0]), 0)[0]
    np.testing.assert_allclose(result["embedding"], want, atol=1e-4)


@pytest.mark.parametrize("extra, options, message", [
    ([], "train_on_label: nope", r"recipe_options.train_on_label='nope' is not a class"),
    ([], "normal_label: nope", r"recipe_options.normal_label='nope' is not a class"),
    ([], "run_folds: [0, 2]", r"run_folds: fold\(s\) \[2\] do not exist; there are 2 folds"),
    (["train.fold=1"], "run_folds: [0]", r"train.fold=1 \(--fold\) is not in recipe_options.run_folds=\[0\]"),
    ([], "knn_k: 0", r"recipe_options \(discovr\).knn_k must be >= 1"),
    ([], "evaluate: [anomaly, probe]", r"evaluate: unknown evaluation\(s\) \['probe'\]"),
    ([], "threshold_rule: best", r"threshold_rule must be one of"),
    ([], "knn_k: many", r"recipe_options \(discovr\).knn_k: expected int"),
])
def test_bad_protocol_options_fail_before_anything_is_written(tiny_carotid, tmp_path, extra, options,  # noqa: F811
                                                              message):
    cfg = _cfg(tmp_path, "bad", *extra, options=options)
    with pytest.raises(ConfigError, match=message):
        run_protocol(cfg, manifest=tiny_carotid)
    assert not cfg.run_dir.exists()


def test_options_are_typed():
    from sonodistill.recipes.discovr import DISCOVROptions, DISCOVRRecipe

    assert DISCOVRRecipe.Options is DISCOVROptions
    o = load_config(None, TINY + ["recipe_options={train_on_label: 0, run_folds: [1]}"])
    from sonodistill.config import parse_options

    parsed = parse_options(DISCOVROptions, o.recipe_options, "discovr")
    assert parsed.train_on_label == "0" and parsed.run_folds == [1]
    how = parsed.evaluation()
    assert how.normal_label == "0" and how.knn_k == 5 and how.evaluate == ["anomaly", "linear", "knn", "regression"]


def test_unlabelled_data_pretrains_with_final_only_and_cv_says_why_not(tiny_carotid, tmp_path):  # noqa: F811
    """A folder of unlabelled clips (`--data unlabelled:DIR`): cross-validation would score embeddings against
    labels it does not have, so it stops before writing anything and names --final-only; a label option left from a
    labelled config says to null it; --final-only pretrains the deployable encoder on every clip."""
    from sonodistill.data.manifest import Manifest

    unlabelled = Manifest(tiny_carotid.table.drop(columns=["label"]), [], tiny_carotid.modality, "unl")
    cv = _cfg(tmp_path, "cv")
    with pytest.raises(ConfigError, match=r"unl has no labels: DISCOVR's cross-validation .* --final-only"):
        run_protocol(cv, manifest=unlabelled)
    left = _cfg(tmp_path, "left", "train.cv=false")
    with pytest.raises(ConfigError, match=r"train_on_label='hyperechoic' is not a class of unl .*set it to null"):
        run_protocol(left, manifest=unlabelled)
    assert not cv.run_dir.exists() and not left.run_dir.exists()
    final = load_config(None, TINY + [
        "recipe_options={" + TINY_OPTIONS + "}", "name=final", f"out_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=2", "data.augment=false", "train.cv=false",
        "optim.warmup_epochs=0"])
    run_protocol(final, manifest=unlabelled)
    assert (final.run_dir / "final" / "model.safetensors").is_file()
    assert "NO_CV_ESTIMATE" in (final.run_dir / "report.md").read_text()
