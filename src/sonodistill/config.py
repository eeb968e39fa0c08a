"""Typed run configuration: dataclasses loaded from YAML, any field overridable as `section.field=value`."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sonodistill.errors import ConfigError
from sonodistill.recipe_registry import RECIPES

T = typing.TypeVar("T")


T = typing.TypeVar("T")


FRAME_SAMPLING = ("uniform", "random", "stride")  # data.sampling: how training picks a clip's T frames


@dataclass
class DataConfig:
    """Which data, and how clips are turned into tensors."""

    spec: str = "synthetic:carotid"       # ADAPTER:ROOT, or synthetic:PRESET
    target: str | None = None             # adapter target, e.g. lus-blues 'severity' or 'severity3'
    adapter_options: dict[str, Any] = field(default_factory=dict)  # the adapter's other options, e.g. folder's
    #                                       {group_by: file} or {group_regex: '^(patient_\d+)_'}, csv's {label_col: y}
    size: int = 112                       # frame side after crop + resize + pad
    num_frames: int = 16                  # T frames per clip
    sampling: str = "uniform"             # train-time frame sampling: uniform | random | stride
    crop_region: bool = True
    remove_overlay: bool = True
    batch_size: int = 8
    num_workers: int = 0
    cache_dir: str | None = None          # None: SONODISTILL_CACHE or ~/.cache/sonodistill
    augment: bool = True
    rotate_degrees: float = 0.0           # training augmentation: rotation drawn in +-degrees (0: none)
    zoom: list[float] = field(default_factory=lambda: [1.0, 1.0])  # and zoom factor range (< 1 shrinks, pads black)
    synthetic_n: int = 120                # items generated for synthetic:PRESET
    synthetic_frames: int = 16
    synthetic_size: int = 96
    synthetic_seed: int = 0               # simulator seed: another seed gives an independent set (e.g. to tune on)

    def __post_init__(self) -> None:
        for name in ("size", "num_frames", "batch_size", "synthetic_n", "synthetic_frames", "synthetic_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.num_workers) < 0:
            raise ConfigError(f"data.num_workers must be >= 0 (0: load in the training process), got "
                              f"{self.num_workers}")
        if self.sampling not in FRAME_SAMPLING:
            raise ConfigError(f"data.sampling: unknown frame sampling {self.sampling!r}; use one of {FRAME_SAMPLING}")
        if self.rotate_degrees < 0 or len(self.zoom) != 2 or not 0 < self.zoom[0] <= self.zoom[1]:
            raise ConfigError(f"data.rotate_degrees / data.zoom: need degrees >= 0 and a zoom range [low, high] with "
                              f"0 < low <= high, got {self.rotate_degrees} and {list(self.zoom)}")


@dataclass
class ModelConfig:
    backbone: str = "resnet10_3d"
    width: float = 0.25                   # width multiplier (CPU-sized variants < 1)
    norm: str = "batch"
    dropout: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str = "none"              # none | imagenet | PATH (run dir or safetensors of our own pretraining)
    freeze_stages: int = 0                # partial finetuning: stem + first N stages fixed (EfficientNet encoders)

    def __post_init__(self) -> None:
        if not 0 <= float(self.dropout) < 1:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if int(self.freeze_stages) < 0:
            raise ConfigError(f"model.freeze_stages must be >= 0, got {self.freeze_stages}")


@dataclass
class OptimConfig:
    name: str = "adamw"                   # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: int = 0
    schedule: str = "cosine"              # cosine | step | constant
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    grad_clip: float | None = 5.0

    def __post_init__(self) -> None:
        if not float(self.lr) > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}: a run must learn")
        if float(self.weight_decay) < 0 or int(self.warmup_epochs) < 0:
            raise ConfigError(f"optim.weight_decay and optim.warmup_epochs must be >= 0, got {self.weight_decay} "
                              f"and {self.warmup_epochs}")
        if not 0 <= float(self.momentum) < 1 or not float(self.gamma) > 0:
            raise ConfigError(f"optim.momentum must be in [0, 1) and optim.gamma > 0, got {self.momentum} and "
                              f"{self.gamma}")
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null (no clipping), got {self.grad_clip}")


@dataclass
class TrainConfig:
    epochs: int = 10
    seed: int = 0
    fold_seed: int | None = None          # seed of the grouped fold split; None: `seed` (--seeds fixes it)
    folds: int = 5
    fold: int | None = None               # run only this fold (0-based)
    final: bool = False                   # after CV, also train one model on all items -> RUN/final/
    cv: bool = True                       # cross-validate; false (--final-only): only RUN/final/, no CV estimate
    on_validation: bool = False           # choose settings: train on each fold's fit rows, score its validation
    val_fraction: float = 0.2             # rows (grouped `val_fraction` of the training rows); test folds unread
    calibrate: str = "none"               # classification: none | temperature (each fold and final/ hold out a
                                          # grouped `val_fraction` of their training rows, fit one temperature on
                                          # it; its test probabilities, predict and the export use it)
    devices: int = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    precision: str = "32-true"
    limit_train_batches: float | int = 1.0
    log_every_n_steps: int = 10
    threads: int | str = 0                # torch intra-op threads of this process; 0: torch's default (all cores);
                                          # auto: the fastest measured on this machine (protocols/tuning.py)
    parallel_folds: int | str = 1         # folds trained at once, each in its own process with train.threads (0:
                                          # the CPUs shared evenly); auto: measured, as threads
    feature_engine: str = "onnxruntime"   # frozen-feature extraction: onnxruntime (2-3x faster on CPU) | torch
    frozen_cache_views: int = 0           # supervised partial finetuning: run the model.freeze_stages frozen stages
                                          # once per item and view (K augmented views, epoch e uses e mod K), not
                                          # every step (recipes/frozen_cache.py); 0: no cache
    channels_last: bool = False           # convolution weights in channels-last memory order while a run trains
                                          # and scores its test fold (4-D: channels_last, 5-D: channels_last_3d):
                                          # faster CPU steps for the EfficientNet networks (1.03-1.53x,
                                          # benchmarks/channels_last_speed.py); the same model and checkpoints,
                                          # numbers equal up to float rounding


SEED_DIR_PREFIX = "seed_"  # a multi-seed run (`train --seeds`) keeps seed s in RUN/seed_<s>/


def seed_run_dirs(run: str | Path) -> dict[int, Path]:
    """The seed directories of a multi-seed run, {seed: RUN/seed_<s>/} in seed order; {} for a one-seed run."""
    found = {int(p.name[len(SEED_DIR_PREFIX):]): p for p in Path(run).glob(f"{SEED_DIR_PREFIX}*")
             if p.is_dir() and p.name[len(SEED_DIR_PREFIX):].lstrip("-").isdigit()}
    return dict(sorted(found.items()))


def is_seeds_parent(run: str | Path) -> bool:
    """True for the parent folder of a `train --seeds` run: seed_<s>/ runs, and no predictions, folds or final model
    of its own (eval goes seed by seed there; predict, export and serve need one seed)."""
    run = Path(run)
    own = (run / "predictions.csv").is_file() or (run / "final").is_dir() or any(run.glob("fold_*"))
    return bool(seed_run_dirs(run)) and not own


@dataclass
class RunConfig:
    name: str = "run"
    recipe: str = "supervised"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recipe_options: dict[str, Any] = field(default_factory=dict)  # method-specific (e.g. dualdistill alpha/beta)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the declared field type, or raise ConfigError naming the field."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as exc:
                last = exc
        raise ConfigError(f"{where}: cannot interpret {value!r} as {tp}") from last
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, where) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        tp = hints[f.name]
        v = values[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}.{f.name}: expected a mapping")
            kwargs[f.name] = _build(tp, v, f"{where}.{f.name}")
        else:
            kwargs[f.name] = _coerce(v, tp, f"{where}.{f.name}")
    return cls(**kwargs)


def parse_options(cls: type[T], values: dict[str, Any] | None, recipe: str) -> T:
    """A recipe's typed `Options` dataclass from `recipe_options`: unknown keys and wrong types are ConfigErrors
    naming the field; fields not given keep their defaults; a nested dataclass field merges a given mapping over
    its defaults. The dataclass's own `__post_init__` checks value ranges."""
    return _build(cls, dict(values or {}), f"recipe_options ({recipe})")


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from nested dicts, checking every field name and type."""
    return _build(RunConfig, values or {}, "config")


def declared_type(key: str) -> Any | None:
    """The declared type of a dotted RunConfig field (`data.spec` -> str); None where none is declared
    (e.g. a key inside `recipe_options` or `model.kwargs`, or an unknown field, which `_build` reports)."""
    tp: Any = RunConfig
    for part in key.split("."):
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _is_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def parse_override_value(key: str, raw: str) -> Any:
    """The value of `key=raw` from the command line: text for a text field, exactly as typed (never YAML, so
    '#2', 'yes', 'on', '1e3' and ':' stay text; 'null' or '~' is None where the field allows None); YAML for
    any other field, whose declared type then checks it (`config_from_dict`)."""
    tp = declared_type(key)
    if tp is not None and _is_text(tp):
        return None if raw in ("null", "~") and type(None) in typing.get_args(tp) else raw
    return yaml.safe_load(raw)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings to a nested dict (values typed by `parse_override_value`); returns a new dict."""
    out = copy.deepcopy(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = parse_override_value(key.strip(), raw)
    return out


BY_RECIPE = "by_recipe"  # config key: {recipe name: {section: {field: value}}}, merged only for that recipe


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Load YAML (optional) over `base`, merge the chosen recipe's `by_recipe` section, apply overrides, validate,
    return a RunConfig."""
    values: dict[str, Any] = copy.deepcopy(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        values = _merge(values, loaded)
    return config_from_dict(_with_recipe_section(values, list(overrides or [])))


def _with_recipe_section(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`values` with `overrides` applied, and between the two the `by_recipe` section of the final recipe merged in
    (file < that recipe's section < command line); `by_recipe` itself is dropped, so a run's config.yaml records
    what it ran. ConfigError for a section of an unknown recipe, one that sets `recipe`, a non-mapping, or a
    section with an unknown or mistyped field (every section is checked, not only the running recipe's)."""
    full = apply_overrides(values, overrides)  # the final recipe, and any by_recipe.* override
    sections = full.pop(BY_RECIPE, None)
    if sections is None:
        return full
    if not isinstance(sections, dict):
        raise ConfigError(f"{BY_RECIPE} must map recipe names to config sections, got {sections!r}")
    unknown = sorted(set(sections) - set(RECIPES))
    if unknown:
        raise ConfigError(f"{BY_RECIPE}: unknown recipe(s) {unknown}; available: {sorted(RECIPES)}")
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{BY_RECIPE}.{name} must be a mapping of config sections, got {section!r}")
        if {"recipe", BY_RECIPE} & set(section):
            raise ConfigError(f"{BY_RECIPE}.{name} may not set `recipe` or `{BY_RECIPE}`")
        try:  # every section's field names and types, whichever recipe runs now (a section alone is a config)
            config_from_dict(section)
        except ConfigError as err:
            raise ConfigError(f"{BY_RECIPE}.{name}: {err}") from err
    recipe = full.get("recipe", RunConfig.recipe)
    base = {k: v for k, v in values.items() if k != BY_RECIPE}
    rest = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] != BY_RECIPE]
    return apply_overrides(_merge(base, sections.get(recipe, {})), rest)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def packaged_configs() -> list[Path]:
    """The YAML files shipped in sonodistill/configs, sorted by name."""
    return sorted((Path(__file__).parent / "configs").glob("*.yaml"), key=lambda p: p.stem)


def packaged_config(name: str) -> Path:
    """Path of a YAML shipped in sonodistill/configs (e.g. 'supervised-cpu')."""
    p = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not p.is_file():
        avail = [x.stem for x in packaged_configs()]
        raise ConfigError(f"no packaged config '{name}'; available: {avail} (`sonodistill configs` says what each "
                          "is for)")
    return p
