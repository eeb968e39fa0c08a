"""Load a servable model from a run directory or an export folder.

A run directory's task comes from its recipe (`get_recipe(cfg.recipe).task`, default "classification": the model kind
that serves it); how a task's inference model is built, or (a kind with `load_run`,
DILBERT's annotators) how the whole run is loaded, comes from its model kind (`sonodistill.serve.kinds`).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn

from sonodistill.config import RunConfig, load_config
from sonodistill.data.manifest import Manifest
from sonodistill.data.preprocess import PreprocessConfig
from sonodistill.errors import CheckpointError, ConfigError, SonoDistillError
from sonodistill.evaluation.mask_postprocess import check_mask_postprocess
from sonodistill.serve.kinds import ModelKind, find_model_kind, get_model_kind, served_classes

log = logging.getLogger(__name__)

EXPORT_META = "sonodistill-model.json"
WEIGHTS = "model.safetensors"
InputKind = Literal["video", "frame"]


def recipe_task(recipe: str) -> str:
    """Task of a recipe: its class attribute `task`, default 'classification' (imports the recipe module)."""
    from sonodistill.recipes import get_recipe

    return str(getattr(get_recipe(recipe), "task", "classification"))


def recipe_explainers(recipe: str) -> dict[str, Callable[..., torch.Tensor]]:
    """The recipe module's `EXPLAINERS` (name -> callable or 'module:function'), resolved; {} when absent."""
    from sonodistill.recipes import recipe_module

    found: dict[str, Any] = dict(getattr(recipe_module(recipe), "EXPLAINERS", {}) or {})
    out: dict[str, Callable[..., torch.Tensor]] = {}
    for name, fn in found.items():
        if isinstance(fn, str):
            mod, _, attr = fn.partition(":")
            fn = getattr(importlib.import_module(mod), attr)
        if not callable(fn):
            raise ConfigError(f"recipe {recipe!r}: EXPLAINERS[{name!r}] is not callable")
        out[str(name)] = fn
    return out


