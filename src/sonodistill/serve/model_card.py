"""A Markdown model card from a run directory: data, folds, metrics (mean ± std), intended use and limits."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from sonodistill import __version__
from sonodistill.config import load_config
from sonodistill.data.manifest import Manifest
from sonodistill.provenance import environment_differences

POSTPROCESS_NOTES = {  # what each mask post-processing adds to "largest foreground component, holes filled"
    "largest_nonempty": "; an empty mask becomes the region around the peak foreground probability",
    "ellipse": ", then replaced by the filled least-squares ellipse of its outline",
}
METRIC_ORDER = ["accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"]


def _fmt(stat: Any) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None or not math.isfinite(float(stat["mean"])):
        return "n/a"
    std = stat.get("std") if stat.get("n", 2) > 1 else None  # one fold has no spread over folds
    text = f"{float(stat['mean']):.3f}" + (f" ± {float(std):.3f}" if std is not None else "")
    if stat.get("n_nan"):
        text += f" ({stat['n_nan']} fold(s) n/a)"
    return text


def _protocol_line(run_dir: Path, n_folds: int, n_items: Any, per_class: bool, units: str | None) -> str:
    """What the metrics were measured on: every fold of the split, or the test folds run (`train.fold`)."""
    folds_file = run_dir / "folds.json"
    split = len(json.loads(folds_file.read_text(encoding="utf-8"))) if folds_file.is_file() else n_folds
    if n_folds < split:
        cfg = load_config(run_dir / "config.yaml")
        which = f"test fold {cfg.train.fold}" if cfg.train.fold is not None else f"{n_folds} test fold(s)"
        text = f"Grouped, stratified {split}-fold split, {which} only ({n_items} test predictions)"
    else:
        text = f"Grouped, stratified {n_folds}-fold cross-validation ({n_items} test predictions)"
    text += "; mean ± std over folds (std with ddof=1)" if n_folds > 1 else "; one fold, so no spread over folds"
    if per_class:
        text += "; sensitivity to ROC-AUC are macro averages over classes"
    if units:
        text += f"; distances (hd95, asd) in {units}"
    return text + ". From `metrics.json`."


def _metrics_section(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return ["No `metrics.json` in the run directory: this model has not been evaluated by cross-validation.", ""]
    payload = json.loads(path.read_text(encoding="utf-8"))
    summaries = {"": payload["summary"]} if "summary" in payload else dict(payload.get("models", {}))
    if "models" in payload:
        summaries = {m: r.get("summary", {}) for m, r in summaries.items()}
    lines = []
    n_folds = payload.get("n_folds")
    n_items = payload.get("n_items")
    per_class = any("sensitivity" in summary for summary in summaries.values())
    if n_folds:
        lines += [_protocol_line(run_dir, int(n_folds), n_items, per_class, payload.get("units")), ""]
    for name, summary in summaries.items():
        if name:
            lines += [f"**{name}**", ""]
        keys = [k for k in METRIC_ORDER if k in summary] + sorted(k for k in summary if k not in METRIC_ORDER
                                                                    and "/" not in k)
        header = "| metric | mean ± std |" if (n_folds or 0) > 1 else "| metric | value |"
        lines += [header, "|---|---|"] + [f"| {k} | {_fmt(summary[k])} |" for k in keys] + [""]
    if (run_dir / "report.md").is_file():
        lines += [("Per-class metrics, confusion matrix and ROC curves" if per_class else "The full report")
                  + ": `report.md` in the source run directory.", ""]
    return lines


def _folds_section(run_dir: Path, manifest: Manifest) -> list[str]:
    path = run_dir / "folds.json"
    if not path.is_file():
        return ["No `folds.json`: fold assignment unknown.", ""]
    folds = json.loads(path.read_text(encoding="utf-8"))
    lines = [f"{len(folds)} folds split by `group` (no group in both the training and the test part of a fold):", "",
             "| fold | train items | test items | test groups |", "|---|---|---|---|"]
    for f in folds:
        lines.append(f"| {f['fold']} | {len(f['train'])} | {len(f['test'])} | {len(f.get('test_groups', []))} |")
    return lines + [""]


def _software_line(trained_with: dict[str, dict[str, Any]]) -> str:
    """One line for the members' software records: sonodistill, code digest, torch (and whether members differ)."""
    first = next(iter(trained_with.values()))
    git = first.get("git") or {}
    code = (f"commit {git['commit'][:10]}{' with local changes' if git.get('dirty') else ''}, " if git.get("commit")
            else "") + f"source sha256 {str(first.get('source_sha256'))[:12]}"
    same = all(environment_differences(first, r) == [] for r in trained_with.values())
    return (f"sonodistill {first.get('sonodistill')} ({code}), torch {(first.get('torch') or {}).get('version')}, "
            f"Python {first.get('python')}" + ("" if same else "; **the members were trained with different "
                                               "software**"))


