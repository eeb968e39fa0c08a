"""DISCOVR benchmark: lus-blues anomaly detection and probes, hc18 frozen segmentation, memory and step time.

Parts (run any subset with --parts; every part resumes from what OUT already holds):
  main      full model, video-only and image-only (the image branch's own clip embeddings, frames averaged),
            pretrained per fold on severity-0 training clips, all folds
  baseline  the same evaluation of the untrained video encoder (each fold's initialisation)
  ablation  full model with mask ratio 0.5, and with 16-frame clips, on --ablation-folds
  probe     linear-probe comparison with the supervised CV and MeDiVLAD runs found under --runs
  seg       hc18 frozen-feature segmentation (linear head on patch tokens) with the fold-0 image encoder
  memory    peak memory and step time of full vs video-only (one subprocess per variant, synthetic input)
Results: OUT/results.json and OUT/summary.md.

    flock /tmp/sonodistill-heavy.lock python benchmarks/discovr_lus.py --out runs/discovr-lus
    python benchmarks/discovr_lus.py --config discovr-imagenet --out runs/bench19/discovr --parts seg   # CNN branch
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sonodistill.config import RunConfig, load_config, packaged_config
from _common import add_run_arguments, start_run

log = logging.getLogger("discovr_lus")

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "video-only": ["recipe_options.use_img=false", "recipe_options.use_scd=false"],
    "image-only": ["recipe_options.use_vid=false", "recipe_options.use_scd=false", "recipe_options.eval_branch=image"],
    "full-mask0.5": ["recipe_options.video_mask_ratio=0.5"],
    "full-16frames": ["data.num_frames=16", "model.kwargs.num_frames=16"],
}
MAIN = ["full", "video-only", "image-only"]
ABLATION = ["full-mask0.5", "full-16frames"]
ANOMALY_COLUMNS = ["auroc", "f1", "balanced_accuracy", "precision", "recall", "f1_all_anomalous"]
PROBE_COLUMNS = ["accuracy", "balanced_accuracy", "f1", "roc_auc"]


def variant_config(args: argparse.Namespace, variant: str, folds: list[int] | None) -> RunConfig:
    overrides = [f"name={variant}", f"out_dir={args.out}", f"train.epochs={args.epochs}",
                 f"train.folds={args.folds}"] + VARIANTS[variant] + list(args.set)
    if folds is not None:
        overrides.append(f"recipe_options.run_folds={json.dumps(folds)}")
    return load_config(packaged_config(args.config), overrides)


def run_variant(args: argparse.Namespace, variant: str, folds: list[int] | None, manifest: Any) -> dict[str, Any]:
    from sonodistill.protocols.folds import run_protocol

    cfg = variant_config(args, variant, folds)
    t0 = time.perf_counter()
    log.info("%s: pretraining + evaluation on folds %s", variant, folds if folds is not None else "all")
    run_protocol(cfg, resume=True, manifest=manifest)
    log.info("%s done in %.0f s", variant, time.perf_counter() - t0)
    return json.loads((cfg.run_dir / "metrics.json").read_text())


def restrict(metrics: dict[str, Any], folds: list[int]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean ± std of each section over the given folds only (same folds for every compared variant)."""
    from sonodistill.evaluation.metrics import summarise

    rows = [r for r in metrics["per_fold"] if r["fold"] in folds]
    missing = sorted(set(folds) - {r["fold"] for r in rows})
    if missing:
        raise RuntimeError(f"folds {missing} were not run")
    sections = [s for s, v in rows[0].items() if isinstance(v, dict)]
    return {s: dict(summarise([r[s] for r in rows])) for s in sections}


def part_main(args: argparse.Namespace, manifest: Any, results: dict[str, Any]) -> None:
    for v in MAIN:
        results.setdefault("runs", {})[v] = run_variant(args, v, None, manifest)["summary"]


def part_ablation(args: argparse.Namespace, manifest: Any, results: dict[str, Any]) -> None:
    for v in ABLATION:
        results.setdefault("runs", {})[v] = run_variant(args, v, args.ablation_folds, manifest)["summary"]


