"""Configs of tiny segmentation runs, shared by the serving and rescoring tests."""

from __future__ import annotations

from pathlib import Path

from sonodistill.config import RunConfig, load_config


def seg_config(recipe: str, root: Path, *extra: str) -> RunConfig:
    """A segmentation recipe's config for tiny 32 px runs: 1 epoch, 2 folds, a narrow U-Net."""
    return load_config(None, [
        f"recipe={recipe}", f"name={recipe}", f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}",
        "data.size=32", "data.batch_size=4", "data.crop_region=false", "data.remove_overlay=false",
        "data.augment=false", "model.backbone=unet", "model.width=0.25", "train.epochs=1", "train.folds=2",
        "train.log_every_n_steps=1", "optim.warmup_epochs=0",
        "recipe_options={labelled_fraction: 0.5, iterations_per_epoch: 2, channels: [8, 16, 32], overlays: 0, "
        "save_masks: true}", *extra])


def trained_seg_run(root: Path, recipe: str = "hdc", *extra: str) -> Path:
    """`recipe` trained by `seg_config` (1 epoch, 2 folds) on 8 synthetic fetal-head images (48 x 48, pixel size in
    mm) written under `root`; returns the run directory."""
    from sonodistill.data.manifest import Manifest
    from sonodistill.data.synthetic import write_dataset
    from sonodistill.protocols.folds import run_protocol

    manifest = Manifest.from_csv(write_dataset("fetal-head", root / "data", n=8, seed=1, size=48, workers=1))
    cfg = seg_config(recipe, root, *extra)
    run_protocol(cfg, manifest=manifest, enable_progress_bar=False)
    return cfg.run_dir
