"""DINO and MeDiVLAD on the one fold loop (issue 15) and their deployable models (issue 20): DINO's run is its model
(train.final and --final-only accepted), MeDiVLAD trains final/ on all items for frames and videos, also alone with
--final-only, and `load_run` serves it. Tiny synthetic runs: a 2-block ViT at 32 px, 1-3 epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sonodistill.config import load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.protocols import get_protocol
from sonodistill.protocols.folds import run_protocol
from tests.recipes.conftest import read_weights

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = ["model.backbone=vit_tiny_p8", "model.width=0.25", "model.kwargs={img_size: 32, depth: 2}", "data.size=32",
       "data.augment=false", "optim.warmup_epochs=0", "train.log_every_n_steps=1", "train.folds=2"]
DINO = ["recipe=dino", "train.epochs=1", "data.batch_size=6",
        "recipe_options={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_size: 32, local_size: 16, "
        "n_local: 2, warmup_teacher_temp_epochs: 1, momentum_teacher: 0.9, frames_per_video: 1}"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Manifest:
    from sonodistill.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("carotid")
    return Manifest.from_csv(write_dataset("carotid", root, n=12, seed=3, frames=8, size=48))


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Manifest:
    """36 labelled 40 px images of 3 classes in 18 groups."""
    from sonodistill.data.adapters import load_adapter

    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["a", "b", "c"]):
        (root / cls).mkdir()
        for g in range(6):
            for i in range(2):
                img = (rng.random((40, 40)) * 60).astype(np.uint8)
                img[5 + 10 * c: 15 + 10 * c, 5:35] = 220
                Image.fromarray(img).save(root / cls / f"g{c}{g}_{i}.png")
    return load_adapter("folder", root, group_regex=r"^(g\d+)_")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A DINO-style teacher backbone file for `recipe_options.init_from`."""
    from sonodistill.models.backbones import build_backbone
    from sonodistill.recipes.trainer import save_weights

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_weights(build_backbone("vit_tiny_p8", in_channels=1, width=0.25, img_size=32, depth=2), path)
    return path


def _cfg(tmp_path: Path, name: str, *extra: str):
    return load_config(None, [f"out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", f"name={name}",
                              *VIT, *extra])


def _same_weights(a: Path, b: Path) -> bool:
    x, y = read_weights(a), read_weights(b)
    return list(x) == list(y) and all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------------------------------------ DINO
@pytest.mark.parametrize("final", ["train.final=true", "train.cv=false"])
def test_dino_run_is_its_model_with_train_final_and_final_only(videos, tmp_path, final):
    from sonodistill.serve.loading import load_run

    cfg = _cfg(tmp_path, "dino", *DINO, final)
    summary = run_protocol(cfg, manifest=videos, enable_progress_bar=False)
    assert get_protocol("dino").cross_validates is False
    run = cfg.run_dir
    assert summary["frames_per_epoch"] == len(videos) and summary["steps_per_epoch"] == 2
    assert summary == json.loads((run / "pretrain.json").read_text())
    for name in ("teacher_backbone.safetensors", "student_backbone.safetensors", "model.safetensors",
                 "diagnostics.csv", "pretrain_sources.csv", "train.log", "checkpoints/last.ckpt", "final/done"):
        assert (run / name).is_file(), name
    assert not list(run.glob("fold_*")) and not (run / "folds.json").exists()
    assert _same_weights(run / "teacher_backbone.safetensors", run / "model.safetensors")
    loaded = load_run(run)  # the teacher backbone, served as a features model
    assert loaded.member_names == ["run"] and loaded.task == "features"
    # resumed when finished: kept, not retrained; the summary is read back
    mtime = (run / "model.safetensors").stat().st_mtime_ns
    assert run_protocol(cfg, resume=True, manifest=videos, enable_progress_bar=False) == summary
    assert (run / "model.safetensors").stat().st_mtime_ns == mtime


def test_dino_extra_data_joins_the_pretraining_set(videos, tmp_path):
    cfg = _cfg(tmp_path, "dino-extra", *DINO, "data.synthetic_n=6", "data.synthetic_frames=4",
               "data.synthetic_size=48", "recipe_options.extra_data=[synthetic:carotid]")
    summary = run_protocol(cfg, manifest=videos, enable_progress_bar=False)
    assert [s["items"] for s in summary["sources"]] == [len(videos), 6]
    assert summary["frames_per_epoch"] == len(videos) + 6


def test_dino_pretrains_on_unlabelled_folders(frames, videos, tmp_path):
    """A user's folder of unlabelled frames (`--data unlabelled:DIR`) and one of clips (`extra_data`) join."""
    from sonodistill.data.adapters import load_adapter

    images, clips = Path(frames.paths[0]).parents[1], Path(videos.paths[0]).parent
    unlabelled = load_adapter("unlabelled", images)
    assert not unlabelled.has_labels and len(unlabelled) == len(frames)
    cfg = _cfg(tmp_path, "dino-unlabelled", *DINO, f"recipe_options.extra_data=['unlabelled:{clips}']")
    summary = run_protocol(cfg, manifest=unlabelled, enable_progress_bar=False)
    assert [(s["modality"], s["items"]) for s in summary["sources"]] == [("image", 36), ("video", len(videos))]
    assert summary["frames_per_epoch"] == 36 + len(videos)


