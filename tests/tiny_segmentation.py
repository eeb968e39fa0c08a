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
