"""The `medivlad` recipe: strict init_from, frame finetuning on few labels, video aggregation and its export model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sonodistill.config import load_config
from sonodistill.data.adapters import load_adapter
from sonodistill.errors import CheckpointError, ConfigError
from sonodistill.protocols.folds import run_protocol
from sonodistill.models.backbones import build_backbone
from sonodistill.recipes.medivlad import MeDiVLADRecipe, load_video_scorer
from sonodistill.recipes.trainer import save_weights

VIT = ["model.backbone=vit_tiny_p8", "model.width=0.25", "model.kwargs={img_size: 32, depth: 2}", "data.size=32"]


def _pretrained(tmp_path, depth: int = 2):
    torch.manual_seed(7)
    bb = build_backbone("vit_tiny_p8", in_channels=1, width=0.25, img_size=32, depth=depth)
    path = tmp_path / f"teacher_depth{depth}.safetensors"
    save_weights(bb, path)
    return bb, path


def test_init_from_loads_strictly(tmp_path):
    bb, path = _pretrained(tmp_path)
    recipe = MeDiVLADRecipe(load_config(None, VIT + ["recipe=medivlad", f"recipe_options.init_from={path}"]), 3)
    for k, v in bb.state_dict().items():
        assert torch.equal(recipe.model.backbone.state_dict()[k], v), k
    # a finetuned Classifier's file (backbone.* + head.*) works too; so does a run directory
    clf_file = tmp_path / "clf.safetensors"
    save_weights(recipe.model, clf_file)
    run = tmp_path / "dino-run"
    run.mkdir()
    save_weights(bb, run / "teacher_backbone.safetensors")
    for src in (clf_file, run):
        other = MeDiVLADRecipe(load_config(None, VIT + ["recipe=medivlad", f"recipe_options.init_from={src}"]), 3)
        assert torch.equal(other.model.backbone.pos_embed, bb.pos_embed)
    # a different architecture is an error naming the file, never a partial load
    _, deeper = _pretrained(tmp_path, depth=3)
    with pytest.raises(CheckpointError, match="teacher_depth3.*unexpected"):
        MeDiVLADRecipe(load_config(None, VIT + ["recipe=medivlad", f"recipe_options.init_from={deeper}"]), 3)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        MeDiVLADRecipe(load_config(None, VIT + ["recipe=medivlad", "model.width=0.5",
                                                f"recipe_options.init_from={path}"]), 3)
    with pytest.raises(CheckpointError, match="not found"):
        MeDiVLADRecipe(load_config(None, VIT + ["recipe=medivlad", "recipe_options.init_from=/nope.safetensors"]), 3)
    with pytest.raises(ConfigError, match="aggregators"):
        MeDiVLADRecipe(load_config(None, VIT + ["recipe=medivlad", "recipe_options.aggregators=[lstm]"]), 3)


@pytest.mark.slow
def test_video_aggregation_crossval_and_export_model(tiny_carotid, tiny_overrides, tmp_path):
    from sonodistill.data.datasets import ClipDataset
    from sonodistill.recipes.frame_features import clip_cache, preprocess_config

    _, path = _pretrained(tmp_path)
    cfg = load_config(None, tiny_overrides + VIT + [
        "name=vlad", "recipe=medivlad", "data.num_frames=4", "train.epochs=3", "optim.lr=0.01",
        f"recipe_options={{init_from: {path}, aggregators: [dual_vlad, mean, netvlad]}}"])
    summary = run_protocol(cfg, manifest=tiny_carotid)
    run = cfg.run_dir
    assert set(summary) == {"dual_vlad", "mean", "netvlad"}
    pred = pd.read_csv(run / "predictions.csv")
    assert len(pred) == 3 * len(tiny_carotid) and set(pred["model"]) == set(summary)
    for name, part in pred.groupby("model"):
        assert sorted(part["index"]) == list(range(len(tiny_carotid)))  # every video tested once per aggregator
    z = np.load(run / "features.npz")
    assert z["feats"].shape == (len(tiny_carotid), 4, 48) and z["mask"].all()
    assert (run / "report.md").is_file() and (run / "fold_0" / "aggregator_mean.safetensors").is_file()
    # the exported model (encoder + dual VLAD) on raw clips reproduces the fold's predictions
    folds = json.loads((run / "folds.json").read_text())
    test = folds[0]["test"]
    ds = ClipDataset(tiny_carotid.subset(test), preprocess_config(cfg.data), num_frames=4, cache=clip_cache(cfg.data))
    x = torch.stack([ds[i]["x"] for i in range(len(test))])               # B x 1 x T x H x W
    scorer = load_video_scorer(run, fold=0)
    with torch.no_grad():
        probs = torch.softmax(scorer(x), dim=1).numpy()
    want = pred[(pred["model"] == "dual_vlad") & (pred["fold"] == 0)].sort_values("index")
    np.testing.assert_allclose(probs, want[[f"prob_{c}" for c in tiny_carotid.classes]].to_numpy(), atol=1e-5)
    # the bedside loader builds the same model through the recipe's build_inference_model hook
    from sonodistill.serve.loading import load_run

    loaded = load_run(run)
    assert loaded.input_kind == "video" and len(loaded.members) == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded.members[0](x), scorer(x))


def _image_folder(root, n_groups: int = 6, per_group: int = 2):
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["a", "b", "c"]):
        (root / cls).mkdir(parents=True)
        for g in range(n_groups):
            for i in range(per_group):
                img = (rng.random((40, 40)) * 60).astype(np.uint8)
                img[5 + 10 * c: 15 + 10 * c, 5:35] = 220
                Image.fromarray(img).save(root / cls / f"g{c}{g}_{i}.png")
    return load_adapter("folder", root, group_regex=r"^(g\d+)_")


@pytest.mark.slow
def test_frame_finetuning_with_few_labels(tmp_path, tiny_overrides):
    manifest = _image_folder(tmp_path / "imgs")
    _, path = _pretrained(tmp_path)
    cfg = load_config(None, tiny_overrides + VIT + [
        "name=ft", "recipe=medivlad", "train.epochs=1", "data.batch_size=4",
        f"recipe_options={{init_from: {path}, label_fraction: 0.5}}"])
    run_protocol(cfg, manifest=manifest, enable_progress_bar=False)
    run = cfg.run_dir
    pred = pd.read_csv(run / "predictions.csv")
    assert sorted(pred["index"]) == list(range(len(manifest)))
    used = json.loads((run / "labelled.json").read_text())
    for k, u in used.items():
        assert 0 < u["labelled_rows"] < u["train_rows"], (k, u)
    assert (run / "fold_0" / "model.safetensors").is_file() and (run / "report.md").is_file()


@pytest.mark.parametrize("overrides, says", [
    ([], "frozen encoder random init"),
    (["model.backbone=efficientnet_lite0", "model.width=1.0", "model.pretrained=imagenet"], "frozen encoder imagenet"),
    (["recipe_options.init_from=runs/dino"], "frozen encoder runs/dino"),
])
def test_report_title_names_the_encoder_start(overrides, says):
    """The report's first line says where the frozen encoder came from (it called an ImageNet encoder 'random')."""
    from types import SimpleNamespace

    from sonodistill.protocols.medivlad import MeDiVLADProtocol

    cfg = load_config(None, ["recipe=medivlad", "name=t"] + overrides)
    run = SimpleNamespace(cfg=cfg, manifest=SimpleNamespace(modality="video"))
    assert MeDiVLADProtocol().title(run).endswith(says)


