"""DILBERT's pretext losses (MLM, MDC, MOC, CMM), temperature self-distillation L_SD and the annotation objective.

Pretext terms (all cross-entropies; positions labelled `IGNORE` = -100 do not count):
- MLM: masked word pieces -> vocabulary, `B x L x V` logits, `B x L` labels.
- MDC: masked tokens of named entities -> entity category (organ, finding, location, descriptor).
- MOC: masked regions -> region class (hard pseudo-classes `B x N`, or a soft target distribution `B x N x K`
  with a `B x N` bool mask, as ViLBERT's KL to the detector's class distribution).
- CMM: (sequence, text) pair -> matched (1) or mismatched (0), `P x 2` logits.

Annotation objective (eq. 3-13, our reading; see docs/dilbert.md):
`L = a L_CE + b L_MD + c L_SD`, `L_MD = L_RD + b2 L_KL`, `L_RD = L_DD + b1 L_AD` (RKD distance + angle on the
visual embeddings), `L_KL` = response KD on the annotation logits, `L_SD` = temperature self-distillation from
the last fusion layer's annotation logits to every earlier layer's. Binary findings enter the KL terms as
two-class distributions `softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.data.sequence_text import IGNORE
from sonodistill.losses.base import LossOutput, prefixed
from sonodistill.losses.distributed import global_mean, global_means
from sonodistill.losses.relational import RelationalKD, ResponseKD


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over positions whose label is not IGNORE (over every process's positions under DDP, `global_mean`);
    `... x K` logits, `...` labels; 0 (with graph) if there are none."""
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat = labels.reshape(-1)
    if flat_logits.shape[0] != flat.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    known = flat != IGNORE
    total = F.cross_entropy(flat_logits[known], flat[known], reduction="sum")
    return global_mean(total, known.sum())


class MaskedLanguageModelLoss(nn.Module):
    """MLM: CE of the masked word pieces. forward(logits `B x L x V`, labels `B x L`) -> (loss, parts)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        loss = masked_cross_entropy(logits, labels)
        return LossOutput(loss, {"mlm": loss.detach(), "mlm/n": (labels != IGNORE).sum().float()})


class MaskedEntityCategoryLoss(nn.Module):
    """MDC: CE of the category of masked entity tokens. forward(logits `B x L x C`, labels `B x L`)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        loss = masked_cross_entropy(logits, labels)
        return LossOutput(loss, {"mdc": loss.detach(), "mdc/n": (labels != IGNORE).sum().float()})


class MaskedRegionClassLoss(nn.Module):
    """MOC: region class of masked regions.

    forward(logits `B x N x K`, target): hard labels `B x N` (IGNORE where not masked) -> CE; or a soft target
    `B x N x K` with `mask` `B x N` -> mean over masked regions of `KL(target || softmax(logits))`.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> LossOutput:
        if target.dtype in (torch.int64, torch.int32):
            loss = masked_cross_entropy(logits, target)
            n = (target != IGNORE).sum().float()
        else:
            if mask is None or target.shape != logits.shape:
                raise ValueError("MOC with soft targets needs target `B x N x K` like the logits and a `B x N` mask")
            sel = mask.bool()
            n = sel.sum().float()
            logp = F.log_softmax(logits[sel].float(), dim=-1)
            t = target[sel].float()
            loss = global_mean((t * (torch.log(t.clamp_min(1e-12)) - logp)).sum(), n)
        return LossOutput(loss, {"moc": loss.detach(), "moc/n": n})


class CrossModalMatchingLoss(nn.Module):
    """CMM: CE of matched (1) vs mismatched (0) pairs. forward(logits `P x 2`, labels `P`) -> (loss, parts)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        loss = global_mean(F.cross_entropy(logits.float(), labels, reduction="sum"), logits.shape[0])
        acc = (logits.argmax(-1) == labels).float().mean() if logits.shape[0] else loss.detach() * 0.0
        return LossOutput(loss, {"cmm": loss.detach(), "cmm/accuracy": acc.detach()})