def model_card(run_dir: str | Path, export_meta: dict[str, Any] | None = None) -> str:
    """The model card text for a run directory (and the export it accompanies, if any)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    manifest = Manifest.from_csv(run_dir / "manifest.csv")
    meta = export_meta or {}
    counts = manifest.class_counts()
    n_groups = len(set(manifest.groups.tolist()))
    members = meta.get("members") or []
    shape = [s for s in meta.get("input_shape", []) if s is not None]  # export meta: [None (batch), C, ...]
    annotation = meta.get("annotation")
    arch = (annotation or {}).get("architecture") or {}
    model_line = (f"- Task: annotation; recipe `{cfg.recipe}`; annotator: fusion encoder of dim {arch.get('dim')}, "
                  f"{arch.get('layers')} layers, {arch.get('heads')} heads, on frame encoder `{arch.get('frame_backbone')}` "
                  f"(width {arch.get('frame_width')}) and clip encoder `{arch.get('clip_backbone')}` (width "
                  f"{arch.get('clip_width')})." if annotation else
                  f"- Task: {meta.get('task', 'classification')}; recipe `{cfg.recipe}`; backbone `{cfg.model.backbone}` "
                  f"(width {cfg.model.width}, norm {cfg.model.norm}).")
    lines = [
        f"# Model card: {cfg.name}",
        "",
        "**Research use only. Not a medical device:** not cleared or approved for diagnosis, triage or any "
        "clinical decision. Outputs must not replace the judgement of a qualified clinician.",
        "",
        "## Model",
        "",
        model_line,
        f"- Training started from: {_start_line(cfg, annotation, arch)}.",
        f"- Input: {meta.get('input_kind', '?')} model, tensor `B x {' x '.join(str(s) for s in shape)}`"
        " (float32, grayscale, pixel / 255).",
    ]
    if annotation:
        lines += _annotation_model_lines(annotation)
    else:
        lines += [
            f"- Output: `probabilities` (softmax; mean over {len(members) or '?'} member model(s): "
            f"{', '.join(members) if members else 'n/a'}).",
            f"- {'Mask classes' if meta.get('task') == 'segmentation' else 'Classes'} (output order): "
            f"{', '.join(f'`{c}`' for c in meta.get('classes', manifest.classes)) or 'none'}.",
        ]
    if meta.get("temperatures"):
        lines.append("- Calibration: temperature scaling in the graph, each member's logits divided by its T ("
                     + ", ".join(f"{name} {t:.3f}" for name, t in zip(members, meta["temperatures"]))
                     + "), fitted by log-likelihood on a held-out share of that member's training rows "
                     "(`calibration.json` in its folder).")
    if meta.get("flip_tta"):
        lines.append("- Test-time augmentation: the output averages the image's and its mirror's (in the graph).")
    if meta.get("mask_postprocess", "none") != "none":
        lines.append(f"- Mask post-processing `{meta['mask_postprocess']}` (largest foreground component, holes "
                     "filled" + POSTPROCESS_NOTES.get(meta["mask_postprocess"], "")
                     + "): applied by `sonodistill predict` after the graph; **not in the exported file**.")
    if isinstance(meta.get("head_circumference"), dict):
        lines.append("- Head circumference: `sonodistill predict` reports it in mm where the pixel size is known "
                     "(`--pixel-size-mm` or the DICOM's own), less the training masks' outline offset "
                     f"({meta['head_circumference']['outline_offset_px']:.3f} px).")
    if meta.get("trained_with"):
        lines.append(f"- Trained with: {_software_line(meta['trained_with'])} (`trained_with` in "
                     "sonodistill-model.json; each member's `environment.json` in the run directory).")
    if meta.get("format"):
        lines.append(f"- Format: {meta['format']}" + (f", opset {meta['opset']}" if meta.get("opset") else "")
                     + f"; file `{meta.get('file')}`.")
    lines += [
        f"- Preprocessing (as in training): imaging-region crop {cfg.data.crop_region}, static-overlay removal "
        f"{cfg.data.remove_overlay}, resize with padding to {cfg.data.size} x {cfg.data.size}"
        + ((f", {cfg.data.num_frames} frames per input, sampled over the whole sequence." if annotation else
            f", {cfg.data.num_frames} frames per window.") if meta.get("input_kind") == "video" else "."),
        "",
        "## Data",
        "",
        f"- Source: `{cfg.data.spec}`" + (f", target `{cfg.data.target}`" if cfg.data.target else "")
        + f"; modality {manifest.modality}; {len(manifest)} items from {n_groups} groups (patients/subjects).",
        "",
        "| class | items |",
        "|---|---|",
    ]
    lines += [f"| {c} | {n} |" for c, n in counts.items()] + [""]
    lines += ["## Folds", ""] + _folds_section(run_dir, manifest)
    lines += ["## Metrics", ""] + (_annotation_metrics(run_dir, annotation) if annotation else [])
    lines += _metrics_section(run_dir)
    if "final" in members:
        lines += ["The exported `final` model was trained on all items after cross-validation: it has no held-out "
                  "estimate of its own; the cross-validation numbers above describe the fold models.", ""]
    lines += [
        "## Intended use",
        "",
        "Research and development: studying ultrasound models trained from few labels, reviewing their outputs "
        "next to the images, and benchmarking. Not for patient care.",
        "",
        "## Limits",
        "",
        f"- Trained and evaluated on {len(manifest)} items from {n_groups} groups of one data source; accuracy on "
        "other scanners, probes, presets, sites or populations is unknown.",
        "- The model can only output the training classes; it has no 'none of these' answer and gives confident "
        "probabilities on inputs unlike its training data (other organs, artefacts, blank frames).",
        "- Fold-to-fold spread (± std) with few groups per fold is large: treat differences within it as noise.",
        "- Inputs must be preprocessed exactly as above (`sonodistill predict` does this); other crops or "
        "intensity scaling change the outputs.",
        *([f"- A video model: an input shorter than its {cfg.data.num_frames}-frame windows (a still image is one "
           "frame) is stretched by repeating frames, unlike its training clips; `sonodistill predict` and `serve` "
           "say so on each such input (`input_warning`)."] if meta.get("input_kind") == "video" and not annotation
          else []),
        "- Grad-CAM heat maps show what raised the score of a class for this model, not where a finding is.",
        "",
        "## Provenance",
        "",
        f"- Source run: `{run_dir}`; sonodistill {__version__}; card written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
    ]
    return "\n".join(lines)


def _annotation_model_lines(info: dict[str, Any]) -> list[str]:
    """Model-section lines of an annotation export (DILBERT): outputs, and what stays outside the graph."""
    cats = info.get("categorical") or {}
    return [
        f"- Output: `probabilities`: the sigmoid probability of each binary finding, then the softmax probabilities "
        f"of each categorical target, from **one annotator** (`{info.get('member')}`, variant "
        f"`{info.get('variant')}`): DILBERT annotators are not ensembled.",
        f"- Outputs (column order): {', '.join(f'`{c}`' for c in info.get('outputs', [])) or 'none'}.",
        f"- Findings: {', '.join(f'`{c}`' for c in info.get('findings', [])) or 'none'}, present at probability >= "
        f"{info.get('threshold')}; categorical targets: "
        + (", ".join(f"`{k}` ({', '.join(v)})" for k, v in cats.items()) or "none") + ".",
        f"- In the graph: the annotator's image-only path (the text stream is the empty `[CLS] [SEP]`), on "
        f"{info.get('num_frames')} frames sampled at segment centres over the whole input. **Not in the graph**, "
        f"done in Python from the copy of the annotator folder in `{info.get('folder', 'annotator')}/`: presence at "
        f"the threshold, the description (composed from the present findings through the knowledge graph "
        f"`{info.get('graph')}`) and the nearest training reports (ranked by the PyTorch retriever). "
        "`sonodistill predict EXPORT_FOLDER` does both.",
    ]


def _annotation_metrics(run_dir: Path, info: dict[str, Any]) -> list[str]:
    """Cross-validated annotation metrics of the served variant, from a dilbert run's `metrics.json`."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return []
    variants = json.loads(path.read_text(encoding="utf-8")).get("variants") or {}
    stats = variants.get(info.get("variant"))
    if not isinstance(stats, dict):
        return []
    macro = (stats.get("pooled") or {}).get("macro") or {}
    per_fold = stats.get("per_fold_macro") or {}
    lines = [f"Variant `{info.get('variant')}` over the out-of-fold predictions (`metrics.json`): macro over findings "
             "and categorical classes.", "", "| metric | pooled | per fold, mean ± std |", "|---|---|---|"]
    for m in ("sensitivity", "precision", "f1"):
        pooled = macro.get(m)
        fold = per_fold.get(m) or []
        text = _fmt({"mean": fold[0], "std": fold[1] if len(fold) > 1 else None}) if fold else "n/a"
        lines.append(f"| {m} | {_fmt({'mean': pooled}) if pooled is not None else 'n/a'} | {text} |")
    return lines + [""]


