"""Semi-supervised segmentation losses: supervised Dice+CE, HDC's correlation guidance, mutual information and
pixel consistency, and the FixMatch / cross-pseudo-supervision baselines.

Every loss is an `nn.Module` whose forward returns `(loss, parts)`: a scalar tensor and a dict of detached
0-d tensors for logging. Logits are `B x K x H x W` (any `B x K x ...` works); teacher inputs are detached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss as _MonaiDiceCELoss
from torch import nn

from sonodistill.losses import distributed as dist_utils
from sonodistill.losses.base import LossOutput, prefixed


class SegOutputsLike(Protocol):
    """What HDCLoss reads from a dual-decoder U-Net's output (`models.segmentation.SegOutputs` has it; losses
    never import models): main and noisy decoder logits `B x K x H x W`, encoder features shallow to deep."""

    logits1: torch.Tensor
    logits2: torch.Tensor | None
    features: list[torch.Tensor]


__all__ = [
    "DiceCELoss",
    "CorrelationGuidanceLoss",
    "MutualInformationLoss",
    "PixelConsistencyLoss",
    "HDCLoss",
    "FixMatchPseudoLabelLoss",
    "CrossPseudoSupervisionLoss",
    "channel_gram",
]


def _check_logits_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: logits shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"{what}: logits must be B x K x ..., got shape {tuple(a.shape)}")


class DiceCELoss(nn.Module):
    """Supervised loss: MONAI `DiceCELoss(to_onehot_y=True, softmax=True)` (soft Dice per image over all classes,
    background included unless `include_background=False`, + pixel CE over all classes). logits `B x K x H x W`,
    target `B x H x W` or `B x 1 x H x W` ints."""

    def __init__(
        self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
        include_background: bool = True,
    ) -> None:
        super().__init__()
        self.inner = _MonaiDiceCELoss(
            to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
            smooth_nr=smooth_nr, smooth_dr=smooth_dr, include_background=include_background,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        if target.dim() == logits.dim() - 1:
            target = target.unsqueeze(1)
        if target.dim() != logits.dim() or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"DiceCELoss: target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)} "
                "(expected B x H x W or B x 1 x H x W class indices)"
            )
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
            raise ValueError(
                f"DiceCELoss: target labels span [{int(target.min())}, {int(target.max())}], "
                f"outside the {logits.shape[1]} classes [0, {logits.shape[1] - 1}]"
            )
        dice = self.inner.dice(logits, target)
        ce = self.inner.ce(logits, target)
        loss = self.inner.lambda_dice * dice + self.inner.lambda_ce * ce
        return LossOutput(loss, {"dice": dice.detach(), "ce": ce.detach()})


def channel_gram(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine correlation between channels: `B x C x H x W` -> `B x C x C`, G = F̂ F̂^T with every channel's
    flattened spatial vector L2-normalised (entries in [-1, 1], diagonal 1 unless a channel is all zero)."""
    flat = F.normalize(features.flatten(2), dim=2, eps=eps)
    return flat @ flat.transpose(1, 2)


