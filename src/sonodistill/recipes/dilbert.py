"""The `dilbert` recipe: multimodal (sequence + report) distillation pretraining, then finding annotation.

Stages (one Lightning module, `stage` picks the loss):
- `pretrain`: MLM (entity-aware masking), MDC, MOC (k-means pseudo-classes of region pixels: these data have no
  region-level labels) and CMM on sequence-text pairs of the training fold.
- `distill`: the student's pretraining, guided by the frozen pretrained teacher: its pretext losses plus
  `L_RD + b2 L_KL` (relational KD on the visual and text embeddings, response KD on every pretext head).
- `finetune`: image-only annotation (the text stream is `[CLS] [SEP]`), `L_CE` (+ `c L_SD` when asked).
- `mutual`: teacher (initialised from its finetuned weights) and student (from `distill`) learn together:
  each minimises `a L_CE + b L_MD(partner detached) + c L_SD` (defaults a=0.2, b=1, c=0.6).

The protocol (`protocols/dilbert.py`, run by `sonodistill train dilbert`) fits the stages per grouped fold of
sequences: baseline = student-sized model, pretrain + finetune without any distillation (the paper's "BERT" row);
teacher = pretrain + finetune; student = distill + mutual; and writes an annotator folder per variant
(`export_annotator`, read by `sonodistill annotate` and the serve layer's "annotation" kind).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.sequence_text import IGNORE
from sonodistill.data.sequences import AnnotationSpec
from sonodistill.data.text import TextTokenizer
from sonodistill.errors import ConfigError
from sonodistill.knowledge import KnowledgeGraph
from sonodistill.losses.base import prefixed
from sonodistill.losses.distributed import global_means
from sonodistill.losses.pretext import DILBERTObjective, PretextLoss
from sonodistill.losses.relational import RelationalKD, ResponseKD
from sonodistill.models.fusion import (ANNOTATOR_FORMAT, REPORT_BANK_FILE, REPORT_RANKINGS, DILBERTModel,
                                       FusionConfig)
from sonodistill.models.region_codebook import RegionCodebook
from sonodistill.recipes.base import TrainingHooks, build_optimizer, check_finite

STAGES = ("pretrain", "distill", "finetune", "mutual")
VARIANTS = ("baseline", "teacher", "student")
#: the text a CMM pair is scored with: the MLM-masked ids of the same pass, or the original (unmasked) report
CMM_TEXTS = ("masked", "original")


@dataclass
class ModelSize:
    """One model's sizes (`recipe_options.student`; defaults: the CPU student); any other FusionConfig size too."""

    dim: int = 64
    layers: int = 2
    heads: int = 2
    mlp_ratio: float = 2.0
    region_stage: int = -1
    frame_backbone: str = "resnet18_2d"
    frame_width: float = 0.125
    clip_backbone: str = "resnet10_3d"
    clip_width: float = 0.125
    frame_kwargs: dict[str, Any] = field(default_factory=dict)
    clip_kwargs: dict[str, Any] = field(default_factory=dict)
    frame_pretrained: str = "none"      # none | imagenet | PATH (a run directory or safetensors of our pretraining)
    clip_pretrained: str = "none"
    frame_freeze_stages: int = 0
    clip_freeze_stages: int = 0


@dataclass
class TeacherSize(ModelSize):
    """`recipe_options.teacher` (defaults: the CPU teacher)."""

    dim: int = 128
    layers: int = 4
    heads: int = 4
    frame_width: float = 0.25
    clip_width: float = 0.25


@dataclass
class PretextWeights:
    """`recipe_options.pretext_weights`: the weight of each pretraining term."""

    mlm: float = 1.0
    mdc: float = 1.0
    moc: float = 1.0
    cmm: float = 1.0


