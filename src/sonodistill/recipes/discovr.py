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

The image branch is a frame ViT (token masking) or a CNN with stage features (`efficientnet_lite0`, which can start
from ImageNet or the project's own pretraining: `image_pretrained`); a CNN's student sees its masked patches as
black pixels (`image_mask_patch` squares) and its patch tokens are the `image_token_stage` map (stride 16).

The protocol (per fold: pretrain, then evaluate frozen clip embeddings; the final model on all items) is
`protocols.discovr`; its scoring is `evaluation.embedding_eval`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.manifest import Manifest
from sonodistill.data.masking import mask_pixel_patches, random_patch_mask, tube_mask
from sonodistill.errors import ConfigError
from sonodistill.evaluation.anomaly import THRESHOLD_RULES
from sonodistill.evaluation.embedding_eval import EVALUATIONS, EmbeddingEvaluation
from sonodistill.losses.base import prefixed
from sonodistill.losses.dino import MaskedViewDINOLoss
from sonodistill.losses.ema import make_teacher, update_ema
from sonodistill.losses.sinkhorn import SemanticClusterDistillationLoss
from sonodistill.models.projection import DINOHead, PrototypeHead, cancel_last_layer_gradients
from sonodistill.models.stages import StageOutputs, patch_maps
from sonodistill.models.video_decoder import VideoTokenDecoder
from sonodistill.models.wrappers import Branch, DISCOVREncoders
from sonodistill.recipes.base import TrainingHooks, build_optimizer, check_finite
from sonodistill.recipes.schedules import Schedule, cosine_schedule, teacher_temp_schedule


@dataclass
class DISCOVROptions:
    """recipe_options of `discovr` (CPU-friendly defaults; see docs/discovr.md)."""

    # which terms
    use_vid: bool = True
    use_img: bool = True
    use_scd: bool = True
    img_weight: float = 1.0
    scd_weight: float = 1.0
    # masking
    video_mask_ratio: float = 0.9
    n_video_masks: int = 2               # M
    image_mask_ratio: float = 0.5
    n_image_masks: int = 2               # N
    # image branch: a frame ViT (its patch must divide the tubelet's spatial size) or a CNN with stage features
    image_backbone: str = "vit_tiny_p8"
    image_width: float = 1.0
    image_kwargs: dict[str, Any] = field(default_factory=dict)
    image_pretrained: str = "none"       # none | imagenet | PATH: the image branch's start (training only)
    image_freeze_stages: int = 0         # CNN: stem + this many stages stay fixed (ImageNet BatchNorm statistics)
    image_token_stage: int = 3           # CNN: the stage map that gives the patch tokens (3: stride 16)
    image_mask_patch: int = 16           # CNN: the student's masked squares, in pixels
    # DINO heads and teachers
    out_dim: int = 1024
    head_hidden_dim: int = 512
    head_bottleneck_dim: int = 128
    head_nlayers: int = 3
    norm_last_layer: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    freeze_last_layer_epochs: int = 0
    # decoder and semantic cluster distillation
    decoder_dim: int = 96
    decoder_depth: int = 1
    decoder_heads: int = 3
    n_prototypes: int = 64               # K
    scd_temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 10             # the authors' value
    # protocol (protocols.discovr)
    train_on_label: str | None = None    # pretrain only on items with this label (e.g. "0": lus-blues severity 0)
    normal_label: str | None = None      # anomaly detection: this label is normal (default: train_on_label)
    eval_encoder: str = "teacher"        # which video/image encoder is exported and evaluated: teacher | student
    eval_branch: str = "video"           # whose clip embeddings are scored: video (the video encoder's pooled
                                         # token) | image (the image encoder per frame, averaged over the clip)
    evaluate: list[str] = field(default_factory=lambda: list(EVALUATIONS))
    knn_k: int = 5                       # neighbours of the anomaly score
    threshold_rule: str = "max_f1"       # max_f1 | percentile (on leave-one-group-out training scores)
    threshold_percentile: float = 95.0
    anomaly_standardize: bool = True     # z-score embeddings with training-fold statistics ("anomaly_raw": without)
    regression_column: str | None = "severity_score"
    run_folds: list[int] | None = None   # fold indices to run (default all, or train.fold)

    def __post_init__(self) -> None:
        where = "recipe_options (discovr)"
        if not (self.use_vid or self.use_img or self.use_scd):
            raise ConfigError("discovr: use_vid, use_img and use_scd are all off; nothing to train")
        for key in ("n_video_masks", "n_image_masks", "n_prototypes", "sinkhorn_iters", "decoder_depth", "knn_k",
                    "image_mask_patch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("video_mask_ratio", "image_mask_ratio"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{where}.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.eval_encoder not in ("teacher", "student"):
            raise ConfigError(f"{where}.eval_encoder must be 'teacher' or 'student', got {self.eval_encoder!r}")
        if self.eval_branch not in ("video", "image"):
            raise ConfigError(f"{where}.eval_branch must be 'video' or 'image', got {self.eval_branch!r}")
        if self.eval_branch == "image" and not (self.use_img or self.use_scd):
            raise ConfigError(f"{where}.eval_branch=image needs an image branch (use_img or use_scd)")
        if self.image_freeze_stages < 0:
            raise ConfigError(f"{where}.image_freeze_stages must be >= 0, got {self.image_freeze_stages}")
        if self.threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"{where}.threshold_rule must be one of {THRESHOLD_RULES}, got {self.threshold_rule!r}")
        unknown = sorted(set(self.evaluate) - set(EVALUATIONS))
        if unknown:
            raise ConfigError(f"{where}.evaluate: unknown evaluation(s) {unknown}; choose from {EVALUATIONS}")
        if self.run_folds is not None and (not self.run_folds or min(self.run_folds) < 0):
            raise ConfigError(f"{where}.run_folds must list fold indices >= 0, got {self.run_folds}")

    def evaluation(self) -> EmbeddingEvaluation:
        """How the frozen embeddings are scored (the anomaly bank's label defaults to `train_on_label`)."""
        normal = self.normal_label if self.normal_label is not None else self.train_on_label
        return EmbeddingEvaluation(list(self.evaluate), normal, self.knn_k, self.threshold_rule,
                                   self.threshold_percentile, self.anomaly_standardize, self.regression_column)


def _dino_head(in_dim: int, o: DISCOVROptions) -> DINOHead:
    return DINOHead(in_dim, o.out_dim, o.head_hidden_dim, o.head_bottleneck_dim, o.head_nlayers, o.norm_last_layer)


def video_encoder(cfg: RunConfig) -> nn.Module:
    """The video ViT of `cfg.model` (1 channel, random weights): `B x 1 x T x S x S` -> StageOutputs."""
    from sonodistill.models.backbones import build_backbone

    video = build_backbone(cfg.model.backbone, in_channels=1, width=cfg.model.width, norm=cfg.model.norm,
                           **cfg.model.kwargs)
    if getattr(video, "kind", None) != "video" or not hasattr(video, "tubelet"):
        raise ConfigError(f"discovr needs a tubelet video ViT ('video_vit'), got {cfg.model.backbone!r}")
    return video


def is_token_encoder(image: nn.Module) -> bool:
    """Whether an image encoder is a ViT (masks by dropping tokens) rather than a CNN (masks pixels)."""
    return hasattr(image, "patch_size")


def image_encoder(cfg: RunConfig, o: DISCOVROptions, start: bool = False) -> nn.Module | None:
    """The frame encoder of `recipe_options.image_backbone` (a ViT or a staged CNN), from `image_pretrained` when
    `start` (training; inference loads the trained weights), or None when L_img and L_SCD are off."""
    from sonodistill.models.backbones import accepts_option, build_backbone

    if not (o.use_img or o.use_scd):
        return None
    kwargs = dict(o.image_kwargs)
    if accepts_option(o.image_backbone, "img_size"):
        kwargs = {"img_size": cfg.data.size, **kwargs}
    image = build_backbone(o.image_backbone, in_channels=1, width=o.image_width,
                           pretrained=o.image_pretrained if start else "none",
                           freeze_stages=o.image_freeze_stages, **kwargs)
    if getattr(image, "kind", None) != "frame":
        raise ConfigError(f"discovr: image_backbone must be a frame encoder (a ViT or a 2D CNN), got "
                          f"{o.image_backbone!r} ({getattr(image, 'kind', None)})")
    if not is_token_encoder(image) and not -len(image.stage_channels) <= o.image_token_stage < len(image.stage_channels):
        raise ConfigError(f"recipe_options (discovr).image_token_stage={o.image_token_stage}: {o.image_backbone!r} "
                          f"has {len(image.stage_channels)} stages")
    return image


def image_token_dim(image: nn.Module, o: DISCOVROptions) -> int:
    """Channels of the image branch's patch tokens: a ViT's embedding, or the CNN's token-stage map."""
    return int(image.embed_dim if is_token_encoder(image) else image.stage_channels[o.image_token_stage])


class DISCOVRRecipe(TrainingHooks, L.LightningModule):
    """Video + image masked self-distillation with semantic cluster distillation (see module docstring).

    Batches are dicts {"x": `B x 1 x T x H x W`, ...}; labels are not used in training. Served as a features
    model (`sonodistill predict|serve|export` on the run directory): final/model.safetensors (train.final, or
    --final-only) or each fold's fold_k/model.safetensors holds the exported encoders, and the video encoder
    gives one pooled embedding per window of T frames.
    """

    task = "features"
    Options = DISCOVROptions

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest | None = None) -> DISCOVREncoders:
        """The untrained encoders of model.safetensors (no heads, decoder or prototypes); forward embeds a clip
        `B x 1 x T x S x S` with the `eval_branch` encoder -> StageOutputs (`pooled` `B x D`)."""
        o = parse_options(DISCOVROptions, cfg.recipe_options, "discovr")
        return DISCOVREncoders(video_encoder(cfg), image_encoder(cfg, o), embed=o.eval_branch)

    def __init__(self, cfg: RunConfig, num_classes: int = 0, steps_per_epoch: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.o = o = parse_options(DISCOVROptions, cfg.recipe_options, "discovr")
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        epochs = max(1, cfg.train.epochs)
        video = video_encoder(cfg)
        self.tubelet = tuple(video.tubelet)
        self.student_v = Branch(video, _dino_head(video.embed_dim, o))
        self.teacher_v = make_teacher(self.student_v)
        temps = teacher_temp_schedule(o.warmup_teacher_temp, o.teacher_temp, o.warmup_teacher_temp_epochs, epochs)
        dino_kwargs = dict(out_dim=o.out_dim, student_temp=o.student_temp, teacher_temp_schedule=temps,
                           center_momentum=o.center_momentum)
        self.loss_vid = MaskedViewDINOLoss(o.n_video_masks, **dino_kwargs)
        image = image_encoder(cfg, o, start=True)
        self.has_image = image is not None
        if image is not None:
            self.tokens_from_vit = is_token_encoder(image)
            if self.tokens_from_vit:
                self.patch = int(image.patch_size)
                if self.tubelet[1] % self.patch or self.tubelet[2] % self.patch:
                    raise ConfigError(f"discovr: the image patch {self.patch} must divide the tubelet's spatial "
                                      f"size {self.tubelet[1:]} so image tokens can be pooled onto video tokens")
            self.student_i = Branch(image, _dino_head(image.embed_dim, o))
            self.teacher_i = make_teacher(self.student_i)
            self.loss_img = MaskedViewDINOLoss(o.n_image_masks, **dino_kwargs)
        if o.use_scd:
            d_img = image_token_dim(self.student_i.backbone, o)
            self.decoder = VideoTokenDecoder(video.embed_dim, d_img, o.decoder_dim, o.decoder_depth, o.decoder_heads)
            self.prototypes = PrototypeHead(d_img, o.n_prototypes)
            self.loss_scd = SemanticClusterDistillationLoss(o.scd_temperature, o.sinkhorn_epsilon, o.sinkhorn_iters)
        self.momentum: Schedule = cosine_schedule(o.momentum_teacher, 1.0, epochs * self.steps_per_epoch)

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
        """Image patch tokens of the tubelet frames (a ViT's tokens after [CLS], or a CNN's `image_token_stage`
        map), pooled onto the video grid: `B x (T'*h*w) x D` (raster t,h,w)."""
        t, h, w = grid
        maps = patch_maps(out, self.o.image_token_stage)
        d = maps.shape[1]
        if tuple(maps.shape[-2:]) != (h, w):
            maps = F.adaptive_avg_pool2d(maps, (h, w))
        return maps.reshape(batch, t, d, h * w).permute(0, 1, 3, 2).reshape(batch, t * h * w, d)

    def masked_image_student(self, frames: torch.Tensor, teacher_out: StageOutputs, g: torch.Generator) -> StageOutputs:
        """The image student on one random patch masking of `frames` (`N x 1 x H x W`): a ViT drops the masked
        tokens; a CNN sees them as black squares of `image_mask_patch` pixels."""
        o = self.o
        if self.tokens_from_vit:
            grid_i = tuple(teacher_out.stages[-1].shape[-2:])
            keep = random_patch_mask(frames.shape[0], grid_i, o.image_mask_ratio, g, device=frames.device)
            return self.student_i.backbone(frames, keep=keep)
        return self.student_i.backbone(mask_pixel_patches(frames, o.image_mask_patch, o.image_mask_ratio, g))

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
        for _ in range(o.n_video_masks if o.use_vid or o.use_scd else 0):  # image-only: no video student
            keep = tube_mask(b, grid, o.video_mask_ratio, g, device=x.device)
            out = self.student_v.backbone(x, keep=keep)
            if o.use_vid:
                s_logits.append(self.student_v.head(out.pooled))
            s_views.append((out.tokens[:, 1:], keep))
        if o.use_vid:
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
            if o.use_img:
                with torch.no_grad():
                    ti_logits = self.teacher_i.head(ti_out.pooled)
                si_logits = [self.student_i.head(self.masked_image_student(frames, ti_out, g).pooled)
                             for _ in range(o.n_image_masks)]
                loss_img, p = self.loss_img(torch.cat(si_logits), ti_logits, epoch)
                parts.update(prefixed(p, "img"))
                parts["loss_img"] = loss_img.detach()
                total = total + o.img_weight * loss_img
            if o.use_scd:
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
                total = total + o.scd_weight * loss_scd
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
        use_teacher = self.o.eval_encoder == "teacher"
        video = (self.teacher_v if use_teacher else self.student_v).backbone
        image = None
        if self.has_image:
            image = (self.teacher_i if use_teacher else self.student_i).backbone
        return DISCOVREncoders(video, image, embed=self.o.eval_branch)

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
        epochs = self.o.freeze_last_layer_epochs
        cancel_last_layer_gradients(self.student_v.head, int(self.current_epoch), epochs)
        if self.has_image:
            cancel_last_layer_gradients(self.student_i.head, int(self.current_epoch), epochs)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        m = self.ema_step(int(self.trainer.global_step) - 1)
        self.log("train/momentum", m, on_step=False, on_epoch=True, batch_size=1)

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.parameters(), self.cfg.optim, self.cfg.train.epochs, self.steps_per_epoch)



def load_encoders(cfg: RunConfig, weights: Path) -> DISCOVREncoders:
    """The exported encoders of a DISCOVR run (structure from `cfg`, weights from a safetensors file)."""
    from sonodistill.recipes.trainer import load_weights

    return load_weights(DISCOVRRecipe.build_inference_model(cfg), weights).eval()
