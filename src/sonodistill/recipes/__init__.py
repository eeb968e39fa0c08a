"""Recipes: LightningModules built from a RunConfig. `get_recipe(name)` imports lazily."""

from __future__ import annotations

import dataclasses
import importlib
import json
from types import ModuleType
from typing import Any

from sonodistill.errors import ConfigError
from sonodistill.recipe_registry import RECIPES  # name -> "module:Class" (re-exported: one dict object)


def recipe_module(name: str) -> ModuleType:
    """The module recipe `name` is registered in (ConfigError naming the known recipes for an unknown name)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available: {sorted(RECIPES)}")
    return importlib.import_module(RECIPES[name].partition(":")[0])


def get_recipe(name: str) -> type:
    """The recipe class registered under `name`."""
    return getattr(recipe_module(name), RECIPES[name].partition(":")[2])


def options_class(name: str) -> type | None:
    """The typed dataclass recipe `name` parses its `recipe_options` into (None: the recipe takes none)."""
    return getattr(get_recipe(name), "Options", None)


def resolved_recipe_options(name: str, values: dict[str, Any] | None) -> dict[str, Any]:
    """`values` with every option of recipe `name` filled in, defaults included, as plain YAML values (what a run's
    config.yaml records, so a later change of a default cannot change a resumed run). ConfigError as parse_options."""
    from sonodistill.config import parse_options

    cls = options_class(name)
    if cls is None:
        if values:
            raise ConfigError(f"recipe {name!r} takes no recipe_options, got {sorted(values)}")
        return {}
    return json.loads(json.dumps(dataclasses.asdict(parse_options(cls, values, name))))
