"""Export a run's inference model to ONNX or TorchScript, with sonodistill-model.json and MODEL_CARD.md.

The exported module is the one `sonodistill predict` runs (`loading.served_module`): input `B x 1 x T x S x S`
(video) or `B x 1 x S x S` (frame), dynamic batch axis. Classifiers and segmentation models: output
`probabilities` = softmax, averaged over the members when the run has no final/ model. Features models (DINO,
DISCOVR encoders): output `embedding` `B x E`, the members' pooled embeddings concatenated. Annotation models
(DILBERT): output `probabilities` `B x (F + sum K_c)`, one annotator's finding probabilities; the kind's
`export_extras` adds the annotator files the description and the nearest report need (they stay in Python).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonodistill import __version__
from sonodistill.errors import ConfigError, SonoDistillError
from sonodistill.provenance import read_environment
from sonodistill.serve.kinds import get_model_kind
from sonodistill.serve.loading import (
    EXPORT_META,
    LoadedModel,
    OnnxRunner,
    load_run,
    served_module,
    serves_flip_tta,
)
from sonodistill.serve.model_card import write_model_card

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
DEFAULT_OPSET = 17
TOLERANCE = 1e-4


def _example(model: LoadedModel, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *model.input_shape), generator=g)


def _export_onnx(module: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, output: str) -> None:
    import onnx

    with warnings.catch_warnings():
        # torch >= 2.9 flags the TorchScript-based exporter as legacy; the dynamo one needs onnxscript (no dependency)
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\..*")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=[output], do_constant_folding=True,
                          dynamic_axes={"input": {0: "batch"}, output: {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(path)))


def _export_torchscript(module: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.*")
        traced = torch.jit.trace(module, (x,), check_trace=False)
        torch.jit.save(traced, str(path))


def check_export(module: torch.nn.Module, folder: Path, meta: dict[str, Any], x: torch.Tensor) -> float:
    """Max |exported - PyTorch| on `x` (a batch size other than the tracing one); raises above TOLERANCE."""
    from sonodistill.serve.loading import TorchScriptRunner

    with torch.inference_mode():
        ref = module(x).numpy()
    file = folder / meta["file"]
    runner = OnnxRunner(file) if meta["format"] == "onnx" else TorchScriptRunner(file)
    got = runner(x.numpy())
    if got.shape != ref.shape:
        raise SonoDistillError(f"{file}: output shape {got.shape} differs from PyTorch's {ref.shape}")
    err = float(np.abs(got - ref).max())
    if not err <= TOLERANCE:
        raise SonoDistillError(f"{file}: outputs differ from PyTorch by {err:.2e} (> {TOLERANCE:g})")
    return err


def export_model(run_dir: str | Path, out_dir: str | Path | None = None, fmt: str = "onnx",
                 opset: int = DEFAULT_OPSET, members: str = "auto") -> Path:
    """Write RUN/export-<fmt>/ (or `out_dir`): model file, sonodistill-model.json, MODEL_CARD.md; returns the folder.

    The export is checked against PyTorch on a random batch (|difference| <= 1e-4, else an error).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {sorted(FORMATS)}")
    run_dir = Path(run_dir)
    model = load_run(run_dir, members)
    kind = get_model_kind(model.task)
    module = served_module(kind, model.members, model.cfg)
    folder = Path(out_dir) if out_dir is not None else run_dir / f"export-{fmt}"
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / FORMATS[fmt]
    x = _example(model, 2)
    t0 = time.perf_counter()
    if fmt == "onnx":
        _export_onnx(module, x, file, opset, kind.output)
    else:
        _export_torchscript(module, x, file)
    meta: dict[str, Any] = {
        "format": fmt,
        "file": file.name,
        "opset": opset if fmt == "onnx" else None,
        "task": model.task,
        "classes": model.classes,
        "input_kind": model.input_kind,
        "input_shape": [None, *model.input_shape],
        "input_name": "input",
        "output_name": kind.output,
        "output": kind.output_doc,
        "normalisation": "float32 = uint8 / 255 (after preprocessing)",
        "preprocessing": asdict(model.preprocess),
        "num_frames": model.num_frames,
        "members": model.member_names,
        "recipe": model.recipe,
        "flip_tta": serves_flip_tta(model.cfg),  # the exported module averages the mirrored image's output
        # each member's logits / T in the graph (train.calibrate=temperature), else absent
        **({"temperatures": model.extra["describe"]["temperatures"]}
           if "temperatures" in model.extra.get("describe", {}) else {}),
        "mask_postprocess": model.mask_postprocess,  # applied by predict after the graph (not in it)
        **({"head_circumference": model.head_circumference.to_json()}  # how predict measures HC
           if model.head_circumference is not None else {}),
        **({"head_circumference_unavailable": model.head_circumference_unavailable}
           if model.head_circumference_unavailable is not None else {}),
        "source_run": str(run_dir.resolve()),
        "trained_with": {name: env for name in model.member_names  # each member's fold_K|final/environment.json
                         if (env := read_environment(run_dir / name)) is not None},
        "sonodistill_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if kind.export_extras is not None:
        meta.update(kind.export_extras(model, folder))
    meta["max_abs_diff_vs_torch"] = check_export(module, folder, meta, _example(model, 3, seed=1))
    (folder / EXPORT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    write_model_card(run_dir, folder / "MODEL_CARD.md", meta)
    log.info("exported %s to %s in %.1f s (max |diff| vs PyTorch %.1e)", run_dir, file, time.perf_counter() - t0,
             meta["max_abs_diff_vs_torch"])
    return folder