@dataclass
class DILBERTOptions:
    """recipe_options of `dilbert` (CPU sizes; the paper's loss weights)."""

    graph: str | None = None            # knowledge graph (None: the data's own, lung for lung data)
    vocab_size: int = 600
    max_text_len: int = 48
    mask_rate: float = 0.15             # MLM: fraction of word tokens masked (entity groups first, then random)
    entity_prob: float = 0.5            # MLM: chance that a mention seeds an entity-aware mask
    region_mask_rate: float = 0.15      # MOC: fraction of region tokens masked
    n_region_classes: int = 16          # MOC: k-means pseudo-classes of region pixels
    region_grid: int = 2
    teacher: TeacherSize = field(default_factory=TeacherSize)
    student: ModelSize = field(default_factory=ModelSize)
    dropout: float = 0.1
    norm: str = "group"
    pretext_weights: PretextWeights = field(default_factory=PretextWeights)
    cmm_text: str = "original"          # CMM pairs read the original report or (before 2026-12-07) the masked text
    pretrain_epochs: int | None = None  # None: train.epochs
    finetune_epochs: int | None = None
    finetune_lr: float | None = None    # None: optim.lr
    a: float = 0.2                      # total a L_CE + b L_MD + c L_SD (mutual stage)
    b: float = 1.0
    c: float = 0.6
    b1: float = 2.0                     # L_RD = L_DD + b1 L_AD ; L_MD = L_RD + b2 L_KL
    b2: float = 1.0
    kd_temperature: float = 4.0
    sd_temperature: float = 3.0
    distill_weight: float = 1.0         # weight of L_MD in the student's pretraining
    pos_weight: str | None = "balanced"  # BCE positive weight per finding from the training fold (clipped), or none
    augment: bool = True
    threshold: float = 0.5
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    retrieval: bool = True
    retrieval_bank: bool = True         # also score retrieval with the training fold as query bank (hubness)
    report_ranking: str = "raw"         # what `annotate` ranks training reports by: raw CMM or bank-normalised
    run_folds: list[int] | None = None  # the folds to fit (None: every fold, or train.fold); checked by the protocol
    keep_checkpoints: bool = False      # keep Lightning checkpoints of finished stages (only needed to resume them)
    collapse_check: bool = True         # stop (SonoDistillError) when a finetuned model's outputs are constant

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError(f"recipe_options (dilbert).variants: unknown {bad} (choose from {VARIANTS})")
        for key in ("mask_rate", "region_mask_rate", "entity_prob"):
            if not 0.0 <= float(getattr(self, key)) < 1.0:
                raise ConfigError(f"recipe_options (dilbert).{key} must be in [0, 1), got {getattr(self, key)}")
        if self.pos_weight not in ("balanced", "none", None):
            raise ConfigError(f"recipe_options (dilbert).pos_weight must be 'balanced' or 'none', got "
                              f"{self.pos_weight!r}")
        for key in ("pretrain_epochs", "finetune_epochs"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"recipe_options (dilbert).{key} must be >= 1 (or null: train.epochs), got "
                                  f"{getattr(self, key)}")
        if self.finetune_lr is not None and self.finetune_lr <= 0:
            raise ConfigError(f"recipe_options (dilbert).finetune_lr must be > 0, got {self.finetune_lr}")
        if self.region_grid < 1 or self.n_region_classes < 1 or self.vocab_size < 1 or self.max_text_len < 3:
            raise ConfigError("recipe_options (dilbert): region_grid, n_region_classes and vocab_size must be >= 1, "
                              "max_text_len >= 3")
        if self.cmm_text not in CMM_TEXTS:
            raise ConfigError(f"recipe_options (dilbert).cmm_text must be one of {CMM_TEXTS}, got {self.cmm_text!r}")
        if self.report_ranking not in REPORT_RANKINGS:
            raise ConfigError(f"recipe_options (dilbert).report_ranking must be one of {REPORT_RANKINGS}, got "
                              f"{self.report_ranking!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"recipe_options (dilbert).threshold must be in (0, 1), got {self.threshold}")


def fusion_config(o: DILBERTOptions, role: str, tokenizer: TextTokenizer, graph: KnowledgeGraph,
                  spec: AnnotationSpec, num_frames: int) -> FusionConfig:
    """The FusionConfig of the teacher or the student (role 'teacher' / 'student')."""
    size = asdict(getattr(o, role))
    return FusionConfig(vocab_size=tokenizer.vocab_size, max_text_len=o.max_text_len, num_frames=num_frames,
                        region_grid=o.region_grid, norm=o.norm, dropout=o.dropout,
                        n_entity_categories=len(graph.categories), n_region_classes=o.n_region_classes,
                        n_binary=len(spec.binary), categorical=[len(c) for c in spec.categorical.values()],
                        pad_id=tokenizer.pad_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, **size)


# ================================================================================================ data
def trim_text(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop text columns that are padding in every item of the batch (shorter attention)."""
    keep = int((~batch["pad"]).sum(1).max())
    out = dict(batch)
    for k in ("ids", "pad", "mlm_labels", "mdc_labels"):
        if k in out:
            out[k] = out[k][:, :keep]
    return out


def negative_pairs(text_key: torch.Tensor, has_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mismatched (sequence, text) pairs for CMM: for each item with text, the next item (cyclically, among items
    with text) whose normalised text differs. Returns (sequence rows, text rows), possibly empty."""
    rows = torch.nonzero(has_text, as_tuple=False).flatten()
    seq_rows, txt_rows = [], []
    n = len(rows)
    for a in range(n):
        for shift in range(1, n):
            b = (a + shift) % n
            if text_key[rows[b]] != text_key[rows[a]]:
                seq_rows.append(int(rows[a]))
                txt_rows.append(int(rows[b]))
                break
    return torch.tensor(seq_rows, dtype=torch.long), torch.tensor(txt_rows, dtype=torch.long)


def original_ids(ids: torch.Tensor, mlm_labels: torch.Tensor) -> torch.Tensor:
    """The unmasked token ids `B x L` of an MLM-masked batch: each masked position's label, the ids elsewhere."""
    return torch.where(mlm_labels != IGNORE, mlm_labels, ids)


# ================================================================================================ recipe
class DILBERTRecipe(TrainingHooks, L.LightningModule):
    """One training stage of DILBERT (see the module docstring). `self.model` is trained in every stage (the
    student in `distill` / `mutual`); `self.teacher` is frozen in `distill` and trained too in `mutual`."""

    task = "annotation"  # served by serve/annotation.py from the run's annotator folders (export/<variant>/)
    Options = DILBERTOptions

    def __init__(self, cfg: RunConfig, num_classes: int = 0, steps_per_epoch: int = 1, *, stage: str = "pretrain",
                 model: DILBERTModel | None = None, teacher: DILBERTModel | None = None,
                 codebook: RegionCodebook | None = None, pos_weight: torch.Tensor | None = None,
                 epochs: int | None = None, lr: float | None = None) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ConfigError(f"dilbert: unknown stage {stage!r} (choose from {STAGES})")
        if model is None:
            raise ConfigError("dilbert: the recipe is built by its protocol (protocols/dilbert.py), which passes the "
                              "models; use `sonodistill train dilbert ...`")
        if stage in ("distill", "mutual") and teacher is None:
            raise ConfigError(f"dilbert: stage {stage!r} needs a teacher model")
        if stage in ("pretrain", "distill") and codebook is None:
            raise ConfigError(f"dilbert: stage {stage!r} needs the region codebook (MOC pseudo-classes)")
        self.cfg, self.stage = cfg, stage
        self.o = o = parse_options(DILBERTOptions, cfg.recipe_options, "dilbert")
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.epochs = int(epochs if epochs is not None else cfg.train.epochs)
        self.lr = float(lr if lr is not None else cfg.optim.lr)
        self.model = model
        self.teacher = teacher
        if teacher is not None and stage == "distill":
            teacher.requires_grad_(False)
        self.codebook = codebook
        self.pretext = PretextLoss(**asdict(o.pretext_weights))
        self.relational = RelationalKD(o.b1)
        self.response = ResponseKD(o.kd_temperature)
        # plain finetuning: no distillation of any kind
        a, b, c = (o.a, o.b, o.c) if stage == "mutual" else (1.0, 0.0, 0.0)
        self.objective = DILBERTObjective(a, b, c, o.b1, o.b2, o.kd_temperature, o.sd_temperature, pos_weight)

    # -- losses -------------------------------------------------------------------------------
    def _pretext_pass(self, model: DILBERTModel, batch: dict[str, torch.Tensor], neg: tuple[torch.Tensor, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], Any]:
        """Masked inputs through one model: pretext logits (CMM over positives then negatives) and the output.
        CMM pairs read the region-masked clip and, by `cmm_text`, the masked text of this pass (positives reuse its
        output) or the original report (positives and negatives in one more fusion pass)."""
        region, clip = model.core.visual(batch["x"], batch["region_mask"])
        out = model.core.fuse(region, clip, batch["ids"], batch["pad"])
        on_original = self.o.cmm_text == "original"
        lg = model.pretext_logits(out, with_cmm=not on_original)  # the masked pass's CMM only when pairs read it
        pos = torch.nonzero(batch["has_text"], as_tuple=False).flatten()
        seq_rows, txt_rows = neg
        if on_original:
            ids = original_ids(batch["ids"], batch["mlm_labels"])
            seq, txt = torch.cat([pos, seq_rows.to(pos.device)]), torch.cat([pos, txt_rows.to(pos.device)])
            pairs = model.core.fuse(region[seq], clip[seq], ids[txt], batch["pad"][txt]) if len(seq) else out
            lg["cmm"] = model.matching(pairs.text_cls, pairs.visual)[:len(seq)]
            return lg, out
        cmm = [lg["cmm"][pos]]
        if len(seq_rows):
            out_neg = model.core.fuse(region[seq_rows], clip[seq_rows], batch["ids"][txt_rows], batch["pad"][txt_rows])
            cmm.append(model.matching(out_neg.text_cls, out_neg.visual))
        lg["cmm"] = torch.cat(cmm)
        return lg, out

    def _pretext_targets(self, batch: dict[str, torch.Tensor], neg: tuple[torch.Tensor, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        assert self.codebook is not None
        moc = self.codebook.assign(batch["x"])
        moc = moc.masked_fill(~batch["region_mask"], IGNORE)
        n_pos, n_neg = int(batch["has_text"].sum()), len(neg[0])
        cmm = torch.cat([torch.ones(n_pos, dtype=torch.long), torch.zeros(n_neg, dtype=torch.long)]).to(moc.device)
        return {"mlm": batch["mlm_labels"], "mdc": batch["mdc_labels"], "moc": moc, "cmm": cmm}

    def _kd_heads(self, s: dict[str, torch.Tensor], t: dict[str, torch.Tensor],
                  targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Response KD (soft labels) of every pretext head at the positions that are trained: the mean over the heads
        that have such positions (on any process) of each head's mean over them (over every process's, under DDP)."""
        totals, counts = [], []
        for name in ("mlm", "mdc", "moc"):
            sel = targets[name] != IGNORE
            totals.append(self.response.kl_sum(s[name][sel], t[name][sel]))
            counts.append(sel.sum())
        totals.append(self.response.kl_sum(s["cmm"], t["cmm"]))
        counts.append(s["cmm"].shape[0])
        terms = [m for m in global_means(totals, counts) if m is not None]
        if not terms:
            raise ValueError("DILBERT distill: no masked token, region or matching pair in the batch to distil")
        return torch.stack(terms).mean()

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's loss on one batch; returns (loss, parts for logging)."""
        batch = trim_text(batch)
        if self.stage in ("pretrain", "distill"):
            neg = negative_pairs(batch["text_key"], batch["has_text"])
            targets = self._pretext_targets(batch, neg)
            s_lg, s_out = self._pretext_pass(self.model, batch, neg)
            loss, parts = self.pretext(s_lg, targets)
            if self.stage == "distill":
                assert self.teacher is not None
                self.teacher.eval()
                with torch.no_grad():
                    t_lg, t_out = self._pretext_pass(self.teacher, batch, neg)
                l_rd = 0.5 * (self.relational(s_out.visual, t_out.visual).loss
                              + self.relational(s_out.text_cls, t_out.text_cls).loss)
                l_kl = self._kd_heads(s_lg, t_lg, targets)
                l_md = l_rd + self.o.b2 * l_kl
                parts.update({"md": l_md.detach(), "md/rd": l_rd.detach(), "md/kl": l_kl.detach()})
                loss = loss + self.o.distill_weight * l_md
            return loss, parts
        x, yb, yc = batch["x"], batch["y_binary"], batch["y_categorical"]
        want_exits = self.objective.c > 0
        s = self.model.annotate(x, with_exits=want_exits)
        if self.stage == "finetune":
            return self.objective(s.binary, s.categorical, s.embedding, yb, yc, s_exits=s.exits)
        assert self.teacher is not None
        t = self.teacher.annotate(x, with_exits=want_exits)
        l_s, p_s = self.objective(s.binary, s.categorical, s.embedding, yb, yc, t.binary, t.categorical,
                                  t.embedding, s.exits)
        l_t, p_t = self.objective(t.binary, t.categorical, t.embedding, yb, yc, s.binary, s.categorical,
                                  s.embedding, t.exits)
        return l_s + l_t, {**prefixed(p_s, "student"), **prefixed(p_t, "teacher")}

    # -- Lightning ----------------------------------------------------------------------------
    def inference_model(self) -> torch.nn.Module:
        """Exported: the trained model's core + annotation and matching heads (the student in distill/mutual)."""
        return self.model.inference_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inference_model()(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts = self.compute_loss(batch)
        check_finite(int(self.global_step), {"loss": loss})
        bs = int(batch["x"].shape[0])
        self.log_losses(loss, parts, bs)
        return loss

    def configure_optimizers(self) -> Any:
        optim = type(self.cfg.optim)(**{**asdict(self.cfg.optim), "lr": self.lr})
        params = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(params, optim, self.epochs, self.steps_per_epoch)


# ================================================================================================ export
def export_annotator(out_dir: Path, annotator: DILBERTModel, retriever: DILBERTModel, fcfg: FusionConfig,
                     spec: AnnotationSpec, tokenizer: TextTokenizer, reports: list[str], preprocess: Any,
                     meta: dict[str, Any], report_bank: dict[str, Any] | None = None) -> Path:
    """Write an annotator folder: dilbert.json, tokenizer.json, annotator.safetensors (finetuned),
    retriever.safetensors (pretrained, CMM for the nearest report), reports.json (training reports) and, given
    `report_bank` ({"sequences": N, "mean": [...], "std": [...]}, one number a report), report_bank.json."""
    from sonodistill.recipes.trainer import save_weights

    if meta.get("report_ranking") == "bank" and report_bank is None:
        raise ConfigError(f"{out_dir}: report_ranking 'bank' needs the training reports' bank statistics (at least "
                          "2 training sequences with a report); use recipe_options.report_ranking=raw")
    if report_bank is not None and not len(report_bank["mean"]) == len(report_bank["std"]) == len(reports):
        raise ConfigError(f"{out_dir}: report bank statistics for {len(report_bank['mean'])} reports, "
                          f"{len(reports)} reports exported")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(annotator.inference_model(), out_dir / "annotator.safetensors")
    save_weights(retriever.inference_model(), out_dir / "retriever.safetensors")
    tokenizer.save(out_dir / "tokenizer.json")
    (out_dir / "reports.json").write_text(json.dumps(reports, indent=1))
    if report_bank is not None:
        (out_dir / REPORT_BANK_FILE).write_text(json.dumps(report_bank, indent=1))
    info = {"format": ANNOTATOR_FORMAT, "fusion": fcfg.to_dict(), "spec": spec.to_dict(),
            "preprocess": asdict(preprocess), **meta}
    (out_dir / "dilbert.json").write_text(json.dumps(info, indent=1))
    return out_dir
