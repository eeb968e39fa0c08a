"""The `dino` recipe: DINO self-distillation (Caron et al. 2021) of a frame ViT on unlabelled ultrasound frames.

Student = backbone + DINOHead on 2 global + N local crops; teacher = EMA copy on the 2 global crops. Per-step
cosine schedules (learning rate with warm-up, weight decay, teacher momentum) and the per-epoch teacher
temperature are built for the run's real epochs x steps. DINO's step order is kept: backward, per-parameter
gradient clipping, last-layer gradients dropped in the first `freeze_last_layer` epochs, optimiser step, EMA.

`run_experiment` replaces the fold loop: one pretraining run on every frame of `--data` plus
`recipe_options.extra_data` (labels are ignored), writing into the run directory:
`teacher_backbone.safetensors` (what downstream code uses), `student_backbone.safetensors`,
`model.safetensors` (= teacher backbone, the inference model), `diagnostics.csv` (per epoch: teacher
entropy, KL to the mean, feature std, loss, throughput, memory), `pretrain.json`, `train.log`, checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.data.multicrop import MultiCropAugment, MultiCropConfig
from sonodistill.errors import ConfigError
from sonodistill.losses.dino import DINOLoss, is_collapsed
from sonodistill.losses.ema import make_teacher, update_ema
from sonodistill.models.projection import DINOHead, cancel_last_layer_gradients
from sonodistill.models.wrappers import MultiCropWrapper
from sonodistill.recipes.base import check_finite
from sonodistill.recipes.data import EpochSeededSampler
from sonodistill.recipes.frame_features import (
    STUDENT_WEIGHTS,
    TEACHER_WEIGHTS,
    build_frame_backbone,
    clip_cache,
    preprocess_config,
)
from sonodistill.recipes.schedules import (
    Schedule,
    apply_lr,
    apply_weight_decay,
    cosine_schedule,
    teacher_temp_schedule,
)

log = logging.getLogger(__name__)

#: teacher feature std (L2-normalised [CLS], averaged over dims) below which features count as constant.
#: A randomly initialised ViT already gives small values (about 0.01 for D = 48), so only near-0 is flagged.
FEATURE_STD_COLLAPSE = 1e-4

#: recipe_options understood by this recipe, with their defaults (the official DINO ViT-S/8 values where they apply).
DEFAULTS: dict[str, Any] = {
    "out_dim": 65536,
    "hidden_dim": 2048,
    "bottleneck_dim": 256,
    "head_layers": 3,
    "norm_last_layer": True,
    "global_size": 224,
    "local_size": 96,
    "n_local": 8,
    "global_scale": [0.4, 1.0],
    "local_scale": [0.05, 0.4],
    "student_temp": 0.1,
    "teacher_temp": 0.04,
    "warmup_teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 30,
    "center_momentum": 0.9,
    "momentum_teacher": 0.996,
    "weight_decay_end": 0.4,      # weight decay goes cosine optim.weight_decay -> this
    "min_lr": 1e-6,               # learning rate goes warm-up -> optim.lr -> cosine -> this
    "freeze_last_layer": 1,       # epochs with the head's last layer frozen
    "frames_per_video": 8,        # frames drawn per video and epoch (video manifests)
    "extra_data": [],             # more ADAPTER:ROOT specs whose frames join the pretraining set
    "collapse_rel_tol": 0.01,     # is_collapsed tolerance (fraction of log(out_dim))
}


def dino_options(cfg: RunConfig) -> dict[str, Any]:
    """recipe_options merged over DEFAULTS; unknown keys are an error."""
    unknown = set(cfg.recipe_options) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"recipe_options: unknown key(s) {sorted(unknown)} for dino; known {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **cfg.recipe_options}
    if isinstance(o["extra_data"], str):
        o["extra_data"] = [s for s in o["extra_data"].split(",") if s]
    return o


def multicrop_config(o: dict[str, Any]) -> MultiCropConfig:
    return MultiCropConfig(global_size=int(o["global_size"]), local_size=int(o["local_size"]),
                           n_local=int(o["n_local"]), global_scale=tuple(o["global_scale"]),
                           local_scale=tuple(o["local_scale"]))


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

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest | None = None) -> nn.Module:
        """The untrained teacher backbone of RUN/model.safetensors: `B x 1 x S x S` -> StageOutputs (`pooled` `B x D`)."""
        return build_frame_backbone(cfg)

    def __init__(self, cfg: RunConfig, num_classes: int = 0, steps_per_epoch: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg = cfg
        self.options = o = dino_options(cfg)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        epochs = int(cfg.train.epochs)
        if epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {epochs}")
        backbone = build_frame_backbone(cfg, start=True)
        head = DINOHead(backbone.embed_dim, int(o["out_dim"]), hidden_dim=int(o["hidden_dim"]),
                        bottleneck_dim=int(o["bottleneck_dim"]), nlayers=int(o["head_layers"]),
                        norm_last_layer=bool(o["norm_last_layer"]))
        self.student = MultiCropWrapper(backbone, head)
        self.teacher = make_teacher(self.student)
        self.n_local = int(o["n_local"])
        temps = teacher_temp_schedule(float(o["warmup_teacher_temp"]), float(o["teacher_temp"]),
                                      int(o["warmup_teacher_temp_epochs"]), epochs)
        self.criterion = DINOLoss(int(o["out_dim"]), n_global=2, n_local=self.n_local,
                                  student_temp=float(o["student_temp"]), teacher_temp_schedule=temps.values,
                                  center_momentum=float(o["center_momentum"]))
        total = epochs * self.steps_per_epoch
        warm = min(total, int(cfg.optim.warmup_epochs) * self.steps_per_epoch)
        self.lr_schedule: Schedule = cosine_schedule(float(cfg.optim.lr), float(o["min_lr"]), total, warm)
        self.wd_schedule: Schedule = cosine_schedule(float(cfg.optim.weight_decay), float(o["weight_decay_end"]), total)
        self.momentum_schedule: Schedule = cosine_schedule(float(o["momentum_teacher"]), 1.0, total)
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
        cancel_last_layer_gradients(self.student.head, epoch, int(self.options["freeze_last_layer"]))
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
        out_dim = int(self.options["out_dim"])
        reason = is_collapsed(row, out_dim, rel_tol=float(self.options["collapse_rel_tol"]))
        if reason is None and row.get("teacher_feature_std", 1.0) < FEATURE_STD_COLLAPSE:
            reason = (f"feature collapse: std over the batch of the L2-normalised teacher features is "
                      f"{row['teacher_feature_std']:.3g} < {FEATURE_STD_COLLAPSE:g} (every frame gets the same embedding)")
        return reason


class _ViewsOnly(Dataset):
    """Keep only the views of a dataset's items (labels ignored): {"x": list of views, "index": int}.

    Accepts plain indices, or `epoch * len + i` from `EpochIndexSampler`: the epoch then reaches the wrapped
    dataset (random frame choice per epoch) even inside persistent DataLoader workers.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, k: int) -> dict[str, Any]:
        epoch, i = divmod(int(k), len(self))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return {"x": self.dataset[i]["x"], "index": i}