def part_baseline(args: argparse.Namespace, manifest: Any, results: dict[str, Any]) -> None:
    """The same evaluation on an untrained video encoder (the initialisation each fold's pretraining starts
    from: seed + fold), written like a run: OUT/random-init/fold_k/eval.json and metrics.json."""
    import lightning as L

    from sonodistill.config import parse_options
    from sonodistill.evaluation.metrics import summarise
    from sonodistill.protocols.discovr import clip_embeddings, evaluate_rows
    from sonodistill.recipes.discovr import DISCOVROptions, DISCOVRRecipe

    cfg = variant_config(args, "full", None)
    how = parse_options(DISCOVROptions, cfg.recipe_options, "discovr").evaluation()
    folds = json.loads((args.out / "full" / "folds.json").read_text())
    out = args.out / "random-init"
    per_fold = []
    for f in folds:
        k = f["fold"]
        L.seed_everything(cfg.train.seed + k, workers=True, verbose=False)  # as fit_fold does before building
        encoder = DISCOVRRecipe(cfg).inference_model().video.eval()
        train, test = np.asarray(f["train"]), np.asarray(f["test"])
        every = np.concatenate([train, test])
        embeddings = clip_embeddings(encoder, cfg, manifest, every, cfg.train.seed + k)
        metrics, _ = evaluate_rows(manifest, how, every, embeddings, train, test)
        (out / f"fold_{k}").mkdir(parents=True, exist_ok=True)
        record = {"fold": k, **metrics}
        (out / f"fold_{k}" / "eval.json").write_text(json.dumps(record, indent=1, default=float))
        per_fold.append(record)
    sections = [s for s, v in per_fold[0].items() if isinstance(v, dict)]
    summary = {s: {m: list(v) for m, v in summarise([r[s] for r in per_fold]).items()} for s in sections}
    (out / "metrics.json").write_text(json.dumps({"per_fold": per_fold, "summary": summary}, indent=1, default=float))
    results.setdefault("runs", {})["random-init"] = summary


# -------------------------------------------------------------------------------------------- comparisons
def find_runs(root: Path, recipe: str, lus_severity_only: bool = True) -> list[Path]:
    """Run directories under `root` (depth <= 2) whose config.yaml uses `recipe` (on lus-blues severity)."""
    found = []
    for cfg_file in sorted(list(root.glob("*/config.yaml")) + list(root.glob("*/*/config.yaml"))):
        try:
            cfg = load_config(cfg_file)
        except Exception as exc:  # a foreign or damaged config: say so, never hide it
            log.warning("skipping %s: %s", cfg_file, exc)
            continue
        if cfg.recipe != recipe:
            continue
        if not lus_severity_only or (cfg.data.spec.startswith("lus-blues") and (cfg.data.target or "severity") == "severity"):
            found.append(cfg_file.parent)
    return found


