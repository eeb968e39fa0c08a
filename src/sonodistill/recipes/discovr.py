"""The `discovr` recipe: self-supervised video representations by masked self-distillation plus online
semantic cluster distillation from an image encoder (DISCOVR, NeurIPS 2025).

Training loss `L = L_vid + L_img + L_SCD` (each switchable):
- `L_vid = 1/M sum_m H(P_t, P_s^m)`: the EMA video teacher sees the full clip, the student M tube-masked
  variants; DINO heads on [CLS] (centring/sharpening of `losses.dino.DINOLoss`).
- `L_img = 1/N sum_n H(P_t, P_s^n)`: the same on frames with a frame ViT, N patch-masked variants.
- `L_SCD = 1/M sum_m [CE(s_v^m, sg(q_i)) + CE(s_i, sg(q_v^m))]`: a light decoder turns the student's kept
  tokens (+ mask tokens) into features of all `T' x h x w` tubelet positions; they and the image teacher's
  patch tokens are scored against K learnable prototypes, Sinkhorn-Knopp gives the codes q.
  Pairing: video token `(t', h, w)` <-> image patch token `(h, w)` of frame `t = t' * tubelet_t` (the
  first frame of the tubelet); the image token grid is average-pooled to `h x w` when it is finer.
  The image features are detached: SCD trains the video student, the decoder and the prototypes only.

`run_experiment` is the pretrain-then-evaluate protocol used instead of the supervised fold loop: per
grouped fold, pretrain (optionally on one label only, e.g. normal clips), then evaluate frozen clip
embeddings by kNN anomaly detection and linear probes (classification and regression).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.data.masking import random_patch_mask, tube_mask
from sonodistill.errors import ConfigError
from sonodistill.losses.base import prefixed
from sonodistill.losses.dino import MaskedViewDINOLoss
from sonodistill.losses.ema import make_teacher, update_ema
from sonodistill.losses.sinkhorn import SemanticClusterDistillationLoss
from sonodistill.models.projection import DINOHead, PrototypeHead, cancel_last_layer_gradients
from sonodistill.models.stages import StageOutputs
from sonodistill.models.video_decoder import VideoTokenDecoder
from sonodistill.models.wrappers import Branch, DISCOVREncoders
from sonodistill.recipes.base import TrainingHooks, build_optimizer, check_finite
from sonodistill.recipes.schedules import Schedule, cosine_schedule, teacher_temp_schedule

log = logging.getLogger(__name__)

#: recipe_options understood by this recipe, with their defaults (CPU-friendly; see docs/discovr.md).
DEFAULTS: dict[str, Any] = {
    # which terms
    "use_vid": True,
    "use_img": True,
    "use_scd": True,
    "img_weight": 1.0,
    "scd_weight": 1.0,
    # masking
    "video_mask_ratio": 0.9,
    "n_video_masks": 2,            # M
    "image_mask_ratio": 0.5,
    "n_image_masks": 2,            # N
    # image branch (frame ViT; its patch must divide the tubelet's spatial size, or equal it)
    "image_backbone": "vit_tiny_p8",
    "image_width": 1.0,
    "image_kwargs": {},
    # DINO heads and teachers
    "out_dim": 1024,
    "head_hidden_dim": 512,
    "head_bottleneck_dim": 128,
    "head_nlayers": 3,
    "norm_last_layer": True,
    "student_temp": 0.1,
    "teacher_temp": 0.04,
    "warmup_teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 0,
    "center_momentum": 0.9,
    "momentum_teacher": 0.996,
    "freeze_last_layer_epochs": 0,
    # decoder and semantic cluster distillation
    "decoder_dim": 96,
    "decoder_depth": 1,
    "decoder_heads": 3,
    "n_prototypes": 64,            # K
    "scd_temperature": 0.1,
    "sinkhorn_epsilon": 0.05,
    "sinkhorn_iters": 10,          # the authors' value
    # protocol (run_experiment)
    "train_on_label": None,        # pretrain only on items with this label (e.g. "0": lus-blues severity 0)
    "normal_label": None,          # anomaly detection: this label is normal (default: train_on_label)
    "eval_encoder": "teacher",     # which video/image encoder is exported and evaluated: teacher | student
    "evaluate": ["anomaly", "linear", "knn", "regression"],
    "knn_k": 5,                    # neighbours of the anomaly score
    "threshold_rule": "max_f1",    # max_f1 | percentile (on leave-one-group-out training scores)
    "threshold_percentile": 95.0,
    "anomaly_standardize": True,   # z-score embeddings with training-fold statistics ("anomaly_raw": without)
    "regression_column": "severity_score",
    "run_folds": None,             # list of fold indices to run (default all, or train.fold)
}


def discovr_options(cfg: RunConfig) -> dict[str, Any]:
    """recipe_options merged over DEFAULTS; unknown keys and impossible values are errors."""
    unknown = set(cfg.recipe_options) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"recipe_options: unknown key(s) {sorted(unknown)} for discovr; known {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **cfg.recipe_options}
    if not (o["use_vid"] or o["use_img"] or o["use_scd"]):
        raise ConfigError("discovr: use_vid, use_img and use_scd are all off; nothing to train")
    for key in ("n_video_masks", "n_image_masks", "n_prototypes", "sinkhorn_iters", "decoder_depth"):
        if int(o[key]) < 1:
            raise ConfigError(f"recipe_options.{key} must be >= 1, got {o[key]}")
    if o["eval_encoder"] not in ("teacher", "student"):
        raise ConfigError(f"recipe_options.eval_encoder must be 'teacher' or 'student', got {o['eval_encoder']!r}")
    return o


def _dino_head(in_dim: int, o: dict[str, Any]) -> DINOHead:
    return DINOHead(in_dim, int(o["out_dim"]), int(o["head_hidden_dim"]), int(o["head_bottleneck_dim"]),
                    int(o["head_nlayers"]), bool(o["norm_last_layer"]))


def video_encoder(cfg: RunConfig) -> nn.Module:
    """The video ViT of `cfg.model` (1 channel, random weights): `B x 1 x T x S x S` -> StageOutputs."""
    from sonodistill.models.backbones import build_backbone

    video = build_backbone(cfg.model.backbone, in_channels=1, width=cfg.model.width, norm=cfg.model.norm,
                           **cfg.model.kwargs)
    if getattr(video, "kind", None) != "video" or not hasattr(video, "tubelet"):
        raise ConfigError(f"discovr needs a tubelet video ViT ('video_vit'), got {cfg.model.backbone!r}")
    return video


def image_encoder(cfg: RunConfig, o: dict[str, Any]) -> nn.Module | None:
    """The frame ViT of `recipe_options.image_backbone` (random weights), or None when L_img and L_SCD are off."""
    from sonodistill.models.backbones import build_backbone

    if not (o["use_img"] or o["use_scd"]):
        return None
    image = build_backbone(str(o["image_backbone"]), in_channels=1, width=float(o["image_width"]),
                           **{"img_size": cfg.data.size, **dict(o["image_kwargs"])})
    if getattr(image, "kind", None) != "frame" or not hasattr(image, "patch_size"):
        raise ConfigError(f"discovr: image_backbone must be a frame ViT, got {o['image_backbone']!r}")
    return image


class DISCOVRRecipe(TrainingHooks, L.LightningModule):
    """Video + image masked self-distillation with semantic cluster distillation (see module docstring).

    Batches are dicts {"x": `B x 1 x T x H x W`, ...}; labels are not used in training. Served as a features
    model (`sonodistill predict|serve|export` on the run directory): each fold's fold_k/model.safetensors holds
    the exported encoders, and the video encoder gives one pooled embedding per window of T frames.
    """

    task = "features"

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest | None = None) -> DISCOVREncoders:
        """The untrained encoders of fold_k/model.safetensors (no heads, decoder or prototypes); forward = the
        video encoder, `B x 1 x T x S x S` -> StageOutputs (`pooled` `B x D`)."""
        return DISCOVREncoders(video_encoder(cfg), image_encoder(cfg, discovr_options(cfg)))

    def __init__(self, cfg: RunConfig, num_classes: int = 0, steps_per_epoch: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.o = o = discovr_options(cfg)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        epochs = max(1, cfg.train.epochs)
        video = video_encoder(cfg)
        self.tubelet = tuple(video.tubelet)
        self.student_v = Branch(video, _dino_head(video.embed_dim, o))
        self.teacher_v = make_teacher(self.student_v)
        temps = teacher_temp_schedule(float(o["warmup_teacher_temp"]), float(o["teacher_temp"]),
                                      int(o["warmup_teacher_temp_epochs"]), epochs)
        dino_kwargs = dict(out_dim=int(o["out_dim"]), student_temp=float(o["student_temp"]),
                           teacher_temp_schedule=temps, center_momentum=float(o["center_momentum"]))
        self.loss_vid = MaskedViewDINOLoss(int(o["n_video_masks"]), **dino_kwargs)
        image = image_encoder(cfg, o)
        self.has_image = image is not None
        if image is not None:
            self.patch = int(image.patch_size)
            if self.tubelet[1] % self.patch or self.tubelet[2] % self.patch:
                raise ConfigError(f"discovr: the image patch {self.patch} must divide the tubelet's spatial size "
                                  f"{self.tubelet[1:]} so image tokens can be pooled onto video tokens")
            self.student_i = Branch(image, _dino_head(image.embed_dim, o))
            self.teacher_i = make_teacher(self.student_i)
            self.loss_img = MaskedViewDINOLoss(int(o["n_image_masks"]), **dino_kwargs)
        if o["use_scd"]:
            d_img = self.student_i.backbone.embed_dim
            self.decoder = VideoTokenDecoder(video.embed_dim, d_img, int(o["decoder_dim"]), int(o["decoder_depth"]),
                                             int(o["decoder_heads"]))
            self.prototypes = PrototypeHead(d_img, int(o["n_prototypes"]))
            self.loss_scd = SemanticClusterDistillationLoss(float(o["scd_temperature"]),
                                                            float(o["sinkhorn_epsilon"]), int(o["sinkhorn_iters"]))
        self.momentum: Schedule = cosine_schedule(float(o["momentum_teacher"]), 1.0, epochs * self.steps_per_epoch)

    # -- helpers ------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        """Mask RNG seeded by (seed, step, rank): the same masks after a resume."""
        step = int(self.trainer.global_step) if self._trainer is not None else int(getattr(self, "_manual_step", 0))
        return torch.Generator().manual_seed(int(self.cfg.train.seed) * 1_000_003 + step * 101 + int(self.global_rank))

    def video_grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        t, h, w = x.shape[2:]
        tt, th, tw = self.tubelet
        return t // tt, h // th, w // tw

    def frames_of(self, x: torch.Tensor) -> torch.Tensor:
        """The first frame of every tubelet: `B x 1 x T x H x W` -> `(B*T') x 1 x H x W` (b-major)."""
        f = x[:, :, :: self.tubelet[0]]
        b, c, t, h, w = f.shape
        return f.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)

    def image_tokens_on_video_grid(self, out: StageOutputs, batch: int, grid: tuple[int, int, int]) -> torch.Tensor:
        """Image patch tokens of the tubelet frames, pooled onto the video grid: `B x (T'*h*w) x D` (raster t,h,w)."""
        t, h, w = grid
        tok = out.tokens[:, 1:]
        n, p, d = tok.shape
        hi, wi = out.stages[-1].shape[-2:]
        maps = tok.transpose(1, 2).reshape(n, d, hi, wi)
        if (hi, wi) != (h, w):
            maps = F.adaptive_avg_pool2d(maps, (h, w))
        return maps.reshape(batch, t, d, h * w).permute(0, 1, 3, 2).reshape(batch, t * h * w, d)

    # -- the loss -----------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """All terms on one batch; returns (total loss, parts for logging)."""
        o = self.o
        x = batch["x"]
        b = x.shape[0]
        grid = self.video_grid(x)
        epoch = int(self.current_epoch)
        g = self._generator()
        parts: dict[str, torch.Tensor] = {}
        total = x.new_zeros(())

        # video branch: teacher on the full clip, student on M tube-masked variants
        s_logits, s_views = [], []
        for _ in range(int(o["n_video_masks"])):
            keep = tube_mask(b, grid, float(o["video_mask_ratio"]), g, device=x.device)
            out = self.student_v.backbone(x, keep=keep)
            if o["use_vid"]:
                s_logits.append(self.student_v.head(out.pooled))
            s_views.append((out.tokens[:, 1:], keep))
        if o["use_vid"]:
            with torch.no_grad():
                t_logits = self.teacher_v.head(self.teacher_v.backbone(x).pooled)
            loss_vid, p = self.loss_vid(torch.cat(s_logits), t_logits, epoch)
            parts.update(prefixed(p, "vid"))
            parts["loss_vid"] = loss_vid.detach()
            total = total + loss_vid

        if self.has_image:
            frames = self.frames_of(x)
            with torch.no_grad():
                ti_out = self.teacher_i.backbone(frames)
            if o["use_img"]:
                with torch.no_grad():
                    ti_logits = self.teacher_i.head(ti_out.pooled)
                grid_i = tuple(ti_out.stages[-1].shape[-2:])
                si_logits = []
                for _ in range(int(o["n_image_masks"])):
                    keep_i = random_patch_mask(frames.shape[0], grid_i, float(o["image_mask_ratio"]), g,
                                               device=x.device)
                    si_logits.append(self.student_i.head(self.student_i.backbone(frames, keep=keep_i).pooled))
                loss_img, p = self.loss_img(torch.cat(si_logits), ti_logits, epoch)
                parts.update(prefixed(p, "img"))
                parts["loss_img"] = loss_img.detach()
                total = total + float(o["img_weight"]) * loss_img
            if o["use_scd"]:
                img_tok = self.image_tokens_on_video_grid(ti_out, b, grid).detach()  # no gradient to the image side
                # the image (teacher) side is scored against detached prototypes, as in the authors' code: only
                # the video side's cross-entropy trains the prototypes
                img_scores = self.prototypes(img_tok.reshape(-1, img_tok.shape[-1]), detach_prototypes=True)
                scd_terms = []
                for tokens, keep in s_views:
                    vid_tok = self.decoder(tokens, keep, grid)
                    vid_scores = self.prototypes(vid_tok.reshape(-1, vid_tok.shape[-1]))
                    loss_m, p = self.loss_scd(vid_scores, img_scores)
                    scd_terms.append(loss_m)
                loss_scd = torch.stack(scd_terms).mean()
                parts.update(prefixed(p, "scd"))
                parts["loss_scd"] = loss_scd.detach()
                total = total + float(o["scd_weight"]) * loss_scd
        return total, parts

    # -- teachers -----------------------------------------------------------------------------
    @torch.no_grad()
    def ema_step(self, step: int) -> float:
        """EMA update of both teachers with the momentum of optimiser step `step`; returns the momentum."""
        m = self.momentum(step)
        update_ema(self.teacher_v, self.student_v, m, buffers="copy")
        if self.has_image:
            update_ema(self.teacher_i, self.student_i, m, buffers="copy")
        return m

    def inference_model(self) -> DISCOVREncoders:
        """Exported: the video encoder (teacher by default) and the image encoder; no heads, decoder, prototypes."""
        use_teacher = self.o["eval_encoder"] == "teacher"
        video = (self.teacher_v if use_teacher else self.student_v).backbone
        image = None
        if self.has_image:
            image = (self.teacher_i if use_teacher else self.student_i).backbone
        return DISCOVREncoders(video, image)

    # -- Lightning hooks ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> StageOutputs:
        return self.inference_model()(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self.compute_loss(batch)
        check_finite(int(self.global_step), {"loss": loss, **{k: v for k, v in parts.items() if k.startswith("loss")}})
        bs = int(batch["x"].shape[0])
        self.log_losses(loss, parts, bs)
        return loss

    def on_after_backward(self) -> None:
        epochs = int(self.o["freeze_last_layer_epochs"])
        cancel_last_layer_gradients(self.student_v.head, int(self.current_epoch), epochs)
        if self.has_image:
            cancel_last_layer_gradients(self.student_i.head, int(self.current_epoch), epochs)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        m = self.ema_step(int(self.trainer.global_step) - 1)
        self.log("train/momentum", m, on_step=False, on_epoch=True, batch_size=1)

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.parameters(), self.cfg.optim, self.cfg.train.epochs, self.steps_per_epoch)

    # -- protocol -----------------------------------------------------------------------------
    @classmethod
    def run_experiment(cls, cfg: RunConfig, manifest: Manifest, resume: bool = False,
                       **trainer_overrides: Any) -> dict[str, Any]:
        """Per grouped fold: pretrain, then evaluate frozen embeddings; writes metrics.json and report.md."""
        return run_discovr_experiment(cfg, manifest, resume, **trainer_overrides)


# ================================================================================================ protocol


def load_encoders(cfg: RunConfig, weights: Path) -> DISCOVREncoders:
    """The exported encoders of a DISCOVR run (structure from `cfg`, weights from a safetensors file)."""
    from sonodistill.recipes.trainer import load_weights

    return load_weights(DISCOVRRecipe.build_inference_model(cfg), weights).eval()


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
    """Frozen [CLS] embeddings `len(rows) x D` of the given manifest rows (uniform frames, no augmentation)."""
    from sonodistill.evaluation.probes import extract_features
    from sonodistill.recipes.data import build_dataset, make_loader

    data = build_dataset(manifest.subset(rows), cfg.data, train=False, seed=seed)
    feats, index = extract_features(encoder, make_loader(data, cfg.data, train=False, seed=seed))
    out = np.empty_like(feats)
    out[index] = feats
    return out


def evaluate_fold(cfg: RunConfig, o: dict[str, Any], manifest: Manifest, feats: np.ndarray, train: np.ndarray,
                  test: np.ndarray) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Anomaly detection and probes on one fold's embeddings (`feats` indexed by manifest row)."""
    from sonodistill.evaluation.anomaly import knn_anomaly_detection
    from sonodistill.evaluation.metrics import classification_metrics, regression_metrics
    from sonodistill.evaluation.probes import knn_predict, linear_probe, linear_regression_probe

    metrics: dict[str, dict[str, float]] = {}
    table = pd.DataFrame({"index": test, "group": manifest.groups[test]})
    wanted = set(o["evaluate"])
    normal = o["normal_label"] if o["normal_label"] is not None else o["train_on_label"]
    if manifest.has_labels:
        y = manifest.labels
        table["y_true"] = y[test]
        if "anomaly" in wanted and normal is not None:
            ni = manifest.classes.index(str(normal))
            for section, scale in (("anomaly", bool(o["anomaly_standardize"])), ("anomaly_raw", False)):
                if section == "anomaly_raw" and not o["anomaly_standardize"]:
                    continue
                res = knn_anomaly_detection(feats[train], y[train] != ni, manifest.groups[train], feats[test],
                                            y[test] != ni, k=int(o["knn_k"]), threshold_rule=str(o["threshold_rule"]),
                                            percentile=float(o["threshold_percentile"]), standardize=scale)
                table[f"{section}_score"] = res.pop("test_scores")
                res.pop("train_scores")
                metrics[section] = res
        for name, fn in (("linear", linear_probe), ("knn", knn_predict)):
            if name in wanted:
                probs = fn(feats[train], y[train], feats[test], num_classes=len(manifest.classes))
                m = classification_metrics(y[test], probs, manifest.classes)
                metrics[name] = {k: v for k, v in m.items() if isinstance(v, float)}
                for c, col in enumerate(manifest.classes):
                    table[f"{name}_prob_{col}"] = probs[:, c]
    col = o["regression_column"]
    if "regression" in wanted and col and col in manifest.table.columns:
        target = manifest.table[col].to_numpy(dtype=np.float64)
        pred = linear_regression_probe(feats[train], target[train], feats[test])
        metrics["regression"] = regression_metrics(target[test], pred)
        table["regression_true"], table["regression_pred"] = target[test], pred
    return metrics, table


