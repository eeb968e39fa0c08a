"""The model-kind registry: for each task, how its inference model is built and how a prediction becomes JSON.

A run's task comes from its recipe (`task` class attribute, default "classification"). The built-in kinds
("classification", "segmentation", "features") are registered by `sonodistill.serve.predict`, and "annotation"
(DILBERT annotators) by `sonodistill.serve.annotation`, both imported on first look-up; other recipes add theirs
with `register_model_kind(...)` (see docs/bedside.md, "Extension points").
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError

CLIP_MODES = ("windows", "uniform")


@dataclass
class PredictOptions:
    """stride: window step in frames (None: T // 2); batch_size: windows per forward pass;
    mask_dir: segmentation masks are written there as PNG (None: inline `data:image/png;base64` URIs);
    pixel_size_mm: the inputs' pixel size in mm, for areas and head circumferences of segmentation masks (None: the
    file's own, where a DICOM says it; given, it replaces the file's)."""

    stride: int | None = None
    clip_mode: str = "windows"
    batch_size: int = 8
    mask_dir: Path | None = None
    decimals: int = 6
    pixel_size_mm: float | None = None

    def __post_init__(self) -> None:
        if self.clip_mode not in CLIP_MODES:
            raise ConfigError(f"clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.pixel_size_mm is not None and not (math.isfinite(float(self.pixel_size_mm)) and self.pixel_size_mm > 0):
            raise ConfigError(f"pixel_size_mm must be a positive number of mm, got {self.pixel_size_mm}")


@dataclass
class PreparedInput:
    """One input: display name, raw uint8 `T x H x W` frames, preprocessed uint8 `T x S x S` clip, fps, and the
    file's pixel size in mm (rows, columns) where it says it."""

    name: str
    frames: np.ndarray
    clip: np.ndarray
    fps: float | None
    pixel_spacing_mm: tuple[float, float] | None = None


@dataclass
class OcclusionSpec:
    """How `sonodistill explain --method occlusion` explains a kind's models (explain/occlusion.py).

    score: `(member, reference input 1 x C x ...) -> nn.Module` mapping the input to `B x N` scores
        (e.g. `explain.occlusion.ClassProbability`).
    targets: `(model, prediction dict of the input) -> (the N score names, the default one's index)`; None: the
        run's classes and the predicted class. Grad-CAM and the recipe's explainers use the same targets.
    windows: `(model, n frames) -> [frame indices of each model input]`; None: the windows of `predict`.
    """

    score: Callable[[nn.Module, Any], nn.Module]
    targets: Callable[[Any, dict[str, Any]], tuple[list[str], int]] | None = None
    windows: Callable[[Any, int], list[np.ndarray]] | None = None


@dataclass
class ModelKind:
    """One task's serving behaviour.

    predict: `(model, prepared_input, options) -> dict` (JSON-ready) for one input file.
    build: `(cfg, manifest) -> nn.Module` inference model with the run's architecture (weights loaded after);
        None: the recipe class must define `build_inference_model(cfg, manifest)`.
    combine: `(members) -> nn.Module`, the one module that `predict` runs and `export` writes (members: the
        loaded inference models); None: `ProbabilityEnsemble` (mean of the members' softmax over dim 1).
    output: name of that module's output (the exported graph's output name); output_doc: what it holds.
    per_class: the output is per class (the run's classes are reported); False for embeddings.
    output_classes: the names of the output's classes when they are not the run's (segmentation: the mask classes
        background / foreground, whatever image labels the run's data set has, e.g. BUSI's benign / malignant).
    heatmaps: `sonodistill explain` and the review page's Grad-CAM apply (class logits to differentiate).
    load_run: `(run_dir, cfg, manifest, members) -> LoadedModel`, for a kind whose models are not
        `model.safetensors` files (DILBERT's annotator folders); tried before the recipe's `build_inference_model`.
    export_extras: `(model, folder) -> dict` merged into the export's sonodistill-model.json; it may write files
        the kind needs into the export folder (the annotator's knowledge graph, tokenizer, retriever).
    no_heatmaps_because: why Grad-CAM does not apply to this kind (said when it is asked for).
    occlusion: how occlusion sensitivity explains this kind (any model: no gradients, no architecture needed);
        None: `explain` offers only Grad-CAM (heatmaps) and the recipe's own explainers.
    """

    task: str
    predict: Callable[..., dict[str, Any]]  # (LoadedModel, PreparedInput, PredictOptions) -> dict
    build: Callable[[RunConfig, Manifest], nn.Module] | None = None
    combine: Callable[[list[nn.Module]], nn.Module] | None = None
    output: str = "probabilities"
    output_doc: str = "softmax probabilities over classes (dim 1), mean over members"
    per_class: bool = True
    output_classes: tuple[str, ...] | None = None
    heatmaps: bool = False
    load_run: Callable[..., Any] | None = None  # (Path, RunConfig, Manifest, str) -> serve.loading.LoadedModel
    export_extras: Callable[..., dict[str, Any]] | None = None  # (LoadedModel, Path) -> dict
    no_heatmaps_because: str = ""
    occlusion: OcclusionSpec | None = None


_KINDS: dict[str, ModelKind] = {}
_BUILT_IN = ("sonodistill.serve.predict", "sonodistill.serve.annotation")


def _register_built_in() -> None:
    for module in _BUILT_IN:  # classification, segmentation, features; annotation
        importlib.import_module(module)


def register_model_kind(task: str, predict: Callable[..., dict[str, Any]],
                        build: Callable[[RunConfig, Manifest], nn.Module] | None = None, **fields: Any) -> None:
    """Register (or replace) how models of `task` are built and how their predictions become JSON.

    `fields`: the other `ModelKind` fields (combine, output, output_doc, per_class, output_classes, heatmaps,
    load_run, export_extras, no_heatmaps_because, occlusion)."""
    _KINDS[task] = ModelKind(task, predict, build, **fields)


def find_model_kind(task: str) -> ModelKind | None:
    """The registered kind for `task`, or None."""
    _register_built_in()
    return _KINDS.get(task)


def served_classes(kind: ModelKind, run_classes: list[str]) -> list[str]:
    """The names of a served model's output classes: the kind's own (`output_classes`), else the run's classes
    (`run_classes`: a run's manifest, an export's record) when the output is per class, else none."""
    if kind.output_classes is not None:
        return list(kind.output_classes)
    return list(run_classes) if kind.per_class else []


def get_model_kind(task: str) -> ModelKind:
    """The registered kind for `task` (the built-in kinds are registered on first look-up)."""
    _register_built_in()
    if task not in _KINDS:
        raise ConfigError(f"no model kind registered for task {task!r}; known: {sorted(_KINDS)}. "
                          "A recipe adds one with sonodistill.serve.kinds.register_model_kind(...)")
    return _KINDS[task]
