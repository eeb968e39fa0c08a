"""Automatic annotation with a DILBERT annotator: findings with probabilities, a description composed from the
predicted entities through the knowledge graph, and the nearest training report (CMM retrieval), as JSON.

An annotator folder (written by the `dilbert` recipe under `RUN/fold_K/export/<variant>/` and `RUN/final/...`)
holds `dilbert.json`, `tokenizer.json`, `annotator.safetensors`, `retriever.safetensors`, `reports.json` and
(exports since 2026-12-07) `report_bank.json`: each training report's mean and standard deviation of CMM logits
over the training sequences, with which the reports can be ranked by a bank-normalised score instead of the raw
match probability (`report_ranking` in dilbert.json, or `--ranking`; see docs/dilbert.md).

The same annotation is what `sonodistill predict | serve | export` give for a dilbert run directory (the
"annotation" model kind, `serve/annotation.py`): `AnnotationProbabilities` is the module they run and export, and
`annotation_fields` turns its output into findings and a description for both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sonodistill.data.preprocess import PreprocessConfig, preprocess_clip
from sonodistill.data.sequences import AnnotationSpec, sample_indices
from sonodistill.data.text import TextTokenizer
from sonodistill.errors import CheckpointError, ConfigError, DataError, SonoDistillError
from sonodistill.evaluation.annotation import normalised_by
from sonodistill.knowledge import KnowledgeGraph, load_graph
from sonodistill.models.fusion import (ANNOTATOR_FORMAT, REPORT_BANK_FILE, REPORT_RANKINGS, DILBERTInference,
                                       FusionConfig, report_token_ids)

log = logging.getLogger(__name__)

FILES = ("dilbert.json", "tokenizer.json", "annotator.safetensors", "retriever.safetensors", "reports.json")
OPTIONAL_FILES = (REPORT_BANK_FILE,)  # present in exports since 2026-12-07
VARIANT_ORDER = ("student", "teacher", "baseline")  # the variant served from a member folder: first one exported
NOT_ENSEMBLED = ("DILBERT annotators are not ensembled: the findings, the description and the nearest training "
                 "report come from one annotator (each fold's retriever ranks that fold's own training reports)")


@dataclass
class Annotator:
    """A loaded annotator folder."""

    folder: Path
    info: dict[str, Any]
    spec: AnnotationSpec
    graph: KnowledgeGraph
    tokenizer: TextTokenizer
    annotator: DILBERTInference
    retriever: DILBERTInference
    reports: list[str]
    preprocess: PreprocessConfig
    num_frames: int
    max_text_len: int
    threshold: float
    report_ids: torch.Tensor                   # the reports' token ids `R x max_text_len`, tokenised once at load
    report_bank: dict[str, Any] | None = None  # report_bank.json: per-report "mean" / "std" of CMM logits
    report_ranking: str = "raw"                # what reports are ranked by by default: "raw" or "bank"


def resolve_annotator(path: str | Path) -> Path:
    """The annotator folder for CKPT: the folder itself (or a file in it), a member folder's `export/<variant>`
    (`RUN/final`, `RUN/fold_K`; `annotator_folder`), or a run directory's served annotator, as `predict` chooses it
    (`annotation_member`: final/, else the lowest fold's, with a warning when the run has others); anything else is
    a CheckpointError saying what was looked for."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    if (p / "dilbert.json").is_file():
        return p
    member = annotator_folder(p)
    if member is not None:
        return member
    try:
        _, folder, warnings = annotation_member(p)
    except CheckpointError:
        raise CheckpointError(f"{path}: no DILBERT annotator here (looked for dilbert.json in it, in "
                              "export/<variant>/, final/export/<variant>/ and fold_K/export/<variant>/)") from None
    for warning in warnings:
        log.warning("%s", warning)
    return folder


def annotator_folder(member_dir: Path) -> Path | None:
    """The served annotator folder of `RUN/final` or `RUN/fold_K`: `export/<variant>` with a dilbert.json, the first
    of VARIANT_ORDER exported (then any other, by name); None when there is none."""
    export = member_dir / "export"
    found = {p.name: p for p in sorted(export.glob("*")) if (p / "dilbert.json").is_file()} if export.is_dir() else {}
    for variant in VARIANT_ORDER:
        if variant in found:
            return found[variant]
    return next(iter(found.values()), None)


def annotation_member(run_dir: Path, members: str = "auto") -> tuple[str, Path, list[str]]:
    """(member name, annotator folder, warnings) for a dilbert run directory.

    'auto': final/ if it has an annotator, else the lowest fold's (a warning when the run has other fold annotators);
    'final': final/ or an error; 'folds': the fold annotator when there is exactly one, else a ConfigError (annotators
    are not ensembled)."""
    if members not in ("auto", "final", "folds"):
        raise ConfigError(f"members must be 'auto', 'final' or 'folds', got {members!r}")
    final = annotator_folder(run_dir / "final")
    if members in ("auto", "final") and final is not None:
        return "final", final, []
    if members == "final":
        raise CheckpointError(f"{run_dir}: no final/export/<variant>/dilbert.json: no final annotator "
                              "(train with --set train.final=true)")
    folds = sorted(((int(p.name[5:]), p.name, f) for p in run_dir.glob("fold_*")
                    if p.name[5:].isdigit() and (f := annotator_folder(p)) is not None))
    if not folds:
        raise CheckpointError(f"{run_dir}: no annotator folder (final/export/<variant>/dilbert.json or "
                              "fold_<k>/export/<variant>/dilbert.json): nothing to serve (unfinished training?)")
    names = [name for _, name, _ in folds]
    _, name, folder = folds[0]
    if len(folds) > 1 and members == "folds":
        raise ConfigError(f"--members folds asks for the {len(folds)} fold annotators of {run_dir} "
                          f"({', '.join(names)}), but {NOT_ENSEMBLED}. Use --members auto (final/ when the run was "
                          f"trained with train.final=true, else {name}), or `sonodistill annotate "
                          "RUN/fold_K/export/student INPUT` for fold K")
    warnings = []
    if len(folds) > 1:
        warnings.append(f"{run_dir}: one annotator served, {name} ({folder.name}), of the run's {len(folds)} fold "
                        f"annotators ({', '.join(names)}): {NOT_ENSEMBLED}. `sonodistill annotate "
                        "RUN/fold_K/export/student INPUT` annotates with fold K; --set train.final=true trains one "
                        "final annotator on all the data")
    return name, folder, warnings


def load_annotator(path: str | Path) -> Annotator:
    """Load an annotator folder (strict weight loading; a missing or damaged file names itself)."""
    from sonodistill.recipes.trainer import load_weights

    folder = resolve_annotator(path)
    for name in FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete annotator, {name} is missing")
    try:
        info = json.loads((folder / "dilbert.json").read_text())
        reports = json.loads((folder / "reports.json").read_text())
        bank = json.loads((folder / REPORT_BANK_FILE).read_text()) if (folder / REPORT_BANK_FILE).is_file() else None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder}: damaged JSON ({exc})") from exc
    if info.get("format") != ANNOTATOR_FORMAT:
        raise CheckpointError(f"{folder}/dilbert.json: format {info.get('format')!r}, expected {ANNOTATOR_FORMAT!r}")
    ranking = str(info.get("report_ranking", "raw"))  # earlier exports ranked by the raw probability
    check_report_bank(folder, bank, len(reports), ranking)
    fcfg = FusionConfig.from_dict(info["fusion"])
    models = []
    for name in ("annotator", "retriever"):
        m = DILBERTInference.build(fcfg)
        load_weights(m, folder / f"{name}.safetensors")
        models.append(m.eval())
    spec = AnnotationSpec.from_dict(info["spec"])
    graph, tokenizer = load_graph(info.get("graph", spec.graph)), TextTokenizer.load(folder / "tokenizer.json")
    reports, max_len = [str(r) for r in reports], int(info["max_text_len"])
    report_ids = report_token_ids(tokenizer, graph, reports, max_len)
    return Annotator(folder, info, spec, graph, tokenizer, models[0], models[1], reports,
                     PreprocessConfig(**info["preprocess"]), int(info["num_frames"]), max_len,
                     float(info.get("threshold", 0.5)), report_ids, bank, ranking)


