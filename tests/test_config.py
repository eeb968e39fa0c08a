"""Typed configs: YAML + overrides, type checking, unknown fields, save/load round trip."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from sonodistill.config import RunConfig, apply_overrides, load_config, packaged_config
from sonodistill.errors import ConfigError


def test_defaults_and_overrides_typed():
    cfg = load_config(None, ["optim.lr=0.05", "train.epochs=3", "model.width=0.5", "data.augment=false",
                             "optim.milestones=[3,6]", "train.fold=1"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.augment is False
    assert cfg.optim.milestones == [3, 6]
    assert cfg.train.fold == 1


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown field"),
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("data.augment=maybe", "data.augment"),
    ("nonsense", "form"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(packaged_config("supervised-cpu"), ["name=x", "recipe_options={alpha: 0.3}"])
    assert cfg.model.backbone == "resnet10_3d"
    assert cfg.recipe_options == {"alpha": 0.3}
    cfg.save(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_missing_file_and_packaged_name():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/cfg.yaml")
    with pytest.raises(ConfigError, match="available"):
        packaged_config("no-such-config")


def test_apply_overrides_does_not_mutate():
    base = {"optim": {"lr": 1.0}}
    out = apply_overrides(base, ["optim.lr=2"])
    assert base["optim"]["lr"] == 1.0 and out["optim"]["lr"] == 2
    assert isinstance(RunConfig().run_dir.name, str)


@pytest.mark.parametrize("path", sorted((packaged_config("demo").parent).glob("*.yaml")), ids=lambda p: p.stem)
def test_every_packaged_config_loads_with_its_recipes_options(path):
    """Every shipped YAML has known, well-typed fields, and its recipe_options parse into the recipe's options."""
    from sonodistill.config import parse_options
    from sonodistill.recipes import RECIPES, options_class, resolved_recipe_options

    cfg = load_config(path)
    assert cfg.recipe in RECIPES
    cls = options_class(cfg.recipe)
    if cls is None:
        assert not cfg.recipe_options, f"{path.name}: recipe {cfg.recipe!r} takes no recipe_options"
    else:
        parse_options(cls, cfg.recipe_options, cfg.recipe)
        # what a run's config.yaml records: every option, given or default, and reading it back changes nothing
        resolved = resolved_recipe_options(cfg.recipe, cfg.recipe_options)
        assert set(resolved) == {f.name for f in dataclasses.fields(cls)}
        assert resolved_recipe_options(cfg.recipe, resolved) == resolved
        assert yaml.safe_load(yaml.safe_dump(resolved)) == resolved


def test_seed_run_dirs_lists_the_seed_folders_in_seed_order(tmp_path):
    from sonodistill.config import seed_run_dirs

    for name in ("seed_10", "seed_2", "seed_-1", "seed_x", "fold_0"):
        (tmp_path / name).mkdir()
    (tmp_path / "seed_3").write_text("a file, not a seed folder")
    assert seed_run_dirs(tmp_path) == {-1: tmp_path / "seed_-1", 2: tmp_path / "seed_2", 10: tmp_path / "seed_10"}
    assert seed_run_dirs(tmp_path / "fold_0") == {}
