"""DualDistill ablation (their Table 1): SD / RGSD / AGSD on or off, same folds, one table with training time."""

from __future__ import annotations

import copy
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest

TABLE1_COLUMNS = ["accuracy", "sensitivity", "specificity", "precision", "f1"]


def ablation_rows() -> list[dict[str, bool]]:
    """The 8 on/off combinations of SD, RGSD, AGSD in Table 1 order (all off = plain supervised CE)."""
    return [dict(use_sd=sd, use_rgsd=rg, use_agsd=ag)
            for sd, rg, ag in itertools.product([False, True], repeat=3)]


def row_name(row: dict[str, bool]) -> str:
    on = [n for n, k in (("SD", "use_sd"), ("RGSD", "use_rgsd"), ("AGSD", "use_agsd")) if row[k]]
    return "+".join(on) if on else "baseline (CE)"


def run_ablation(cfg: RunConfig, manifest: Manifest | None = None, resume: bool = False) -> Path:
    """Train the 8 rows with identical folds under cfg.run_dir/ablation-*; write ablation.md/csv; returns the .md."""
    from sonodistill.data.folds import load_folds
    from sonodistill.protocols.folds import run_protocol
    from sonodistill.evaluation.metrics import classification_metrics, summarise
    from sonodistill.recipes.data import load_manifest

    manifest = manifest if manifest is not None else load_manifest(cfg.data)
    root = cfg.run_dir
    root.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    folds_ref = None
    for row in ablation_rows():
        sub = copy.deepcopy(cfg)
        sub.recipe = "dualdistill"
        sub.recipe_options = {**cfg.recipe_options, **row}
        sub.out_dir = str(root)
        sub.name = "ablation-" + row_name(row).replace(" ", "").replace("(", "").replace(")", "").replace("+", "-")
        t0 = time.perf_counter()
        run_protocol(sub, resume=resume or (sub.run_dir / "config.yaml").exists(), manifest=manifest)
        seconds = time.perf_counter() - t0
        timing_file = sub.run_dir / "timing.json"
        if timing_file.exists():  # resumed rows report the recorded per-fold times
            seconds = sum(json.loads(timing_file.read_text()).values())
        folds = [(a.tolist(), b.tolist()) for a, b in load_folds(sub.run_dir)]
        if folds_ref is None:
            folds_ref = folds
        elif folds != folds_ref:
            raise RuntimeError(f"ablation row {sub.name} used different folds than the first row")
        pred = pd.read_csv(sub.run_dir / "predictions.csv")
        per_fold = []
        for _, g in pred.groupby("fold"):
            probs = g[[f"prob_{c}" for c in manifest.classes]].to_numpy()
            per_fold.append(classification_metrics(g["y_true"].to_numpy(), probs, manifest.classes))
        summary = summarise(per_fold, TABLE1_COLUMNS)
        records.append({"row": row_name(row), **row, "train_seconds": seconds,
                        **{f"{k}_mean": summary[k][0] for k in TABLE1_COLUMNS},
                        **{f"{k}_std": summary[k][1] for k in TABLE1_COLUMNS}})
    table = pd.DataFrame(records)
    table.to_csv(root / "ablation.csv", index=False)
    md = ["| SD | RGSD | AGSD | " + " | ".join(TABLE1_COLUMNS) + " | training time (s) |",
          "|" + "---|" * (4 + len(TABLE1_COLUMNS))]
    for r in records:
        marks = ["✓" if r[k] else "" for k in ("use_sd", "use_rgsd", "use_agsd")]
        cells = [f"{r[f'{k}_mean']:.3f} ± {r[f'{k}_std']:.3f}" for k in TABLE1_COLUMNS]
        md.append("| " + " | ".join(marks + cells + [f"{r['train_seconds']:.0f}"]) + " |")
    text = f"# DualDistill ablation: {cfg.data.spec}, {cfg.model.backbone}, {cfg.train.folds}-fold grouped CV\n\n" \
        + "\n".join(md) + "\n"
    (root / "ablation.md").write_text(text)
    return root / "ablation.md"