@pytest.mark.parametrize("start, reused", [(["recipe_options.init_from=runs/dino"], True), ([], False)])
def test_seeds_of_one_run_share_the_frozen_features_of_a_pretrained_encoder(tmp_path, monkeypatch, start, reused):
    """`train --seeds`: seed 1 reuses seed 0's features.npz when the frozen encoder is pretrained (the same for
    every seed); a random encoder depends on the seed, so its features are computed again."""
    import sonodistill.protocols.medivlad as mv
    import sonodistill.recipes.frame_features as ff
    from sonodistill.data.manifest import Manifest

    calls = []

    def encode(encoder, manifest, data, t):
        calls.append(len(manifest))
        return np.full((len(manifest), t, 3), float(len(calls)), np.float32), np.ones((len(manifest), t), bool)

    monkeypatch.setattr(ff, "video_frame_features", encode)
    monkeypatch.setattr(mv, "video_stage_encoder", lambda cfg: torch.nn.Linear(2, 3))
    manifest = Manifest(pd.DataFrame({"path": ["a.mp4", "b.mp4"], "group": ["p0", "p1"], "label": ["x", "y"]}),
                        ["x", "y"], "video", "t")
    for seed in (0, 1):
        cfg = load_config(None, ["recipe=medivlad", f"out_dir={tmp_path / 'run'}", f"name=seed_{seed}",
                                 "data.num_frames=4"] + start)
        cfg.run_dir.mkdir(parents=True)
        feats = mv.cached_video_features(cfg, manifest)
        assert feats.feats.shape == (2, 4, 3)
    assert calls == ([2] if reused else [2, 2])
    assert float(feats.feats[0, 0, 0]) == (1.0 if reused else 2.0)
    assert (tmp_path / "run" / "seed_1" / "features.npz").is_file()
    assert (tmp_path / "run" / "seed_1" / "encoder.safetensors").is_file()