def check_report_bank(folder: Path, bank: dict[str, Any] | None, n_reports: int, ranking: str) -> None:
    """CheckpointError unless the annotator's ranking is known and, where it has a report bank (needed for
    'bank'), one finite mean and one positive standard deviation per report."""
    if ranking not in REPORT_RANKINGS:
        raise CheckpointError(f"{folder}/dilbert.json: report_ranking {ranking!r}, expected one of {REPORT_RANKINGS}")
    if bank is None:
        if ranking == "bank":
            raise CheckpointError(f"{folder}: incomplete annotator, {REPORT_BANK_FILE} is missing (its dilbert.json "
                                  "ranks reports by the bank-normalised score)")
        return
    try:
        mean, std = np.asarray(bank["mean"], dtype=np.float64), np.asarray(bank["std"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder}/{REPORT_BANK_FILE}: damaged ({exc!r}): expected lists 'mean' and "
                              "'std'") from exc
    if mean.shape != (n_reports,) or std.shape != (n_reports,):
        raise CheckpointError(f"{folder}/{REPORT_BANK_FILE}: {mean.size} means and {std.size} standard deviations "
                              f"for {n_reports} reports in reports.json")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"{folder}/{REPORT_BANK_FILE}: a mean is not finite or a standard deviation is not "
                              "positive")


