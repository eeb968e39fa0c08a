"""The "annotation" model kind: a `dilbert` run directory through `predict`, `serve` and `export`.

A DILBERT run keeps its models as annotator folders (`RUN/final/export/<variant>/`, `RUN/fold_K/export/<variant>/`,
read by `serve/annotate.py`), not as `model.safetensors`, so this kind loads the run itself (`load_run`):

- which annotator: the final model's (`final/`, trained with `train.final=true`) when there is one, else the lowest
  fold's; the `student` variant when exported, else `teacher`, else `baseline`. Annotators are **not ensembled**:
  each fold's retriever ranks that fold's own training reports, so findings, description and nearest report come
  from one annotator, named in the JSON (`model.annotation`); `--members folds` on a run with several fold
  annotators is refused, and serving one fold of several gives a warning.
- what runs: `annotate.AnnotationProbabilities` (the image-only path: sigmoid per binary finding, softmax per
  categorical target) on T frames sampled at segment centres over the whole input, the annotator's own input
  (`sonodistill annotate` gives the same numbers). `export` writes that module; the description (knowledge graph)
  and the nearest training report (the retriever, PyTorch) stay in Python: the export folder carries a copy of the
  annotator folder for them (`annotator/`).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import CheckpointError, ConfigError, SonoDistillError
from sonodistill.serve.annotate import (FILES, NOT_ENSEMBLED, OPTIONAL_FILES, AnnotationProbabilities, Annotator,
                                        annotation_fields, annotation_member, load_annotator, output_names,
                                        retrieve_reports, sampled_input)
from sonodistill.data.sequences import sample_indices
from sonodistill.explain.occlusion import OutputProbability
from sonodistill.serve.kinds import OcclusionSpec, PredictOptions, PreparedInput, get_model_kind, register_model_kind
from sonodistill.serve.loading import LoadedModel, TorchRunner, served_module

TASK = "annotation"
TOP_K = 5  # training reports under retrieved_reports (as `sonodistill annotate`'s default)
EXPORT_FOLDER = "annotator"  # the export folder's copy of the annotator folder (description, nearest report)
NO_GRAD_CAM = ("Grad-CAM does not apply to DILBERT annotators: their findings are multi-label (a sigmoid per "
               "finding, not one class to explain) and come from a fusion transformer over two visual encoders "
               "(per-frame region tokens pooled to a g x g grid, plus a 3D clip token), not from one staged backbone "
               "and a classification head, which is what explain/gradcam.py differentiates (use --method occlusion)")


def annotation_info(ann: Annotator, member: str) -> dict[str, Any]:
    """What `model.annotation` says in predict's JSON (and sonodistill-model.json): the annotator served and its
    outputs."""
    return {"member": member, "variant": ann.info.get("role", ann.folder.name), "annotator": str(ann.folder),
            "ensembled": False, "note": NOT_ENSEMBLED, "threshold": ann.threshold, "graph": ann.graph.name,
            "findings": list(ann.spec.binary), "categorical": {k: list(v) for k, v in ann.spec.categorical.items()},
            "outputs": output_names(ann.spec), "num_frames": ann.num_frames,
            "architecture": {k: ann.info.get("fusion", {}).get(k) for k in ("dim", "layers", "heads", "frame_backbone",
                                                                           "frame_width", "clip_backbone",
                                                                           "clip_width", "frame_pretrained",
                                                                           "clip_pretrained")},
            "frame_sampling": "T frames at segment centres over the whole input (as in training); --stride and "
                              "--clip-mode do not apply"}


def load_annotation_run(run_dir: Path, cfg: RunConfig, manifest: Manifest, members: str = "auto") -> LoadedModel:
    """A dilbert run directory as a LoadedModel: the chosen annotator's `AnnotationProbabilities` (torch)."""
    member, folder, warnings = annotation_member(Path(run_dir), members)
    ann = load_annotator(folder)
    module = served_module(get_model_kind(TASK), [ann.annotator])
    # the annotator's input is pixel / 255 (sampled_input), whatever data.mean / data.std said: the served
    # preprocessing says so, and explain's windows (serve.predict._to_input) get the same numbers
    preprocess = replace(ann.preprocess, mean=0.0, std=1.0)
    return LoadedModel(task=TASK, classes=[], preprocess=preprocess, num_frames=ann.num_frames,
                       input_kind="video", runner=TorchRunner(module), source=str(run_dir), backend="torch",
                       member_names=[member], members=[ann.annotator], cfg=cfg, run_dir=Path(run_dir),
                       recipe=cfg.recipe, extra={"annotator": ann, "warnings": warnings,
                                                 "describe": {"annotation": annotation_info(ann, member)}})