class _EpochConcat(ConcatDataset):
    """ConcatDataset passing `epoch * len + i` on to its parts as `epoch * len(part) + j`."""

    def __getitem__(self, k: int) -> dict[str, Any]:
        epoch, i = divmod(int(k), len(self))
        part = int(np.searchsorted(self.cumulative_sizes, i, side="right"))
        j = i - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part][epoch * len(self.datasets[part]) + j]


class EpochIndexSampler(EpochSeededSampler):
    """EpochSeededSampler (same order, resumable) that yields `epoch * n + i`, carrying the epoch to the dataset."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        offset = self.epoch * self.n
        return (offset + i for i in super().__iter__())


def pretraining_dataset(manifests: list[Manifest], cfg: RunConfig, seed: int) -> _EpochConcat:
    """Every frame of image manifests plus `frames_per_video` random frames per video and epoch, as multi-crop views."""
    from sonodistill.data.datasets import FrameDataset, VideoFrameDataset

    o = dino_options(cfg)
    crops = MultiCropAugment(multicrop_config(o))
    pre, cache = preprocess_config(cfg.data), clip_cache(cfg.data)
    parts: list[Dataset] = []
    for m in manifests:
        if m.modality == "image":
            ds: Dataset = FrameDataset(m, pre, cache=cache, augment=crops, seed=seed)
        else:
            ds = VideoFrameDataset(m, pre, frames_per_video=int(o["frames_per_video"]), sampling="random",
                                   cache=cache, augment=crops, seed=seed)
        parts.append(_ViewsOnly(ds))
    return _EpochConcat(parts)


def pretraining_loader(dataset: Dataset, cfg: RunConfig, seed: int) -> DataLoader:
    """Shuffled (seeded per epoch), drop_last loader of multi-crop batches {"x": list of `B x 1 x h x w`}."""
    n = len(dataset)  # type: ignore[arg-type]
    if n < cfg.data.batch_size:
        raise ConfigError(f"dino: {n} frames are fewer than one batch (data.batch_size={cfg.data.batch_size})")
    w = int(cfg.data.num_workers)
    return DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=EpochIndexSampler(n, seed), num_workers=w,
                      drop_last=True, persistent_workers=w > 0)


class DINOArtifacts(L.Callback):
    """Per epoch: diagnostics row (+ collapse warning in the log and RUN/train.log), backbone weights."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: DINORecipe) -> None:  # type: ignore[override]
        row = pl_module.epoch_diagnostics()
        reason = pl_module.check_collapse(row)
        row["collapsed"] = reason or ""
        if reason:
            log.warning("DINO collapse detected at epoch %d: %s. Consider a lower teacher temperature, a larger "
                        "centre momentum or a smaller learning rate.", row["epoch"], reason)
        else:
            log.info("dino epoch %d: loss %.4f, teacher entropy %.3f nats (log D = %.3f), KL to mean %.3f, "
                     "feature std %.4f, %.1f images/s", row["epoch"], row.get("loss", math.nan),
                     row.get("teacher_entropy", math.nan), math.log(int(pl_module.options["out_dim"])),
                     row.get("teacher_kl_to_mean", math.nan), row.get("teacher_feature_std", math.nan),
                     row["images_per_s"])
        if not trainer.is_global_zero:
            return
        path = self.run_dir / "diagnostics.csv"
        old = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        if len(old):
            old = old[old["epoch"] < row["epoch"]]  # a resumed run rewrites the epochs it repeats
        pd.concat([old, pd.DataFrame([row])], ignore_index=True).to_csv(path, index=False)
        from sonodistill.recipes.trainer import save_weights

        save_weights(pl_module.teacher.backbone, self.run_dir / TEACHER_WEIGHTS)
        save_weights(pl_module.student.backbone, self.run_dir / STUDENT_WEIGHTS)