def _start_line(cfg: Any, annotation: Any, arch: dict[str, Any]) -> str:
    """The card's start line: `model.pretrained`, DISCOVR's video and image encoder starts, or an annotator's frame
    and clip encoder starts."""
    if cfg.recipe == "discovr":
        image_backbone = cfg.recipe_options.get("image_backbone")
        return (f"video encoder: {describe_start(cfg.model.pretrained, cfg.model.backbone)}; image encoder: "
                f"{describe_start(cfg.recipe_options.get('image_pretrained', 'none'), image_backbone)}")
    if not annotation:
        return describe_start(cfg.model.pretrained, cfg.model.backbone)
    return (f"frame encoder: {describe_start(arch.get('frame_pretrained', 'none'), arch.get('frame_backbone'))}; "
            f"clip encoder: {describe_start(arch.get('clip_pretrained', 'none'), arch.get('clip_backbone'))}; "
            "fusion encoder: random initialisation")


def describe_start(pretrained: str, backbone: str | None = None) -> str:
    """What `model.pretrained` means, for people: the ImageNet weights `backbone` loads (package, hash, licence;
    every shipped set when the backbone is not named), a path, or none."""
    from sonodistill.errors import ConfigError
    from sonodistill.models.backbones import backbone_family
    from sonodistill.models.pretrained import IMAGENET_WEIGHTS, is_pretrained

    if not is_pretrained(pretrained):
        return "random initialisation (no pretrained weights)"
    if pretrained == "imagenet":
        try:
            family = backbone_family(backbone) if backbone else None
        except ConfigError:
            family = None
        weights = [IMAGENET_WEIGHTS[family]] if family in IMAGENET_WEIGHTS else list(IMAGENET_WEIGHTS.values())
        return "ImageNet weights (" + "; ".join(f"{w.pip_name}, sha256 {w.sha256[:12]}, {w.license}"
                                                for w in weights) + ")"
    return f"the project's own pretraining run `{pretrained}`"


def write_model_card(run_dir: str | Path, path: str | Path, export_meta: dict[str, Any] | None = None) -> Path:
    """Write `model_card(run_dir, export_meta)` to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_card(run_dir, export_meta), encoding="utf-8")
    return path
