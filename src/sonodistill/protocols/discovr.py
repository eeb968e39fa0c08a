"""The DISCOVR protocol: per grouped fold, pretrain the encoders on the fold's training rows (only the
`train_on_label` rows when set, e.g. normal clips), embed its training and test clips with the frozen video encoder,
and score the embeddings (`evaluation.embedding_eval`: kNN anomaly detection, linear and kNN probes, regression
probe). The final model (train.final, or --final-only) pretrains one encoder on all items (or all `train_on_label`
items) into RUN/final/model.safetensors, the features model that `sonodistill predict|serve|export` load.

Per fold: fold_k/model.safetensors (the exported encoders), embeddings.npy and embedding_rows.npy (their manifest
rows: training then test), test_predictions.csv, and eval.json, written last: it marks the fold finished. On
resume a finished fold is re-evaluated from its saved embeddings, without pretraining again. The run: metrics.json
(per fold and mean ± std), predictions.csv (the anomaly score and call of every test clip, which `sonodistill
compare` pairs between runs) and report.md. `recipe_options.run_folds` runs a subset of the folds (no fold folder for
the others).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from torch import nn

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.evaluation.embedding_eval import (
    ANOMALY_OUTCOMES,
    EmbeddingEvaluation,
    evaluate_embeddings,
    summarise_sections,
    write_embedding_metrics,
    write_embedding_report,
)
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run
from sonodistill.recipes.discovr import DISCOVROptions, load_encoders

log = logging.getLogger(__name__)

EVAL = "eval.json"
EMBEDDINGS = "embeddings.npy"
EMBEDDING_ROWS = "embedding_rows.npy"
TEST_PREDICTIONS = "test_predictions"
#: the run's predictions.csv (what `sonodistill compare` scores): the anomaly detection of every test clip
ANOMALY_COLUMNS = ["fold", "index", "group", "y_true", *ANOMALY_OUTCOMES]


def _options(cfg: RunConfig) -> DISCOVROptions:
    return parse_options(DISCOVROptions, cfg.recipe_options, "discovr")


def pretrain_rows(manifest: Manifest, rows: np.ndarray, label: str | None) -> np.ndarray:
    """Training rows restricted to one label (`None`: all)."""
    rows = np.asarray(rows, dtype=np.int64)
    if label is None:
        return rows
    if not manifest.has_labels or str(label) not in manifest.classes:
        raise ConfigError(f"recipe_options.train_on_label={label!r} is not a class of {manifest.name} "
                          f"({manifest.classes})")
    keep = rows[manifest.labels[rows] == manifest.classes.index(str(label))]
    if keep.size == 0:
        raise ConfigError(f"no training items with label {label!r} in this fold")
    return keep


def clip_embeddings(encoder: nn.Module, cfg: RunConfig, manifest: Manifest, rows: np.ndarray, seed: int) -> np.ndarray:
    """Frozen clip embeddings `len(rows) x D` of the given manifest rows (uniform frames, no augmentation): the
    pooled output of `encoder` (DISCOVR's exported encoders embed with their `eval_branch`)."""
    from sonodistill.evaluation.probes import extract_features
    from sonodistill.recipes.data import build_dataset, make_loader

    data = build_dataset(manifest.subset(rows), cfg.data, train=False, seed=seed)
    feats, index = extract_features(encoder, make_loader(data, cfg.data, train=False, seed=seed))
    out = np.empty_like(feats)
    out[index] = feats
    return out


def evaluate_rows(manifest: Manifest, how: EmbeddingEvaluation, rows: np.ndarray, embeddings: np.ndarray,
                  train: np.ndarray, test: np.ndarray) -> tuple[dict[str, dict[str, float]], Any]:
    """`evaluate_embeddings` on embeddings of the manifest rows `rows` (which hold the fold's train and test)."""
    feats = np.zeros((len(manifest), embeddings.shape[1]), dtype=np.float32)
    feats[np.asarray(rows, dtype=np.int64)] = embeddings
    return evaluate_embeddings(manifest, feats, np.asarray(train), np.asarray(test), how)


def _rank() -> int:
    from sonodistill.protocols.folds import process_rank

    return process_rank()


class DISCOVRProtocol(Protocol):
    """Pretrain per fold, evaluate frozen clip embeddings; the final model is the encoder pretrained on all items."""

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        from sonodistill.protocols.folds import build_once

        build_once(cfg, len(manifest.classes))
        o = _options(cfg)
        if not manifest.has_labels and cfg.train.cv:
            raise ConfigError(f"{manifest.name} has no labels: DISCOVR's cross-validation scores frozen embeddings "
                              "(anomaly detection, probes), which needs them; pretrain on it with --final-only "
                              "(set recipe_options.train_on_label=null and normal_label=null)")
        for key in ("train_on_label", "normal_label"):
            label = getattr(o, key)
            if label is not None and (not manifest.has_labels or str(label) not in manifest.classes):
                hint = "" if manifest.has_labels else f"; {manifest.name} has no labels: set it to null"
                raise ConfigError(f"recipe_options.{key}={label!r} is not a class of {manifest.name} "
                                  f"({manifest.classes}){hint}")
        if o.run_folds is not None and cfg.train.cv:
            bad = sorted(k for k in o.run_folds if k >= cfg.train.folds)
            if bad:
                raise ConfigError(f"recipe_options.run_folds: fold(s) {bad} do not exist; there are "
                                  f"{cfg.train.folds} folds (train.folds)")
            if cfg.train.fold is not None and cfg.train.fold not in o.run_folds:
                raise ConfigError(f"train.fold={cfg.train.fold} (--fold) is not in recipe_options.run_folds="
                                  f"{o.run_folds}: nothing would run")

    def folds_to_run(self, run: Run, n_folds: int) -> list[int]:
        """`recipe_options.run_folds` (checked in `check`), narrowed by `train.fold`; else the loop's default."""
        o = _options(run.cfg)
        every = super().folds_to_run(run, n_folds)
        return every if o.run_folds is None else [k for k in every if k in o.run_folds]

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        from sonodistill.recipes.trainer import WEIGHTS, fit_fold

        cfg, manifest, o = run.cfg, run.manifest, _options(run.cfg)
        rows = pretrain_rows(manifest, fold.train, o.train_on_label)
        t0 = time.perf_counter()
        fit_fold(cfg, manifest, rows, rows[:0], fold.index, fold.dir, resume=run.resume, **run.trainer_overrides)
        record = {"fold": fold.index, "pretrain_items": int(rows.size), "pretrain_seconds": time.perf_counter() - t0,
                  "image_pretrained": o.image_pretrained, "eval_branch": o.eval_branch}
        if fold.final or _rank() != 0:  # the final model has no test rows; rank 0 evaluates a fold
            return FoldResult(record=record)
        encoders = load_encoders(cfg, fold.dir / WEIGHTS)
        every = np.concatenate([fold.train, fold.test])
        embeddings = clip_embeddings(encoders, cfg, manifest, every, fold.seed)  # the eval_branch's embeddings
        return self._scored(run, fold, every, embeddings, record)

    def _scored(self, run: Run, fold: Fold, rows: np.ndarray, embeddings: np.ndarray,
                record: dict[str, Any]) -> FoldResult:
        metrics, table = evaluate_rows(run.manifest, _options(run.cfg).evaluation(), rows, embeddings, fold.train,
                                       fold.test)
        table.insert(0, "fold", fold.index)
        log.info("fold %d: %s", fold.index, {s: m.get("f1") for s, m in metrics.items()})
        anomaly = table[ANOMALY_COLUMNS] if set(ANOMALY_COLUMNS) <= set(table.columns) else None
        return FoldResult(predictions=anomaly, embeddings=embeddings, tables={TEST_PREDICTIONS: table},
                          record=record | metrics)

    @staticmethod
    def _write_eval(fold: Fold, result: FoldResult) -> None:
        fold.dir.mkdir(parents=True, exist_ok=True)
        result.tables[TEST_PREDICTIONS].to_csv(fold.dir / f"{TEST_PREDICTIONS}.csv", index=False)
        (fold.dir / EVAL).write_text(json.dumps(result.record, indent=1, default=float))

    def save_fold(self, run: Run, fold: Fold, result: FoldResult) -> None:
        """embeddings.npy, embedding_rows.npy, test_predictions.csv, then eval.json (the fold is finished)."""
        if fold.final:
            return
        fold.dir.mkdir(parents=True, exist_ok=True)
        np.save(fold.dir / EMBEDDINGS, result.embeddings)
        np.save(fold.dir / EMBEDDING_ROWS, np.concatenate([fold.train, fold.test]))
        self._write_eval(fold, result)

    def load_finished(self, run: Run, fold: Fold) -> FoldResult | None:
        """A finished fold re-runs only the (cheap) evaluation on its saved embeddings, and rewrites its eval.json
        and test_predictions.csv (evaluation options may have changed)."""
        files = [fold.dir / name for name in (EVAL, EMBEDDINGS, EMBEDDING_ROWS)]
        if not all(f.is_file() for f in files):
            return None
        saved = json.loads(files[0].read_text())
        record = {k: saved[k] for k in ("fold", "pretrain_items", "pretrain_seconds", "image_pretrained", "eval_branch")
                  if k in saved}
        result = self._scored(run, fold, np.load(files[2]), np.load(files[1]), record)
        if _rank() == 0:
            self._write_eval(fold, result)
        return result

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        """metrics.json and report.md (mean ± std over the folds run); returns {section: {metric: MeanStd}}."""
        from sonodistill.protocols.folds import trains_final
        from sonodistill.recipes.trainer import WEIGHTS

        cfg = run.cfg
        per_fold = [r.record for r in results if r.record]
        summary = summarise_sections(per_fold)
        write_embedding_metrics(run.dir, per_fold, summary)
        o = _options(cfg)
        notes = [f"Scored embeddings: the {o.eval_branch} branch ({o.eval_encoder})"
                 + (" per frame, averaged over the clip" if o.eval_branch == "image" else "")
                 + (f"; image branch `{o.image_backbone}` started from `{o.image_pretrained}`"
                    + (f", stem + {o.image_freeze_stages} stages frozen" if o.image_freeze_stages else "")
                    if o.use_img or o.use_scd else "; no image branch") + ".", ""]
        if trains_final(cfg) and (run.dir / "final" / WEIGHTS).is_file():
            label = o.train_on_label
            n = len(pretrain_rows(run.manifest, np.arange(len(run.manifest)), label))
            notes += [f"Final model: `final/{WEIGHTS}`, pretrained on all {n} items"
                     + (f" with label {label!r}" if label is not None else "")
                     + " (train.final); `sonodistill predict RUN CLIPS` embeds with it. Its embeddings are not "
                     "evaluated: the folds above estimate how an encoder pretrained this way does.", ""]
        write_embedding_report(run.dir, title, cfg.name, summary, [r["fold"] for r in per_fold],
                               int(cfg.train.folds), notes)
        return summary
