"""The classification protocol (supervised, dualdistill): one Lightning fit per fold on the shared engine
(`recipes.trainer.fit_fold`), out-of-fold class probabilities, the CV report (`evaluation.report`)."""

from __future__ import annotations

from typing import Any

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run


class ClassificationProtocol(Protocol):
    """Video or frame classification: train on the fold's training rows, predict its test rows."""

    calibrates = True

    def title(self, run: Run) -> str:
        from sonodistill.evaluation.run_dir import classification_title

        return classification_title(run.cfg)

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        from sonodistill.protocols.folds import build_once

        if not manifest.has_labels:
            raise ConfigError(f"{cfg.recipe} trains a classifier, and {manifest.name} has no labels (an unlabelled "
                              "set pretrains: `train dino` or `train discovr --final-only`)")
        build_once(cfg, len(manifest.classes))

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        from sonodistill.recipes.trainer import fit_fold

        pred = fit_fold(run.cfg, run.manifest, fold.train, fold.test, fold.index, fold.dir, resume=run.resume,
                        **run.trainer_overrides)
        return FoldResult(predictions=pred)

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        import pandas as pd

        from sonodistill.evaluation.report import write_cv_report

        predictions = pd.concat([r.predictions for r in results if r.predictions is not None], ignore_index=True)
        return write_cv_report(run.dir, predictions, run.manifest.classes, title=title)