def run_discovr_experiment(cfg: RunConfig, manifest: Manifest, resume: bool = False,
                           **trainer_overrides: Any) -> dict[str, Any]:
    """Folds (saved in folds.json), per fold `fold_k/` with model.safetensors, eval.json, embeddings and scores."""
    from sonodistill.data.folds import cv_folds
    from sonodistill.evaluation.metrics import summarise
    from sonodistill.recipes.trainer import WEIGHTS, fit_fold

    o = discovr_options(cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    folds = cv_folds(cfg, manifest, resume)
    if o["run_folds"] is not None:
        wanted = [int(k) for k in o["run_folds"]]
    else:
        wanted = list(range(len(folds))) if cfg.train.fold is None else [cfg.train.fold]
    bad = [k for k in wanted if not 0 <= k < len(folds)]
    if bad:
        raise ConfigError(f"fold(s) {bad} do not exist; there are {len(folds)} folds")
    per_fold: list[dict[str, Any]] = []
    for k in wanted:
        fold_dir = run_dir / f"fold_{k}"
        eval_file = fold_dir / "eval.json"
        train, test = folds[k]
        if resume and eval_file.exists() and (fold_dir / "embeddings.npy").exists():
            # finished fold: re-run only the (cheap) evaluation on the saved embeddings
            record = json.loads(eval_file.read_text())
            every = np.load(fold_dir / "embedding_rows.npy")
            saved = np.load(fold_dir / "embeddings.npy")
            feats = np.zeros((len(manifest), saved.shape[1]), dtype=np.float32)
            feats[every] = saved
            metrics, table = evaluate_fold(cfg, o, manifest, feats, train, test)
            record = {key: record[key] for key in ("fold", "pretrain_items", "pretrain_seconds")} | metrics
            _write_fold(fold_dir, k, record, table)
            per_fold.append(record)
            continue
        rows = pretrain_rows(manifest, train, o["train_on_label"])
        t0 = time.perf_counter()
        fit_fold(cfg, manifest, rows, rows[:0], k, fold_dir, resume=resume, **trainer_overrides)
        seconds = time.perf_counter() - t0
        encoders = load_encoders(cfg, fold_dir / WEIGHTS)
        every = np.concatenate([train, test])
        feats = np.zeros((len(manifest), encoders.video.embed_dim), dtype=np.float32)
        feats[every] = clip_embeddings(encoders.video, cfg, manifest, every, cfg.train.seed + k)
        np.save(fold_dir / "embeddings.npy", feats[every])
        np.save(fold_dir / "embedding_rows.npy", every)
        metrics, table = evaluate_fold(cfg, o, manifest, feats, train, test)
        record = {"fold": k, "pretrain_items": int(rows.size), "pretrain_seconds": seconds, **metrics}
        _write_fold(fold_dir, k, record, table)
        per_fold.append(record)
        log.info("fold %d: %s", k, {s: m.get("f1") for s, m in metrics.items()})
    sections = sorted({s for r in per_fold for s, v in r.items() if isinstance(v, dict)})
    summary = {s: summarise([r[s] for r in per_fold]) for s in sections}
    (run_dir / "metrics.json").write_text(json.dumps(
        {"folds": [r["fold"] for r in per_fold], "per_fold": per_fold,
         "summary": {s: {m: {"mean": v.mean, "std": v.std, "n": v.n, "n_nan": v.n_nan} for m, v in d.items()}
                     for s, d in summary.items()}}, indent=1, default=float))
    write_discovr_report(run_dir, cfg, summary, [r["fold"] for r in per_fold])
    return summary


def _write_fold(fold_dir: Path, k: int, record: dict[str, Any], table: pd.DataFrame) -> None:
    table.insert(0, "fold", k)
    table.to_csv(fold_dir / "test_predictions.csv", index=False)
    (fold_dir / "eval.json").write_text(json.dumps(record, indent=1))


REPORT_COLUMNS = {
    "anomaly": ["auroc", "f1", "balanced_accuracy", "precision", "recall", "f1_all_anomalous"],
    "anomaly_raw": ["auroc", "f1", "balanced_accuracy", "precision", "recall"],
    "linear": ["accuracy", "balanced_accuracy", "f1", "roc_auc"],
    "knn": ["accuracy", "balanced_accuracy", "f1", "roc_auc"],
    "regression": ["mae", "rmse", "r2"],
}


def write_discovr_report(run_dir: Path, cfg: RunConfig, summary: dict[str, Any], folds: list[int]) -> Path:
    """report.md: one mean ± std table per evaluation (anomaly, linear/kNN probe, regression probe)."""
    from sonodistill.evaluation.report import markdown_table

    lines = [f"# {cfg.name}: discovr on {cfg.data.spec}", "",
             f"Folds {folds} of {cfg.train.folds} (grouped); mean ± std over folds.", ""]
    for section, cols in REPORT_COLUMNS.items():
        if section in summary:
            lines += [f"## {section}", "", markdown_table({cfg.name: summary[section]}, cols), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
