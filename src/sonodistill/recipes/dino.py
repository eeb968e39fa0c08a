"""The `dino` recipe: DINO self-distillation (Caron et al. 2021) of a frame ViT on unlabelled ultrasound frames.

Student = backbone + DINOHead on 2 global + N local crops; teacher = EMA copy on the 2 global crops. Per-step
cosine schedules (learning rate with warm-up, weight decay, teacher momentum) and the per-epoch teacher
temperature are built for the run's real epochs x steps. DINO's step order is kept: backward, per-parameter
gradient clipping, last-layer gradients dropped in the first `freeze_last_layer` epochs, optimiser step, EMA.

The run (`protocols.dino.DINOProtocol`: no folds, the run is its model) pretrains on every frame of `--data` plus
`recipe_options.extra_data` (labels are ignored) and writes into the run directory:
`teacher_backbone.safetensors` (what downstream code uses), `student_backbone.safetensors`,
`model.safetensors` (= teacher backbone, the inference model), `diagnostics.csv` (per epoch: teacher
entropy, KL to the mean, feature std, loss, throughput, memory), `pretrain.json`, `train.log`, checkpoints.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.manifest import Manifest
from sonodistill.data.multicrop import MultiCropConfig
from sonodistill.errors import ConfigError
from sonodistill.losses.dino import DINOLoss, is_collapsed
from sonodistill.losses.ema import make_teacher, update_ema
from sonodistill.models.projection import DINOHead, cancel_last_layer_gradients
from sonodistill.models.wrappers import MultiCropWrapper
from sonodistill.recipes.base import check_finite
from sonodistill.recipes.frame_features import build_frame_backbone
from sonodistill.recipes.schedules import (
    Schedule,
    apply_lr,
    apply_weight_decay,
    cosine_schedule,
    teacher_temp_schedule,
)

#: `sonodistill explain` hooks on a dino run (see docs/bedside.md): last-block [CLS] attention of the frame ViT
#: (a CNN backbone refuses it, saying attention maps need a ViT).
EXPLAINERS = {"attention": "sonodistill.explain.attention:attention_explainer"}

#: teacher feature std (L2-normalised [CLS], averaged over dims) below which features count as constant.
#: A randomly initialised ViT already gives small values (about 0.01 for D = 48), so only near-0 is flagged.
FEATURE_STD_COLLAPSE = 1e-4

@dataclass
class DINOOptions:
    """recipe_options of `dino` (the official DINO ViT-S/8 values where they apply)."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 30
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    weight_decay_end: float = 0.4      # weight decay goes cosine optim.weight_decay -> this
    min_lr: float = 1e-6               # learning rate goes warm-up -> optim.lr -> cosine -> this
    freeze_last_layer: int = 1         # epochs with the head's last layer frozen
    frames_per_video: int = 8          # frames drawn per video and epoch (video manifests)
    extra_data: list[str] = field(default_factory=list)  # more ADAPTER:ROOT specs whose frames join the set
    collapse_rel_tol: float = 0.01     # is_collapsed tolerance (fraction of log(out_dim))

    def __post_init__(self) -> None:
        where = "recipe_options (dino)"
        for name in ("out_dim", "hidden_dim", "bottleneck_dim", "head_layers", "global_size", "local_size",
                     "frames_per_video"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_local", "warmup_teacher_temp_epochs", "freeze_last_layer"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp", "collapse_rel_tol"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be > 0, got {getattr(self, name)}")
        for name in ("center_momentum", "momentum_teacher"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{where}.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("global_scale", "local_scale"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0:
                raise ConfigError(f"{where}.{name} must be [low, high] with 0 < low <= high <= 1, got {lo_hi}")

    def multicrop(self) -> MultiCropConfig:
        return MultiCropConfig(global_size=self.global_size, local_size=self.local_size, n_local=self.n_local,
                               global_scale=tuple(self.global_scale), local_scale=tuple(self.local_scale))


def clip_gradients_per_parameter(model: nn.Module, clip: float) -> list[float]:
    """DINO's `clip_gradients`: rescale each parameter's gradient to L2 norm <= clip separately; returns the norms."""
    norms = []
    for p in model.parameters():
        if p.grad is None:
            continue
        n = float(p.grad.detach().norm(2))
        norms.append(n)
        coef = clip / (n + 1e-6)
        if coef < 1:
            p.grad.mul_(coef)
    return norms


def _param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """DINO's `get_params_groups`: biases and norm weights (ndim <= 1) without weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim <= 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_rss_mib() -> float:
    """Peak resident memory of this process (`getrusage` ru_maxrss) in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


class DINORecipe(L.LightningModule):
    """DINO pretraining of `cfg.model.backbone` (a frame backbone). Batches are {"x": list of views}.

    Served as a features model (`sonodistill predict|serve|export` on the run directory): the teacher backbone
    in RUN/model.safetensors, one pooled embedding per frame.
    """

    task = "features"
    Options = DINOOptions

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest | None = None) -> nn.Module:
        """The untrained teacher backbone of RUN/model.safetensors: `B x 1 x S x S` -> StageOutputs (`pooled` `B x D`)."""
        return build_frame_backbone(cfg)

    def __init__(self, cfg: RunConfig, num_classes: int = 0, steps_per_epoch: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.options = o = parse_options(DINOOptions, cfg.recipe_options, "dino")
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        epochs = int(cfg.train.epochs)
        if epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {epochs}")
        backbone = build_frame_backbone(cfg, start=True)
        head = DINOHead(backbone.embed_dim, o.out_dim, hidden_dim=o.hidden_dim,
                        bottleneck_dim=o.bottleneck_dim, nlayers=o.head_layers,
                        norm_last_layer=o.norm_last_layer)
        self.student = MultiCropWrapper(backbone, head)
        self.teacher = make_teacher(self.student)
        self.n_local = o.n_local
        temps = teacher_temp_schedule(o.warmup_teacher_temp, o.teacher_temp,
                                      o.warmup_teacher_temp_epochs, epochs)
        self.criterion = DINOLoss(o.out_dim, n_global=2, n_local=self.n_local,
                                  student_temp=o.student_temp, teacher_temp_schedule=temps.values,
                                  center_momentum=o.center_momentum)
        total = epochs * self.steps_per_epoch
        warm = min(total, int(cfg.optim.warmup_epochs) * self.steps_per_epoch)
        self.lr_schedule: Schedule = cosine_schedule(float(cfg.optim.lr), o.min_lr, total, warm)
        self.wd_schedule: Schedule = cosine_schedule(float(cfg.optim.weight_decay), o.weight_decay_end, total)
        self.momentum_schedule: Schedule = cosine_schedule(o.momentum_teacher, 1.0, total)
        self.temp_schedule: Schedule = temps
        self._reset_epoch_stats()

    # -- the model that is exported: the teacher backbone (DINO evaluates the teacher) -------------
    def inference_model(self) -> nn.Module:
        return self.teacher.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.backbone(x).pooled

    # -- training ----------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        name = self.cfg.optim.name
        groups = _param_groups(self.student)
        if name == "adamw":
            return torch.optim.AdamW(groups, lr=float(self.cfg.optim.lr))
        if name == "sgd":
            return torch.optim.SGD(groups, lr=float(self.cfg.optim.lr), momentum=float(self.cfg.optim.momentum))
        raise ConfigError(f"optim.name: unknown optimiser {name!r} (use 'adamw' or 'sgd')")

    def _reset_epoch_stats(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0
        self._images = 0
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self) -> None:
        self._reset_epoch_stats()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        views = batch["x"]
        if not isinstance(views, (list, tuple)) or len(views) != 2 + self.n_local:
            raise ConfigError(f"dino: expected a list of {2 + self.n_local} views per batch, got "
                              f"{type(views).__name__} of {len(views) if isinstance(views, (list, tuple)) else 1}")
        step, epoch = int(self.global_step), int(self.current_epoch)
        opt = self.optimizers()
        raw = opt.optimizer if hasattr(opt, "optimizer") else opt
        apply_lr(raw, self.lr_schedule(step))
        apply_weight_decay(raw, self.wd_schedule(step))
        with torch.no_grad():
            t_out, t_feat = self.teacher(list(views[:2]))
        s_out, s_feat = self.student(list(views))
        loss, parts = self.criterion(s_out, t_out, epoch)
        check_finite(step, {"loss": loss})
        opt.zero_grad()
        self.manual_backward(loss)
        clip = self.cfg.optim.grad_clip
        if clip:
            clip_gradients_per_parameter(self.student, float(clip))
        cancel_last_layer_gradients(self.student.head, epoch, self.options.freeze_last_layer)
        opt.step()
        update_ema(self.teacher, self.student, self.momentum_schedule(step), buffers="none")

        bs = int(views[0].shape[0])
        stats = {
            "loss": float(loss.detach()),
            "teacher_entropy": float(parts["teacher_entropy"]),
            "teacher_kl_to_mean": float(parts["teacher_kl_to_mean"]),
            "teacher_mean_entropy": float(parts["teacher_mean_entropy"]),
            "teacher_feature_std": float(F.normalize(t_feat.detach().float(), dim=-1).std(dim=0).mean()),
            "student_feature_std": float(F.normalize(s_feat[: 2 * bs].detach().float(), dim=-1).std(dim=0).mean()),
        }
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        self._images += bs
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for k in ("teacher_entropy", "teacher_kl_to_mean", "teacher_feature_std"):
            self.log(f"train/{k}", stats[k], on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/lr", self.lr_schedule(step), on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/momentum", self.momentum_schedule(step), on_step=True, on_epoch=False, batch_size=bs)
        self.log("train/teacher_temp", float(parts["teacher_temp"]), on_step=False, on_epoch=True, batch_size=bs)
        return loss.detach()

    def epoch_diagnostics(self) -> dict[str, float]:
        """Mean per-step statistics of the epoch that just ended, with throughput and peak memory."""
        n = max(1, self._count)
        seconds = time.perf_counter() - self._t0
        row: dict[str, float] = {"epoch": int(self.current_epoch), "steps": self._count}
        row.update({k: v / n for k, v in self._sums.items()})
        row.update({
            "teacher_temp": self.temp_schedule(int(self.current_epoch)),
            "images": self._images,
            "epoch_seconds": seconds,
            "images_per_s": self._images / seconds if seconds > 0 else math.nan,
            "peak_rss_mib": peak_rss_mib(),
        })
        return row

    def check_collapse(self, row: dict[str, float]) -> str | None:
        """A reason string when the epoch's teacher looks collapsed (entropy at 0 or log D, or constant features)."""
        out_dim = self.options.out_dim
        reason = is_collapsed(row, out_dim, rel_tol=self.options.collapse_rel_tol)
        if reason is None and row.get("teacher_feature_std", 1.0) < FEATURE_STD_COLLAPSE:
            reason = (f"feature collapse: std over the batch of the L2-normalised teacher features is "
                      f"{row['teacher_feature_std']:.3g} < {FEATURE_STD_COLLAPSE:g} (every frame gets the same embedding)")
        return reason
