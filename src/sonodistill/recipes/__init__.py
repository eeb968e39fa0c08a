"""Recipes: LightningModules built from a RunConfig. `get_recipe(name)` imports lazily."""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

from sonodistill.errors import ConfigError
from sonodistill.recipe_registry import RECIPES  # name -> "module:Class" (re-exported: one dict object)


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
