"""Recipes: LightningModules built from a RunConfig. `get_recipe(name)` imports lazily."""

from __future__ import annotations

import importlib

from sonodistill.errors import ConfigError

# name -> "module:Class"
RECIPES: dict[str, str] = {
    "supervised": "sonodistill.recipes.supervised:SupervisedRecipe",
    "dualdistill": "sonodistill.recipes.dualdistill:DualDistillRecipe",
    # semi-supervised segmentation (one engine, different losses)
    "seg_supervised": "sonodistill.recipes.semi_supervised:SupervisedSegmentationRecipe",
    "mean_teacher": "sonodistill.recipes.semi_supervised:MeanTeacherRecipe",
    "fixmatch": "sonodistill.recipes.semi_supervised:FixMatchRecipe",
    "cps": "sonodistill.recipes.semi_supervised:CrossPseudoSupervisionRecipe",
    "hdc": "sonodistill.recipes.hdc:HDCRecipe",
    # self-supervised and multimodal
    "dino": "sonodistill.recipes.dino:DINORecipe",
    "medivlad": "sonodistill.recipes.medivlad:MeDiVLADRecipe",
    "discovr": "sonodistill.recipes.discovr:DISCOVRRecipe",
    "dilbert": "sonodistill.recipes.dilbert:DILBERTRecipe",
    # frozen pretrained features + logistic regression (CPU baseline)
    "linear_probe": "sonodistill.recipes.linear_probe:LinearProbeRecipe",
}


def get_recipe(name: str) -> type:
    """The recipe class registered under `name`."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available: {sorted(RECIPES)}")
    module, _, cls = RECIPES[name].partition(":")
    return getattr(importlib.import_module(module), cls)