class AnnotationProbabilities(nn.Module):
    """An annotator's image-only path as probabilities: clip `B x 1 x T x S x S` -> `B x (F + sum K_c)`, the sigmoid
    of each binary finding, then the softmax of each categorical target (`output_names` order).

    The module `predict` runs and `export` writes for a dilbert run (the text stream is the empty `[CLS] [SEP]`)."""

    def __init__(self, annotator: nn.Module) -> None:
        super().__init__()
        self.annotator = annotator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.annotator.annotate(x)
        return torch.cat([torch.sigmoid(out.binary.float())]
                         + [torch.softmax(c.float(), dim=1) for c in out.categorical], dim=1)


def output_names(spec: AnnotationSpec) -> list[str]:
    """Column names of `AnnotationProbabilities`' output: the binary findings, then `target=class` per category."""
    return list(spec.binary) + [f"{name}={c}" for name, classes in spec.categorical.items() for c in classes]


def sampled_input(clip: np.ndarray, num_frames: int) -> np.ndarray:
    """A preprocessed uint8 clip `n x S x S` -> the model input, float32 `1 x 1 x T x S x S`: T frames at segment
    centres over the whole sequence (as training and evaluation sample them), pixel / 255."""
    idx = sample_indices(len(clip), num_frames, None)
    return (clip[idx].astype(np.float32) / 255.0)[None, None]


def clip_tensor(frames: np.ndarray, ann: Annotator) -> torch.Tensor:
    """Raw uint8 frames `T x H x W` -> the model input `1 x 1 x T' x S x S` (training preprocessing, uniform frames)."""
    clip = preprocess_clip(np.ascontiguousarray(frames), ann.preprocess)
    return torch.from_numpy(sampled_input(clip, ann.num_frames))