# ------------------------------------------------------------------------------------------- runners
class ProbabilityEnsemble(nn.Module):
    """Mean of the members' softmax over dim 1: `B x ...` -> `B x K [x H x W]` probabilities.

    One member: its softmax. With `temperatures` (one a member, `train.calibrate=temperature`), each member's
    logits are divided by its T first. This is also the module that `sonodistill export` writes.
    """

    def __init__(self, members: list[nn.Module], temperatures: list[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("ProbabilityEnsemble needs at least one member")
        if temperatures is not None and (len(temperatures) != len(members) or min(temperatures) <= 0):
            raise ValueError(f"ProbabilityEnsemble: {len(members)} members need as many positive temperatures, "
                             f"got {temperatures}")
        self.members = nn.ModuleList(members)
        self.register_buffer("inverse_temperatures", torch.tensor(
            [1.0 / t for t in temperatures] if temperatures is not None else [1.0] * len(members)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.members[0](x).float() * self.inverse_temperatures[0], dim=1)
        for i, m in enumerate(self.members[1:], start=1):
            probs = probs + torch.softmax(m(x).float() * self.inverse_temperatures[i], dim=1)
        return probs / len(self.members)


class EmbeddingConcat(nn.Module):
    """Pooled embeddings of the members, concatenated: `B x ...` -> `B x (M * D)` (M members of D dims each).

    A member returns a `StageOutputs` (its `pooled` is used) or a `B x D` tensor. Fold encoders pretrained
    separately live in different spaces, so they are concatenated rather than averaged; one member: its embedding.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("EmbeddingConcat needs at least one member")
        self.members = nn.ModuleList(members)

    @staticmethod
    def pooled(out: Any) -> torch.Tensor:
        """`B x D` embedding of one member's output (its `pooled` field when it has one)."""
        out = getattr(out, "pooled", out)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise SonoDistillError(f"features model: expected a B x D embedding (or an output with `pooled`), got "
                                   f"{type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}")
        return out.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pooled(m(x)) for m in self.members], dim=1)


class TorchRunner:
    """Runs a ProbabilityEnsemble in eval mode without gradients (float32 numpy in and out)."""

    backend = "torch"

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


class OnnxRunner:
    """ONNX Runtime CPU session; `threads` sets intra_op_num_threads (None: ONNX Runtime's default).

    spinning=False lets the worker threads sleep between calls, so decoding and preprocessing between
    windows get the cores (measured faster end to end on 2 cores, docs/bedside.md).
    """

    backend = "onnx"

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


class TorchScriptRunner(TorchRunner):
    backend = "torchscript"

    def __init__(self, path: Path) -> None:
        import warnings

        with warnings.catch_warnings():  # TorchScript is deprecated upstream (docs/bedside.md): ONNX is preferred
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
            module = torch.jit.load(str(path), map_location="cpu")
        super().__init__(module)


# ------------------------------------------------------------------------------------------- the model
@dataclass
class HeadCircumferenceModel:
    """How `predict` measures head circumference for a model trained on HC18-like items: the outline offset of its
    training masks (pixels; the mean of its members' `hc_calibration.json`), removed from each HC, and the range of
    the HCs (mm) in the data it was trained on, outside which a measurement is flagged."""

    outline_offset_px: float
    range_mm: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return {"outline_offset_px": self.outline_offset_px, "range_mm": list(self.range_mm)}

    @classmethod
    def from_json(cls, value: Any, where: Path) -> HeadCircumferenceModel:
        """From an export's metadata; CheckpointError naming `where` when a field is missing or not a number."""
        try:
            offset, low, high = (float(x) for x in (value["outline_offset_px"], *value["range_mm"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{where}: head_circumference must hold outline_offset_px and range_mm [low, high] "
                                  f"as numbers, got {value!r}") from exc
        if not all(math.isfinite(v) for v in (offset, low, high)) or not low <= high:
            raise CheckpointError(f"{where}: head_circumference values must be finite, low <= high: {value!r}")
        return cls(offset, (low, high))


@dataclass
class LoadedModel:
    """A model ready for `serve.predict`: how to preprocess, what it outputs, and a runner.

    runner: float32 `B x C x T x H x W` (video) or `B x C x H x W` (frame) -> the kind's output: probabilities
        `B x K [x H x W]`, or embeddings `B x E` for a features model.
    members: the torch inference models (empty for an export folder: no Grad-CAM there).
    classes: the run's classes; empty when the output is not per class (features, annotation).
    extra: kind-specific state; `extra["describe"]` (a dict) is added to `describe()`, `extra["warnings"]` (a list of
        texts) replaces the fold-ensemble warnings of `predict.ensemble_warnings`.
    mask_postprocess: a segmentation model's post-processing of its masks (`evaluation.mask_postprocess`), applied
        by `predict` after the runner, outside the exported graph.
    head_circumference: set for a head-circumference model (trained on HC18-like items: `pixel_size_mm` and an HC
        `target`): how `predict` measures HC (`HeadCircumferenceModel`); None: no HC is reported.
    head_circumference_unavailable: for a head-circumference model that cannot report HC, why (no calibration).
    """

    task: str
    classes: list[str]
    preprocess: PreprocessConfig
    num_frames: int
    input_kind: InputKind
    runner: Callable[[np.ndarray], np.ndarray]
    source: str
    backend: str
    member_names: list[str]
    members: list[nn.Module] = field(default_factory=list)
    cfg: RunConfig | None = None
    run_dir: Path | None = None
    recipe: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    mask_postprocess: str = "none"
    head_circumference: HeadCircumferenceModel | None = None
    head_circumference_unavailable: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Without batch: `1 x T x S x S` (video) or `1 x S x S` (frame)."""
        s = int(self.preprocess.size)
        return (1, self.num_frames, s, s) if self.input_kind == "video" else (1, s, s)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Run the model on a float32 batch: probabilities (ensemble mean of softmax), or a features model's
        embeddings `B x E`."""
        return self.runner(x)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (what predict/serve print as "model")."""
        return {"source": self.source, "task": self.task, "backend": self.backend, "members": self.member_names,
                "classes": self.classes, "input_kind": self.input_kind, "input_shape": list(self.input_shape),
                "preprocessing": asdict(self.preprocess), "recipe": self.recipe, **self.extra.get("describe", {}),
                **({"mask_postprocess": self.mask_postprocess} if self.mask_postprocess != "none" else {}),
                **({"head_circumference": self.head_circumference.to_json()}
                   if self.head_circumference is not None else {}),
                **({"head_circumference_unavailable": self.head_circumference_unavailable}
                   if self.head_circumference_unavailable is not None else {})}


def preprocess_config(cfg: RunConfig) -> PreprocessConfig:
    """The preprocessing training used, from the run's DataConfig (same as recipes.data.build_dataset)."""
    return PreprocessConfig.from_data(cfg.data)


def check_not_a_seeds_parent(run_dir: Path) -> None:
    """CheckpointError naming a seed to serve when `run_dir` is the parent of a `--seeds` run (config.yaml and
    seed_<s>/ runs, no models of its own)."""
    from sonodistill.config import is_seeds_parent, seed_run_dirs

    if is_seeds_parent(run_dir):
        seeds = seed_run_dirs(run_dir)
        raise CheckpointError(f"{run_dir} is a run of several seeds ({', '.join(p.name for p in seeds.values())}), "
                              f"each with its own models: serve one of them, e.g. {next(iter(seeds.values()))}")


def member_dirs(run_dir: Path, members: str = "auto") -> list[Path]:
    """Folders whose model.safetensors are served.

    'auto': final/ if present, else every fold_k/, else the run directory itself when it holds model.safetensors
    (one model for the whole run: dino's teacher backbone); 'final': final/ or that run-level model; 'folds'.
    """
    if members not in ("auto", "final", "folds"):
        raise ConfigError(f"members must be 'auto', 'final' or 'folds', got {members!r}")
    final = run_dir / "final"
    if members in ("auto", "final") and (final / WEIGHTS).is_file():
        return [final]
    folds = sorted((p for p in run_dir.glob("fold_*") if (p / WEIGHTS).is_file() and p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    run_level = (run_dir / WEIGHTS).is_file() and not folds
    if members in ("auto", "final") and run_level:
        return [run_dir]
    if members == "final":
        raise CheckpointError(f"{run_dir}: no final/{WEIGHTS} (train with --set train.final=true)")
    if not folds:
        raise CheckpointError(f"{run_dir}: no final/{WEIGHTS}, no fold_<k>/{WEIGHTS} and no {WEIGHTS}: "
                              "nothing to serve")
    return folds


def member_name(run_dir: Path, folder: Path) -> str:
    """How a served member is named: 'final', 'fold_<k>', or 'run' for the run directory's own model."""
    return "run" if folder == run_dir else folder.name


def build_inference_model(cfg: RunConfig, manifest: Manifest, task: str) -> nn.Module:
    """An untrained inference model with the run's architecture: recipe hook first, else the kind's builder."""
    from sonodistill.recipes import get_recipe

    hook = getattr(get_recipe(cfg.recipe), "build_inference_model", None)
    if hook is not None:
        return hook(cfg, manifest)
    kind = get_model_kind(task)
    if kind.build is None:
        raise ConfigError(f"task {task!r}: recipe {cfg.recipe!r} defines no build_inference_model(cfg, manifest) "
                          "and no builder is registered with register_model_kind")
    return kind.build(cfg, manifest)


def input_kind_of(model: nn.Module) -> InputKind:
    """'video' when the model, its backbone or its video encoder (DISCOVR) declares kind 'video', else 'frame'."""
    for part in (getattr(model, "backbone", None), model, getattr(model, "video", None)):
        kind = getattr(part, "kind", None)
        if kind is not None:
            return "video" if kind == "video" else "frame"
    return "frame"


def serves_flip_tta(cfg: RunConfig | None) -> bool:
    """True for a segmentation run with `recipe_options.flip_tta`: its predictions average the mirrored image's."""
    if cfg is None or recipe_task(cfg.recipe) != "segmentation":
        return False
    return cfg.recipe_options.get("flip_tta", False) is True  # the recipes' SegmentationOptions default: false


def served_mask_postprocess(cfg: RunConfig | None) -> str:
    """A segmentation run's `recipe_options.mask_postprocess` (checked), "none" for any other run."""
    if cfg is None or recipe_task(cfg.recipe) != "segmentation":
        return "none"
    return check_mask_postprocess(cfg.recipe_options.get("mask_postprocess", "none"))  # SegmentationOptions default


def run_head_circumference(manifest: Manifest, dirs: list[Path]) -> tuple[HeadCircumferenceModel | None, str | None]:
    """A head-circumference run's measurement for its served members and None; for a run whose items carry no HC
    (None, None); for one whose members lack `hc_calibration.json` (None, why)."""
    from sonodistill.evaluation.segmentation_report import has_head_circumference

    if not has_head_circumference(manifest):
        return None, None
    missing = [str(d / "hc_calibration.json") for d in dirs if not (d / "hc_calibration.json").is_file()]
    if missing:
        return None, (f"{missing[0]} is missing (trained before the outline calibration was saved): retrain, or "
                      "rescore the folds with benchmarks/seg_rescore.py, to report head circumferences")
    offsets = [float(json.loads((d / "hc_calibration.json").read_text())["outline_offset_px"]) for d in dirs]
    hc = manifest.table["target"].to_numpy(dtype=np.float64)
    hc = hc[np.isfinite(hc)]
    return HeadCircumferenceModel(float(np.mean(offsets)), (float(hc.min()), float(hc.max()))), None


def served_module(kind: ModelKind, members: list[nn.Module], cfg: RunConfig | None = None,
                  temperatures: list[float] | None = None) -> nn.Module:
    """The one module `predict` runs and `export` writes: the kind's `combine`, default `ProbabilityEnsemble` (with
    the members' `temperatures` when the run calibrated them); wrapped in `FlipAveraged` when the run `cfg` asks for
    flip test-time augmentation (`serves_flip_tta`)."""
    if temperatures is not None:
        if kind.combine is not None:
            raise CheckpointError(f"temperatures apply to class probabilities, not to the {kind.task} kind's output")
        module = ProbabilityEnsemble(members, temperatures)
    else:
        module = (kind.combine or ProbabilityEnsemble)(members)
    if serves_flip_tta(cfg):
        from sonodistill.models.segmentation import FlipAveraged

        module = FlipAveraged(module)
    return module.eval()


def member_temperatures(dirs: list[Path]) -> list[float] | None:
    """Each member's fitted temperature (`calibration.json`, `train.calibrate=temperature`), or None when none has
    one; some members with and some without is a CheckpointError naming them."""
    from sonodistill.recipes.trainer import CALIBRATION_FILE

    found = {d: d / CALIBRATION_FILE for d in dirs if (d / CALIBRATION_FILE).is_file()}
    if not found:
        return None
    if len(found) != len(dirs):
        missing = [str(d) for d in dirs if d not in found]
        raise CheckpointError(f"{', '.join(missing)}: no {CALIBRATION_FILE} where the other members have one (an "
                              "unfinished calibrated fold?): their probabilities would not be comparable")
    temperatures = []
    for d, path in found.items():
        try:
            t = float(json.loads(path.read_text(encoding="utf-8"))["temperature"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable temperature ({exc})") from exc
        if not t > 0:
            raise CheckpointError(f"{path}: temperature must be > 0, got {t}")
        temperatures.append(t)
    return temperatures


def load_run(run_dir: str | Path, members: str = "auto") -> LoadedModel:
    """Load a run directory: config.yaml + manifest.csv + final/ (or every fold_k/, or RUN/) weights, strictly.

    The recipe's inference model is built before any weights are looked for, so a recipe that has none (a
    scikit-learn baseline) refuses with its own message. A model kind with its own `load_run` (annotation: DILBERT's
    annotator folders) loads the run instead, before the recipe is asked for an inference model.
    """
    from sonodistill.recipes.trainer import load_weights

    run_dir = Path(run_dir)
    check_not_a_seeds_parent(run_dir)
    for name in ("config.yaml", "manifest.csv"):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir} is not a run directory: {name} is missing")
    cfg = load_config(run_dir / "config.yaml")
    manifest = Manifest.from_csv(run_dir / "manifest.csv")
    task = recipe_task(cfg.recipe)
    own = find_model_kind(task)
    if own is not None and own.load_run is not None:
        return own.load_run(run_dir, cfg, manifest, members)
    first = build_inference_model(cfg, manifest, task)  # a recipe without an inference model refuses here
    kind = get_model_kind(task)
    dirs = member_dirs(run_dir, members)
    models = []
    for i, d in enumerate(dirs):
        m = first if i == 0 else build_inference_model(cfg, manifest, task)
        try:
            load_weights(m, d / WEIGHTS)
        except RuntimeError as exc:  # torch reports shape mismatches as RuntimeError
            first_line = str(exc).strip().splitlines()[1:2] or [str(exc)[:200]]
            raise CheckpointError(f"{d / WEIGHTS}: does not match the model of config.yaml: "
                                  f"{first_line[0].strip()}") from exc
        models.append(m.eval())
    temperatures = member_temperatures(dirs)
    module = served_module(kind, models, cfg, temperatures)
    input_kind = input_kind_of(models[0])
    hc_model, no_hc = run_head_circumference(manifest, dirs) if task == "segmentation" else (None, None)
    if no_hc is not None:
        log.warning("%s: no head circumferences: %s", run_dir, no_hc)
    names = [member_name(run_dir, d) for d in dirs]
    log.info("loaded %s (%s, %d member(s): %s)", run_dir, task, len(dirs), ", ".join(names))
    return LoadedModel(task=task, classes=served_classes(kind, list(manifest.classes)),
                       preprocess=preprocess_config(cfg),
                       num_frames=int(cfg.data.num_frames) if input_kind == "video" else 1, input_kind=input_kind,
                       runner=TorchRunner(module), source=str(run_dir), backend="torch",
                       member_names=names, members=models, cfg=cfg, run_dir=run_dir,
                       recipe=cfg.recipe, extra={"describe": {
                           **({"flip_tta": True} if serves_flip_tta(cfg) else {}),
                           **({"temperatures": temperatures} if temperatures is not None else {})}},
                       mask_postprocess=served_mask_postprocess(cfg), head_circumference=hc_model,
                       head_circumference_unavailable=no_hc)


def read_export_meta(folder: str | Path) -> dict[str, Any]:
    """The export folder's sonodistill-model.json, checked for the fields `load_export` needs."""
    path = Path(folder) / EXPORT_META
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {EXPORT_META}: not an export folder")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    missing = [k for k in ("task", "classes", "preprocessing", "input_kind", "input_shape", "format", "file")
               if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {missing}")
    return meta


def load_export(folder: str | Path, threads: int | None = None, spinning: bool = False) -> LoadedModel:
    """Load an export folder (model.onnx via ONNX Runtime, or model.pt via TorchScript)."""
    folder = Path(folder)
    meta = read_export_meta(folder)
    file = folder / str(meta["file"])
    if not file.is_file():
        raise CheckpointError(f"{folder}: {meta['file']} named in {EXPORT_META} is missing")
    if meta["format"] == "onnx":
        runner: Callable[[np.ndarray], np.ndarray] = OnnxRunner(file, threads, spinning)
    elif meta["format"] == "torchscript":
        runner = TorchScriptRunner(file)
    else:
        raise CheckpointError(f"{folder}: unknown export format {meta['format']!r}")
    shape = list(meta["input_shape"])
    pre = PreprocessConfig(**meta["preprocessing"])
    kind: InputKind = "video" if meta["input_kind"] == "video" else "frame"
    served_kind = get_model_kind(str(meta["task"]))
    try:
        mask_postprocess = check_mask_postprocess(meta.get("mask_postprocess", "none"))  # absent before 2026-12-05
    except ConfigError as exc:
        raise CheckpointError(f"{folder / EXPORT_META}: {exc}") from exc
    hc = meta.get("head_circumference")
    hc_model = None if hc is None else HeadCircumferenceModel.from_json(hc, folder / EXPORT_META)
    no_hc = meta.get("head_circumference_unavailable")
    if no_hc is not None and not isinstance(no_hc, str):
        raise CheckpointError(f"{folder / EXPORT_META}: head_circumference_unavailable must be a text, got {no_hc!r}")
    # served_classes: exports of segmentation runs written before 2026-12-07 recorded the run's image labels
    return LoadedModel(task=str(meta["task"]), classes=served_classes(served_kind, list(meta["classes"])),
                       preprocess=pre,
                       num_frames=int(shape[2]) if kind == "video" else 1, input_kind=kind, runner=runner,
                       source=str(folder), backend=str(meta["format"]), member_names=list(meta.get("members", [])),
                       recipe=meta.get("recipe"),
                       extra={"export": meta,
                              "describe": {k: meta[k] for k in ("annotation", "temperatures") if k in meta}},
                       mask_postprocess=mask_postprocess, head_circumference=hc_model,
                       head_circumference_unavailable=no_hc)


def load_model(path: str | Path, members: str = "auto", threads: int | None = None) -> LoadedModel:
    """A run directory (has config.yaml) or an export folder (has sonodistill-model.json)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{path}: not a folder (expected a run directory or an export folder)")
    if (p / EXPORT_META).is_file():
        return load_export(p, threads)
    if threads is not None:
        torch.set_num_threads(int(threads))
    return load_run(p, members)