def one_annotator(members: list[nn.Module]) -> nn.Module:
    """The kind's `combine`: the one annotator's `AnnotationProbabilities` (annotators are not ensembled)."""
    if len(members) != 1:
        raise ConfigError(f"annotation: {len(members)} annotators given; {NOT_ENSEMBLED}")
    return AnnotationProbabilities(members[0])


def annotator_of(model: LoadedModel) -> Annotator:
    """The annotator behind `model`: loaded with the run, or (an export folder) from its `annotator/` copy."""
    ann = model.extra.get("annotator")
    if ann is None:
        sub = (model.extra.get("export", {}).get("annotation") or {}).get("folder")
        if not sub:
            raise CheckpointError(f"{model.source}: an annotation model without its annotator folder (the "
                                  "description and the nearest report need it); export the run again")
        ann = load_annotator(Path(model.source) / sub)
        model.extra["annotator"] = ann
    return ann


# ------------------------------------------------------------------------------------------- predict
def annotate_item(model: LoadedModel, item: PreparedInput, options: PredictOptions) -> dict[str, Any]:
    """Findings (probability, present at the annotator's threshold), categorical predictions, the description and
    the nearest training reports of one input: the fields of `sonodistill annotate`, from the served model."""
    ann = annotator_of(model)
    x = sampled_input(item.clip, model.num_frames)
    probs = model.probabilities(x)
    if probs.ndim != 2 or probs.shape[0] != 1:
        raise SonoDistillError(f"annotation model output has shape {probs.shape}, expected 1 x outputs")
    fields = annotation_fields(ann, probs[0], ann.threshold)
    with torch.no_grad():
        retrieved = retrieve_reports(ann, torch.from_numpy(np.ascontiguousarray(x)), TOP_K)
    return {"threshold": ann.threshold, "clip_mode": "uniform", **fields,
            "nearest_report": retrieved[0] if retrieved else None, "retrieved_reports": retrieved,
            "reports_ranked_by": ann.report_ranking}


# ------------------------------------------------------------------------------------------- explain
def annotation_score(member: nn.Module, reference: torch.Tensor) -> nn.Module:
    """Occlusion score of an annotator: its output probabilities (a sigmoid per finding, softmax per category)."""
    return OutputProbability(AnnotationProbabilities(member))


def annotation_targets(model: LoadedModel, result: dict[str, Any]) -> tuple[list[str], int]:
    """(output names: the findings, then `category=class`; the most probable finding, or output 0 without one)."""
    names = output_names(annotator_of(model).spec)
    findings = [f["probability"] for f in result.get("findings", [])]
    return names, int(np.argmax(findings)) if findings else 0


def annotation_windows(model: LoadedModel, n: int) -> list[np.ndarray]:
    """The annotator's one input: T frames at segment centres over the whole sequence (`sampled_input`)."""
    return [sample_indices(n, model.num_frames, None)]


# ------------------------------------------------------------------------------------------- export
def export_annotator_files(model: LoadedModel, folder: Path) -> dict[str, Any]:
    """Copy the annotator folder into `folder/annotator/` (knowledge graph name, tokenizer, retriever, training
    reports: the description and the nearest report stay in Python) and describe it for sonodistill-model.json."""
    ann = annotator_of(model)
    dest = Path(folder) / EXPORT_FOLDER
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES + OPTIONAL_FILES:
        if (ann.folder / name).is_file():
            shutil.copy2(ann.folder / name, dest / name)
    info = annotation_info(ann, model.member_names[0] if model.member_names else "?")
    info.update({"folder": EXPORT_FOLDER, "annotator": str(ann.folder.resolve()),
                 "in_graph": "the finding probabilities (output `probabilities`, columns `outputs`)",
                 "in_python": f"presence at the threshold, the description (knowledge graph {ann.graph.name!r}) and "
                              f"the nearest training reports (the PyTorch retriever in {EXPORT_FOLDER}/)"})
    return {"annotation": info}


register_model_kind(
    TASK, annotate_item, build=None, combine=one_annotator, per_class=False, heatmaps=False,
    output_doc="B x (F + sum K_c): the sigmoid probability of each binary finding, then the softmax probabilities of "
               "each categorical target (column names: annotation.outputs)",
    load_run=load_annotation_run, export_extras=export_annotator_files,
    no_heatmaps_because=NO_GRAD_CAM,
    occlusion=OcclusionSpec(annotation_score, targets=annotation_targets, windows=annotation_windows))