def test_options_are_typed_dataclasses():
    from sonodistill.recipes.dino import DINOOptions, DINORecipe
    from sonodistill.recipes.medivlad import MeDiVLADOptions, MeDiVLADRecipe

    assert DINORecipe.Options is DINOOptions and MeDiVLADRecipe.Options is MeDiVLADOptions
    for bad, message in (("extra_data=[a]", r"recipe_options \(medivlad\): unknown field\(s\) \['extra_data'\]"),
                         ("label_fraction=0", r"label_fraction must be in \(0, 1\]"),
                         ("aggregator_options={lstm: {}}", r"aggregator_options: 'lstm' must be an aggregator")):
        with pytest.raises(ConfigError, match=message):
            MeDiVLADRecipe(load_config(None, VIT + ["recipe=medivlad", f"recipe_options.{bad}"]), 3)
    with pytest.raises(ConfigError, match=r"recipe_options \(dino\).teacher_temp must be > 0"):
        DINORecipe(load_config(None, VIT + DINO + ["recipe_options.teacher_temp=0"]))


# -------------------------------------------------------------------------------------- MeDiVLAD frames
def test_medivlad_frames_final_model_on_a_label_fraction_of_all_items(frames, teacher, tmp_path):
    from sonodistill.serve.loading import load_run

    extra = ["recipe=medivlad", "train.epochs=1", "data.batch_size=4",
             f"recipe_options={{init_from: {teacher}, label_fraction: 0.5}}"]
    cv = _cfg(tmp_path, "ft-final", *extra, "train.final=true")
    run_protocol(cv, manifest=frames, enable_progress_bar=False)
    run = cv.run_dir
    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(pred["index"]) == list(range(len(frames)))  # the folds' test rows, each once
    used = json.loads((run / "labelled.json").read_text())
    assert set(used) == {"0", "1"} and all(0 < u["labelled_rows"] < u["train_rows"] for u in used.values())
    final = json.loads((run / "final" / "labelled.json").read_text())
    assert final["train_rows"] == len(frames) and 0 < final["labelled_rows"] < len(frames)
    assert set(final["labelled"]) < set(range(len(frames)))
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "done").is_file()
    loaded = load_run(run)
    assert loaded.member_names == ["final"] and loaded.classes == ["a", "b", "c"]
    # --final-only: the same deployable model, no folds, a report that says there is no CV estimate
    alone = _cfg(tmp_path, "ft-final-only", *extra, "train.cv=false")
    run_protocol(alone, manifest=frames, enable_progress_bar=False)
    assert not list(alone.run_dir.glob("fold_*")) and "NO_CV_ESTIMATE" in (alone.run_dir / "report.md").read_text()
    assert json.loads((alone.run_dir / "final" / "labelled.json").read_text())["labelled"] == final["labelled"]
    assert _same_weights(alone.run_dir / "final" / "model.safetensors", run / "final" / "model.safetensors")


# -------------------------------------------------------------------------------------- MeDiVLAD videos
def test_medivlad_videos_final_only_matches_the_final_model_of_a_cv_run(videos, teacher, tmp_path):
    from sonodistill.serve.loading import load_run

    extra = ["recipe=medivlad", "data.num_frames=4", "train.epochs=2", "optim.lr=0.01",
             f"recipe_options={{init_from: {teacher}, aggregators: [dual_vlad, mean]}}"]
    alone = _cfg(tmp_path, "vlad-final-only", *extra, "train.cv=false")
    summary = run_protocol(alone, manifest=videos)
    run = alone.run_dir
    assert summary["cv"] is False and (run / "features.npz").is_file()
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "aggregator_dual_vlad.safetensors").is_file()
    assert not (run / "final" / "aggregator_mean.safetensors").exists()  # the final model is the first aggregator
    loaded = load_run(run)
    assert loaded.member_names == ["final"] and loaded.input_kind == "video"
    cv = _cfg(tmp_path, "vlad-final", *extra, "train.final=true")
    summary = run_protocol(cv, manifest=videos)
    assert set(summary) == {"dual_vlad", "mean"}
    assert (cv.run_dir / "fold_1" / "predictions_mean.csv").is_file()
    assert _same_weights(cv.run_dir / "final" / "model.safetensors", run / "final" / "model.safetensors")
    # resumed when finished: the cached features and every fold are kept, the report is the same
    mtime = (cv.run_dir / "features.npz").stat().st_mtime_ns
    again = run_protocol(cv, resume=True, manifest=videos)
    assert (cv.run_dir / "features.npz").stat().st_mtime_ns == mtime
    assert again["dual_vlad"]["accuracy"] == summary["dual_vlad"]["accuracy"]


def test_medivlad_videos_refuse_trainer_options_and_unlabelled_data(videos, teacher, tmp_path):
    cfg = _cfg(tmp_path, "vlad-opts", "recipe=medivlad", "data.num_frames=4", f"recipe_options.init_from={teacher}")
    with pytest.raises(ConfigError, match="trains its aggregators without Lightning"):
        run_protocol(cfg, manifest=videos, enable_progress_bar=False)
    unlabelled = Manifest(videos.table.drop(columns=["label"]), modality="video", name="unlabelled")
    cfg = _cfg(tmp_path, "vlad-nolabels", "recipe=medivlad", "data.num_frames=4")
    with pytest.raises(ConfigError, match="has no labels"):
        run_protocol(cfg, manifest=unlabelled)
    assert not cfg.run_dir.exists()
