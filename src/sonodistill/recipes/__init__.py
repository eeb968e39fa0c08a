"""Recipes: LightningModules built from a RunConfig. `get_recipe(name)` imports lazily."""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

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


def options_class(name: str) -> type | None:
    """The typed dataclass recipe `name` parses its `recipe_options` into (None: the recipe takes none)."""
    return getattr(get_recipe(name), "Options", None)


def resolved_recipe_options(name: str, values: dict[str, Any] | None) -> dict[str, Any]:
    """`values` with every option of recipe `name` filled in, defaults included, as plain YAML values (what a run's
    config.yaml records, so a later change of a default cannot change a resumed run). ConfigError as parse_options."""
    from sonodistill.config import parse_options

    cls = options_class(name)
    if cls is None:
        return dict(values or {})
    return json.loads(json.dumps(dataclasses.asdict(parse_options(cls, values, name))))