def probe_on_our_folds(feats: np.ndarray, manifest: Any, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Our linear probe (probes.linear_probe) on the given clip features, on our folds."""
    from sonodistill.evaluation.metrics import classification_metrics, summarise
    from sonodistill.evaluation.probes import linear_probe

    y = manifest.labels
    per_fold = []
    for f in folds:
        tr, te = np.asarray(f["train"]), np.asarray(f["test"])
        probs = linear_probe(feats[tr], y[tr], feats[te], num_classes=len(manifest.classes))
        per_fold.append(classification_metrics(y[te], probs, manifest.classes))
    return {k: list(v) for k, v in summarise(per_fold, PROBE_COLUMNS).items()}


def part_probe(args: argparse.Namespace, manifest: Any, results: dict[str, Any]) -> None:
    """Supervised CV metrics as reported by those runs, and MeDiVLAD's DINO frame teacher (mean of 8 frame
    embeddings per clip) through our linear probe on our folds."""
    from sonodistill.recipes.frame_features import load_run_backbone, video_frame_features

    runs = Path(args.runs)
    folds = json.loads((args.out / "full" / "folds.json").read_text())
    ours = [(f["train"], f["test"]) for f in folds]
    comp: dict[str, Any] = {"supervised": [], "medivlad_teacher": []}
    for run in find_runs(runs, "supervised"):
        metrics = run / "metrics.json"
        if not metrics.is_file():
            continue
        theirs = json.loads((run / "folds.json").read_text()) if (run / "folds.json").is_file() else []
        summary = json.loads(metrics.read_text()).get("summary", {})
        comp["supervised"].append({"run": str(run), "same_folds": [(f["train"], f["test"]) for f in theirs] == ours,
                                   "summary": {k: summary.get(k) for k in PROBE_COLUMNS}})
    for run in find_runs(runs, "dino", lus_severity_only=False):
        if not any((run / n).is_file() for n in ("teacher_backbone.safetensors", "model.safetensors")):
            continue
        t0 = time.perf_counter()
        encoder, dcfg = load_run_backbone(run)
        sources = [dcfg.data.spec]
        if (run / "pretrain.json").is_file():  # the dino recipe may pretrain on several sources
            sources = [src["name"] for src in json.loads((run / "pretrain.json").read_text()).get("sources", [])]
        feats, mask = video_frame_features(encoder, manifest, dcfg.data, num_frames=8)
        clip = (feats * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        comp["medivlad_teacher"].append({"run": str(run), "pretrained_on": " + ".join(sources), "size": dcfg.data.size,
                                         "linear": probe_on_our_folds(clip, manifest, folds),
                                         "seconds": time.perf_counter() - t0})
    results["comparisons"] = comp


# ------------------------------------------------------------------------------------------ segmentation
def part_seg(args: argparse.Namespace, manifest: Any, results: dict[str, Any]) -> None:
    from sonodistill.data.adapters import load_adapter
    from sonodistill.data.splits import grouped_kfold
    from sonodistill.evaluation.frozen_segmentation import frozen_segmentation_fold, patch_token_maps
    from sonodistill.recipes.data import build_dataset, make_loader
    from sonodistill.config import parse_options
    from sonodistill.models.backbones import build_backbone
    from sonodistill.recipes.discovr import DISCOVROptions, DISCOVRRecipe, is_token_encoder, load_encoders
    from sonodistill.recipes.trainer import WEIGHTS

    cfg = variant_config(args, "full", None)
    o = parse_options(DISCOVROptions, cfg.recipe_options, "discovr")
    random_cfg = copy.deepcopy(cfg)
    random_cfg.recipe_options = {**cfg.recipe_options, "image_pretrained": "none"}
    hc = load_adapter("hc18")
    data = build_dataset(hc, cfg.data, train=False, seed=0)
    loader = make_loader(data, cfg.data, train=False, seed=0)
    torch.manual_seed(0)
    encoders = {
        "discovr image encoder (lus-blues fold 0)": load_encoders(cfg, args.out / "full" / "fold_0" / WEIGHTS).image,
        "same architecture, random init": DISCOVRRecipe(random_cfg).inference_model().image,
    }
    if o.image_pretrained != "none":  # what the image branch started from, before any DISCOVR training
        encoders[f"its start ({o.image_pretrained}), no DISCOVR training"] = build_backbone(
            o.image_backbone, width=o.image_width, pretrained=o.image_pretrained, **o.image_kwargs)
    stage = None if is_token_encoder(encoders["same architecture, random init"]) else o.image_token_stage
    folds = grouped_kfold(hc, n_splits=5, seed=0)
    out: dict[str, Any] = {"items": len(hc), "size": cfg.data.size, "folds": 5}
    for name, enc in encoders.items():
        t0 = time.perf_counter()
        feats, masks, index = patch_token_maps(enc, loader, stage)
        order = np.argsort(index)
        feats, masks = feats[order], masks[order]
        per_fold = []
        for f in folds:
            res = frozen_segmentation_fold(feats[f.train], masks[f.train], feats[f.test], masks[f.test],
                                           epochs=args.seg_epochs, lr=1e-2, seed=0)
            res.pop("per_image_dice")
            per_fold.append(res)
        dice = [r["dice"] for r in per_fold]
        out[name] = {"dice_mean": float(np.mean(dice)), "dice_std": float(np.std(dice, ddof=1)),
                     "iou_mean": float(np.mean([r["iou"] for r in per_fold])),
                     "train_dice_mean": float(np.mean([r["train_dice"] for r in per_fold])),
                     "per_fold": per_fold, "seconds": time.perf_counter() - t0,
                     "token_grid": list(feats.shape[-2:])}
        log.info("hc18 %s: Dice %.3f ± %.3f", name, out[name]["dice_mean"], out[name]["dice_std"])
    results["hc18_segmentation"] = out


# ------------------------------------------------------------------------------------------------ memory
def _allocated_mb() -> float:
    """Bytes currently allocated through glibc malloc (heap + mmapped chunks), where CPU tensors live."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


