"""`train.calibrate=temperature`: each fold (and final/) holds out a grouped share of its training rows, fits one
temperature there, and its test probabilities, `predict` and the export all divide that member's logits by it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.evaluation.calibration import T_RANGE
from sonodistill.protocols.folds import run_protocol


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, tiny_carotid):
    root = tmp_path_factory.mktemp("calibrated")
    overrides = [f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}", "data.size=32", "data.num_frames=4",
                 "data.batch_size=4", "data.augment=false", "data.sampling=uniform", "model.backbone=resnet10_3d",
                 "model.width=0.125", "model.kwargs={temporal_stride: 1}", "train.epochs=2", "train.folds=3",
                 "optim.warmup_epochs=0", "train.log_every_n_steps=1", "recipe=supervised", "name=cal",
                 "train.calibrate=temperature", "train.val_fraction=0.3", "train.final=true"]
    cfg = load_config(None, overrides)
    run_protocol(cfg, manifest=tiny_carotid, enable_progress_bar=False)
    return cfg


def test_each_fold_fits_its_temperature_on_held_out_training_rows(calibrated_run, tiny_carotid):
    run = calibrated_run.run_dir
    folds = json.loads((run / "folds.json").read_text())
    groups = tiny_carotid.groups
    for fold in folds:
        record = json.loads((run / f"fold_{fold['fold']}" / "calibration.json").read_text())
        assert T_RANGE[0] <= record["temperature"] <= T_RANGE[1] and record["method"] == "temperature"
        assert record["rows"] and set(record["rows"]) < set(fold["train"])  # held out of the training rows
        assert not set(groups[record["rows"]]) & set(groups[fold["test"]])
        assert record["nll_after"] <= record["nll_before"] + 1e-9  # T minimises the NLL there (T = 1 is a choice)
    final = json.loads((run / "final" / "calibration.json").read_text())
    assert 0 < len(final["rows"]) < len(tiny_carotid)
    assert "probabilities temperature-scaled" in (run / "report.md").read_text()


def test_cv_predictions_predict_and_export_divide_the_logits_by_the_temperature(calibrated_run, tiny_carotid,
                                                                              tmp_path):
    from sonodistill.recipes.data import build_dataset
    from sonodistill.serve.export import export_model
    from sonodistill.serve.loading import load_model

    cfg, run = calibrated_run, calibrated_run.run_dir
    model = load_model(run, members="folds")
    temperatures = [json.loads((run / f"fold_{k}" / "calibration.json").read_text())["temperature"]
                    for k in range(3)]
    assert model.describe()["temperatures"] == temperatures
    pred = pd.read_csv(run / "predictions.csv")
    row = pred[pred["fold"] == 0].iloc[0]
    x = build_dataset(tiny_carotid.subset([int(row["index"])]), cfg.data, train=False, seed=0)[0]["x"][None]
    with torch.no_grad():
        logits = [m(x).float() for m in model.members]
        cv = torch.softmax(logits[0] / temperatures[0], dim=1)[0].numpy()
        served = model.runner(x.numpy())[0]
    np.testing.assert_allclose(cv, row[[f"prob_{c}" for c in tiny_carotid.classes]].to_numpy(float), atol=1e-5)
    mean = np.mean([torch.softmax(z / t, dim=1)[0].numpy() for z, t in zip(logits, temperatures)], axis=0)
    np.testing.assert_allclose(served, mean, atol=1e-6)
    folder = export_model(run, tmp_path / "export", "torchscript", members="folds")
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["temperatures"] == temperatures and meta["max_abs_diff_vs_torch"] <= 1e-5
    assert "- Calibration: temperature scaling in the graph" in (folder / "MODEL_CARD.md").read_text()
    final = load_model(run)  # final/ with its own temperature
    assert final.member_names == ["final"] and final.describe()["temperatures"] == [
        json.loads((run / "final" / "calibration.json").read_text())["temperature"]]


def test_calibration_is_refused_where_it_does_not_apply(tmp_path, tiny_carotid):
    base = [f"out_dir={tmp_path}", "train.epochs=1"]
    with pytest.raises(ConfigError, match=r"train.calibrate must be one of \['none', 'temperature'\]"):
        run_protocol(load_config(None, [*base, "recipe=supervised", "train.calibrate=platt"]), manifest=tiny_carotid)
    with pytest.raises(ConfigError, match="recipe 'discovr' has no class probabilities to calibrate"):
        run_protocol(load_config(None, [*base, "recipe=discovr", "train.calibrate=temperature"]),
                     manifest=tiny_carotid)
    with pytest.raises(ConfigError, match=r"train.val_fraction must be in \(0, 1\)"):
        run_protocol(load_config(None, [*base, "recipe=supervised", "train.calibrate=temperature",
                                        "train.val_fraction=1.0"]), manifest=tiny_carotid)
    assert not list(tmp_path.iterdir())  # refused before anything was written
