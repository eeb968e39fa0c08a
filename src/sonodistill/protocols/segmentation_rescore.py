"""Score a finished segmentation run again with other inference settings, from each fold's last checkpoint.

The inference settings are the options that change what is scored, not what is trained: `recipe_options.eval_model`
(the student or the EMA teacher of Mean Teacher / HDC), `inference_decoders` (HDC's D1, or D1 and D2 averaged),
`flip_tta` (horizontal-flip test-time augmentation), `mask_postprocess` (largest component, non-empty), `overlays`
and `save_masks`. The new run directory holds the same
folds, split and outline calibration as the source, its own `config.yaml` (the overrides applied), `predictions.csv`,
report and each fold's scored weights (`fold_k/model.safetensors`: `predict` and `export` serve it), so
`sonodistill compare` pairs it with the source image by image. A multi-seed run (`seed_<s>/` folders) is rescored
seed by seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sonodistill.config import SEED_DIR_PREFIX, RunConfig, load_config, seed_run_dirs
from sonodistill.data.manifest import Manifest
from sonodistill.errors import CheckpointError, ConfigError, SonoDistillError
from sonodistill.evaluation.run_dir import PREDICTIONS
from sonodistill.evaluation.segmentation_report import (
    SEGMENTATION_CLASSES,
    fold_outline_calibration,
    has_head_circumference,
    predict_segmentation,
    segmentation_title,
    segmentation_units,
    training_warnings,
    write_segmentation_report,
)
from sonodistill.protocols.segmentation import scoring_options

log = logging.getLogger(__name__)

INFERENCE_OPTIONS = ("eval_model", "inference_decoders", "flip_tta", "mask_postprocess", "overlays", "save_masks")
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def check_inference_overrides(overrides: list[str]) -> None:
    """ConfigError unless every `KEY=VALUE` sets one of the inference options (`recipe_options.<name>`)."""
    allowed = {f"recipe_options.{name}" for name in INFERENCE_OPTIONS}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in allowed:
            raise ConfigError(f"rescoring changes inference settings only ({', '.join(sorted(allowed))}); "
                              f"{item!r} would describe another training run")


def scored_folds(run_dir: Path) -> list[int]:
    """The folds a finished one-seed run scored, from its predictions.csv (its config's `train.fold` can be stale: a
    run of one fold resumed for all keeps its first config.yaml); SonoDistillError when it has none."""
    if not (run_dir / PREDICTIONS).is_file():
        raise SonoDistillError(f"{run_dir}: {PREDICTIONS} is missing (an unfinished run?): nothing to rescore")
    return sorted(int(k) for k in pd.read_csv(run_dir / PREDICTIONS, usecols=["fold"])["fold"].unique())


def load_trained_recipe(cfg: RunConfig, checkpoint: Path) -> torch.nn.Module:
    """The run's recipe with every weight of a Lightning checkpoint loaded strictly (student, teacher, buffers);
    CheckpointError when the checkpoint is missing, unreadable, unfinished or of another model."""
    from sonodistill.recipes import get_recipe

    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: not found (rescoring needs each fold's last checkpoint)")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(f"{checkpoint}: cannot read ({exc})") from exc
    if int(state.get("epoch", -1)) + 1 != int(cfg.train.epochs):
        raise CheckpointError(f"{checkpoint}: saved after epoch {int(state.get('epoch', -1)) + 1} of "
                              f"{cfg.train.epochs}: the fold did not finish training")
    built = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="none"))  # weights come next
    recipe = get_recipe(cfg.recipe)(built, num_classes=SEGMENTATION_CLASSES, steps_per_epoch=1)
    try:
        recipe.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: does not match the recipe of the run's config.yaml: "
                              f"{str(exc).strip().splitlines()[0]}") from exc
    return recipe.eval()


def rescore_one_seed(run_dir: Path, out_dir: Path, overrides: list[str]) -> pd.DataFrame:
    """Rescore the folds of one seed's run directory into `out_dir`; returns the pooled predictions."""
    from sonodistill.recipes import get_recipe
    from sonodistill.recipes.trainer import WEIGHTS, save_weights

    cfg = load_config(run_dir / "config.yaml", overrides)
    manifest = Manifest.from_csv(run_dir / "manifest.csv")
    options = get_recipe(cfg.recipe).resolve_options(cfg.recipe_options)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(out_dir / "config.yaml")
    for name in ("manifest.csv", "folds.json"):
        shutil.copyfile(run_dir / name, out_dir / name)
    frames = []
    for k in scored_folds(run_dir):
        fold_dir, target = run_dir / f"fold_{k}", out_dir / f"fold_{k}"
        net = load_trained_recipe(cfg, fold_dir / LAST_CHECKPOINT).inference_model()  # a missing fold: its error
        split = json.loads((fold_dir / "split.json").read_text())
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fold_dir / "split.json", target / "split.json")
        offset = 0.0
        if has_head_circumference(manifest):
            calibration = fold_outline_calibration(manifest, fold_dir)
            (target / "hc_calibration.json").write_text(json.dumps(calibration))
            offset = float(calibration["outline_offset_px"])
        save_weights(net, target / WEIGHTS)  # the rescored run serves what it scored
        pred = predict_segmentation(net, cfg, manifest, np.asarray(split["test"]), k, target,
                                    hc_outline_offset_px=offset, **scoring_options(options))
        pred.to_csv(target / PREDICTIONS, index=False)
        log.info("%s fold %d: %d items rescored, Dice %.4f", run_dir, k, len(pred), pred["dice"].mean())
        frames.append(pred)
    predictions = pd.concat(frames, ignore_index=True)
    predictions.to_csv(out_dir / PREDICTIONS, index=False)
    write_segmentation_report(out_dir, predictions, segmentation_title(cfg) + " (rescored: " +
                              (", ".join(overrides) or "same settings") + ")", segmentation_units(manifest),
                              training_warnings(run_dir, cfg))  # the training logs stay in the source run
    return predictions


def rescore_segmentation_run(run_dir: str | Path, out_dir: str | Path, overrides: list[str]) -> dict[int, Path]:
    """Rescore a finished segmentation run (one seed, or `seed_<s>/` folders) into `out_dir` with the inference
    `overrides` (`recipe_options.eval_model=teacher`, `recipe_options.flip_tta=true`, ...); returns {seed: folder}."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_inference_overrides(overrides)
    if not (run_dir / "config.yaml").is_file():
        raise SonoDistillError(f"{run_dir} is not a run directory: config.yaml is missing")
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError(f"{out_dir}: rescoring writes a new run directory, not over its source")
    seeds = seed_run_dirs(run_dir)
    if not seeds:
        rescore_one_seed(run_dir, out_dir, overrides)
        return {int(load_config(run_dir / "config.yaml").train.seed): out_dir}
    out_dir.mkdir(parents=True, exist_ok=True)
    load_config(run_dir / "config.yaml", overrides).save(out_dir / "config.yaml")
    done = {}
    for seed, folder in seeds.items():
        done[seed] = out_dir / f"{SEED_DIR_PREFIX}{seed}"
        rescore_one_seed(folder, done[seed], overrides)
    return done
