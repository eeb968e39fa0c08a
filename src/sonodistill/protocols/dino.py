"""The DINO protocol: one pretraining run on every frame of `--data` plus `recipe_options.extra_data` (labels are
ignored), no folds (`cross_validates = False`): the fold loop's final fit is the pretraining, and the run is its
model. Outputs stay in the run directory itself, where `model.pretrained: RUN`, `recipe_options.init_from: RUN`,
`sonodistill predict RUN` and the benchmarks read them: `teacher_backbone.safetensors`, `student_backbone.safetensors`,
`model.safetensors` (the teacher backbone), `diagnostics.csv`, `pretrain.json`, `pretrain_sources.csv`, `train.log`,
`checkpoints/last.ckpt` (resume). The loop's `final/done` marks the finished run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.manifest import Manifest
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run
from sonodistill.recipes.dino import DINOOptions, DINORecipe, peak_rss_mib
from sonodistill.recipes.frame_features import STUDENT_WEIGHTS, TEACHER_WEIGHTS, build_frame_backbone

log = logging.getLogger(__name__)

SUMMARY = "pretrain.json"


class DINOArtifacts(L.Callback):
    """Per epoch: diagnostics row (+ collapse warning in the log and RUN/train.log), backbone weights."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: DINORecipe) -> None:  # type: ignore[override]
        row = pl_module.epoch_diagnostics()
        reason = pl_module.check_collapse(row)
        row["collapsed"] = reason or ""
        if not trainer.is_global_zero:
            return
        if reason:
            log.warning("DINO collapse detected at epoch %d/%d (diagnostics.csv epoch %d): %s. Consider a lower "
                        "teacher temperature, a larger centre momentum or a smaller learning rate.", row["epoch"] + 1,
                        trainer.max_epochs, row["epoch"], reason)
        else:
            log.info("dino epoch %d/%d: loss %.4f, teacher entropy %.3f nats (log D = %.3f), KL to mean %.3f, "
                     "feature std %.4f, %.1f images/s (%.0f s)", row["epoch"] + 1, trainer.max_epochs,
                     row.get("loss", math.nan), row.get("teacher_entropy", math.nan),
                     math.log(pl_module.options.out_dim), row.get("teacher_kl_to_mean", math.nan),
                     row.get("teacher_feature_std", math.nan), row["images_per_s"], row["epoch_seconds"])
        path = self.run_dir / "diagnostics.csv"
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        if len(old):
            old = old[old["epoch"] < row["epoch"]]  # a resumed run rewrites the epochs it repeats
        pd.concat([old, pd.DataFrame([row])], ignore_index=True).to_csv(path, index=False)
        from sonodistill.recipes.trainer import save_weights

        save_weights(pl_module.teacher.backbone, self.run_dir / TEACHER_WEIGHTS)
        save_weights(pl_module.student.backbone, self.run_dir / STUDENT_WEIGHTS)


def load_extra(specs: list[str], cfg: RunConfig) -> list[Manifest]:
    """The manifests of `recipe_options.extra_data` (ADAPTER:ROOT, or synthetic:PRESET with the run's data
    settings), their files checked."""
    from dataclasses import replace

    from sonodistill.data.adapters import load_adapter, parse_data_spec
    from sonodistill.recipes.data import load_manifest

    out = []
    for spec in specs:
        if str(spec).startswith("synthetic:"):
            m = load_manifest(replace(cfg.data, spec=str(spec)))
        else:
            name, root = parse_data_spec(str(spec))
            m = load_adapter(name, root)
        m.validate(check_files=True)
        out.append(m)
    return out


