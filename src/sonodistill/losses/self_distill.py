"""DualDistill losses (Zhang et al., Front. Med. 2025): self-distillation from the deepest stage to shallower ones.

Three terms, each a pure function of tensors (the learnable auxiliary heads and attention convolutions are models:
`models.stage_heads.AuxiliaryHeads` / `StageAttentionModules`, owned by the recipe):

- SD   (eq. 1-2): `sum_i CE(c_i, y) + alpha * sum_{i<K} tau^2 KL(p_K || p_i)` on per-stage classifier logits.
- RGSD (eq. 3-4): `sum_{i<K} ||R_i - R_K||_F`, R the `T x T` cosine relation matrix of a stage's frames.
- AGSD (eq. 5-6): `sum_{i<K} ||M_i - M_K||_F`, M a `T x H x W` spatio-temporal attention map of a stage.

Total: `L = L_SD + beta * L_RGSD + gamma * L_AGSD` (`L_SD` is replaced by plain CE on the final logits when SD is
off). The deepest stage K is always the teacher; its side is detached by default. Every term is a mean over
samples, so under DDP the average of per-process losses equals the global loss for equal per-process batch
sizes: nothing is all-reduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import ConfigError
from sonodistill.losses.base import LossOutput, detached, frobenius_distance, prefixed
from sonodistill.stage_indices import validate_student_stages

Resample = Literal["area", "linear"]
_RESAMPLE_MODES = ("area", "linear")

# Defaults chosen by us; the paper's values of alpha, beta, gamma and tau were NOT verified (full text unread).
DEFAULT_ALPHA = 0.5
DEFAULT_BETA = 1.0
DEFAULT_GAMMA = 1.0
DEFAULT_TEMPERATURE = 3.0


# ----------------------------------------------------------------------------------------------- validation


def _check_nonneg(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def _check_resample(mode: str) -> str:
    if mode not in _RESAMPLE_MODES:
        raise ConfigError(f"resample must be one of {_RESAMPLE_MODES}, got {mode!r}")
    return mode


def _names(names: Sequence[str] | None, count: int, what: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) != count:
        raise ValueError(f"{what}: {len(names)} names for {count} inputs")
    return list(names)


def _require_video(feat: torch.Tensor, what: str) -> None:
    if feat.dim() != 5:
        raise ValueError(f"{what}: expected a video stage feature B x C x T x H x W, got shape {tuple(feat.shape)}")


# ------------------------------------------------------------------------------------------------------- SD


class SelfDistillationLoss(nn.Module):
    """SD (eq. 1-2): `sum_i CE(c_i, y) + alpha * tau^2 * sum_{i<K} KL(p_K || p_i)`, `p = softmax(c / tau)`.

    KL direction: the paper writes KL(c_i || c_K) for "student c_i pulled towards teacher c_K"; we implement the
    standard distillation KL(p_K || p_i) = sum p_K log(p_K / p_i) (Hinton et al.; F.kl_div(log p_i, p_K)), i.e. the
    cross-entropy of the student against the teacher's soft targets up to a constant, which is what "pulling
    the student towards the teacher" optimises. The tau^2 factor keeps gradient scale independent of tau.
    Each CE / KL is a batch mean; the deepest classifier c_K (the model's real head) has its CE in the sum.
    """

    def __init__(
        self, alpha: float = DEFAULT_ALPHA, temperature: float = DEFAULT_TEMPERATURE, detach_teacher: bool = True
    ) -> None:
        super().__init__()
        self.alpha = _check_nonneg("alpha", alpha)
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.detach_teacher = bool(detach_teacher)

    def forward(
        self, logits: Sequence[torch.Tensor], y: torch.Tensor, *, names: Sequence[str] | None = None
    ) -> LossOutput:
        """logits: list of `B x K`, shallow..deep (deepest = teacher, last); y: `B` class indices -> (loss, parts).

        parts: `ce/<name>` per classifier, `kl/<name>` per student, `ce`, `kl` (unweighted sums), `total`.
        """
        if len(logits) == 0:
            raise ValueError("SelfDistillationLoss: empty logits list")
        shape = logits[-1].shape
        if len(shape) != 2 or any(c.shape != shape for c in logits):
            raise ValueError(f"SelfDistillationLoss: logits must all be B x K, got {[tuple(c.shape) for c in logits]}")
        if y.shape != shape[:1]:
            raise ValueError(f"SelfDistillationLoss: y must have shape ({shape[0]},), got {tuple(y.shape)}")
        keys = _names(names, len(logits), "SelfDistillationLoss")
        tau = self.temperature
        teacher = logits[-1].detach() if self.detach_teacher else logits[-1]
        p_teacher = F.softmax(teacher / tau, dim=1)

        parts: dict[str, torch.Tensor] = {}
        ce_total = logits[0].new_zeros(())
        kl_total = logits[0].new_zeros(())
        for key, c in zip(keys, logits):
            ce = F.cross_entropy(c, y)
            parts[f"ce/{key}"] = detached(ce)
            ce_total = ce_total + ce
        for key, c in zip(keys[:-1], logits[:-1]):
            kl = F.kl_div(F.log_softmax(c / tau, dim=1), p_teacher, reduction="batchmean") * tau**2
            parts[f"kl/{key}"] = detached(kl)
            kl_total = kl_total + kl
        loss = ce_total + self.alpha * kl_total
        parts.update(ce=detached(ce_total), kl=detached(kl_total), total=detached(loss))
        return LossOutput(loss, parts)


# ----------------------------------------------------------------------------------------------------- RGSD


def frame_gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """Inner products of a stage's frames (a frame = its `C*H*W` values): `B x C x T x H x W` -> `B x T x T`.

    Computed as `sum_c F_c F_c^T` on the `B x C x T x HW` view (batched matmul, no copy of the feature); the sum
    over channels and the result are at least float32 (half-precision features under autocast stay accurate).
    """
    _require_video(feat, "frame_gram_matrix")
    f = feat.flatten(3)  # B x C x T x HW
    return torch.matmul(f, f.transpose(-1, -2)).sum(dim=1, dtype=torch.promote_types(f.dtype, torch.float32))


def gram_to_cosine(gram: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine matrix `G_ts / (|g_t| |g_s|)` of a `B x T x T` Gram matrix; frame norms clamped at eps (a zero frame
    gets a zero row, as F.normalize does); NaN/inf propagate."""
    norms = torch.diagonal(gram, dim1=1, dim2=2).clamp_min(0).sqrt().clamp_min(eps)
    return gram / (norms.unsqueeze(2) * norms.unsqueeze(1))


def frame_relation_matrix(feat: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the frames of a stage: `B x C x T x H x W` -> `B x T x T`.

    `R = G G^T / (||g_t|| ||g_s||)`, G the `T x CHW` matrix of frame vectors (paper eq. 3, rows normalised).
    """
    return gram_to_cosine(frame_gram_matrix(feat))


def time_resample_matrix(
    t_in: int, t_out: int, mode: str = "area", *, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> torch.Tensor:
    """The `t_out x t_in` matrix A of `resample_time` (resampling along time is linear: x_res = A x)."""
    eye = torch.eye(t_in, dtype=dtype, device=device)
    return resample_time(eye.reshape(1, t_in, t_in, 1, 1), t_out, mode).reshape(t_in, t_out).t()


def resampled_relation_matrix(feat: torch.Tensor, t: int, mode: str = "area") -> torch.Tensor:
    """`frame_relation_matrix(resample_time(feat, t, mode))` without resampling the feature: `A Gram A^T`."""
    gram = frame_gram_matrix(feat)
    if feat.shape[2] != t:
        a = time_resample_matrix(feat.shape[2], t, mode, dtype=gram.dtype, device=gram.device)
        gram = a @ gram @ a.t()
    return gram_to_cosine(gram)


def resample_time(feat: torch.Tensor, t: int, mode: str = "area") -> torch.Tensor:
    """Resample a `B x C x T x H x W` feature along time to `t` frames (H, W untouched).

    area: adaptive average pooling (output frame j = mean of input frames floor(jT/t) .. ceil((j+1)T/t) - 1,
    e.g. T=8 -> t=4 averages consecutive pairs; repeats frames when t > T). linear: linear interpolation
    (align_corners=False).
    """
    _require_video(feat, "resample_time")
    if feat.shape[2] == t:
        return feat
    size = (t, feat.shape[3], feat.shape[4])
    if mode == "area":
        return F.adaptive_avg_pool3d(feat, size)
    if mode == "linear":
        return F.interpolate(feat, size=size, mode="trilinear", align_corners=False)
    raise ValueError(f"resample_time: unknown mode {mode!r}, expected one of {_RESAMPLE_MODES}")


class RelationDistillationLoss(nn.Module):
    """RGSD (eq. 3-4): `sum_{i<K} mean_b ||R_i - R_K||_F`, R = `frame_relation_matrix` of each stage.

    Stages whose temporal length differs from the common T are resampled along time BEFORE the relation
    matrix is formed (`resample_time`, default area = adaptive average pooling; applied exactly, and cheaply,
    as `A Gram A^T`). common_t: "deepest" (the teacher's T_K) or a fixed int (the teacher is then resampled
    too). A common T of 1 is refused: a 1 x 1 relation matrix is constant and the term would be silently zero.
    """

    def __init__(
        self, detach_teacher: bool = True, common_t: int | Literal["deepest"] = "deepest", resample: Resample = "area"
    ) -> None:
        super().__init__()
        if common_t != "deepest" and (isinstance(common_t, bool) or not isinstance(common_t, int) or common_t < 2):
            raise ConfigError(f"common_t must be 'deepest' or an integer >= 2, got {common_t!r}")
        self.detach_teacher = bool(detach_teacher)
        self.common_t = common_t
        self.resample = _check_resample(resample)

    def forward(self, stages: Sequence[torch.Tensor], *, names: Sequence[str] | None = None) -> LossOutput:
        """stages: list of `B x C_i x T_i x H_i x W_i`, shallow..deep (teacher last) -> (loss, parts).

        parts: `<name>` per student (its Frobenius distance), `total`.
        """
        if len(stages) < 2:
            raise ValueError(f"RelationDistillationLoss: need >= 2 stages (students + teacher), got {len(stages)}")
        keys = _names(names, len(stages), "RelationDistillationLoss")
        for key, feat in zip(keys, stages):
            _require_video(feat, f"RelationDistillationLoss stage {key}")
        t = stages[-1].shape[2] if self.common_t == "deepest" else self.common_t
        if t < 2:
            raise ValueError(
                f"RelationDistillationLoss: the deepest stage has T=1 (shape {tuple(stages[-1].shape)}): its frame "
                "relation matrix is constant, so RGSD would be zero; use longer clips or common_t >= 2"
            )
        teacher = resampled_relation_matrix(stages[-1], t, self.resample)
        if self.detach_teacher:
            teacher = teacher.detach()
        loss = teacher.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for key, feat in zip(keys[:-1], stages[:-1]):
            if feat.shape[0] != teacher.shape[0]:
                raise ValueError(
                    f"RelationDistillationLoss: stage {key} has batch {feat.shape[0]}, teacher {teacher.shape[0]}"
                )
            d = frobenius_distance(resampled_relation_matrix(feat, t, self.resample), teacher)
            parts[key] = detached(d)
            loss = loss + d
        parts["total"] = detached(loss)
        return LossOutput(loss, parts)


# ----------------------------------------------------------------------------------------------------- AGSD


def resample_maps(maps: torch.Tensor, size: Sequence[int], mode: str = "area") -> torch.Tensor:
    """Resample attention maps `B x T x H x W` to `B x size[0] x size[1] x size[2]`.

    area: adaptive average pooling (region means; exact for any shrink factor, repeats when growing).
    linear: trilinear interpolation (align_corners=False). Resampled maps are at least float32.
    """
    if maps.dim() != 4:
        raise ValueError(f"resample_maps: expected B x T x H x W maps, got shape {tuple(maps.shape)}")
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    x = maps.unsqueeze(1).to(torch.promote_types(maps.dtype, torch.float32))  # half precision: pool in float32
    if mode == "area":
        out = F.adaptive_avg_pool3d(x, size)
    elif mode == "linear":
        out = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    else:
        raise ValueError(f"resample_maps: unknown mode {mode!r}, expected one of {_RESAMPLE_MODES}")
    return out.squeeze(1)


class AttentionDistillationLoss(nn.Module):
    """AGSD (eq. 5-6): `sum_{i<K} mean_b ||M_i - M_K||_F` over `T*H*W`, maps resampled to a common size.

    size: "deepest" (the teacher map's T x H x W; default) or a fixed (T, H, W) (the teacher is then resampled
    too). resample: "area" (adaptive average pooling; default, no aliasing for large shrink factors) or
    "linear" (trilinear).
    """

    def __init__(
        self,
        detach_teacher: bool = True,
        size: tuple[int, int, int] | Literal["deepest"] = "deepest",
        resample: Resample = "area",
    ) -> None:
        super().__init__()
        if size != "deepest":
            ok = isinstance(size, (tuple, list)) and len(size) == 3
            ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
            if not ok:
                raise ConfigError(
                    f"attention map size must be 'deepest' or three positive ints (T, H, W), got {size!r}"
                )
            size = tuple(size)
        self.detach_teacher = bool(detach_teacher)
        self.size = size
        self.resample = _check_resample(resample)

    def forward(self, maps: Sequence[torch.Tensor], *, names: Sequence[str] | None = None) -> LossOutput:
        """maps: list of `B x T_i x H_i x W_i`, shallow..deep (teacher last) -> (loss, parts: `<name>`, `total`)."""
        if len(maps) < 2:
            raise ValueError(f"AttentionDistillationLoss: need >= 2 maps (students + teacher), got {len(maps)}")
        keys = _names(names, len(maps), "AttentionDistillationLoss")
        size = tuple(maps[-1].shape[1:]) if self.size == "deepest" else self.size
        teacher = resample_maps(maps[-1], size, self.resample)
        if self.detach_teacher:
            teacher = teacher.detach()
        loss = teacher.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for key, m in zip(keys[:-1], maps[:-1]):
            d = frobenius_distance(resample_maps(m, size, self.resample), teacher)
            parts[key] = detached(d)
            loss = loss + d
        parts["total"] = detached(loss)
        return LossOutput(loss, parts)


# ---------------------------------------------------------------------------------------------------- total


class DualDistillLoss(nn.Module):
    """`L = L_SD + beta * L_RGSD + gamma * L_AGSD` (L_SD -> CE(final_logits, y) when use_sd is False).

    student_stages: 1-based indices of the students among `num_stages` backbone stages; the deepest is the
    teacher. Defaults alpha=0.5, beta=1, gamma=1, tau=3 are chosen by us; the paper's values are not verified.
    """

    def __init__(
        self,
        alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA,
        gamma: float = DEFAULT_GAMMA,
        temperature: float = DEFAULT_TEMPERATURE,
        use_sd: bool = True,
        use_rgsd: bool = True,
        use_agsd: bool = True,
        student_stages: Sequence[int] = (1, 2, 3),
        num_stages: int = 4,
        detach_teacher: bool = True,
        resample: Resample = "area",
    ) -> None:
        super().__init__()
        self.student_stages = validate_student_stages(student_stages, num_stages)
        self.num_stages = num_stages
        self.beta = _check_nonneg("beta", beta)
        self.gamma = _check_nonneg("gamma", gamma)
        self.use_sd, self.use_rgsd, self.use_agsd = bool(use_sd), bool(use_rgsd), bool(use_agsd)
        self.sd = SelfDistillationLoss(alpha, temperature, detach_teacher)
        self.rgsd = RelationDistillationLoss(detach_teacher, "deepest", resample)
        self.agsd = AttentionDistillationLoss(detach_teacher, "deepest", resample)
        self._names = [f"s{s}" for s in self.student_stages] + [f"s{num_stages}"]

    def forward(
        self,
        stage_logits: Sequence[torch.Tensor],
        final_logits: torch.Tensor,
        stages: Sequence[torch.Tensor] | None,
        attention_maps: Sequence[torch.Tensor] | None,
        y: torch.Tensor,
    ) -> LossOutput:
        """Compute the total loss.

        stage_logits: `B x K` from `AuxiliaryHeads`, one per student stage (ignored when use_sd is False).
        final_logits: `B x K` of the model's head (the teacher classifier c_K).
        stages: all `num_stages` backbone features `B x C x T x H x W` (needed when use_rgsd).
        attention_maps: `StageAttentionModules` output, students then deepest (needed when use_agsd).
        y: `B` class indices. parts: `ce_final`, `sd`, `sd/...`, `rgsd`, `rgsd/s<i>`, `agsd`, `agsd/s<i>`, `total`.
        """
        parts: dict[str, torch.Tensor] = {}
        if self.use_sd:
            if len(stage_logits) != len(self.student_stages):
                raise ValueError(
                    f"DualDistillLoss: {len(stage_logits)} stage logits for student stages {self.student_stages}"
                )
            loss, sd_parts = self.sd([*stage_logits, final_logits], y, names=self._names)
            parts["ce_final"] = sd_parts[f"ce/{self._names[-1]}"]
            parts["sd"] = sd_parts.pop("total")
            parts.update(prefixed(sd_parts, "sd"))
        else:
            loss = F.cross_entropy(final_logits, y)
            parts["ce_final"] = detached(loss)
        if self.use_rgsd:
            if stages is None or len(stages) != self.num_stages:
                got = None if stages is None else len(stages)
                raise ValueError(f"DualDistillLoss: RGSD needs all {self.num_stages} stage features, got {got}")
            used = [stages[s - 1] for s in self.student_stages] + [stages[-1]]
            rgsd, rgsd_parts = self.rgsd(used, names=self._names)
            parts["rgsd"] = rgsd_parts.pop("total")
            parts.update(prefixed(rgsd_parts, "rgsd"))
            loss = loss + self.beta * rgsd
        if self.use_agsd:
            if attention_maps is None or len(attention_maps) != len(self.student_stages) + 1:
                got = None if attention_maps is None else len(attention_maps)
                raise ValueError(
                    f"DualDistillLoss: AGSD needs {len(self.student_stages) + 1} attention maps "
                    f"(students {self.student_stages} then the deepest), got {got}"
                )
            agsd, agsd_parts = self.agsd(attention_maps, names=self._names)
            parts["agsd"] = agsd_parts.pop("total")
            parts.update(prefixed(agsd_parts, "agsd"))
            loss = loss + self.gamma * agsd
        parts["total"] = detached(loss)
        return LossOutput(loss, parts)