class CorrelationGuidanceLoss(nn.Module):
    """HDC correlation guidance: mean over layers of the per-image mean of ||G_s - G_t||_F^2 / C^2, with G the
    channel-normalised Gram matrix (`channel_gram`); the teacher is detached."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
    ) -> LossOutput:
        if len(student) != len(teacher) or not student:
            raise ValueError(
                f"CorrelationGuidanceLoss: need the same non-zero number of student and teacher layers, "
                f"got {len(student)} and {len(teacher)}"
            )
        per_layer = []
        for i, (fs, ft) in enumerate(zip(student, teacher)):
            if fs.shape[:2] != ft.shape[:2]:
                raise ValueError(
                    f"CorrelationGuidanceLoss: layer {i} batch/channels differ, "
                    f"{tuple(fs.shape)} vs {tuple(ft.shape)}"
                )
            gs = channel_gram(fs, self.eps)
            gt = channel_gram(ft.detach(), self.eps)
            c = fs.shape[1]
            per_layer.append(((gs - gt) ** 2).sum(dim=(1, 2)).mean() / (c * c))
        loss = torch.stack(per_layer).mean()
        parts = {"cg": loss.detach(), **{f"layer{i}": v.detach() for i, v in enumerate(per_layer)}}
        return LossOutput(loss, parts)


class MutualInformationLoss(nn.Module):
    """IIC mutual information between two decoders' per-pixel class distributions; loss = -I by default.

    P = (1/N) sum_pixels p1 p2^T (`K x K`, N = all pixels of the batch, all-reduced under DDP), symmetrised
    (P + P^T)/2, marginal m (row sums = column sums), I = sum P (log P - log m_i - log m_j), logs clamped at `eps`.
    0 <= I <= log K.

    -I = H(Z1 | Z2) - H(m) = H(Z1 | Z2) + KL(m || uniform) - log K: besides making the decoders agree
    confidently, IIC pulls the class marginal towards uniform (foreground fraction 1/K). `marginal` chooses that
    second term:
    - "entropy" (IIC): loss = -I.
    - "none": IIC's conditional term only, loss = H(Z1 | Z2) = H(P) - H(m), whatever the class balance.
    - "prior": loss = H(Z1 | Z2) + prior_weight * KL(m || prior), the uniform replaced by a class prior (`K`, e.g.
      the labelled masks' pixel frequencies) passed to forward; with a uniform prior and weight 1 it equals -I + log K.
      A weight above 1 holds the marginal nearer the prior (the conditional term favours confident majority-class
      pixels, which shrinks a small foreground).
    """

    MARGINALS = ("entropy", "none", "prior")

    def __init__(self, eps: float = 1e-8, marginal: str = "entropy", prior_weight: float = 1.0) -> None:
        super().__init__()
        if marginal not in self.MARGINALS:
            raise ValueError(f"MutualInformationLoss: marginal must be one of {self.MARGINALS}, got {marginal!r}")
        if not (math.isfinite(prior_weight) and prior_weight >= 0):
            raise ValueError(f"MutualInformationLoss: prior_weight must be a finite number >= 0, got {prior_weight}")
        self.eps = eps
        self.marginal = marginal
        self.prior_weight = float(prior_weight)

    def forward(self, logits1: torch.Tensor, logits2: torch.Tensor, prior: torch.Tensor | None = None) -> LossOutput:
        _check_logits_pair(logits1, logits2, "MutualInformationLoss")
        k = logits1.shape[1]
        p1 = logits1.softmax(dim=1).movedim(1, -1).reshape(-1, k)
        p2 = logits2.softmax(dim=1).movedim(1, -1).reshape(-1, k)
        joint = self._global_joint(p1.t() @ p2, p1.shape[0])
        joint = (joint + joint.t()) / 2
        m1 = joint.sum(dim=1, keepdim=True)
        m2 = joint.sum(dim=0, keepdim=True)
        log = lambda t: t.clamp_min(self.eps).log()  # noqa: E731
        mi = (joint * (log(joint) - log(m1) - log(m2))).sum()
        marginal_entropy = -(m1 * log(m1)).sum()
        parts = {"mi": mi.detach(), "marginal_entropy": marginal_entropy.detach()}
        if self.marginal == "entropy":
            return LossOutput(-mi, parts)
        conditional = -mi + marginal_entropy  # H(Z1 | Z2) = H(Z1) - I
        if self.marginal == "none":
            return LossOutput(conditional, parts)
        prior = self._check_prior(prior, k, joint)
        kl = (m1.squeeze(1) * (log(m1.squeeze(1)) - log(prior))).sum()
        parts["marginal_kl"] = kl.detach()
        return LossOutput(conditional + self.prior_weight * kl, parts)

    @staticmethod
    def _check_prior(prior: torch.Tensor | None, k: int, like: torch.Tensor) -> torch.Tensor:
        """`prior` as a normalised `K` tensor of `like`'s dtype and device; ValueError when missing or invalid."""
        if prior is None:
            raise ValueError("MutualInformationLoss(marginal='prior'): forward needs prior, a K-vector of class "
                             "frequencies (e.g. the labelled masks')")
        prior = prior.detach().flatten().to(like)
        if prior.numel() != k or not torch.isfinite(prior).all() or (prior < 0).any() or prior.sum() <= 0:
            raise ValueError(f"MutualInformationLoss: prior must hold {k} non-negative class frequencies with a "
                             f"positive sum, got {prior.tolist()}")
        return prior / prior.sum()

    @staticmethod
    def _global_joint(pair_sum: torch.Tensor, n_pixels: int) -> torch.Tensor:
        """`K x K` sum of p1 p2^T -> joint over all pixels of all processes (`global_mean`: the value is global and
        DDP's gradient averaging gives the exact gradient of the global MI); `pair_sum / n_pixels` in one process."""
        return dist_utils.global_mean(pair_sum, float(n_pixels))


class PixelConsistencyLoss(nn.Module):
    """Pixel consistency of a student with a (detached) teacher, per pixel then averaged:

    - `kind="mse"` (Mean Teacher's): squared error between the two softmax distributions, mean over the classes;
    - `kind="ce"` (hard pseudo-labels): cross-entropy of the student logits to the teacher's argmax class.

    Without `threshold` every pixel counts; with it only pixels where the teacher's max probability >= threshold
    (their mean over all processes' confident pixels under DDP; 0 when there are none)."""

    KINDS = ("mse", "ce")

    def __init__(self, threshold: float | None = None, kind: str = "mse") -> None:
        super().__init__()
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"PixelConsistencyLoss: threshold must be in [0, 1], got {threshold}")
        if kind not in self.KINDS:
            raise ValueError(f"PixelConsistencyLoss: kind must be one of {self.KINDS}, got {kind!r}")
        self.threshold, self.kind = threshold, kind

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> LossOutput:
        _check_logits_pair(student_logits, teacher_logits, "PixelConsistencyLoss")
        pt = teacher_logits.detach().softmax(dim=1)
        if self.kind == "ce":
            per_pixel = F.cross_entropy(student_logits, pt.argmax(dim=1), reduction="none")  # B x H x W
        else:
            per_pixel = ((student_logits.softmax(dim=1) - pt) ** 2).mean(dim=1)  # B x H x W
        if self.threshold is None:
            loss = per_pixel.mean()
            return LossOutput(loss, {"pc": loss.detach(), "mask_ratio": torch.ones((), device=per_pixel.device)})
        mask = (pt.max(dim=1).values >= self.threshold).to(per_pixel.dtype)
        # mean over the confident pixels of every process
        loss = dist_utils.global_mean((per_pixel * mask).sum(), mask.sum())
        return LossOutput(loss, {"pc": loss.detach(), "mask_ratio": mask.mean().detach()})


