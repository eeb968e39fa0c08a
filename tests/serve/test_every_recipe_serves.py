"""Every recipe's run directory through the bedside commands: predict, export (ONNX parity 1e-4), the review
page's analysis and explain, or a clear refusal naming what to use instead. dilbert runs are served as the
"annotation" kind (one annotator's findings and description; tests/serve/test_annotation_kind.py has the details).

The runs are tiny real runs (`run_protocol`, 1 epoch, one fold, 32 px, a few seconds each) on a synthetic carotid
set (videos) or fetal-head set (images, segmentation); dilbert runs one tiny fold with `run_fold` (simulated
sequence-report pairs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sonodistill.config import load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.recipes import RECIPES

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENTATION = ["seg_supervised", "mean_teacher", "fixmatch", "cps", "hdc"]

#: recipe -> what the bedside commands do with its run directory ("refused: <words of the ConfigError>").
BEHAVIOUR: dict[str, str] = {
    "supervised": "classification",
    "dualdistill": "classification",
    "medivlad": "classification",
    **{r: "segmentation" for r in SEGMENTATION},
    "dino": "features",
    "discovr": "features",
    "dilbert": "annotation",
    "linear_probe": "classification",
}

SERVED = [r for r, b in BEHAVIOUR.items() if not b.startswith("refused")]


VIDEO = ["data.size=32", "data.num_frames=4", "data.batch_size=4", "data.augment=false", "data.sampling=uniform",
         "train.epochs=1", "train.folds=2", "train.fold=0", "optim.warmup_epochs=0", "train.log_every_n_steps=1"]
RESNET = ["model.backbone=resnet10_3d", "model.width=0.125", "model.kwargs={temporal_stride: 1}"]
VIT = ["model.backbone=vit_tiny_p8", "model.width=0.25", "model.kwargs={img_size: 32, depth: 2}"]
DINO_OPTIONS = ("recipe_options={out_dim: 64, hidden_dim: 32, bottleneck_dim: 16, global_size: 32, local_size: 16, "
                "n_local: 2, warmup_teacher_temp_epochs: 1, momentum_teacher: 0.9, frames_per_video: 1}")
DISCOVR = ["model.backbone=video_vit", "model.width=1.0",
           "model.kwargs={dim: 24, depth: 1, heads: 2, tubelet: [2, 8, 8], num_frames: 4, img_size: 32}",
           "recipe_options={image_kwargs: {dim: 24, depth: 1, heads: 2}, out_dim: 64, head_hidden_dim: 32, "
           "head_bottleneck_dim: 16, decoder_dim: 12, decoder_heads: 2, n_prototypes: 8, run_folds: [0]}"]
SEG = ["data.size=32", "data.batch_size=4", "data.crop_region=false", "data.remove_overlay=false",
       "data.augment=false", "model.backbone=unet", "model.width=0.25", "train.epochs=1", "train.folds=2",
       "train.fold=0", "train.log_every_n_steps=1", "optim.warmup_epochs=0",
       "recipe_options={labelled_fraction: 0.5, iterations_per_epoch: 2, channels: [8, 16, 32], overlays: 0}"]
DILBERT = ["data.num_frames=4", "data.size=32", "data.batch_size=4", "train.epochs=1", "train.log_every_n_steps=1",
           "recipe_options={teacher: {dim: 24, layers: 2, heads: 2, frame_width: 0.125, clip_width: 0.125}, "
           "student: {dim: 16, layers: 2, heads: 2}, vocab_size: 250, n_region_classes: 4, max_text_len: 32}"]


def _overrides(recipe: str, root: Path) -> list[str]:
    """The tiny config of `recipe` (run under root/runs/<recipe>)."""
    where = [f"recipe={recipe}", f"name={recipe}", f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}"]
    if recipe in SEGMENTATION:
        return where + SEG
    if recipe == "dino":  # one pretraining run on every item: no folds to choose from
        return where + [o for o in VIDEO if not o.startswith("train.fold")] + VIT + [DINO_OPTIONS, "data.batch_size=6"]
    if recipe == "discovr":
        return where + VIDEO + DISCOVR
    if recipe == "medivlad":
        return where + VIDEO + VIT + [f"recipe_options={{init_from: {root / 'teacher.safetensors'}}}"]
    if recipe == "dilbert":
        return where + DILBERT
    if recipe == "linear_probe":  # a frame encoder on video frames, pooled, then the probe
        return where + VIDEO + ["model.backbone=resnet18_2d", "model.width=0.125", "model.pretrained=none",
                                "recipe_options={C_grid: [1.0]}"]
    return where + VIDEO + RESNET


class Runs:
    """Tiny run directories, made on first use: {recipe: (run directory, an input file for predict)}."""

    def __init__(self, root: Path) -> None:
        from sonodistill.data.synthetic import write_dataset

        self.root = root
        self.videos = Manifest.from_csv(write_dataset("carotid", root / "carotid", n=12, seed=3, frames=8, size=48))
        self.images = Manifest.from_csv(write_dataset("fetal-head", root / "heads", n=8, seed=1, size=48, workers=1))
        self.made: dict[str, tuple[Path, Path]] = {}

    def __call__(self, recipe: str) -> tuple[Path, Path]:
        if recipe not in self.made:
            self.made[recipe] = self._make(recipe)
        return self.made[recipe]

    def _make(self, recipe: str) -> tuple[Path, Path]:
        from sonodistill.protocols.folds import run_protocol

        cfg = load_config(None, _overrides(recipe, self.root))
        manifest = self.images if recipe in SEGMENTATION else self.videos
        if recipe == "medivlad":  # the DINO-style teacher it starts from
            from sonodistill.models.backbones import build_backbone
            from sonodistill.recipes.trainer import save_weights

            torch.manual_seed(7)
            save_weights(build_backbone("vit_tiny_p8", in_channels=1, width=0.25, img_size=32, depth=2),
                         self.root / "teacher.safetensors")
        if recipe == "dilbert":
            self._dilbert(cfg)
        else:
            run_protocol(cfg, manifest=manifest)
        return cfg.run_dir, Path(manifest.paths[0])

    def _dilbert(self, cfg: Any) -> None:
        """One tiny fold of simulated lung sequence-report pairs (as tests/recipes/test_dilbert.py), with the
        run's config.yaml and a manifest.csv beside it, as `sonodistill train dilbert` leaves them."""
        from sonodistill.data.sequences import synthetic_sequences
        from sonodistill.knowledge import load_graph
        from sonodistill.protocols.dilbert_stages import run_fold

        pairs = synthetic_sequences("lung", n=8, seed=0, frames=4, size=32)
        cfg.save(cfg.run_dir / "config.yaml")
        self.videos.to_csv(cfg.run_dir / "manifest.csv")
        run_fold(cfg, pairs, np.arange(6), np.arange(6, 8), 0, cfg.run_dir / "fold_0", load_graph("lung"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("every-recipe"))


def _refusal(recipe: str) -> str:
    return BEHAVIOUR[recipe].removeprefix("refused: ")


def test_the_table_covers_every_recipe():
    assert set(BEHAVIOUR) == set(RECIPES)


def _check_result(recipe: str, result: dict[str, Any], model: Any) -> None:
    """The fields predict gives for one input, by the recipe's model kind."""
    kind = BEHAVIOUR[recipe]
    assert "error" not in result, result.get("error")
    assert result["task"] == kind
    if kind == "classification":
        assert result["prediction"] in model.classes
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    elif kind == "annotation":  # findings with probabilities, categorical targets, a description, no classes
        assert "probabilities" not in result and "prediction" not in result and model.classes == []
        names = [f["name"] for f in result["findings"]]
        assert names and names == model.describe()["annotation"]["findings"]
        for f in result["findings"]:
            assert 0.0 <= f["probability"] <= 1.0 and f["present"] == (f["probability"] >= result["threshold"])
        for c in result["categorical"]:
            assert sum(c["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert isinstance(result["description"], str) and result["nearest_report"]["text"]
    elif kind == "segmentation":
        assert len(result["masks"]) == 1 and result["masks"][0]["png"].startswith("data:image/png;base64,")
    else:
        assert "probabilities" not in result and "prediction" not in result and model.classes == []
        e = result["embedding_dim"]
        assert e > 0 and len(result["embedding"]) == e and np.isfinite(result["embedding"]).all()
        if recipe == "dino":  # a frame encoder: one embedding per frame, the clip's is their mean
            frames = np.asarray(result["frame_embeddings"])
            assert frames.shape == (result["frames"], e)
            np.testing.assert_allclose(frames.mean(axis=0), result["embedding"], atol=1e-5)
        else:  # a video encoder: one embedding per window of T frames
            windows = np.asarray(result["windows"]["embeddings"])
            assert windows.shape == (len(result["windows"]["starts"]), e) and result["windows"]["length"] == 4


def _served_model(recipe: str, runs):
    """(loaded model, input) of a recipe's tiny run; (None, input) after checking a refusing recipe refuses."""
    from sonodistill.serve.loading import load_model

    run, item = runs(recipe)
    if recipe not in SERVED:
        with pytest.raises(ConfigError, match=_refusal(recipe)):
            load_model(run)
        return None, item
    return load_model(run), item


@pytest.mark.parametrize("recipe", list(BEHAVIOUR))
def test_predict(recipe, runs):
    from sonodistill.serve.kinds import PredictOptions
    from sonodistill.serve.predict import predict_many

    model, item = _served_model(recipe, runs)
    if model is None:
        return
    payload = predict_many(model, [item], PredictOptions(stride=2))
    assert payload["model"]["task"] == BEHAVIOUR[recipe]
    _check_result(recipe, payload["results"][0], model)


def test_dino_embedding_is_the_teacher_backbone_on_the_preprocessed_frames(runs):
    """predict's per-frame embeddings are the saved teacher backbone's pooled output on the run's preprocessing."""
    from sonodistill.recipes.frame_features import load_run_backbone
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import _to_input, predict_prepared, prepare, read_input
    from sonodistill.serve.kinds import PredictOptions

    run, item = runs("dino")
    model = load_model(run)
    assert model.member_names == ["run"] and model.input_kind == "frame"
    prepared = prepare(model, read_input(item), str(item))
    got = np.asarray(predict_prepared(model, prepared, PredictOptions(decimals=8))["frame_embeddings"])
    teacher, _ = load_run_backbone(run)  # RUN/teacher_backbone.safetensors, as downstream recipes load it
    with torch.no_grad():
        want = teacher(torch.from_numpy(_to_input(model, prepared.clip))).pooled.numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_discovr_uniform_embedding_is_the_one_its_cross_validation_evaluated(runs):
    """--clip-mode uniform gives the clip embedding the run's kNN / linear probes used (fold_0/embeddings.npy)."""
    from sonodistill.serve.kinds import PredictOptions
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import predict_file

    run, item = runs("discovr")  # item: manifest row 0
    model = load_model(run)
    assert model.member_names == ["fold_0"] and model.input_kind == "video" and model.num_frames == 4
    got = predict_file(model, item, PredictOptions(clip_mode="uniform", decimals=8))["embedding"]
    rows, saved = np.load(run / "fold_0" / "embedding_rows.npy"), np.load(run / "fold_0" / "embeddings.npy")
    np.testing.assert_allclose(got, saved[list(rows).index(0)], atol=1e-4)


@pytest.mark.parametrize("recipe", list(BEHAVIOUR))
def test_onnx_export_gives_the_same_output_as_pytorch(recipe, runs, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[export]')")
    from sonodistill.serve.export import export_model
    from sonodistill.serve.kinds import PredictOptions
    from sonodistill.serve.loading import load_model
    from sonodistill.serve.predict import predict_file

    run, item = runs(recipe)
    if recipe not in SERVED:
        with pytest.raises(ConfigError, match=_refusal(recipe)):
            export_model(run, tmp_path / "onnx", "onnx")
        return
    folder = export_model(run, tmp_path / "onnx", "onnx")
    meta = json.loads((folder / "sonodistill-model.json").read_text())
    assert meta["task"] == BEHAVIOUR[recipe] and meta["max_abs_diff_vs_torch"] <= 1e-4
    assert meta["output_name"] == ("embedding" if BEHAVIOUR[recipe] == "features" else "probabilities")
    torch_model, onnx_model = load_model(run), load_model(folder)
    x = np.random.default_rng(0).random((3, *torch_model.input_shape), dtype=np.float32)
    ref, got = torch_model.probabilities(x), onnx_model.probabilities(x)
    assert ref.shape == got.shape and np.abs(got - ref).max() <= 1e-4
    result = predict_file(onnx_model, item, PredictOptions(stride=2))
    _check_result(recipe, result, onnx_model)
    if BEHAVIOUR[recipe] == "features":
        want = predict_file(torch_model, item, PredictOptions(stride=2))["embedding"]
        np.testing.assert_allclose(result["embedding"], want, atol=1e-4)
    if BEHAVIOUR[recipe] == "annotation":
        want = predict_file(torch_model, item, PredictOptions(stride=2))["findings"]
        np.testing.assert_allclose([f["probability"] for f in result["findings"]],
                                   [f["probability"] for f in want], atol=1e-4)


@pytest.mark.parametrize("recipe", list(BEHAVIOUR))
def test_review_page_analysis(recipe, runs):
    from sonodistill.serve.app import ReviewServer, analyse_file

    model, item = _served_model(recipe, runs)
    if model is None:
        return
    out = analyse_file(model, item, "upload" + item.suffix)
    _check_result(recipe, out["result"], model)
    assert out["gif"].startswith("data:image/gif;base64,")
    server = ReviewServer(("127.0.0.1", 0), model)
    try:
        info = server.info()
    finally:
        server.server_close()
    if BEHAVIOUR[recipe] == "features":  # embeddings, no class probabilities, no score plot, no heat map
        assert info["output"] == "embedding" and info["classes"] == [] and not info["heatmaps"]
        assert out["plot_svg"] is None and out["heatmap"] is None and "features model" in out["note"]
    else:
        assert info["output"] == "probabilities"
    if BEHAVIOUR[recipe] == "classification":  # frame encoder + aggregator (medivlad, video probes) included
        assert info["heatmaps"] and out["heatmap"].startswith("Grad-CAM")


#: recipe -> the explainers `explain` runs by default: Grad-CAM and the recipe's EXPLAINERS where they apply;
#: occlusion sensitivity (slow: one forward pass per patch) only where nothing else does
DEFAULT_EXPLAINERS = {"supervised": {"gradcam"}, "dualdistill": {"gradcam"}, "medivlad": {"gradcam", "attention"},
                      "dino": {"attention"}, "linear_probe": {"gradcam"}, "discovr": {"occlusion"},
                      "dilbert": {"occlusion"}, **{r: {"occlusion"} for r in SEGMENTATION}}


@pytest.mark.parametrize("recipe", list(BEHAVIOUR))
def test_explain(recipe, runs, tmp_path, capsys):
    """Every run directory is explained: its default explainers write a strip, a GIF and `frames x S x S` maps in
    [0, 1] of the target each kind explains (the predicted class, the largest foreground class, the embedding, the
    most probable finding), with frame relations for staged video classifiers only."""
    from sonodistill.cli import main

    run, item = runs(recipe)
    out = tmp_path / "explain"
    code = main(["explain", str(run), str(item), "--out", str(out), "--max-strip-frames", "2"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "explain.json").read_text())
    assert set(summary["methods"]) == DEFAULT_EXPLAINERS[recipe] and summary["task"] == BEHAVIOUR[recipe]
    frames = summary["explained_frames"]
    for name in summary["methods"]:
        maps = np.load(out / f"{name}_maps.npy").astype(np.float32)
        assert maps.shape[0] == len(frames) and maps.shape[1] == maps.shape[2] and maps.shape[1] in (32, 48)
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        assert (out / f"{name}_strip.png").is_file() and (out / f"{name}.gif").is_file()
    assert ("relations" in summary) == (recipe in ("supervised", "dualdistill"))
    if BEHAVIOUR[recipe] == "classification":
        assert summary["target"] == summary["target_class"] == summary["prediction"]
    elif BEHAVIOUR[recipe] == "segmentation":
        assert len(summary["targets"]) == 2 and summary["target"] == summary["targets"][1]  # the foreground
    elif BEHAVIOUR[recipe] == "features":
        assert summary["targets"] == ["embedding"] and "target_class" not in summary
    else:  # dilbert: the annotator's one input, T frames at segment centres; the most probable finding
        best = max(summary["findings"], key=lambda f: f["probability"])
        assert summary["target"] == best["name"] and len(frames) == 4 and frames == sorted(set(frames))
    assert summary["frames"] >= len(frames)


@pytest.mark.parametrize("recipe", ["seg_supervised", "dilbert", "discovr"])
def test_explain_names_missing_methods_and_why(recipe, runs, tmp_path, capsys):
    """Asking for Grad-CAM where it does not apply is a clear error (exit 2, no traceback) saying why and what is
    available; nothing is written."""
    from sonodistill.cli import main

    run, item = runs(recipe)
    out = tmp_path / "explain"
    assert main(["explain", str(run), str(item), "--out", str(out), "--method", "gradcam"]) == 2
    err = capsys.readouterr().err
    assert "['gradcam'] not available" in err and "occlusion" in err and "Traceback" not in err
    assert {"dilbert": "does not apply to DILBERT", "discovr": "no class logits",
            "seg_supervised": "a logit per pixel"}[recipe] in err
    assert not out.exists()


def test_dilbert_predict_gives_what_annotate_gives_for_the_trained_fold_student(runs, capsys):
    """`sonodistill predict RUN` on a dilbert run (one fold, no final/) serves fold_0's student annotator: the same
    findings, description and nearest reports as `sonodistill annotate RUN/fold_0/export/student INPUT`."""
    from sonodistill.cli import main

    run, item = runs("dilbert")
    assert main(["predict", str(run), str(item)]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["model"]["members"] == ["fold_0"] and payload["warnings"] == []
    assert payload["model"]["annotation"]["variant"] == "student"
    assert main(["annotate", str(run / "fold_0" / "export" / "student"), str(item)]) == 0
    annotated = json.loads(capsys.readouterr().out)
    (result,) = payload["results"]
    for key in ("findings", "categorical", "entities", "description", "nearest_report", "retrieved_reports"):
        assert result[key] == annotated[key], key