def annotation_fields(ann: Annotator, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """One clip's `AnnotationProbabilities` output (`F + sum K_c` numbers) -> findings (probability, present at
    `threshold`), categorical predictions, the present entities and the description composed from them."""
    probs = np.asarray(probs, dtype=np.float64).ravel()
    n_binary = len(ann.spec.binary)
    width = n_binary + sum(len(c) for c in ann.spec.categorical.values())
    if probs.shape != (width,):
        raise SonoDistillError(f"annotator output has {probs.size} numbers, expected {width} "
                               f"({n_binary} findings and the categorical targets' classes)")
    findings = []
    for entity, column, p in zip(ann.spec.binary, ann.spec.columns, probs[:n_binary]):
        findings.append({"name": entity, "label": ann.graph.entities[entity].display if entity in ann.graph.entities
                         else entity, "column": column, "probability": round(float(p), 6),
                         "present": bool(p >= threshold)})
    categorical, extras, start = [], {}, n_binary
    for cname, classes in ann.spec.categorical.items():
        p = probs[start:start + len(classes)]
        start += len(classes)
        best = classes[int(np.argmax(p))]
        categorical.append({"name": cname, "prediction": best,
                            "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}})
        extras[cname] = best
    present = [f["name"] for f in findings if f["present"] and f["name"] in ann.graph.entities]
    return {"findings": findings, "categorical": categorical, "entities": present,
            "description": ann.graph.describe(present, extras=extras)}


@torch.no_grad()
def annotate_frames(ann: Annotator, frames: np.ndarray, name: str = "", top_k: int = 5,
                    threshold: float | None = None, ranking: str | None = None) -> dict[str, Any]:
    """The annotation JSON (a dict) for one sequence of raw frames."""
    thr = ann.threshold if threshold is None else float(threshold)
    x = clip_tensor(frames, ann)
    fields = annotation_fields(ann, AnnotationProbabilities(ann.annotator)(x)[0].numpy(), thr)
    ranked_by = report_ranking_of(ann, ranking)
    retrieved = retrieve_reports(ann, x, top_k, ranked_by)
    return {
        "input": name, "frames": int(len(frames)),
        "model": {"folder": str(ann.folder), "role": ann.info.get("role"), "graph": ann.graph.name,
                  "threshold": thr},
        **fields, "nearest_report": retrieved[0] if retrieved else None, "retrieved_reports": retrieved,
        "reports_ranked_by": ranked_by,
    }


def report_ranking_of(ann: Annotator, ranking: str | None = None) -> str:
    """The ranking asked for (None: the annotator's own), checked: 'bank' needs the annotator's report bank."""
    chosen = ann.report_ranking if ranking is None else ranking
    if chosen not in REPORT_RANKINGS:
        raise ConfigError(f"report ranking must be one of {REPORT_RANKINGS}, got {chosen!r}")
    if chosen == "bank" and ann.report_bank is None:
        raise ConfigError(f"{ann.folder}: ranking by the bank-normalised score needs {REPORT_BANK_FILE}, which this "
                          "annotator lacks (exported by an earlier sonodistill): train it again, or rank 'raw'")
    return chosen


def retrieve_reports(ann: Annotator, x: torch.Tensor, top_k: int = 5, ranking: str | None = None
                     ) -> list[dict[str, Any]]:
    """The training reports ranked for clip `x` (`1 x 1 x T x S x S`), top `top_k`: by the retriever's CMM
    probability ('raw', `score`) or by that score's logit z-scored against the training sequences ('bank',
    `bank_score`: `report_bank.json`, the same normalisation as the recall `seq2text_bank`). Each entry carries
    `score`, and `bank_score` when the annotator has a bank."""
    ranked_by = report_ranking_of(ann, ranking)
    if not ann.reports or top_k < 1:
        return []
    scores = ann.retriever.match_scores(x, ann.report_ids)[0].numpy()
    bank = (normalised_by(scores[None], ann.report_bank["mean"], ann.report_bank["std"])[0]
            if ann.report_bank is not None else None)
    key = bank if ranked_by == "bank" else scores
    order = np.argsort(-key, kind="stable")[:top_k]
    return [{"text": ann.reports[i], "score": round(float(scores[i]), 6)}
            | ({"bank_score": round(float(bank[i]), 6)} if bank is not None else {}) for i in order]


def annotate_path(ann: Annotator, path: str | Path, top_k: int = 5, threshold: float | None = None,
                  ranking: str | None = None) -> dict[str, Any]:
    """Annotate a video / DICOM file or a folder of frames (one sequence, frames sorted by file name)."""
    from sonodistill.serve.predict import read_input

    p = Path(path)
    if not p.exists():
        raise DataError(p, "file not found")
    video = read_input(p)
    return annotate_frames(ann, video.frames, str(p), top_k, threshold, ranking)