def _load_extra(specs: list[str], cfg: RunConfig) -> list[Manifest]:
    from sonodistill.data.adapters import load_adapter, parse_data_spec

    out = []
    for spec in specs:
        if str(spec).startswith("synthetic:"):
            from dataclasses import replace

            from sonodistill.recipes.data import load_manifest

            m = load_manifest(replace(cfg.data, spec=str(spec)))
        else:
            name, root = parse_data_spec(str(spec))
            m = load_adapter(name, root)
        m.validate(check_files=True)
        out.append(m)
    return out


def _steps_per_epoch(n_batches: int, cfg: RunConfig) -> int:
    limit = cfg.train.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        n_batches = min(n_batches, limit)
    elif isinstance(limit, float) and limit < 1.0:
        n_batches = max(1, int(n_batches * limit))
    return max(1, n_batches // max(1, cfg.train.devices))


class _RunLog:
    """Copy this package's log records (warnings included) into RUN/train.log for the duration of a run."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("sonodistill")

    def __enter__(self) -> "_RunLog":
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self._level = self.logger.level
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()
        if hasattr(self, "_level"):
            self.logger.setLevel(self._level)


def run_pretraining(cfg: RunConfig, manifest: Manifest, resume: bool = False, **trainer_overrides: Any) -> dict:
    """Pretrain on every frame of `manifest` + `recipe_options.extra_data`; returns the summary (also pretrain.json)."""
    from sonodistill.recipes.trainer import build_trainer

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    o = dino_options(cfg)
    with _RunLog(run_dir / "train.log"):
        manifests = [manifest] + _load_extra(list(o["extra_data"]), cfg)
        seed = int(cfg.train.seed)
        L.seed_everything(seed, workers=True, verbose=False)
        dataset = pretraining_dataset(manifests, cfg, seed)
        loader = pretraining_loader(dataset, cfg, seed)
        spe = _steps_per_epoch(len(loader), cfg)
        sources = [{"name": m.name, "modality": m.modality, "items": len(m), "groups": int(len(set(m.groups))),
                    "frames_per_epoch": len(ds)} for m, ds in zip(manifests, dataset.datasets)]
        pd.DataFrame(sources).to_csv(run_dir / "pretrain_sources.csv", index=False)
        log.info("dino: pretraining on %d frames per epoch from %s; %d steps/epoch x %d epochs; labels are not used",
                 len(dataset), [s["name"] for s in sources], spe, cfg.train.epochs)
        recipe = DINORecipe(cfg, steps_per_epoch=spe)
        trainer = build_trainer(cfg, run_dir, [DINOArtifacts(run_dir)], **trainer_overrides)
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if resume and last.is_file() else None
        t0 = time.perf_counter()
        trainer.fit(recipe, train_dataloaders=loader, ckpt_path=ckpt_path)
        wall = time.perf_counter() - t0
        diag = pd.read_csv(run_dir / "diagnostics.csv")
        steady = diag[diag["epoch"] > diag["epoch"].min()] if len(diag) > 1 else diag
        summary = {
            "sources": sources,
            "frames_per_epoch": len(dataset),
            "steps_per_epoch": spe,
            "epochs": int(cfg.train.epochs),
            "views": {"global": [2, o["global_size"]], "local": [o["n_local"], o["local_size"]]},
            "wall_seconds": wall,
            "images_per_s": float(steady["images"].sum() / steady["epoch_seconds"].sum()),
            "peak_rss_mib": peak_rss_mib(),
            "final": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                      for k, v in diag.iloc[-1].to_dict().items()},
            "collapsed_epochs": [int(e) for e, c in zip(diag["epoch"], diag["collapsed"].fillna("")) if c],
            "note": "labels were not used; every frame of the listed sources was seen, including frames that a "
                    "later cross-validation may test on (transductive pretraining)",
        }
        (run_dir / "pretrain.json").write_text(json.dumps(summary, indent=1, default=float))
        return summary


DINORecipe.run_experiment = staticmethod(run_pretraining)  # type: ignore[attr-defined]
