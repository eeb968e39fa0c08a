"""The `dualdistill` recipe: SD + RGSD + AGSD self-distillation on any staged video backbone.

Training adds auxiliary heads and attention modules on the backbone's stages; the inference model is the
same backbone + final head as the `supervised` recipe (zero inference overhead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sonodistill.config import RunConfig, parse_options
from sonodistill.errors import ConfigError
from sonodistill.losses.self_distill import DualDistillLoss
from sonodistill.models.stage_heads import AuxiliaryHeads, StageAttentionModules
from sonodistill.recipes.base import ClassificationRecipe, stage_outputs

@dataclass
class DualDistillOptions:
    """recipe_options of `dualdistill` (the paper's defaults)."""

    alpha: float = 0.5              # weight of the KL terms of SD
    beta: float = 1.0               # weight of RGSD
    gamma: float = 1.0              # weight of AGSD
    temperature: float = 3.0
    use_sd: bool = True
    use_rgsd: bool = True
    use_agsd: bool = True
    student_stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    detach_teacher: bool = True

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"recipe_options (dualdistill).temperature must be > 0, got {self.temperature}")
        if not self.student_stages:
            raise ConfigError("recipe_options (dualdistill).student_stages must name at least one stage")


class DualDistillRecipe(ClassificationRecipe):
    """Deepest stage teaches the shallower ones: logits (SD), frame relations (RGSD), attention maps (AGSD)."""

    Options = DualDistillOptions
    modalities = ("video",)  # its relation and attention terms run over a clip's frame axis

    def __init__(self, cfg: RunConfig, num_classes: int, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, num_classes, steps_per_epoch)
        o = parse_options(DualDistillOptions, cfg.recipe_options, "dualdistill")
        backbone = self.model.backbone
        if backbone.kind != "video":
            raise ConfigError(f"dualdistill needs a video backbone; {cfg.model.backbone!r} is a {backbone.kind} backbone")
        n = len(backbone.stage_channels)
        students = tuple(o.student_stages)
        self.aux_heads = AuxiliaryHeads(backbone.stage_channels, num_classes, students) if o.use_sd else None
        self.attention = StageAttentionModules(n, students) if o.use_agsd else None
        self.criterion = DualDistillLoss(
            alpha=o.alpha, beta=o.beta, gamma=o.gamma, temperature=o.temperature,
            use_sd=o.use_sd, use_rgsd=o.use_rgsd, use_agsd=o.use_agsd,
            student_stages=students, num_stages=n, detach_teacher=o.detach_teacher,
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
