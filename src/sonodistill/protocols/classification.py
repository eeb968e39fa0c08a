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
        check_backbone_modality(cfg, manifest)
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


#: a packaged config for each modality, named when the backbone does not fit the data
CONFIG_FOR = {"image": "pocus-finetune-imagenet (efficientnet_lite0)",
              "video": "lus-tsm-imagenet (tsm_efficientnet_lite0)"}


def check_backbone_modality(cfg: RunConfig, manifest: Manifest) -> None:
    """The method is defined on the data's modality (`ClassificationRecipe.modalities`: DualDistill needs videos),
    and its backbone takes the items as they come: images need a frame backbone (`B x C x H x W`), videos a video
    backbone (`B x C x T x H x W`). A mismatch is a ConfigError before anything is written."""
    from sonodistill.models.backbones import backbone_kind
    from sonodistill.recipes import get_recipe

    modalities = get_recipe(cfg.recipe).modalities
    if manifest.modality not in modalities:
        raise ConfigError(f"{cfg.recipe} is defined on {' and '.join(modalities)}s, and "
                          f"{manifest.name} holds {manifest.modality}s (supervised trains on either)")
    want = "video" if manifest.modality == "video" else "frame"
    kind = backbone_kind(cfg.model.backbone)
    if kind != want:
        raise ConfigError(f"{manifest.name} holds {manifest.modality}s, and model.backbone '{cfg.model.backbone}' is "
                          f"a {kind} backbone: give a {want} backbone (--backbone; `sonodistill models` lists their "
                          f"kinds) or a config made for {manifest.modality}s, e.g. --config "
                          f"{CONFIG_FOR[manifest.modality]}")