def steps_per_epoch(n_batches: int, cfg: RunConfig) -> int:
    """Optimiser steps per epoch and device: the loader's batches, cut by `train.limit_train_batches`."""
    limit = cfg.train.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        n_batches = min(n_batches, limit)
    elif isinstance(limit, float) and limit < 1.0:
        n_batches = max(1, int(n_batches * limit))
    return max(1, n_batches // max(1, cfg.train.devices))


def run_pretraining(cfg: RunConfig, manifests: list[Manifest], resume: bool = False,
                    **trainer_overrides: Any) -> dict[str, Any] | None:
    """Pretrain on every frame of `manifests` into the run directory; returns the summary (also pretrain.json),
    None on DDP ranks other than 0. Seeded by `train.seed` (the run has no folds)."""
    from sonodistill.data.pretraining import pretraining_dataset, pretraining_loader
    from sonodistill.data.multicrop import MultiCropAugment
    from sonodistill.recipes.data import EpochSeededSampler
    from sonodistill.recipes.frame_features import clip_cache, preprocess_config
    from sonodistill.recipes.trainer import build_trainer, fit

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    o = parse_options(DINOOptions, cfg.recipe_options, "dino")
    seed = int(cfg.train.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    dataset = pretraining_dataset(manifests, preprocess_config(cfg.data), clip_cache(cfg.data),
                                  MultiCropAugment(o.multicrop()), o.frames_per_video, seed)
    loader = pretraining_loader(dataset, EpochSeededSampler(len(dataset), seed), cfg.data.batch_size,
                                cfg.data.num_workers)
    spe = steps_per_epoch(len(loader), cfg)
    sources = [{"name": m.name, "modality": m.modality, "items": len(m), "groups": int(len(set(m.groups))),
                "frames_per_epoch": len(ds)} for m, ds in zip(manifests, dataset.datasets)]
    pd.DataFrame(sources).to_csv(run_dir / "pretrain_sources.csv", index=False)
    log.info("dino: pretraining on %d frames per epoch from %s; %d steps/epoch x %d epochs; labels are not used",
             len(dataset), [s["name"] for s in sources], spe, cfg.train.epochs)
    recipe = DINORecipe(cfg, steps_per_epoch=spe)
    trainer = build_trainer(cfg, run_dir, [DINOArtifacts(run_dir)], epoch_summary=False, **trainer_overrides)
    t0 = time.perf_counter()
    fit(trainer, recipe, loader, run_dir, resume, "dino")
    wall = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    diag = pd.read_csv(run_dir / "diagnostics.csv")
    steady = diag[diag["epoch"] > diag["epoch"].min()] if len(diag) > 1 else diag
    summary = {
        "sources": sources,
        "frames_per_epoch": len(dataset),
        "steps_per_epoch": spe,
        "epochs": int(cfg.train.epochs),
        "views": {"global": [2, o.global_size], "local": [o.n_local, o.local_size]},
        "wall_seconds": wall,
        "images_per_s": float(steady["images"].sum() / steady["epoch_seconds"].sum()),
        "peak_rss_mib": peak_rss_mib(),
        "final": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in diag.iloc[-1].to_dict().items()},
        "collapsed_epochs": [int(e) for e, c in zip(diag["epoch"], diag["collapsed"]) if isinstance(c, str) and c],
        "note": "labels were not used; every frame of the listed sources was seen, including frames that a "
                "later cross-validation may test on (transductive pretraining)",
    }
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=1, default=float))
    return summary


class DINOProtocol(Protocol):
    """Pretraining on every item, no folds: `fit` runs once (the loop's final fit), `report` returns its summary."""

    cross_validates = False
    scores_validation = False

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        parse_options(DINOOptions, cfg.recipe_options, "dino")
        build_frame_backbone(cfg)  # a video backbone is a ConfigError before anything is written

    def prepare(self, run: Run) -> None:
        """The extra data sets of `recipe_options.extra_data` join `--data` (their files checked)."""
        o = parse_options(DINOOptions, run.cfg.recipe_options, "dino")
        run.state = [run.manifest] + load_extra(list(o.extra_data), run.cfg)

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        summary = run_pretraining(run.cfg, run.state, run.resume, **run.trainer_overrides)  # logged to RUN/train.log
        return FoldResult(record=summary or {})

    def title(self, run: Run) -> str:
        return f"{run.cfg.name}: dino pretraining on {run.cfg.data.spec}"

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        """The pretraining summary (pretrain.json; read back when a resumed run was already finished)."""
        if results and results[0].record:
            return results[0].record
        return json.loads((run.dir / SUMMARY).read_text())
