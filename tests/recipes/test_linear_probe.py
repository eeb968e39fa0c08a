"""linear_probe: frozen features once, C chosen on a grouped validation split of the training rows only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sonodistill.config import load_config, packaged_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.evaluation.probes import choose_C
from sonodistill.protocols.folds import run_protocol
from sonodistill.recipes import linear_probe as lp
from tests.recipes.conftest import image_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, data, **extra):
    overrides = [f"out_dir={tmp_path / 'runs'}", "name=probe", f"data.spec=folder:{data}", "data.size=32",
                 "data.crop_region=false", "data.remove_overlay=false", "model.backbone=efficientnet_lite0",
                 "model.width=1.0", "model.pretrained=imagenet", "train.folds=3",
                 f"data.cache_dir={tmp_path / 'cache'}"] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(packaged_config("probe-imagenet"), overrides)


def test_probe_run_writes_a_cv_report_and_chooses_C_on_validation_rows_only(tmp_path, monkeypatch):
    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "data")
    cfg = _cfg(tmp_path, data)
    summary = run_protocol(cfg)
    run = cfg.run_dir
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == 24 and sorted(pred["fold"].unique()) == [0, 1, 2]
    assert summary["accuracy"].mean >= 0.9  # brightness is linearly separable in ImageNet features
    choices = json.loads((run / "probe_choices.json").read_text())
    folds = json.loads((run / "folds.json").read_text())
    for fold in folds:
        ch = choices[f"fold_{fold['fold']}"]
        assert ch["fit_rows"] + ch["validation_rows"] == len(fold["train"])
        assert float(ch["C"]) in [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    # features are reused: a second run with the same settings does not encode again
    monkeypatch.setattr(lp, "encode_manifest", lambda *a: pytest.fail("features were recomputed"))
    run_protocol(cfg, resume=True)


def test_validation_rows_are_grouped_stratified_and_inside_the_training_rows():
    from sonodistill.data.manifest import Manifest
    from sonodistill.data.splits import validation_rows

    table = pd.DataFrame({"path": [f"f{i}.png" for i in range(40)], "group": [f"g{i // 4}" for i in range(40)],
                          "label": ["a", "b"] * 20})
    m = Manifest(table, ["a", "b"], "image", "t")
    train = np.arange(32)
    fit, val = validation_rows(m, train, 0.25, seed=0)
    assert set(fit) | set(val) == set(train) and not set(fit) & set(val)
    assert not set(m.groups[fit]) & set(m.groups[val])
    assert set(m.labels[val]) == {0, 1} and 4 <= len(val) <= 12


def test_choose_C_prefers_the_smaller_C_on_ties():
    feats = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.random.default_rng(0).normal(0, 0.01, (20, 2))
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    c, scores = choose_C(feats, labels, np.arange(0, 20, 2), np.arange(1, 20, 2), [1.0, 0.1], 2, seed=0)
    assert scores == {"0.1": 1.0, "1.0": 1.0} and c == 0.1


def test_pool_frames_ignores_padding():
    feats = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[True, True, False]])
    assert lp.pool_frames(feats, mask, "mean").tolist() == [[2.0, 3.0]]
    assert lp.pool_frames(feats, mask, "meanmax").tolist() == [[2.0, 3.0, 3.0, 4.0]]


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe_options \(linear_probe\): unknown field\(s\) \['Cs'\]"):
        lp.probe_options(_cfg(tmp_path, tmp_path, **{"recipe_options.Cs": "[1]"}))
    with pytest.raises(ConfigError, match="val_fraction"):
        lp.probe_options(_cfg(tmp_path, tmp_path, **{"recipe_options.val_fraction": "0.7"}))


def test_on_validation_scores_only_training_rows_of_each_fold(tmp_path, monkeypatch):
    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "data")
    cfg = _cfg(tmp_path, data, **{"train.on_validation": "true"})
    run_protocol(cfg)
    pred = pd.read_csv(cfg.run_dir / "predictions.csv")
    folds = json.loads((cfg.run_dir / "folds.json").read_text())
    choices = json.loads((cfg.run_dir / "probe_choices.json").read_text())
    for fold in folds:
        scored = set(pred.loc[pred["fold"] == fold["fold"], "index"])
        assert scored and scored <= set(fold["train"]) and not scored & set(fold["test"])
        # C was chosen on a split of the remaining training rows, never on the scored rows
        ch = choices[f"fold_{fold['fold']}"]
        assert ch["fit_rows"] + ch["validation_rows"] + len(scored) == len(fold["train"])
    assert "VALIDATION" in (cfg.run_dir / "report.md").read_text()


def test_the_probe_is_a_pytorch_model_with_the_probes_probabilities(tmp_path, monkeypatch):
    """Each fold saves encoder + probe head; loaded through the serving path, it reproduces the fold's
    out-of-fold probabilities; train.final (and --final-only) trains the probe on all items into final/."""
    import torch

    from sonodistill.serve.loading import load_run

    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "data")
    cfg = _cfg(tmp_path, data, **{"train.final": "true"})
    run_protocol(cfg)
    run = cfg.run_dir
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "done").is_file()
    pred = pd.read_csv(run / "predictions.csv")
    fold0 = pred[pred["fold"] == 0]
    model = load_run(run, members="folds").members[0]  # folds in order: fold_0 first
    from sonodistill.evaluation.segmentation_report import clip_cache, preprocess_config
    from sonodistill.data.datasets import FrameDataset

    manifest = Manifest.from_csv(run / "manifest.csv")
    ds = FrameDataset(manifest.subset(fold0["index"].to_numpy()), preprocess_config(cfg), cache=clip_cache(cfg))
    x = torch.stack([ds[i]["x"] for i in range(len(ds))])
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1).numpy()
    expected = fold0[[f"prob_{c}" for c in manifest.classes]].to_numpy()
    assert np.abs(probs - expected).max() < 1e-4
    only = _cfg(tmp_path, data, **{"train.cv": "false", "name": "probe-final"})
    assert run_protocol(only)["cv"] is False
    assert (only.run_dir / "final" / "model.safetensors").is_file() and not (only.run_dir / "folds.json").exists()


def test_balanced_class_weights_raise_the_minority_recall():
    """Balanced weights move the boundary towards the majority class: more of the rare class is called."""
    from sonodistill.evaluation.probes import linear_probe

    rng = np.random.default_rng(0)
    n_major, n_minor = 90, 10
    feats = np.concatenate([rng.normal(0.0, 1.0, (n_major, 2)), rng.normal(1.0, 1.0, (n_minor, 2))])
    labels = np.array([0] * n_major + [1] * n_minor)
    test = np.concatenate([rng.normal(0.0, 1.0, (200, 2)), rng.normal(1.0, 1.0, (200, 2))])
    called = {w: int((linear_probe(feats, labels, test, C=1.0, class_weight=w).argmax(1)[200:] == 1).sum())
              for w in (None, "balanced")}
    assert called["balanced"] > called[None] + 50


def test_class_weight_choose_picks_on_the_validation_split_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SONODISTILL_CACHE", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "data")
    cfg = _cfg(tmp_path, data, **{"recipe_options.class_weight": "choose"})
    run_protocol(cfg)
    choices = json.loads((cfg.run_dir / "probe_choices.json").read_text())
    for ch in choices.values():
        tried = ch["validation_balanced_accuracy_by_class_weight"]
        assert set(tried) == {"none", "balanced"} and ch["class_weight"] in tried
        best = max(max(scores.values()) for scores in tried.values())
        assert max(tried[ch["class_weight"]].values()) == best and ch["validation_balanced_accuracy"] == \
            tried[ch["class_weight"]]
    with pytest.raises(ConfigError, match="class_weight must be one of"):
        run_protocol(_cfg(tmp_path, data, **{"recipe_options.class_weight": "inverse", "name": "bad"}))
