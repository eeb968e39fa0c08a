"""Semi-supervised segmentation: ONE LightningModule base and the baselines as `compute_loss` variants.

Batches come from `data/two_stream.py`: {"labelled": {"x", "mask"}, "unlabelled": {"x_weak", "x_strong"} | None}
with images `B x 1 x S x S` and masks `B x 1 x S x S` in {0, 1}. Methods:

- `SupervisedSegmentationRecipe` (`seg_supervised`): Dice + CE on the labelled images only.
- `MeanTeacherRecipe` (`mean_teacher`): + w(t) * MSE(softmax student(strong), softmax EMA-teacher(weak)).
- `FixMatchRecipe` (`fixmatch`): + w(t) * CE(student(strong), argmax student(weak)) where confident.
- `CrossPseudoSupervisionRecipe` (`cps`): two networks, + w(t) * CPS(net A(weak), net B(weak)).
- HDC (`recipes/hdc.py`).

w(t) = `consistency` * `sigmoid_rampup(step, rampup_fraction * total_steps)`. Every option lives in
`cfg.recipe_options` (see `SegmentationOptions` and each class' `Options`); unknown keys are errors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from sonodistill.config import ModelConfig, RunConfig, parse_options
from sonodistill.errors import ConfigError
from sonodistill.evaluation.mask_postprocess import check_mask_postprocess
from sonodistill.losses.consistency import (
    CrossPseudoSupervisionLoss,
    DiceCELoss,
    FixMatchPseudoLabelLoss,
    PixelConsistencyLoss,
)
from sonodistill.losses.ema import EMATeacher
from sonodistill.models.segmentation import SEGMENTATION_ENCODERS, SegmentationNet, SegOutputs, SingleDecoderUNet
from sonodistill.recipes.base import TrainingHooks, build_optimizer, check_finite
from sonodistill.recipes.schedules import sigmoid_rampup

Batch = dict[str, torch.Tensor]
log = logging.getLogger(__name__)

LABELLED_ROWS = ("fraction", "masks")


@dataclass
class SegmentationOptions:
    """recipe_options shared by every segmentation method (read by the protocol's data split and scoring too)."""

    labelled_fraction: float = 0.1       # grouped, seeded fraction of each fold's training rows that keeps its masks
    labelled_rows: str = "fraction"      # fraction: labelled_fraction of masked rows (a benchmark of few labels);
                                         # masks: the rows that have a mask are the labelled ones and the rows
                                         # without one (empty `mask`) the unlabelled ones; only masked rows scored
    labelled_bs: int | None = None       # labelled items per batch (default: half of data.batch_size, at least 1)
    iterations_per_epoch: int | None = None  # default: one pass over the unlabelled stream
    consistency: float = 1.0             # weight of the unsupervised term after ramp-up
    rampup_fraction: float = 0.4         # sigmoid ramp-up over this fraction of all training steps
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # U-Net widths before model.width
    overlays: int = 4                    # overlay PNGs written per fold
    save_masks: bool = False             # also write predicted masks (PNG, original resolution) per fold
    dice_background: bool = False        # supervised Dice on the foreground only (default since 2026-12-04: an
                                         # empty mask of a small target then costs the whole Dice term, see
                                         # docs/hdc.md); true: background counted too (MONAI's default)
    flip_tta: bool = False               # score and serve the mean of the softmax of the image and of its mirror
                                         # (mirrored back); exported with the model
    mask_postprocess: str = "none"       # none | largest (largest component, holes filled) | largest_nonempty
                                         # (and an empty mask becomes the peak region) | ellipse (the largest
                                         # component's filled contour ellipse): evaluation.mask_postprocess;
                                         # scored, predicted and recorded in the export alike

    def __post_init__(self) -> None:
        if not 0.0 < float(self.labelled_fraction) <= 1.0:
            raise ConfigError(f"recipe_options.labelled_fraction must be in (0, 1], got {self.labelled_fraction}")
        if self.labelled_rows not in LABELLED_ROWS:
            raise ConfigError(f"recipe_options.labelled_rows must be one of {list(LABELLED_ROWS)}, "
                              f"got {self.labelled_rows!r}")
        if not 0.0 <= float(self.rampup_fraction) <= 1.0:
            raise ConfigError(f"recipe_options.rampup_fraction must be in [0, 1], got {self.rampup_fraction}")
        check_mask_postprocess(self.mask_postprocess)


@dataclass
class MeanTeacherOptions(SegmentationOptions):
    ema_momentum: float = 0.99
    eval_model: str = "student"          # what is saved, scored and served: the student's or the EMA teacher's
                                         # encoder + D1 (same architecture and parameter names)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_model not in ("student", "teacher"):
            raise ConfigError(f"recipe_options.eval_model must be 'student' or 'teacher', got {self.eval_model!r}")


@dataclass
class FixMatchOptions(SegmentationOptions):
    threshold: float = 0.95


@dataclass
class CPSOptions(SegmentationOptions):
    consistency: float = 1.5


class EncoderD1(nn.Module):
    """Encoder + main decoder of a U-Net as a module returning `SegOutputs` (the mean-teacher view of a student).

    Holds references to (does not copy) the student's modules, so its parameter names are `encoder.*`,
    `decoder1.*` and an `EMATeacher` built from it can be updated from it by name."""

    def __init__(self, net: SingleDecoderUNet) -> None:
        super().__init__()
        self.encoder = net.encoder
        self.decoder1 = net.decoder1

    def forward(self, x: torch.Tensor) -> SegOutputs:
        features = self.encoder(x)
        logits, decoded = self.decoder1(features)
        return SegOutputs(logits, None, features, decoded)


def unet_kwargs(cfg: RunConfig, options: SegmentationOptions, start: bool = True) -> dict[str, Any]:
    """U-Net constructor arguments from the config. `model.backbone`: 'unet' (or left at its default) for the
    plain U-Net, 'efficientnet_lite0' (or _lite1, _lite2) for an EfficientNet-Lite encoder (`model.pretrained`
    applies when `start`, i.e. in training; inference builders pass False and load the trained weights)."""
    backbone = cfg.model.backbone
    if backbone in ("unet", ModelConfig().backbone):
        encoder = "unet"
    elif backbone in SEGMENTATION_ENCODERS:
        encoder = backbone
    else:
        raise ConfigError(f"segmentation recipes build a U-Net: set model.backbone=unet, or one of "
                          f"{', '.join(SEGMENTATION_ENCODERS[1:])} for an EfficientNet-Lite encoder (got {backbone!r})")
    return {"in_channels": 1, "num_classes": 2, "channels": tuple(int(c) for c in options.channels),
            "width": float(cfg.model.width), "encoder": encoder,
            "pretrained": cfg.model.pretrained if start else "none"}


def slice_outputs(out: SegOutputs, start: int) -> SegOutputs:
    """The items `start:` of every tensor in a `SegOutputs` (e.g. the unlabelled part of a joint forward)."""
    return SegOutputs(out.logits1[start:], None if out.logits2 is None else out.logits2[start:],
                      [f[start:] for f in out.features], [f[start:] for f in out.decoder_features])


class SemiSupervisedSegmentationRecipe(TrainingHooks, L.LightningModule):
    """Base of every semi-supervised segmentation method; subclasses set `Options` and override `compute_loss`.

    `self.student` is the trained network; `inference_model()` is its encoder + D1 (`SegmentationNet`).
    """

    task: ClassVar[str] = "segmentation"
    uses_unlabelled: ClassVar[bool] = True
    Options: ClassVar[type[SegmentationOptions]] = SegmentationOptions

    def __init__(self, cfg: RunConfig, num_classes: int = 2, steps_per_epoch: int = 1) -> None:
        super().__init__()
        if num_classes != 2:
            raise ConfigError(f"segmentation recipes segment one structure (2 classes), got num_classes={num_classes}")
        self.cfg = cfg
        self.options = self.resolve_options(cfg.recipe_options)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.total_steps = max(1, cfg.train.epochs * self.steps_per_epoch)
        self.rampup_steps = float(self.options.rampup_fraction) * self.total_steps
        self.sup_loss = DiceCELoss(include_background=bool(self.options.dice_background))
        self.student = self.build_student()

    # -- configuration ----------------------------------------------------------------------------
    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> SegmentationOptions:
        """`recipe_options` as this method's typed Options (unknown keys, wrong types, bad values: ConfigError)."""
        return parse_options(cls.Options, given, cls.__name__)

    def build_student(self) -> nn.Module:
        return SingleDecoderUNet(**unet_kwargs(self.cfg, self.options))

    @classmethod
    def build_inference_model(cls, cfg: RunConfig, manifest: Any = None) -> nn.Module:
        """The untrained served / exported network of a run of this recipe (weights loaded after): encoder + D1
        as `SegmentationNet`, `B x 1 x S x S` -> `B x 2 x S x S` logits, the parameter names `inference_model()`
        saves. Every method shares it: D2, the teacher and CPS' network B are training-only (but for HDC's
        `inference_decoders: both`, which serves D2 too: `HDCRecipe` overrides this)."""
        return SingleDecoderUNet(**unet_kwargs(cfg, cls.resolve_options(cfg.recipe_options))).inference_model()

    def inference_model(self) -> nn.Module:
        """Encoder + D1 only: what is saved, exported and evaluated (`B x 1 x S x S` -> `B x 2 x S x S` logits)."""
        return self.student.inference_model()

    def consistency_weight(self) -> float:
        """w(t) = consistency * sigmoid_rampup(global_step, rampup_fraction * total_steps)."""
        return float(self.options.consistency) * sigmoid_rampup(int(self.global_step), self.rampup_steps)

    # -- the part methods override ----------------------------------------------------------------
    def compute_loss(self, labelled: Batch, unlabelled: Batch | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Supervised Dice + CE of the student's D1 on the labelled images. Returns (loss, parts)."""
        out = self.student(labelled["x"])
        return self.supervised(out.logits1, labelled["mask"])

    @staticmethod
    def foreground_fractions(unlabelled_logits: torch.Tensor, labelled_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logged beside the losses: the fraction of unlabelled pixels the student predicts as foreground
        (`B x K x H x W` logits) and the labelled masks' foreground fraction; a collapse to empty masks shows as the
        first going to 0 while the second does not."""
        return {"unsup/fg_fraction": (unlabelled_logits.detach().argmax(dim=1) > 0).float().mean(),
                "sup/fg_fraction": (labelled_mask.detach() > 0.5).float().mean()}

    def supervised(self, logits: torch.Tensor, mask: torch.Tensor, prefix: str = "sup") -> tuple[torch.Tensor, dict]:
        loss, parts = self.sup_loss(logits, mask.round().long())
        return loss, {prefix: loss.detach(), **{f"{prefix}/{k}": v for k, v in parts.items()}}

    # -- Lightning hooks --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inference_model()(x)

    def training_step(self, batch: dict[str, Batch | None], batch_idx: int) -> torch.Tensor:
        labelled, unlabelled = batch["labelled"], batch.get("unlabelled")
        if labelled is None:
            raise ValueError("training batch holds no labelled items")
        if self.uses_unlabelled and unlabelled is None:
            raise ValueError(f"{type(self).__name__} needs unlabelled items in every batch (labelled_bs < batch_size)")
        loss, parts = self.compute_loss(labelled, unlabelled if self.uses_unlabelled else None)
        check_finite(int(self.global_step), {"loss": loss, **parts})
        bs = int(labelled["x"].shape[0]) + (0 if unlabelled is None else int(unlabelled["x_weak"].shape[0]))
        self.log_losses(loss, parts, bs)
        return loss

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.parameters(), self.cfg.optim, self.cfg.train.epochs, self.steps_per_epoch)


class SupervisedSegmentationRecipe(SemiSupervisedSegmentationRecipe):
    """Supervised-only baseline: Dice + CE on the labelled part; unlabelled images are not loaded."""

    uses_unlabelled = False


class _TeacherMixin:
    """An EMA teacher of the student's encoder + D1: parameters AND normalisation buffers averaged, eval mode.

    Momentum m_t = min(1 - 1 / (t + 1), ema_momentum) (the mean-teacher warm-up), applied after every optimiser step."""

    teacher: EMATeacher

    def make_teacher(self) -> None:
        self.teacher = EMATeacher(EncoderD1(self.student), buffers="ema")  # type: ignore[attr-defined]

    def ema_momentum(self, step: int) -> float:
        return min(1.0 - 1.0 / (step + 1.0), float(self.options.ema_momentum))  # type: ignore[attr-defined]

    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> SegOutputs:
        self.teacher.eval()
        return self.teacher(x)

    def inference_model(self) -> nn.Module:
        """Encoder + D1 of the student, or of the EMA teacher with `eval_model: teacher` (`SegmentationNet`)."""
        if self.options.eval_model == "teacher":  # type: ignore[attr-defined]
            module = self.teacher.module
            return SegmentationNet(module.encoder, module.decoder1, self.student.in_channels)  # type: ignore[attr-defined]
        return super().inference_model()  # type: ignore[misc]

    def update_teacher(self, step: int) -> float:
        """EMA step after optimiser step number `step` (0-based); returns the momentum used."""
        momentum = self.ema_momentum(step)
        self.teacher.update(EncoderD1(self.student), momentum)  # type: ignore[attr-defined]
        return momentum

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # global_step already counts this batch's optimiser step
        self.update_teacher(max(0, int(self.global_step) - 1))  # type: ignore[attr-defined]


class MeanTeacherRecipe(_TeacherMixin, SemiSupervisedSegmentationRecipe):
    """Mean Teacher (Tarvainen & Valpola 2017) for segmentation: student(strong view) vs EMA teacher(weak view)."""

    Options = MeanTeacherOptions

    def __init__(self, cfg: RunConfig, num_classes: int = 2, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, num_classes, steps_per_epoch)
        self.make_teacher()
        self.consistency_loss = PixelConsistencyLoss()

    def compute_loss(self, labelled: Batch, unlabelled: Batch | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert unlabelled is not None
        n = labelled["x"].shape[0]
        out = self.student(torch.cat([labelled["x"], unlabelled["x_strong"]]))
        sup, parts = self.supervised(out.logits1[:n], labelled["mask"])
        teacher = self.teacher_outputs(unlabelled["x_weak"])
        cons, cparts = self.consistency_loss(out.logits1[n:], teacher.logits1)
        w = self.consistency_weight()
        parts.update({"unsup": cons.detach(), "unsup/mask_ratio": cparts["mask_ratio"],
                      "weight": torch.tensor(w, device=sup.device),
                      **self.foreground_fractions(out.logits1[n:], labelled["mask"])})
        return sup + w * cons, parts


class FixMatchRecipe(SemiSupervisedSegmentationRecipe):
    """FixMatch-style: confident argmax of the student's own weak-view prediction supervises its strong view."""

    Options = FixMatchOptions

    def __init__(self, cfg: RunConfig, num_classes: int = 2, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, num_classes, steps_per_epoch)
        self.pseudo_loss = FixMatchPseudoLabelLoss(float(self.options.threshold))

    def compute_loss(self, labelled: Batch, unlabelled: Batch | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert unlabelled is not None
        n = labelled["x"].shape[0]
        out = self.student(torch.cat([labelled["x"], unlabelled["x_strong"]]))
        sup, parts = self.supervised(out.logits1[:n], labelled["mask"])
        with torch.no_grad():  # pseudo-labels from the same network on the weak view (train mode, as in FixMatch)
            weak = self.student(unlabelled["x_weak"]).logits1
        pseudo, pparts = self.pseudo_loss(out.logits1[n:], weak)
        w = self.consistency_weight()
        parts.update({"unsup": pseudo.detach(), "unsup/mask_ratio": pparts["mask_ratio"],
                      "weight": torch.tensor(w, device=sup.device),
                      **self.foreground_fractions(out.logits1[n:], labelled["mask"])})
        return sup + w * pseudo, parts


class CrossPseudoSupervisionRecipe(SemiSupervisedSegmentationRecipe):
    """CPS (Chen et al. 2021): two differently initialised U-Nets supervise each other with hard pseudo-labels.
    The inference model is network A (`student`)."""

    Options = CPSOptions

    def __init__(self, cfg: RunConfig, num_classes: int = 2, steps_per_epoch: int = 1) -> None:
        super().__init__(cfg, num_classes, steps_per_epoch)
        self.student_b = self.build_student()  # different random initialisation
        self.cps_loss = CrossPseudoSupervisionLoss()
        if self.options.rampup_fraction == 0 and self.options.consistency > 0:
            log.warning("cps with rampup_fraction=0: hard cross pseudo-labels at full weight from the first step can "
                        "lock both networks into their initial prediction (empty or all foreground); see docs/hdc.md")

    def compute_loss(self, labelled: Batch, unlabelled: Batch | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert unlabelled is not None
        n = labelled["x"].shape[0]
        x = torch.cat([labelled["x"], unlabelled["x_weak"]])
        a, b = self.student(x).logits1, self.student_b(x).logits1
        sup_a, parts = self.supervised(a[:n], labelled["mask"], "sup")
        sup_b, parts_b = self.supervised(b[:n], labelled["mask"], "sup_b")
        parts.update(parts_b)
        cps, cparts = self.cps_loss(a[n:], b[n:])
        w = self.consistency_weight()
        parts.update({"unsup": cps.detach(), "weight": torch.tensor(w, device=cps.device),
                      **self.foreground_fractions(a[n:], labelled["mask"])})
        return sup_a + sup_b + w * cps, parts


def total_steps(epochs: int, iterations: int) -> int:
    return max(1, int(epochs) * int(iterations))


def labelled_batch_size(options: SegmentationOptions, batch_size: int) -> int:
    """`labelled_bs` option, or half of the batch (at least 1)."""
    lbs = options.labelled_bs
    lbs = max(1, math.ceil(batch_size / 2)) if lbs is None else int(lbs)
    if not 1 <= lbs <= batch_size:
        raise ConfigError(f"recipe_options.labelled_bs must be in 1..data.batch_size={batch_size}, got {lbs}")
    return lbs
