"""Typed configs: YAML + overrides, type checking, unknown fields, save/load round trip."""

from __future__ import annotations

import dataclasses
import re

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

    default = load_config(path)
    # the YAML's own recipe, and every recipe it gives a by_recipe section
    for recipe in [default.recipe, *(yaml.safe_load(path.read_text()).get("by_recipe") or {})]:
        cfg = load_config(path, [f"recipe={recipe}"])
        assert cfg.recipe in RECIPES
        cls = options_class(cfg.recipe)
        if cls is None:
            assert not cfg.recipe_options, f"{path.name}: recipe {cfg.recipe!r} takes no recipe_options"
            continue
        parse_options(cls, cfg.recipe_options, cfg.recipe)
        # what a run's config.yaml records: every option, given or default, and reading it back changes nothing
        resolved = resolved_recipe_options(cfg.recipe, cfg.recipe_options)
        assert set(resolved) == {f.name for f in dataclasses.fields(cls)}
        assert resolved_recipe_options(cfg.recipe, resolved) == resolved
        assert yaml.safe_load(yaml.safe_dump(resolved)) == resolved


BY_RECIPE_YAML = """
recipe: seg_supervised
optim: {lr: 0.001}
recipe_options: {labelled_fraction: 0.1}
by_recipe:
  hdc:
    optim: {lr: 0.0005}
    recipe_options: {mi_marginal: prior}
  fixmatch:
    recipe_options: {threshold: 0.9}
"""


def test_by_recipe_section_merges_for_its_recipe_only(tmp_path):
    """A recipe's by_recipe section sits over the file and under the command line; other recipes never see it,
    and the resolved config (what config.yaml records) no longer holds by_recipe."""
    path = tmp_path / "c.yaml"
    path.write_text(BY_RECIPE_YAML)
    hdc = load_config(path, ["recipe=hdc"])
    assert hdc.recipe_options == {"labelled_fraction": 0.1, "mi_marginal": "prior"} and hdc.optim.lr == 0.0005
    sup = load_config(path)  # the file's recipe: no section
    assert sup.recipe_options == {"labelled_fraction": 0.1} and sup.optim.lr == 0.001
    assert load_config(path, ["recipe=fixmatch"]).recipe_options["threshold"] == 0.9
    # the command line wins over the section, and can edit the section itself
    assert load_config(path, ["recipe=hdc", "recipe_options.mi_marginal=none"]).recipe_options["mi_marginal"] == "none"
    assert load_config(path, ["recipe=hdc", "by_recipe.hdc.optim.lr=0.01"]).optim.lr == 0.01
    assert load_config(path, ["by_recipe.hdc.optim.lr=0.01"]).optim.lr == 0.001  # still seg_supervised
    saved = tmp_path / "saved.yaml"
    hdc.save(saved)
    assert "by_recipe" not in yaml.safe_load(saved.read_text())
    assert load_config(saved) == hdc


@pytest.mark.parametrize("section, message", [
    ("by_recipe: {hcd: {recipe_options: {mi_marginal: prior}}}", "unknown recipe(s) ['hcd']"),
    ("by_recipe: [hdc]", "must map recipe names"),
    ("by_recipe: {hdc: 3}", "by_recipe.hdc must be a mapping"),
    ("by_recipe: {hdc: {recipe: fixmatch}}", "may not set `recipe`"),
    ("by_recipe: {hdc: {optim: {lrr: 1}}}", "by_recipe.hdc: config.optim: unknown field(s) ['lrr']"),
    ("by_recipe: {fixmatch: {train: {epochs: many}}}", "by_recipe.fixmatch: config.train.epochs"),  # not running
])
def test_bad_by_recipe_sections_name_the_cause(tmp_path, section, message):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: hdc\n" + section + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_seed_run_dirs_lists_the_seed_folders_in_seed_order(tmp_path):
    from sonodistill.config import seed_run_dirs

    for name in ("seed_10", "seed_2", "seed_-1", "seed_x", "fold_0"):
        (tmp_path / name).mkdir()
    (tmp_path / "seed_3").write_text("a file, not a seed folder")
    assert seed_run_dirs(tmp_path) == {-1: tmp_path / "seed_-1", 2: tmp_path / "seed_2", 10: tmp_path / "seed_10"}
    assert seed_run_dirs(tmp_path / "fold_0") == {}


def test_the_hc18_5pct_config_is_the_10pct_one_but_for_the_fraction_and_hdcs_own_setting():
    """seg-hc18-imagenet-5pct must follow seg-hc18-imagenet (every method's protocol) except the labelled fraction and
    HDC's consistency / MI marginal chosen at 5 % (docs/hdc.md, session 24)."""
    for recipe in ("seg_supervised", "mean_teacher", "fixmatch", "cps", "hdc"):
        ten = load_config(packaged_config("seg-hc18-imagenet"), [f"recipe={recipe}"]).to_dict()
        five = load_config(packaged_config("seg-hc18-imagenet-5pct"), [f"recipe={recipe}"]).to_dict()
        assert five["recipe_options"].pop("labelled_fraction") == 0.05
        assert ten["recipe_options"].pop("labelled_fraction") == 0.1
        if recipe == "hdc":
            options = five["recipe_options"]
            assert (options.pop("consistency"), options.pop("mi_marginal")) == (3, "prior")
        assert five == ten, recipe


@pytest.mark.parametrize("own", [None, "predictions.csv", "final", "fold_0"])
def test_a_seeds_parent_has_seed_runs_and_nothing_of_its_own(tmp_path, own):
    """The one definition eval (seed by seed) and predict/export/serve (refused, naming a seed) share."""
    from sonodistill.config import is_seeds_parent

    assert not is_seeds_parent(tmp_path)  # no seed folders: a one-seed run
    (tmp_path / "seed_0").mkdir()
    if own == "predictions.csv":
        (tmp_path / own).write_text("path,label\n")
    elif own is not None:
        (tmp_path / own).mkdir()
    assert is_seeds_parent(tmp_path) is (own is None)


@pytest.mark.parametrize("override, message", [
    ("data.size=0", "data.size must be >= 1, got 0"),
    ("data.num_frames=0", "data.num_frames must be >= 1"),
    ("data.batch_size=0", "data.batch_size must be >= 1"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.sampling=foo", "data.sampling: unknown frame sampling 'foo'"),
    ("optim.lr=0", "optim.lr must be > 0, got 0.0: a run must learn"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("optim.weight_decay=-1", "optim.weight_decay and optim.warmup_epochs must be >= 0"),
    ("optim.warmup_epochs=-1", "optim.weight_decay and optim.warmup_epochs must be >= 0"),
    ("optim.momentum=1", "optim.momentum must be in [0, 1)"),
    ("optim.gamma=0", "optim.gamma > 0"),
    ("optim.grad_clip=0", "optim.grad_clip must be > 0 or null"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("model.freeze_stages=-1", "model.freeze_stages must be >= 0"),
])
def test_numbers_no_run_can_use_are_refused_when_the_config_loads(override, message):
    """Found by trying them: each either trained (lr 0, negative warm-up), raised a torch ValueError traceback, or
    failed only after the run directory was written (size 0, an unknown sampling)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_the_edges_that_are_valid_load():
    cfg = load_config(None, ["data.num_workers=0", "optim.weight_decay=0", "optim.momentum=0", "model.dropout=0",
                             "optim.grad_clip=null", "data.sampling=stride"])
    assert cfg.optim.grad_clip is None and cfg.data.sampling == "stride"
