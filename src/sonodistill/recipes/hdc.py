"""HDC (Le et al., CVPR workshops 2025): a dual-decoder student and an EMA teacher with multi-level noise.

- Student: `DualDecoderUNet`, one encoder, D1 (clean features) and D2 (feature noise + dropout).
- Teacher: EMA of the student's encoder + D1 (parameters and BatchNorm buffers), eval mode, weak view.
- Noise levels: weak augmentation (teacher input), strong intensity augmentation on top of it (student input),
  feature perturbation (D2 input).
- Loss: `sup(D1) + sup_d2 * sup(D2)` (Dice + CE, labelled images) `+ w(t) * HDCLoss`, where HDCLoss =
  lambda_cg * correlation guidance (student vs teacher encoder features) + lambda_mi * (-I(D1; D2))
  + lambda_pc * PC(student D1, teacher D1) on the unlabelled images, w(t) the sigmoid ramp-up; PC is the MSE of
  the softmax (`pc_loss: mse`, default) or the CE to the teacher's argmax (`pc_loss: ce`), over the pixels where
  the teacher is confident (`pc_threshold`) or all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sonodistill.config import RunConfig
from sonodistill.errors import ConfigError
from sonodistill.losses import distributed as dist_utils
from sonodistill.losses.consistency import HDCLoss, MutualInformationLoss, PixelConsistencyLoss
from sonodistill.models.segmentation import INFERENCE_DECODERS, DualDecoderUNet
from sonodistill.recipes.semi_supervised import (
    Batch,
    MeanTeacherOptions,
    SemiSupervisedSegmentationRecipe,
    _TeacherMixin,
    slice_outputs,
    unet_kwargs,
)


@dataclass
class HDCOptions(MeanTeacherOptions):
    """recipe_options of `hdc` (beside the shared segmentation options and the EMA momentum)."""

    lambda_cg: float = 1.0
    lambda_mi: float = 1.0
    lambda_pc: float = 1.0
    cg_layers: list[int] | None = None      # encoder levels used by correlation guidance (None: all)
    pc_threshold: float | None = None       # teacher confidence threshold of the pixel consistency (None: every pixel)
    pc_loss: str = "mse"                    # pixel consistency: MSE of the softmax ("mse", Mean Teacher's) or CE to
                                            # the teacher's argmax ("ce", hard pseudo-labels as in FixMatch / CPS)
    feature_noise: float = 0.3              # D2 input: f * (1 + U(-a, a)) ...
    feature_dropout: float = 0.5            # ... then channel dropout
    sup_d2: float = 1.0                     # weight of D2's supervised loss
    # MI term: -I (IIC, "entropy"), its conditional term H(D1 | D2) only ("none"), or H(D1 | D2) + KL(marginal ||
    # the labelled masks' class frequencies) ("prior"); see losses.consistency.MutualInformationLoss. "none" was
    # chosen on hc18 validation (pretrained U-Net, 10 % labels, docs/hdc.md); before 2026-12-03 it was "entropy"
    mi_marginal: str = "none"
    mi_prior_weight: float = 1.0            # weight of KL(marginal || labelled prior) with mi_marginal "prior"
    inference_decoders: str = "d1"          # what is scored and served: D1 ("d1") or the mean of D1's and D2's
                                            # class probabilities ("both": one more decoder pass; D2 unperturbed)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mi_marginal not in MutualInformationLoss.MARGINALS:
            raise ConfigError(f"recipe_options (hdc).mi_marginal must be one of {MutualInformationLoss.MARGINALS}, "
                              f"got {self.mi_marginal!r}")
        prior_weight = float(self.mi_prior_weight)
        if not (math.isfinite(prior_weight) and prior_weight >= 0):
            raise ConfigError(f"recipe_options (hdc).mi_prior_weight must be a finite number >= 0, "
                              f"got {self.mi_prior_weight}")
        if prior_weight != 1.0 and self.mi_marginal != "prior":
            raise ConfigError(f"recipe_options (hdc).mi_prior_weight weights the prior's KL term and applies to "
                              f"mi_marginal 'prior' only (got mi_marginal {self.mi_marginal!r})")
        if self.inference_decoders not in INFERENCE_DECODERS:
            raise ConfigError(f"recipe_options (hdc).inference_decoders must be one of {INFERENCE_DECODERS}, "
                              f"got {self.inference_decoders!r}")
        if self.inference_decoders == "both" and self.eval_model == "teacher":
            raise ConfigError("recipe_options (hdc): inference_decoders 'both' needs the student's two decoders; the "
                              "EMA teacher (eval_model 'teacher') has D1 only")
        if self.pc_loss not in PixelConsistencyLoss.KINDS:
            raise ConfigError(f"recipe_options (hdc).pc_loss must be one of {PixelConsistencyLoss.KINDS}, "
                              f"got {self.pc_loss!r}")


class HDCRecipe(_TeacherMixin, SemiSupervisedSegmentationRecipe):
    """HDC; inference model = encoder + D1 of the student (or of the EMA teacher, `eval_model: teacher`), or with
    `inference_decoders: both` encoder + D1 and D2 with their probabilities averaged; no perturbation."""

    Options = HDCOptions

    def __init__(self, cfg: RunConfig, num_classes: int = 2, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, num_classes, steps_per_epoch)
        self.make_teacher()
        o = self.options
        self.hdc_loss = HDCLoss(o.lambda_cg, o.lambda_mi, o.lambda_pc, o.cg_layers, o.pc_threshold, o.mi_marginal,
                                o.pc_loss, float(o.mi_prior_weight))
        # pixels per class of every labelled mask seen so far (all processes): the prior of mi_marginal="prior"
        self.register_buffer("labelled_class_pixels", torch.zeros(num_classes, dtype=torch.float64))

    def build_student(self) -> nn.Module:
        return DualDecoderUNet(feature_noise=float(self.options.feature_noise),
                               feature_dropout=float(self.options.feature_dropout),
                               **unet_kwargs(self.cfg, self.options))

    @classmethod
    def build_inference_model(cls, cfg: RunConfig, manifest: Any = None) -> nn.Module:
        """The untrained served / exported network (weights loaded after): encoder + D1 (`SegmentationNet`), or
        with `inference_decoders: both` encoder + D1 + D2 (`DecoderAveragedNet`); `B x 1 x S x S` -> `B x 2 x S x S`
        logits, the parameter names `inference_model()` saves."""
        options = cls.resolve_options(cfg.recipe_options)
        return DualDecoderUNet(**unet_kwargs(cfg, options)).inference_model(decoders=options.inference_decoders)

    def inference_model(self) -> nn.Module:
        if self.options.inference_decoders == "both":
            return self.student.inference_model(decoders="both")
        return super().inference_model()

    def compute_loss(self, labelled: Batch, unlabelled: Batch | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert unlabelled is not None
        n = labelled["x"].shape[0]
        out = self.student(torch.cat([labelled["x"], unlabelled["x_strong"]]), dual=True)
        assert out.logits2 is not None
        sup1, parts = self.supervised(out.logits1[:n], labelled["mask"], "sup")
        sup2, parts2 = self.supervised(out.logits2[:n], labelled["mask"], "sup_d2")
        parts.update(parts2)
        teacher = self.teacher_outputs(unlabelled["x_weak"])
        w = self.consistency_weight()
        prior = self.labelled_prior(labelled["mask"]) if self.options.mi_marginal == "prior" else None
        unsup, uparts = self.hdc_loss(slice_outputs(out, n), teacher, weight=w, prior=prior)
        parts.update({k if k in ("weight", "unsup", "unsup_unweighted") else f"hdc/{k}": v for k, v in uparts.items()})
        parts.update(self.foreground_fractions(out.logits1[n:], labelled["mask"]))
        return sup1 + float(self.options.sup_d2) * sup2 + unsup, parts

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint written before the labelled prior existed resumes with the counts starting from zero."""
        checkpoint["state_dict"].setdefault("labelled_class_pixels", torch.zeros_like(self.labelled_class_pixels))

    def labelled_prior(self, mask: torch.Tensor) -> torch.Tensor:
        """Adds a labelled batch's masks (`B x 1 x S x S` in {0, 1}, every process's under DDP) to the running pixel
        counts and returns the class frequencies seen so far (`K`, float32): the labelled prior."""
        labels = mask.detach().round().long().flatten()
        counts = torch.bincount(labels, minlength=self.labelled_class_pixels.numel()).to(torch.float64)
        self.labelled_class_pixels += dist_utils.all_reduce_sum(counts)
        return (self.labelled_class_pixels / self.labelled_class_pixels.sum()).float()
