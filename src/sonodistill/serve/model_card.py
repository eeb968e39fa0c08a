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

METRIC_ORDER = ["accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"]


def _fmt(stat: Any) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None or not math.isfinite(float(stat["mean"])):
        return "n/a"
    std = stat.get("std")
    text = f"{float(stat['mean']):.3f}" + (f" ± {float(std):.3f}" if std is not None else "")
    if stat.get("n_nan"):
        text += f" ({stat['n_nan']} fold(s) n/a)"
    return text


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
    if n_folds:
        lines.append(f"Grouped, stratified {n_folds}-fold cross-validation ({n_items} test predictions); "
                     "mean ± std over folds (std with ddof=1); sensitivity to ROC-AUC are macro averages "
                     "over classes. "
                     "From `metrics.json`.")
        lines.append("")
    for name, summary in summaries.items():
        if name:
            lines += [f"**{name}**", ""]
        keys = [k for k in METRIC_ORDER if k in summary] + sorted(k for k in summary if k not in METRIC_ORDER
                                                                    and "/" not in k)
        lines += ["| metric | mean ± std |", "|---|---|"] + [f"| {k} | {_fmt(summary[k])} |" for k in keys] + [""]
    if (run_dir / "report.md").is_file():
        lines += ["Per-class metrics, confusion matrix and ROC curves: `report.md` in the source run directory.", ""]
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
    lines = [
        f"# Model card: {cfg.name}",
        "",
        "**Research use only. Not a medical device:** not cleared or approved for diagnosis, triage or any "
        "clinical decision. Outputs must not replace the judgement of a qualified clinician.",
        "",
        "## Model",
        "",
        f"- Task: {meta.get('task', 'classification')}; recipe `{cfg.recipe}`; backbone `{cfg.model.backbone}` "
        f"(width {cfg.model.width}, norm {cfg.model.norm}).",
        f"- Training started from: {describe_start(cfg.model.pretrained)}.",
        f"- Input: {meta.get('input_kind', '?')} model, tensor `B x {' x '.join(str(s) for s in shape)}`"
        " (float32, grayscale, pixel / 255).",
        f"- Output: `probabilities` (softmax; mean over {len(members) or '?'} member model(s): "
        f"{', '.join(members) if members else 'n/a'}).",
        f"- Classes (output order): {', '.join(f'`{c}`' for c in manifest.classes) or 'none'}.",
    ]
    if meta.get("format"):
        lines.append(f"- Format: {meta['format']}" + (f", opset {meta['opset']}" if meta.get("opset") else "")
                     + f"; file `{meta.get('file')}`.")
    lines += [
        f"- Preprocessing (as in training): imaging-region crop {cfg.data.crop_region}, static-overlay removal "
        f"{cfg.data.remove_overlay}, resize with padding to {cfg.data.size} x {cfg.data.size}"
        + (f", {cfg.data.num_frames} frames per window." if meta.get("input_kind") == "video" else "."),
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
    lines += ["## Metrics", ""] + _metrics_section(run_dir)
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
        "- Grad-CAM heat maps show what raised the score of a class for this model, not where a finding is.",
        "",
        "## Provenance",
        "",
        f"- Source run: `{run_dir}`; sonodistill {__version__}; card written {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
    ]
    return "\n".join(lines)


def describe_start(pretrained: str) -> str:
    """What `model.pretrained` means, for people: ImageNet weights with their package and hash, a path, or none."""
    from sonodistill.models.pretrained import IMAGENET_WEIGHTS

    if pretrained in ("", "none", None):
        return "random initialisation (no pretrained weights)"
    if pretrained == "imagenet":
        return "ImageNet weights (" + "; ".join(f"{w.pip_name}, sha256 {w.sha256[:12]}, {w.license}"
                                                for w in IMAGENET_WEIGHTS.values()) + ")"
    return f"the project's own pretraining run `{pretrained}`"


def write_model_card(run_dir: str | Path, path: str | Path, export_meta: dict[str, Any] | None = None) -> Path:
    """Write `model_card(run_dir, export_meta)` to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_card(run_dir, export_meta), encoding="utf-8")
    return path