def _peak_tracker() -> Any:
    """A TorchDispatchMode that samples the allocated bytes after every op (forward and backward): the CPU
    analogue of `torch.cuda.max_memory_allocated` for one training step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class PeakAllocated(TorchDispatchMode):
        peak = 0.0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, _allocated_mb())
            return out

    return PeakAllocated()


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: build one variant, time `--mem-steps` optimiser steps on random clips, then measure
    one more step's peak allocated memory and the bytes autograd saves for backward."""
    from sonodistill.recipes.discovr import DISCOVRRecipe

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = variant_config(args, args.memory_probe, None)
    recipe = DISCOVRRecipe(cfg, steps_per_epoch=args.mem_steps + 1)
    opt = torch.optim.AdamW([p for p in recipe.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(cfg.data.batch_size, 1, cfg.data.num_frames, cfg.data.size, cfg.data.size)

    def step(i: int) -> None:
        loss, _ = recipe.compute_loss({"x": x})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recipe.ema_step(i)

    times = []
    for i in range(args.mem_steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    before = _allocated_mb()
    tracker = _peak_tracker()
    with tracker, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(args.mem_steps)
    trainable = sum(p.numel() for p in recipe.parameters() if p.requires_grad)
    return {"variant": args.memory_probe, "batch": list(x.shape), "threads": args.threads,
            "trainable_params": trainable, "all_params": sum(p.numel() for p in recipe.parameters()),
            "allocated_before_step_mb": before, "peak_allocated_mb": tracker.peak,
            "step_peak_above_before_mb": tracker.peak - before,
            "saved_activations_mb": sum(saved.values()) / 2**20,
            "step_seconds_median": statistics.median(times[1:] if len(times) > 2 else times),
            "step_seconds": times}


def part_memory(args: argparse.Namespace, manifest: Any, results: dict[str, Any]) -> None:
    out = {}
    for v in MAIN:
        cmd = [sys.executable, __file__, "--out", str(args.out), "--config", args.config, "--memory-probe", v, "--mem-steps",
               str(args.mem_steps), "--threads", str(args.threads), "--epochs", str(args.epochs)]
        for s in args.set:
            cmd += ["--set", s]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError(f"memory probe {v} failed:\n{proc.stderr[-3000:]}")
        out[v] = json.loads(proc.stdout.strip().splitlines()[-1])
        log.info("memory %s: %s", v, {k: out[v][k] for k in ("peak_allocated_mb", "step_peak_above_before_mb",
                                                               "saved_activations_mb", "step_seconds_median")})
    f, v = out["full"], out["video-only"]
    out["ratio_full_over_video_only"] = {
        "peak_allocated": f["peak_allocated_mb"] / v["peak_allocated_mb"],
        "step_peak_above_before": f["step_peak_above_before_mb"] / v["step_peak_above_before_mb"],
        "saved_activations": f["saved_activations_mb"] / v["saved_activations_mb"],
        "step_time": f["step_seconds_median"] / v["step_seconds_median"],
        "trainable_params": f["trainable_params"] / v["trainable_params"],
    }
    results["memory"] = out


# --------------------------------------------------------------------------------------------- summary
def _cell(stat: Any) -> str:
    from sonodistill.evaluation.report import format_mean_std

    return format_mean_std(stat)


def write_summary(args: argparse.Namespace, results: dict[str, Any]) -> str:
    from sonodistill.evaluation.report import markdown_table

    lines = [f"# DISCOVR on lus-blues ({args.epochs} epochs, {args.folds}-fold grouped CV)", ""]
    runs = {}
    for v in MAIN + ABLATION + ["random-init"]:
        p = args.out / v / "metrics.json"
        if p.is_file():
            runs[v] = json.loads(p.read_text())
    if all(v in runs for v in MAIN):
        all_folds = sorted(r["fold"] for r in runs["full"]["per_fold"])
        shown = MAIN + (["random-init"] if "random-init" in runs else [])
        rows = {v: restrict(runs[v], all_folds) for v in shown}
        lines += [f"## Anomaly detection, severity >= 1 vs 0 (folds {all_folds}), z-scored embeddings", "",
                  markdown_table({v: rows[v]["anomaly"] for v in shown}, ANOMALY_COLUMNS), ""]
        if all("anomaly_raw" in rows[v] for v in shown):
            lines += ["## Anomaly detection, raw (uncentred) embeddings", "",
                      markdown_table({v: rows[v]["anomaly_raw"] for v in shown}, ANOMALY_COLUMNS[:-1]), ""]
        lines += ["## Linear probe, 4-class severity", "",
                  markdown_table({v: rows[v]["linear"] for v in shown}, PROBE_COLUMNS), ""]
        lines += ["## Ridge regression probe, severity score", "",
                  markdown_table({v: rows[v]["regression"] for v in shown}, ["mae", "rmse", "r2"]), ""]
    done = [v for v in ABLATION if v in runs]
    if done and "full" in runs:
        folds = list(args.ablation_folds)
        names = [v for v in ["full", "video-only"] + done if v in runs]
        rows = {v: restrict(runs[v], folds)["anomaly"] for v in names}
        lines += [f"## Ablation, anomaly detection (folds {folds}, z-scored)", "", markdown_table(rows, ANOMALY_COLUMNS), ""]
        rows = {v: restrict(runs[v], folds)["linear"] for v in names}
        lines += [f"## Ablation, linear probe (folds {folds})", "", markdown_table(rows, PROBE_COLUMNS), ""]
    if "hc18_segmentation" in results:
        seg = results["hc18_segmentation"]
        lines += ["## hc18 frozen-feature segmentation (linear 1x1 head on patch tokens, 5 grouped folds)", "",
                  "| encoder | Dice | IoU | train Dice |", "|---|---|---|---|"]
        for name, r in seg.items():
            if isinstance(r, dict):
                lines.append(f"| {name} | {r['dice_mean']:.3f} ± {r['dice_std']:.3f} | {r['iou_mean']:.3f} | "
                             f"{r['train_dice_mean']:.3f} |")
        lines.append("")
    if "memory" in results:
        m = results["memory"]
        lines += ["## Memory and step time (synthetic batch, same shapes as training)", "",
                  "| variant | trainable params | peak allocated (MB) | step peak above start (MB) | "
                  "saved for backward (MB) | step (s) |", "|---|---|---|---|---|---|"]
        for v in MAIN:
            r = m[v]
            lines.append(f"| {v} | {r['trainable_params'] / 1e6:.2f} M | {r['peak_allocated_mb']:.0f} | "
                         f"{r['step_peak_above_before_mb']:.0f} | {r['saved_activations_mb']:.0f} | "
                         f"{r['step_seconds_median']:.3f} |")
        ratio = m["ratio_full_over_video_only"]
        lines += ["", "full / video-only: " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()), ""]
    if "comparisons" in results:
        comp = results["comparisons"]
        lines += ["## Severity (4 classes): our linear probes vs other runs found under runs/", "",
                  "| model | features | " + " | ".join(PROBE_COLUMNS) + " | note |", "|---" * (len(PROBE_COLUMNS) + 3) + "|"]
        for v in MAIN:
            if v in runs:
                stats = restrict(runs[v], sorted(r["fold"] for r in runs[v]["per_fold"]))["linear"]
                lines.append(f"| DISCOVR {v} | frozen clip [CLS], linear probe | "
                             + " | ".join(_cell(stats[c]) for c in PROBE_COLUMNS) + " | our folds |")
        for r in comp.get("medivlad_teacher", []):
            lines.append(f"| MeDiVLAD DINO teacher ({r['run']}, pretrained on {r['pretrained_on']}) | mean of 8 frame "
                         f"[CLS] at {r.get('size')} px, linear probe | " + " | ".join(_cell(r["linear"][c]) for c in PROBE_COLUMNS)
                         + " | our folds |")
        for r in comp.get("supervised", []):
            cells = [_cell((r["summary"][c]["mean"], r["summary"][c]["std"])) if isinstance(r["summary"].get(c), dict)
                     else "–" for c in PROBE_COLUMNS]
            lines.append(f"| supervised ({r['run']}) | end-to-end | " + " | ".join(cells)
                         + f" | {'same' if r['same_folds'] else 'its own'} folds |")
        if not comp.get("medivlad_teacher"):
            lines.append("\nNo MeDiVLAD (dino) teacher run with weights was found under runs/.")
        if not comp.get("supervised"):
            lines.append("\nNo supervised lus-blues severity run with metrics.json was found under runs/.")
        lines.append("")
    text = "\n".join(lines)
    (args.out / "summary.md").write_text(text)
    return text


PARTS = {"main": part_main, "baseline": part_baseline, "ablation": part_ablation, "probe": part_probe, "seg": part_seg, "memory": part_memory}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/discovr-lus"))
    p.add_argument("--config", default="discovr-cpu", help="packaged discovr config the variants start from")
    p.add_argument("--runs", default="runs", help="where to look for supervised / MeDiVLAD runs")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--ablation-folds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seg-epochs", type=int, default=60)
    add_run_arguments(p, folds=True)
    p.add_argument("--mem-steps", type=int, default=8)
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], help="extra config override for every variant")
    args = p.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return 0
    start_run(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    res_file = args.out / "results.json"
    results = json.loads(res_file.read_text()) if res_file.is_file() else {}
    manifest = None
    if {"main", "baseline", "ablation", "probe"} & set(args.parts):
        from sonodistill.recipes.data import load_manifest

        manifest = load_manifest(variant_config(args, "full", None).data)
    for name in args.parts:
        t0 = time.perf_counter()
        PARTS[name](args, manifest, results)
        results.setdefault("seconds", {})[name] = time.perf_counter() - t0
        results["command"] = " ".join(sys.argv)
        res_file.write_text(json.dumps(results, indent=1, default=float))
    print(write_summary(args, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