class PretextLoss(nn.Module):
    """`w_mlm L_MLM + w_mdc L_MDC + w_moc L_MOC + w_cmm L_CMM`; a zero weight leaves the term out."""

    def __init__(self, mlm: float = 1.0, mdc: float = 1.0, moc: float = 1.0, cmm: float = 1.0) -> None:
        super().__init__()
        self.weights = {"mlm": float(mlm), "mdc": float(mdc), "moc": float(moc), "cmm": float(cmm)}
        self.terms = nn.ModuleDict({"mlm": MaskedLanguageModelLoss(), "mdc": MaskedEntityCategoryLoss(),
                                    "moc": MaskedRegionClassLoss(), "cmm": CrossModalMatchingLoss()})

    def forward(self, logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> LossOutput:
        """logits/targets keyed 'mlm', 'mdc', 'moc', 'cmm' (CMM: pair logits `P x 2` and labels `P`)."""
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for name, w in self.weights.items():
            if w == 0.0:
                continue
            loss, p = self.terms[name](logits[name], targets[name])
            parts.update(p)
            total = w * loss if total is None else total + w * loss
        if total is None:
            raise ValueError("PretextLoss: every weight is zero")
        parts["pretext"] = total.detach()
        return LossOutput(total, parts)


# ------------------------------------------------------------------------------------------------ annotation
def logit_groups(binary: torch.Tensor, categorical: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Annotation logits as distributions for KL terms: binary `B x F` -> `(B*F) x 2` rows `[0, z]`
    (softmax = [1 - sigmoid(z), sigmoid(z)]); each categorical `B x K` as is. Empty groups are left out."""
    groups = []
    if binary.shape[1] > 0:
        z = binary.reshape(-1, 1)
        groups.append(torch.cat([torch.zeros_like(z), z], dim=1))
    groups.extend(c for c in categorical)
    return groups


class AnnotationCE(nn.Module):
    """L_CE: BCE over known binary findings (NaN = unknown, skipped; optional `pos_weight` `F`) plus the CE of
    each categorical target (-1 = unknown, skipped); the mean over the targets that have known labels. Each target's
    mean runs over the known labels of every process under DDP (`global_means`)."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight.float() if pos_weight is not None else None)

    def forward(self, binary: torch.Tensor, categorical: Sequence[torch.Tensor], y_binary: torch.Tensor,
                y_categorical: torch.Tensor) -> LossOutput:
        names, totals, counts = [], [], []
        if binary.shape[1] > 0:
            known = ~torch.isnan(y_binary)
            pw = self.pos_weight.to(binary.device).expand_as(binary)[known] if self.pos_weight is not None else None
            totals.append(F.binary_cross_entropy_with_logits(binary[known].float(), y_binary[known].float(),
                                                             pos_weight=pw, reduction="sum"))
            counts.append(known.sum())
            names.append("ce/binary")
        for j, logits in enumerate(categorical):
            y = y_categorical[:, j]
            totals.append(F.cross_entropy(logits.float(), y, ignore_index=-1, reduction="sum"))
            counts.append((y >= 0).sum())
            names.append(f"ce/cat{j}")
        parts: dict[str, torch.Tensor] = {}
        terms = []
        for name, mean in zip(names, global_means(totals, counts) if totals else []):
            if mean is not None:
                terms.append(mean)
                parts[name] = mean.detach()
        loss = torch.stack(terms).mean() if terms else _zero(binary)
        parts["ce"] = loss.detach()
        return LossOutput(loss, parts)


class TemperatureSelfDistillation(nn.Module):
    """L_SD: `1/(L-1) sum_{l<L} mean_g T^2 KL(softmax(z_L,g / T) || softmax(z_l,g / T))`, the last layer's logits
    detached (it teaches, the earlier layers learn). Inputs: the last layer's groups (`logit_groups`) and a list
    of the earlier layers' groups. No earlier layers -> 0."""

    def __init__(self, temperature: float = 3.0) -> None:
        super().__init__()
        self.kl = ResponseKD(temperature, detach_teacher=True)

    def forward(self, final: Sequence[torch.Tensor], earlier: Sequence[Sequence[torch.Tensor]]) -> LossOutput:
        if not earlier:
            loss = _zero(final[0]) if final else torch.zeros(())
            return LossOutput(loss, {"sd": loss.detach()})
        per_layer = []
        for groups in earlier:
            if len(groups) != len(final):
                raise ValueError(f"L_SD: an earlier layer has {len(groups)} logit groups, the last {len(final)}")
            per_layer.append(torch.stack([self.kl(s, t).loss for s, t in zip(groups, final)]).mean())
        loss = torch.stack(per_layer).mean()
        return LossOutput(loss, {"sd": loss.detach()})


class MutualAnnotationDistillation(nn.Module):
    """L_MD = L_RD + b2 L_KL on annotation outputs: RelationalKD(b1) on the embeddings `B x D_s`, `B x D_t` and the
    mean over logit groups of ResponseKD(T) (teacher side detached)."""

    def __init__(self, b1: float = 2.0, b2: float = 1.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.b2 = float(b2)
        self.relational = RelationalKD(b1)
        self.response = ResponseKD(temperature)

    def forward(self, s_emb: torch.Tensor, t_emb: torch.Tensor, s_groups: Sequence[torch.Tensor],
                t_groups: Sequence[torch.Tensor]) -> LossOutput:
        l_rd, rd = self.relational(s_emb, t_emb)
        l_kl = torch.stack([self.response(s, t).loss for s, t in zip(s_groups, t_groups)]).mean()
        loss = l_rd + self.b2 * l_kl
        return LossOutput(loss, {"md": loss.detach(), **prefixed(rd, "rd"), "kl": l_kl.detach()})


class DILBERTObjective(nn.Module):
    """`a L_CE + b L_MD + c L_SD` for one model (the student, or the teacher in the other direction of mutual
    learning). Without a partner model (`t_*` None) L_MD is left out; `b = c = 0` gives plain finetuning.

    forward(s_binary `B x F`, s_categorical [`B x K`], s_embedding `B x D`, y_binary `B x F` (NaN unknown),
    y_categorical `B x C` (-1 unknown), t_binary, t_categorical, t_embedding (partner, detached inside),
    s_exits [(binary, [categorical])] of the earlier fusion layers) -> (loss, parts).
    """

    def __init__(self, a: float = 0.2, b: float = 1.0, c: float = 0.6, b1: float = 2.0, b2: float = 1.0,
                 kd_temperature: float = 4.0, sd_temperature: float = 3.0,
                 pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.a, self.b, self.c = float(a), float(b), float(c)
        self.ce = AnnotationCE(pos_weight)
        self.md = MutualAnnotationDistillation(b1, b2, kd_temperature)
        self.sd = TemperatureSelfDistillation(sd_temperature)

    def forward(self, s_binary: torch.Tensor, s_categorical: Sequence[torch.Tensor], s_embedding: torch.Tensor,
                y_binary: torch.Tensor, y_categorical: torch.Tensor, t_binary: torch.Tensor | None = None,
                t_categorical: Sequence[torch.Tensor] | None = None, t_embedding: torch.Tensor | None = None,
                s_exits: Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]] = ()) -> LossOutput:
        l_ce, parts = self.ce(s_binary, s_categorical, y_binary, y_categorical)
        total = self.a * l_ce
        if self.b and t_binary is not None and t_embedding is not None:
            l_md, p = self.md(s_embedding, t_embedding, logit_groups(s_binary, s_categorical),
                              logit_groups(t_binary, t_categorical or []))
            parts.update(p)
            total = total + self.b * l_md
        if self.c and s_exits:
            l_sd, p = self.sd(logit_groups(s_binary, s_categorical), [logit_groups(b, c) for b, c in s_exits])
            parts.update(p)
            total = total + self.c * l_sd
        parts["total"] = total.detach()
        return LossOutput(total, parts)
