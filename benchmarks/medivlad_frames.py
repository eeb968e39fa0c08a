"""MeDiVLAD frame-level benchmark (the layout of the paper's Table 2) on pocus-frames, 3 classes, 5 patient-grouped folds.

Stages (each resumable; a finished stage is reused):
1. pretrain: DINO (configs/dino-cpu.yaml) on every frame of pocus-frames + 2 random frames per lus-blues video and
   epoch, no labels. The test folds' unlabelled frames are seen (transductive pretraining); records throughput
   (images/s) and peak memory (ru_maxrss).
2. probes: frozen features of a randomly initialised encoder ("scratch") and of the DINO teacher; per fold, DINO's
   weighted kNN (k=20, T=0.07) and logistic regression (C=1, standardised features) fitted on the fold's training
   frames, tested on its test frames. ROC-AUC (macro one-vs-rest) from the linear probe.
3. finetune: backbone + linear head trained on a grouped 25 % of each training fold (configs/medivlad-finetune-cpu),
   from random init ("supervised from scratch") and from the DINO teacher; ROC-AUC from the classifier; kNN/linear
   probes on the finetuned backbone's features (fitted on all training frames of the fold, as for the frozen rows).
Writes OUT/frames.json and OUT/table2.md.

    flock /tmp/sonodistill-heavy.lock python benchmarks/medivlad_frames.py --out runs/medivlad-bench

Options: --stages pretrain,probes,finetune  --threads 1  --pretrain-epochs N  --finetune-epochs N
         --label-fraction 0.25  --folds 5  --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from _common import add_run_arguments, start_run

ROWS = ["scratch (random init, frozen)", "supervised from scratch (finetuned)", "DINO pretrained (frozen)",
        "DINO pretrained + finetuned"]
COLUMNS = ["roc_auc", "knn_accuracy", "linear_accuracy", "head_accuracy"]
POCOVID_ACCURACY = 0.89  # POCOVID-Net frame accuracy (ImageNet-pretrained VGG16), Born et al.


def pretrain(out: Path, args: argparse.Namespace) -> dict:
    from sonodistill.config import load_config, packaged_config
    from sonodistill.protocols.folds import run_protocol

    cfg = load_config(packaged_config("dino-cpu"), [
        f"out_dir={out}", "name=dino", "data.spec=pocus-frames", "recipe_options.extra_data=[lus-blues]",
        f"train.seed={args.seed}"] + ([f"train.epochs={args.pretrain_epochs}"] if args.pretrain_epochs else []))
    done = cfg.run_dir / "pretrain.json"
    if done.is_file():
        return json.loads(done.read_text())
    load0 = os.getloadavg()
    summary = run_protocol(cfg, resume=(cfg.run_dir / "config.yaml").exists(), enable_progress_bar=False)
    summary["load_average_before_after"] = [load0, os.getloadavg()]
    summary["torch_threads"] = args.threads
    done.write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _probe_fold(feats: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, classes: list[str]) -> dict:
    from sonodistill.evaluation.metrics import classification_metrics
    from sonodistill.evaluation.probes import knn_predict, linear_probe

    c = len(classes)
    knn = knn_predict(feats[train], labels[train], feats[test], k=20, temperature=0.07, num_classes=c)
    lin = linear_probe(feats[train], labels[train], feats[test], C=1.0, num_classes=c)
    mk = classification_metrics(labels[test], knn, classes)
    ml = classification_metrics(labels[test], lin, classes)
    return {"knn_accuracy": mk["accuracy"], "linear_accuracy": ml["accuracy"], "linear_roc_auc": ml["roc_auc"],
            "knn_roc_auc": mk["roc_auc"], "linear_f1": ml["f1"]}


def _features(backbone, manifest, data) -> np.ndarray:  # noqa: ANN001
    from sonodistill.evaluation.probes import extract_features
    from sonodistill.recipes.frame_features import frame_loader

    feats, index = extract_features(backbone, frame_loader(manifest, data, batch_size=128))
    out = np.zeros_like(feats)
    out[index] = feats
    return out


def probes(out: Path, args: argparse.Namespace, manifest, folds) -> dict:  # noqa: ANN001
    import torch

    from sonodistill.config import load_config
    from sonodistill.recipes.frame_features import build_frame_backbone, load_run_backbone

    path = out / "probes.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg = load_config(out / "dino" / "config.yaml")
    torch.manual_seed(args.seed)
    encoders = {"scratch": build_frame_backbone(cfg), "dino": load_run_backbone(out / "dino")[0]}
    labels = manifest.labels
    res: dict = {}
    for name, enc in encoders.items():
        t0 = time.perf_counter()
        feats = _features(enc, manifest, cfg.data)
        res[f"{name}_feature_seconds"] = time.perf_counter() - t0
        res[name] = [_probe_fold(feats, labels, tr, te, manifest.classes) for tr, te in folds]
    path.write_text(json.dumps(res, indent=1))
    return res


def finetune(out: Path, args: argparse.Namespace, manifest, folds) -> dict:  # noqa: ANN001
    import pandas as pd

    from sonodistill.config import load_config, packaged_config
    from sonodistill.data.folds import load_folds
    from sonodistill.protocols.folds import run_protocol
    from sonodistill.evaluation.metrics import classification_metrics
    from sonodistill.recipes.frame_features import build_frame_backbone, load_backbone_weights

    path = out / "finetune.json"
    if path.is_file():
        return json.loads(path.read_text())
    res: dict = {}
    for name, init in (("ft_scratch", None), ("ft_dino", str(out / "dino"))):
        over = [f"out_dir={out}", f"name={name}", "data.spec=pocus-frames", f"train.folds={args.folds}",
                f"train.seed={args.seed}", f"recipe_options.label_fraction={args.label_fraction}",
                f"recipe_options.init_from={init if init else 'null'}"]
        if args.finetune_epochs:
            over.append(f"train.epochs={args.finetune_epochs}")
        cfg = load_config(packaged_config("medivlad-finetune-cpu"), over)
        t0 = time.perf_counter()
        if not (cfg.run_dir / "predictions.csv").is_file():
            run_protocol(cfg, resume=(cfg.run_dir / "config.yaml").exists(), manifest=manifest,
                         enable_progress_bar=False)
        seconds = time.perf_counter() - t0
        run_folds = load_folds(cfg.run_dir)
        for (a, b), (c, d) in zip(run_folds, folds):
            assert np.array_equal(b, d), "finetuning folds differ from the probe folds"
        pred = pd.read_csv(cfg.run_dir / "predictions.csv")
        probs_cols = [f"prob_{c}" for c in manifest.classes]
        per_fold = []
        for k, (tr, te) in enumerate(folds):
            part = pred[pred["fold"] == k].sort_values("index")
            head = classification_metrics(part["y_true"].to_numpy(), part[probs_cols].to_numpy(), manifest.classes)
            bb = build_frame_backbone(cfg)
            load_backbone_weights(bb, cfg.run_dir / f"fold_{k}" / "model.safetensors")
            feats = _features(bb, manifest, cfg.data)
            row = _probe_fold(feats, manifest.labels, tr, te, manifest.classes)
            row.update({"head_accuracy": head["accuracy"], "head_roc_auc": head["roc_auc"], "head_f1": head["f1"]})
            per_fold.append(row)
        labelled = json.loads((cfg.run_dir / "labelled.json").read_text())
        res[name] = {"per_fold": per_fold, "seconds": seconds, "labelled": labelled}
    path.write_text(json.dumps(res, indent=1))
    return res


def _ms(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def table(pre: dict, pr: dict, ft: dict) -> tuple[str, dict]:
    from sonodistill.evaluation.report import markdown_table

    def agg(folds: list[dict], auc_key: str) -> dict:
        out = {"roc_auc": _ms([f[auc_key] for f in folds]), "knn_accuracy": _ms([f["knn_accuracy"] for f in folds]),
               "linear_accuracy": _ms([f["linear_accuracy"] for f in folds])}
        if "head_accuracy" in folds[0]:
            out["head_accuracy"] = _ms([f["head_accuracy"] for f in folds])
        return out

    rows = {ROWS[0]: agg(pr["scratch"], "linear_roc_auc"), ROWS[2]: agg(pr["dino"], "linear_roc_auc")}
    if ft:
        rows[ROWS[1]] = agg(ft["ft_scratch"]["per_fold"], "head_roc_auc")
        rows[ROWS[3]] = agg(ft["ft_dino"]["per_fold"], "head_roc_auc")
    rows = {r: rows[r] for r in ROWS if r in rows}
    md = markdown_table(rows, COLUMNS, extra={"POCOVID-Net (ImageNet VGG16, paper)": {"head_accuracy": "0.89"}},
                        index_name="pocus-frames, 5-fold patient-grouped")
    return md, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/medivlad-bench")
    p.add_argument("--stages", default="pretrain,probes,finetune")
    p.add_argument("--pretrain-epochs", type=int)
    p.add_argument("--finetune-epochs", type=int)
    p.add_argument("--label-fraction", type=float, default=0.25)
    add_run_arguments(p, folds=True, seed=True)
    args = p.parse_args(argv)
    start_run(args.threads)
    from sonodistill.data.adapters import load_adapter
    from sonodistill.data.folds import make_folds

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    t0 = time.perf_counter()
    pre = pretrain(out, args) if "pretrain" in stages else json.loads((out / "dino" / "pretrain.json").read_text())
    manifest = load_adapter("pocus-frames")
    folds = make_folds(manifest, args.folds, args.seed)
    pr = probes(out, args, manifest, folds) if "probes" in stages or "finetune" in stages else {}
    ft = finetune(out, args, manifest, folds) if "finetune" in stages else {}
    md, rows = table(pre, pr, ft)
    lin_gap = rows[ROWS[2]]["linear_accuracy"][0] - rows[ROWS[0]]["linear_accuracy"][0]
    best = max(v.get("head_accuracy", v["linear_accuracy"])[0] for v in rows.values())
    text = [
        "# MeDiVLAD frame-level evaluation (Table 2 layout)\n",
        md,
        f"\nDINO frozen linear accuracy minus scratch frozen: {100 * lin_gap:+.1f} points (target >= +5).",
        f"Best accuracy here {best:.3f} vs POCOVID-Net 0.89 (ImageNet weights): {100 * (best - POCOVID_ACCURACY):+.1f} points.",
        f"\nPretraining: {pre['epochs']} epochs x {pre['frames_per_epoch']} frames, {pre['images_per_s']:.1f} images/s, "
        f"peak RSS {pre['peak_rss_mib']:.0f} MiB, {pre['wall_seconds'] / 60:.1f} min (torch threads {args.threads}).",
        f"\nCommand: {shlex.join([sys.executable, *sys.argv])}",
    ]
    (out / "table2.md").write_text("\n".join(text) + "\n")
    (out / "frames.json").write_text(json.dumps({"pretrain": pre, "probes": pr, "finetune": ft, "table": rows,
                                                  "wall_seconds": time.perf_counter() - t0}, indent=1, default=float))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
