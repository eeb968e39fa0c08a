"""The `dualdistill` recipe: SD + RGSD + AGSD self-distillation on any staged video backbone.

Training adds auxiliary heads and attention modules on the backbone's stages; the inference model is the
same backbone + final head as the `supervised` recipe (zero inference overhead).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sonodistill.config import RunConfig
from sonodistill.errors import ConfigError
from sonodistill.losses.self_distill import DualDistillLoss
from sonodistill.models.stage_heads import AuxiliaryHeads, StageAttentionModules
from sonodistill.recipes.base import ClassificationRecipe, stage_outputs

#: recipe_options understood by this recipe, with their defaults.
DEFAULTS: dict[str, Any] = {
    "alpha": 0.5,             # weight of the KL terms of SD
    "beta": 1.0,              # weight of RGSD
    "gamma": 1.0,             # weight of AGSD
    "temperature": 3.0,
    "use_sd": True,
    "use_rgsd": True,
    "use_agsd": True,
    "student_stages": [1, 2, 3],
    "detach_teacher": True,
}


def dualdistill_options(cfg: RunConfig) -> dict[str, Any]:
    """recipe_options merged over DEFAULTS; unknown keys are an error."""
    unknown = set(cfg.recipe_options) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"recipe_options: unknown key(s) {sorted(unknown)} for dualdistill; known {sorted(DEFAULTS)}")
    return {**DEFAULTS, **cfg.recipe_options}


class DualDistillRecipe(ClassificationRecipe):
    """Deepest stage teaches the shallower ones: logits (SD), frame relations (RGSD), attention maps (AGSD)."""

    def __init__(self, cfg: RunConfig, num_classes: int, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, num_classes, steps_per_epoch)
        o = dualdistill_options(cfg)
        backbone = self.model.backbone
        if backbone.kind != "video":
            raise ConfigError(f"dualdistill needs a video backbone; {cfg.model.backbone!r} is a {backbone.kind} backbone")
        n = len(backbone.stage_channels)
        students = tuple(int(s) for s in o["student_stages"])
        self.aux_heads = AuxiliaryHeads(backbone.stage_channels, num_classes, students) if o["use_sd"] else None
        self.attention = StageAttentionModules(n, students) if o["use_agsd"] else None
        self.criterion = DualDistillLoss(
            alpha=o["alpha"], beta=o["beta"], gamma=o["gamma"], temperature=o["temperature"],
            use_sd=o["use_sd"], use_rgsd=o["use_rgsd"], use_agsd=o["use_agsd"],
            student_stages=students, num_stages=n, detach_teacher=o["detach_teacher"],
        )

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # One backbone pass: every term reads the same stage features.
        out, logits = stage_outputs(self.model, batch["x"])
        stage_logits = self.aux_heads(out.stages) if self.aux_heads is not None else []
        maps = self.attention(out.stages) if self.attention is not None else None
        loss, parts = self.criterion(stage_logits, logits, out.stages, maps, batch["y"])
        return loss, parts

    def inference_model(self) -> nn.Module:
        return self.model
