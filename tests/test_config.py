"""Typed configs: YAML + overrides, type checking, unknown fields, save/load round trip."""

from __future__ import annotations

import pytest

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