class HDCLoss(nn.Module):
    """HDC unsupervised objective: weight * (lambda_cg * CG(student enc, teacher enc) + lambda_mi * MI(D1, D2)
    + lambda_pc * PC(student D1, teacher D1)), MI = -I(D1; D2) or its variant chosen by `mi_marginal`
    (`MutualInformationLoss`). `weight` is the ramp-up value chosen by the recipe."""

    def __init__(
        self,
        lambda_cg: float = 1.0,
        lambda_mi: float = 1.0,
        lambda_pc: float = 1.0,
        cg_layers: Sequence[int] | None = None,
        pc_threshold: float | None = None,
        mi_marginal: str = "entropy",
        pc_loss: str = "mse",
        mi_prior_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.lambda_cg, self.lambda_mi, self.lambda_pc = float(lambda_cg), float(lambda_mi), float(lambda_pc)
        self.cg_layers = None if cg_layers is None else list(cg_layers)
        self.cg = CorrelationGuidanceLoss()
        self.mi = MutualInformationLoss(marginal=mi_marginal, prior_weight=mi_prior_weight)
        self.pc = PixelConsistencyLoss(pc_threshold, kind=pc_loss)

    def forward(
        self, student: SegOutputsLike, teacher: SegOutputsLike, weight: float | torch.Tensor = 1.0,
        prior: torch.Tensor | None = None,
    ) -> LossOutput:
        """`prior`: the class prior of the MI term's marginal (`K`), needed when `mi_marginal="prior"`."""
        if student.logits2 is None:
            raise ValueError(
                "HDCLoss: student.logits2 is None; run the DualDecoderUNet student in training mode with dual=True"
            )
        fs, ft = student.features, teacher.features
        if self.cg_layers is not None:
            fs, ft = [fs[i] for i in self.cg_layers], [ft[i] for i in self.cg_layers]
        cg, cg_parts = self.cg(fs, ft)
        neg_mi, mi_parts = self.mi(student.logits1, student.logits2, prior)
        pc, pc_parts = self.pc(student.logits1, teacher.logits1)
        unweighted = self.lambda_cg * cg + self.lambda_mi * neg_mi + self.lambda_pc * pc
        loss = weight * unweighted
        # top level: the three terms (mi = I, not -I); their other parts nested as "cg/layer0", "pc/mask_ratio"...
        parts = {"cg": cg_parts.pop("cg"), "mi": mi_parts.pop("mi"), "pc": pc_parts.pop("pc")}
        parts.update({**prefixed(cg_parts, "cg"), **prefixed(mi_parts, "mi"), **prefixed(pc_parts, "pc")})
        parts["weight"] = torch.as_tensor(weight, dtype=loss.dtype, device=loss.device).detach().clone()
        parts["unsup_unweighted"] = unweighted.detach()
        parts["unsup"] = loss.detach()
        return LossOutput(loss, parts)


class FixMatchPseudoLabelLoss(nn.Module):
    """FixMatch: CE of strong-view logits to argmax of the (detached) weak-view softmax, counted where its max
    probability >= threshold and averaged over ALL pixels (masked pixels contribute 0), as in FixMatch."""

    def __init__(self, threshold: float = 0.95) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"FixMatchPseudoLabelLoss: threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold

    def forward(self, strong_logits: torch.Tensor, weak_logits: torch.Tensor) -> LossOutput:
        _check_logits_pair(strong_logits, weak_logits, "FixMatchPseudoLabelLoss")
        conf, pseudo = weak_logits.detach().softmax(dim=1).max(dim=1)
        mask = (conf >= self.threshold).to(strong_logits.dtype)
        ce = F.cross_entropy(strong_logits, pseudo, reduction="none")
        loss = (ce * mask).mean()
        return LossOutput(loss, {"fixmatch": loss.detach(), "mask_ratio": mask.mean().detach()})


class CrossPseudoSupervisionLoss(nn.Module):
    """CPS (Chen et al. 2021): CE(logits_a, argmax logits_b) + CE(logits_b, argmax logits_a), hard labels
    detached, each CE averaged over pixels."""

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> LossOutput:
        _check_logits_pair(logits_a, logits_b, "CrossPseudoSupervisionLoss")
        ce_a = F.cross_entropy(logits_a, logits_b.detach().argmax(dim=1))
        ce_b = F.cross_entropy(logits_b, logits_a.detach().argmax(dim=1))
        loss = ce_a + ce_b
        return LossOutput(loss, {"cps_a": ce_a.detach(), "cps_b": ce_b.detach(), "cps": loss.detach()})
