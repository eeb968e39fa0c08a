"""The `dilbert` recipe: multimodal (sequence + report) distillation pretraining, then finding annotation.

Stages (one Lightning module, `stage` picks the loss):
- `pretrain`: MLM (entity-aware masking), MDC, MOC (k-means pseudo-classes of region pixels: these data have no
  region-level labels) and CMM on sequence-text pairs of the training fold.
- `distill`: the student's pretraining, guided by the frozen pretrained teacher: its pretext losses plus
  `L_RD + b2 L_KL` (relational KD on the visual and text embeddings, response KD on every pretext head).
- `finetune`: image-only annotation (the text stream is `[CLS] [SEP]`), `L_CE` (+ `c L_SD` when asked).
- `mutual`: teacher (initialised from its finetuned weights) and student (from `distill`) learn together:
  each minimises `a L_CE + b L_MD(partner detached) + c L_SD` (defaults a=0.2, b=1, c=0.6).

`run_experiment` (used by `sonodistill train dilbert`) runs per grouped fold: baseline = student-sized model,
pretrain + finetune without any distillation (the paper's "BERT" row); teacher = pretrain + finetune; student =
distill + mutual. It writes per-fold annotation predictions, retrieval recalls (CMM scores of the pretrained
models, both ways), stage timings, an annotator export per variant and `metrics.json` / `report.md`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.data.sequence_text import IGNORE, SequenceTextDataset
from sonodistill.data.sequences import AnnotationSpec, SequenceSet
from sonodistill.data.text import TextTokenizer
from sonodistill.errors import ConfigError
from sonodistill.knowledge import KnowledgeGraph, load_graph
from sonodistill.losses.base import prefixed
from sonodistill.losses.pretext import DILBERTObjective, PretextLoss
from sonodistill.losses.relational import RelationalKD, ResponseKD
from sonodistill.models.fusion import ANNOTATOR_FORMAT, DILBERTModel, FusionConfig
from sonodistill.models.region_codebook import RegionCodebook
from sonodistill.recipes.base import TrainingHooks, build_optimizer, check_finite

log = logging.getLogger(__name__)

STAGES = ("pretrain", "distill", "finetune", "mutual")
VARIANTS = ("baseline", "teacher", "student")

#: recipe_options with their defaults (CPU sizes; the paper's best fusion encoder: 9 layers, 9 heads)
DEFAULTS: dict[str, Any] = {
    "graph": None,                 # knowledge graph (None: the data's own, lung for lung data)
    "vocab_size": 600,
    "max_text_len": 48,
    "mask_rate": 0.15,             # MLM: fraction of word tokens masked (entity groups first, then random)
    "entity_prob": 0.5,            # MLM: chance that a mention seeds an entity-aware mask
    "region_mask_rate": 0.15,      # MOC: fraction of region tokens masked
    "n_region_classes": 16,        # MOC: k-means pseudo-classes of region pixels
    "region_grid": 2,
    "teacher": {"dim": 128, "layers": 4, "heads": 4, "frame_backbone": "resnet18_2d", "frame_width": 0.25,
                "clip_backbone": "resnet10_3d", "clip_width": 0.25},
    "student": {"dim": 64, "layers": 2, "heads": 2, "frame_backbone": "resnet18_2d", "frame_width": 0.125,
                "clip_backbone": "resnet10_3d", "clip_width": 0.125},
    "dropout": 0.1,
    "norm": "group",
    "pretext_weights": {"mlm": 1.0, "mdc": 1.0, "moc": 1.0, "cmm": 1.0},
    "pretrain_epochs": None,       # None: train.epochs
    "finetune_epochs": None,
    "finetune_lr": None,           # None: optim.lr
    "a": 0.2, "b": 1.0, "c": 0.6,  # total a L_CE + b L_MD + c L_SD (mutual stage)
    "b1": 2.0, "b2": 1.0,          # L_RD = L_DD + b1 L_AD ; L_MD = L_RD + b2 L_KL
    "kd_temperature": 4.0,
    "sd_temperature": 3.0,
    "distill_weight": 1.0,         # weight of L_MD in the student's pretraining
    "pos_weight": "balanced",      # BCE positive weight per finding from the training fold (clipped), or none
    "augment": True,
    "threshold": 0.5,
    "variants": list(VARIANTS),
    "retrieval": True,
    "run_folds": None,
    "keep_checkpoints": False,     # keep Lightning checkpoints of finished stages (only needed to resume them)
}


def dilbert_options(cfg: RunConfig) -> dict[str, Any]:
    """recipe_options merged over DEFAULTS (nested dicts merged); unknown keys and bad values are errors."""
    unknown = set(cfg.recipe_options) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"recipe_options: unknown key(s) {sorted(unknown)} for dilbert; known {sorted(DEFAULTS)}")
    o = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for k, v in cfg.recipe_options.items():
        o[k] = {**o[k], **v} if isinstance(o[k], dict) and isinstance(v, dict) else v
    if isinstance(o["variants"], str):
        o["variants"] = [v for v in o["variants"].split(",") if v]
    bad = [v for v in o["variants"] if v not in VARIANTS]
    if bad or not o["variants"]:
        raise ConfigError(f"recipe_options.variants: unknown {bad} (choose from {VARIANTS})")
    for key in ("mask_rate", "region_mask_rate", "entity_prob"):
        if not 0.0 <= float(o[key]) < 1.0:
            raise ConfigError(f"recipe_options.{key} must be in [0, 1), got {o[key]}")
    if o["pos_weight"] not in ("balanced", "none", None):
        raise ConfigError(f"recipe_options.pos_weight must be 'balanced' or 'none', got {o['pos_weight']!r}")
    unknown_w = set(o["pretext_weights"]) - {"mlm", "mdc", "moc", "cmm"}
    if unknown_w:
        raise ConfigError(f"recipe_options.pretext_weights: unknown term(s) {sorted(unknown_w)}")
    return o


def fusion_config(o: dict[str, Any], role: str, tokenizer: TextTokenizer, graph: KnowledgeGraph,
                  spec: AnnotationSpec, num_frames: int) -> FusionConfig:
    """The FusionConfig of the teacher or the student (role 'teacher' / 'student')."""
    size = dict(o[role])
    return FusionConfig(vocab_size=tokenizer.vocab_size, max_text_len=int(o["max_text_len"]), num_frames=num_frames,
                        region_grid=int(o["region_grid"]), norm=str(o["norm"]), dropout=float(o["dropout"]),
                        n_entity_categories=len(graph.categories), n_region_classes=int(o["n_region_classes"]),
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


def make_loader(ds: Dataset, batch_size: int, train: bool, seed: int) -> DataLoader:
    """Seeded shuffling per epoch (resumable); training sets drop the last incomplete batch (relational KD needs
    >= 3 items per batch, so batch_size must be >= 3)."""
    from sonodistill.recipes.data import EpochSeededSampler

    sampler = EpochSeededSampler(len(ds), seed, shuffle=train)  # type: ignore[arg-type]
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=0,
                      drop_last=train and len(ds) > batch_size)  # type: ignore[arg-type]


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


# ================================================================================================ recipe
class DILBERTRecipe(TrainingHooks, L.LightningModule):
    """One training stage of DILBERT (see the module docstring). `self.model` is trained in every stage (the
    student in `distill` / `mutual`); `self.teacher` is frozen in `distill` and trained too in `mutual`."""

    task = "multimodal"

    @staticmethod
    def build_inference_model(cfg: RunConfig, manifest: Manifest | None = None) -> torch.nn.Module:
        """None to build: a DILBERT run is served as annotator folders by `sonodistill annotate` (ConfigError)."""
        raise ConfigError(
            "dilbert runs are served by `sonodistill annotate`, not predict/serve/export/explain: their models are "
            "annotator folders (findings, a description and the nearest training report per sequence). Use "
            "`sonodistill annotate RUN INPUT` (a run with final/export/student) or `sonodistill annotate "
            "RUN/fold_K/export/student INPUT`")

    def __init__(self, cfg: RunConfig, num_classes: int = 0, steps_per_epoch: int = 1, *, stage: str = "pretrain",
                 model: DILBERTModel | None = None, teacher: DILBERTModel | None = None,
                 codebook: RegionCodebook | None = None, pos_weight: torch.Tensor | None = None,
                 epochs: int | None = None, lr: float | None = None) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ConfigError(f"dilbert: unknown stage {stage!r} (choose from {STAGES})")
        if model is None:
            raise ConfigError("dilbert: the recipe is built by its protocol (run_experiment), which passes the "
                              "models; use `sonodistill train dilbert ...`")
        if stage in ("distill", "mutual") and teacher is None:
            raise ConfigError(f"dilbert: stage {stage!r} needs a teacher model")
        if stage in ("pretrain", "distill") and codebook is None:
            raise ConfigError(f"dilbert: stage {stage!r} needs the region codebook (MOC pseudo-classes)")
        self.cfg, self.stage, self.o = cfg, stage, dilbert_options(cfg)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.epochs = int(epochs if epochs is not None else cfg.train.epochs)
        self.lr = float(lr if lr is not None else cfg.optim.lr)
        self.model = model
        self.teacher = teacher
        if teacher is not None and stage == "distill":
            teacher.requires_grad_(False)
        self.codebook = codebook
        o = self.o
        self.pretext = PretextLoss(**{k: float(v) for k, v in o["pretext_weights"].items()})
        self.relational = RelationalKD(float(o["b1"]))
        self.response = ResponseKD(float(o["kd_temperature"]))
        if stage == "mutual":
            a, b, c = float(o["a"]), float(o["b"]), float(o["c"])
        else:  # plain finetuning: no distillation of any kind
            a, b, c = 1.0, 0.0, 0.0
        self.objective = DILBERTObjective(a, b, c, float(o["b1"]), float(o["b2"]), float(o["kd_temperature"]),
                                          float(o["sd_temperature"]), pos_weight)

    # -- losses -------------------------------------------------------------------------------
    def _pretext_pass(self, model: DILBERTModel, batch: dict[str, torch.Tensor], neg: tuple[torch.Tensor, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], Any]:
        """Masked inputs through one model: pretext logits (CMM over positives then negatives) and the output."""
        region, clip = model.core.visual(batch["x"], batch["region_mask"])
        out = model.core.fuse(region, clip, batch["ids"], batch["pad"])
        lg = model.pretext_logits(out)
        pos = batch["has_text"]
        cmm = [lg["cmm"][pos]]
        seq_rows, txt_rows = neg
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
        """Response KD (soft labels) of every pretext head at the positions that are trained."""
        terms = []
        for name in ("mlm", "mdc", "moc"):
            sel = targets[name] != IGNORE
            if bool(sel.any()):
                terms.append(self.response(s[name][sel], t[name][sel]).loss)
        if s["cmm"].shape[0]:
            terms.append(self.response(s["cmm"], t["cmm"]).loss)
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
                l_md = l_rd + float(self.o["b2"]) * l_kl
                parts.update({"md": l_md.detach(), "md/rd": l_rd.detach(), "md/kl": l_kl.detach()})
                loss = loss + float(self.o["distill_weight"]) * l_md
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

    # -- protocol -----------------------------------------------------------------------------
    @classmethod
    def run_experiment(cls, cfg: RunConfig, manifest: Manifest, resume: bool = False,
                       **trainer_overrides: Any) -> dict[str, Any]:
        """Per grouped fold: baseline, teacher and student (distill + mutual); metrics.json and report.md."""
        return run_dilbert_experiment(cfg, manifest, resume, **trainer_overrides)


# ================================================================================================ stages
def fit_stage(cfg: RunConfig, stage_dir: Path, stage: str, model: DILBERTModel, loader: DataLoader,
              epochs: int, lr: float, teacher: DILBERTModel | None = None, codebook: RegionCodebook | None = None,
              pos_weight: torch.Tensor | None = None, resume: bool = False, **trainer_overrides: Any) -> float:
    """Train one stage with Lightning into `stage_dir` (full weights `full.safetensors`, teacher's in
    `teacher_full.safetensors` for mutual); a finished stage (`done.json`) is loaded instead. Returns seconds."""
    from sonodistill.recipes.trainer import build_trainer, load_weights, save_weights

    done = stage_dir / "done.json"
    if resume and done.is_file():
        load_weights(model, stage_dir / "full.safetensors")
        if stage == "mutual" and teacher is not None:
            load_weights(teacher, stage_dir / "teacher_full.safetensors")
        return float(json.loads(done.read_text())["seconds"])
    stage_dir.mkdir(parents=True, exist_ok=True)
    steps = len(loader)
    limit = cfg.train.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        steps = min(steps, limit)
    elif isinstance(limit, float) and limit < 1.0:
        steps = max(1, int(steps * limit))
    recipe = DILBERTRecipe(cfg, steps_per_epoch=steps, stage=stage, model=model, teacher=teacher, codebook=codebook,
                           pos_weight=pos_weight, epochs=epochs, lr=lr)
    overrides = {"max_epochs": epochs, "enable_progress_bar": False, **trainer_overrides}
    trainer = build_trainer(cfg, stage_dir, **overrides)
    last = stage_dir / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    trainer.fit(recipe, train_dataloaders=loader, ckpt_path=str(last) if resume and last.is_file() else None)
    seconds = time.perf_counter() - t0
    save_weights(model, stage_dir / "full.safetensors")
    if stage == "mutual" and teacher is not None:
        save_weights(teacher, stage_dir / "teacher_full.safetensors")
    done.write_text(json.dumps({"stage": stage, "seconds": seconds, "epochs": epochs, "steps_per_epoch": steps}))
    if not dilbert_options(cfg)["keep_checkpoints"]:
        shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
    return seconds


# ================================================================================================ evaluation
@torch.no_grad()
def predict_annotations(model: DILBERTModel, ds: SequenceTextDataset, batch_size: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
    """Probabilities: binary `N x F` (sigmoid) and one `N x K_c` (softmax) per categorical target."""
    model.eval()
    binary, cats = [], []
    for batch in make_loader(ds, batch_size, train=False, seed=0):
        a = model.annotate(batch["x"])
        binary.append(torch.sigmoid(a.binary.float()))
        cats.append([torch.softmax(c.float(), dim=1) for c in a.categorical])
    b = torch.cat(binary).numpy() if binary else np.zeros((0, 0))
    c = [torch.cat([row[j] for row in cats]).numpy() for j in range(len(cats[0]))] if cats else []
    return b, c


def retrieval_recall(scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K: the fraction of queries (rows) with a relevant candidate among the K highest scores, and the same
    expected under a random ranking (`chance@K` = mean of 1 - C(n-m, K) / C(n, K), m relevant of n)."""
    n_q, n_c = scores.shape
    out: dict[str, float] = {"queries": float(n_q), "candidates": float(n_c)}
    if n_q == 0:
        return out
    order = np.argsort(-scores, axis=1, kind="stable")
    hit_rank = np.array([np.flatnonzero(relevant[i, order[i]])[0] if relevant[i].any() else n_c for i in range(n_q)])
    m = relevant.sum(1)
    for k in ks:
        out[f"R@{k}"] = float(np.mean(hit_rank < k))
        out[f"chance@{k}"] = float(np.mean([1.0 - (math.comb(n_c - mi, k) / math.comb(n_c, k) if k <= n_c else 0.0)
                                            for mi in m]))
    return out


def evaluate_retrieval(model: DILBERTModel, ds: SequenceTextDataset) -> dict[str, dict[str, float]]:
    """Sequence->text and text->sequence Recall@1/5/10 with CMM scores. Candidate texts are the distinct
    normalised reports; a text is relevant to every sequence whose report normalises to it."""
    model.eval()
    rows = [i for i in range(len(ds)) if ds.text_key[i] >= 0]
    if len(rows) < 2:
        return {}
    keys = sorted({ds.text_key[i] for i in rows})
    first = {k: next(i for i in rows if ds.text_key[i] == k) for k in keys}
    x = torch.stack([ds[i]["x"] for i in rows])
    ids = torch.stack([ds[first[k]]["ids"] for k in keys])
    ids = ids[:, : int((ids != ds.tok.pad_id).sum(1).max())]
    scores = model.inference_model().match_scores(x, ids).numpy()  # sequences x texts
    relevant = np.array([[ds.text_key[i] == k for k in keys] for i in rows])
    return {"seq2text": retrieval_recall(scores, relevant), "text2seq": retrieval_recall(scores.T, relevant.T)}


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, precision, F1, specificity of one finding (unknown labels, NaN, skipped); F1 = 0 when undefined."""
    known = ~np.isnan(y)
    y, pred = y[known].astype(int), (p[known] >= threshold).astype(int)
    tp, fp = int(((pred == 1) & (y == 1)).sum()), int(((pred == 1) & (y == 0)).sum())
    fn, tn = int(((pred == 0) & (y == 1)).sum()), int(((pred == 0) & (y == 0)).sum())
    sens = tp / (tp + fn) if tp + fn else float("nan")
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return {"sensitivity": sens, "precision": prec, "f1": f1, "specificity": spec, "positives": float(tp + fn),
            "n": float(len(y))}


def annotation_metrics(pred: pd.DataFrame, spec: AnnotationSpec, threshold: float) -> dict[str, Any]:
    """Per-finding and macro sensitivity / precision / F1 (binary at `threshold`), per-class and macro for each
    categorical target (argmax), from a predictions table with `y_<col>`, `p_<col>`, `y_<cat>`, `p_<cat>_<class>`."""
    out: dict[str, Any] = {"findings": {}, "categorical": {}}
    for name, col in zip(spec.binary, spec.columns):
        out["findings"][name] = binary_metrics(pred[f"y_{col}"].to_numpy(float), pred[f"p_{col}"].to_numpy(float),
                                               threshold)
    for cname, classes in spec.categorical.items():
        key = _slug(cname)
        y = pred[f"y_{key}"].to_numpy(int)
        probs = pred[[f"p_{key}_{c}" for c in classes]].to_numpy(float)
        known = y >= 0
        yk, pk = y[known], probs[known].argmax(1)
        per = {c: binary_metrics((yk == j).astype(float), (pk == j).astype(float), 0.5) for j, c in enumerate(classes)}
        out["categorical"][cname] = {"classes": per, "accuracy": float((yk == pk).mean()) if len(yk) else float("nan")}
    macro: dict[str, float] = {}
    rows = list(out["findings"].values()) + [r for c in out["categorical"].values() for r in c["classes"].values()]
    for m in ("sensitivity", "precision", "f1"):
        vals = [r[m] for r in rows if not math.isnan(r[m])]
        macro[m] = float(np.mean(vals)) if vals else float("nan")
    out["macro"] = macro
    return out


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("-", "_")


def prediction_table(seqs: SequenceSet, rows: np.ndarray, binary: np.ndarray, cats: list[np.ndarray],
                     fold: int, variant: str) -> pd.DataFrame:
    """One row per test sequence: ids, true targets (`y_*`) and probabilities (`p_*`)."""
    spec = seqs.spec
    t = pd.DataFrame({"fold": fold, "variant": variant, "index": rows,
                      "group": seqs.manifest.groups[rows], "path": [seqs.manifest.paths[i] for i in rows]})
    for j, col in enumerate(spec.columns):
        t[f"y_{col}"] = seqs.binary[rows, j]
        t[f"p_{col}"] = binary[:, j]
    for j, (cname, classes) in enumerate(spec.categorical.items()):
        key = _slug(cname)
        t[f"y_{key}"] = seqs.categorical[rows, j]
        for c, cls_name in enumerate(classes):
            t[f"p_{key}_{cls_name}"] = cats[j][:, c]
    return t


# ================================================================================================ export
def export_annotator(out_dir: Path, annotator: DILBERTModel, retriever: DILBERTModel, fcfg: FusionConfig,
                     spec: AnnotationSpec, tokenizer: TextTokenizer, reports: list[str], preprocess: Any,
                     meta: dict[str, Any]) -> Path:
    """Write an annotator folder: dilbert.json, tokenizer.json, annotator.safetensors (finetuned),
    retriever.safetensors (pretrained, CMM for the nearest report) and reports.json (training reports)."""
    from sonodistill.recipes.trainer import save_weights

    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(annotator.inference_model(), out_dir / "annotator.safetensors")
    save_weights(retriever.inference_model(), out_dir / "retriever.safetensors")
    tokenizer.save(out_dir / "tokenizer.json")
    (out_dir / "reports.json").write_text(json.dumps(reports, indent=1))
    info = {"format": ANNOTATOR_FORMAT, "fusion": fcfg.to_dict(), "spec": spec.to_dict(),
            "preprocess": asdict(preprocess), **meta}
    (out_dir / "dilbert.json").write_text(json.dumps(info, indent=1))
    return out_dir


def distinct_reports(graph: KnowledgeGraph, texts: list[str]) -> list[str]:
    """Training reports with distinct normalised text, first occurrence kept, empty ones dropped."""
    seen: dict[str, str] = {}
    for t in texts:
        key = " ".join(graph.words(t))
        if key and key not in seen:
            seen[key] = t
    return list(seen.values())


# ================================================================================================ protocol
def _pos_weight(binary: np.ndarray, mode: Any) -> torch.Tensor | None:
    if mode in ("none", None) or binary.shape[1] == 0:
        return None
    pos = np.nansum(binary == 1, axis=0)
    neg = np.nansum(binary == 0, axis=0)
    return torch.from_numpy(np.clip(neg / np.maximum(pos, 1), 1.0, 10.0)).float()


def run_fold(cfg: RunConfig, seqs: SequenceSet, train: np.ndarray, test: np.ndarray, fold: int, fold_dir: Path,
             graph: KnowledgeGraph, resume: bool = False, **trainer_overrides: Any) -> dict[str, Any]:
    """All stages of one fold; returns {"predictions": DataFrame, "retrieval": {...}, "seconds": {...}}."""
    from sonodistill.recipes.trainer import load_weights

    o = dilbert_options(cfg)
    seed = cfg.train.seed + fold
    fold_dir.mkdir(parents=True, exist_ok=True)
    tr, te = seqs.subset(train), seqs.subset(test)
    # tokenizer on the training fold's reports + the knowledge graph's terms (no test text)
    tok_path = fold_dir / "tokenizer.json"
    if resume and tok_path.is_file():
        tok = TextTokenizer.load(tok_path)
    else:
        tok = TextTokenizer.train(tr.texts, int(o["vocab_size"]), extra_texts=graph.terms(), spelling=graph.spelling)
        tok.save(tok_path)
    T, max_len, bs = int(cfg.data.num_frames), int(o["max_text_len"]), int(cfg.data.batch_size)
    if bs < 3:
        raise ConfigError(f"dilbert: data.batch_size must be >= 3 (relational distillation compares triplets), got {bs}")
    common = dict(tokenizer=tok, graph=graph, num_frames=T, max_len=max_len, region_grid=int(o["region_grid"]))
    keys: dict[str, int] = {}
    pre_ds = SequenceTextDataset(tr, train=True, seed=seed, pretext=True, augment=bool(o["augment"]),
                                 mask_rate=float(o["mask_rate"]), entity_prob=float(o["entity_prob"]),
                                 region_mask_rate=float(o["region_mask_rate"]), text_keys=keys, **common)
    fin_ds = SequenceTextDataset(tr, train=True, seed=seed, augment=bool(o["augment"]), text_keys=keys, **common)
    test_ds = SequenceTextDataset(te, train=False, seed=seed, text_keys={}, **common) if len(te) else None
    pre_loader, fin_loader = make_loader(pre_ds, bs, True, seed), make_loader(fin_ds, bs, True, seed)
    # MOC pseudo-classes from the training fold's region pixels
    codebook = RegionCodebook(int(o["region_grid"]), int(o["n_region_classes"]))
    cb_path = fold_dir / "regions.safetensors"
    if resume and cb_path.is_file():
        load_weights(codebook, cb_path)
    else:
        eval_tr = SequenceTextDataset(tr, train=False, seed=seed, **common)
        codebook.fit([eval_tr[i]["x"][None] for i in range(len(eval_tr))], seed=seed)
        from sonodistill.recipes.trainer import save_weights

        save_weights(codebook, cb_path)
    pos_weight = _pos_weight(tr.binary, o["pos_weight"])
    p_epochs = int(o["pretrain_epochs"] or cfg.train.epochs)
    f_epochs = int(o["finetune_epochs"] or cfg.train.epochs)
    f_lr = float(o["finetune_lr"] or cfg.optim.lr)
    cfg_t = fusion_config(o, "teacher", tok, graph, seqs.spec, T)
    cfg_s = fusion_config(o, "student", tok, graph, seqs.spec, T)

    def new(c: FusionConfig, salt: int) -> DILBERTModel:
        torch.manual_seed(seed * 1000 + salt)
        return DILBERTModel(c)

    def stage(variant: str, name: str, model: DILBERTModel, loader: DataLoader, epochs: int, lr: float,
              teacher: DILBERTModel | None = None, cb: RegionCodebook | None = None) -> float:
        L.seed_everything(seed, workers=True, verbose=False)
        log.info("fold %d: %s %s (%d epochs)", fold, variant, name, epochs)
        return fit_stage(cfg, fold_dir / variant / name, name, model, loader, epochs, lr, teacher, cb,
                         pos_weight if name in ("finetune", "mutual") else None, resume, **trainer_overrides)

    seconds: dict[str, float] = {}
    finetuned: dict[str, DILBERTModel] = {}
    pretrained: dict[str, DILBERTModel] = {}
    wanted = list(o["variants"])
    need_teacher = "teacher" in wanted or "student" in wanted
    if "baseline" in wanted:
        m = new(cfg_s, 1)
        seconds["baseline/pretrain"] = stage("baseline", "pretrain", m, pre_loader, p_epochs, cfg.optim.lr, cb=codebook)
        pretrained["baseline"] = _copy(m, cfg_s)
        seconds["baseline/finetune"] = stage("baseline", "finetune", m, fin_loader, f_epochs, f_lr)
        finetuned["baseline"] = m
    if need_teacher:
        t = new(cfg_t, 2)
        seconds["teacher/pretrain"] = stage("teacher", "pretrain", t, pre_loader, p_epochs, cfg.optim.lr, cb=codebook)
        pretrained["teacher"] = _copy(t, cfg_t)
        seconds["teacher/finetune"] = stage("teacher", "finetune", t, fin_loader, f_epochs, f_lr)
        finetuned["teacher"] = t
    if "student" in wanted:
        s = new(cfg_s, 3)
        seconds["student/distill"] = stage("student", "distill", s, pre_loader, p_epochs, cfg.optim.lr,
                                           teacher=pretrained["teacher"], cb=codebook)
        pretrained["student"] = _copy(s, cfg_s)
        t_mut = _copy(finetuned["teacher"], cfg_t)
        seconds["student/mutual"] = stage("student", "mutual", s, fin_loader, f_epochs, f_lr, teacher=t_mut)
        finetuned["student"] = s
        finetuned["teacher+mutual"] = t_mut
    (fold_dir / "timing.json").write_text(json.dumps(seconds, indent=1))

    # evaluation on the test fold, and one annotator export per variant
    frames, retrieval = [], {}
    reports = distinct_reports(graph, tr.texts)
    pre = _preprocess(cfg)
    for variant, model in finetuned.items():
        if test_ds is not None:
            b, c = predict_annotations(model, test_ds)
            frames.append(prediction_table(seqs, test, b, c, fold, variant))
            if o["retrieval"] and variant in pretrained:
                retrieval[variant] = evaluate_retrieval(pretrained[variant], test_ds)
        if variant in VARIANTS:
            fcfg = cfg_t if variant == "teacher" else cfg_s
            export_annotator(fold_dir / "export" / variant, model, pretrained[variant], fcfg, seqs.spec, tok, reports,
                             pre, {"role": variant, "graph": graph.name, "num_frames": T, "max_text_len": max_len,
                                   "threshold": float(o["threshold"]), "run": cfg.name, "fold": fold,
                                   "train_items": int(len(train))})
    pred = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return {"predictions": pred, "retrieval": retrieval, "seconds": seconds}


def _copy(model: DILBERTModel, c: FusionConfig) -> DILBERTModel:
    out = DILBERTModel(c)
    out.load_state_dict(model.state_dict())
    return out


def _preprocess(cfg: RunConfig) -> Any:
    from sonodistill.data.preprocess import PreprocessConfig

    return PreprocessConfig.from_data(cfg.data)


def load_sequences(cfg: RunConfig, manifest: Manifest) -> tuple[SequenceSet, KnowledgeGraph]:
    """Pair the manifest into sequences, decode every clip once (cached), load the knowledge graph."""
    from sonodistill.data.sequences import sequences_from_manifest
    from sonodistill.recipes.data import default_cache_dir

    o = dilbert_options(cfg)
    seqs = sequences_from_manifest(manifest, o["graph"])
    graph = load_graph(o["graph"] or seqs.spec.graph)
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    seqs.load_clips(_preprocess(cfg), cache)
    log.info("dilbert: %d sequences loaded in %.0f s", len(seqs), time.perf_counter() - t0)
    g = cfg.data.size % int(o["region_grid"])
    if g:
        raise ConfigError(f"data.size {cfg.data.size} is not divisible by recipe_options.region_grid {o['region_grid']}")
    return seqs, graph


def run_dilbert_experiment(cfg: RunConfig, manifest: Manifest, resume: bool = False,
                           **trainer_overrides: Any) -> dict[str, Any]:
    """Grouped folds over sequences; per fold `run_fold`; then metrics.json and report.md in the run directory."""
    from sonodistill.data.folds import cv_folds

    o = dilbert_options(cfg)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    seqs, graph = load_sequences(cfg, manifest)
    seqs.manifest.to_csv(run_dir / "sequences.csv")
    folds = cv_folds(cfg, seqs.manifest, resume)
    if o["run_folds"] is not None:
        wanted = [int(k) for k in o["run_folds"]]
    else:
        wanted = list(range(len(folds))) if cfg.train.fold is None else [int(cfg.train.fold)]
    bad = [k for k in wanted if not 0 <= k < len(folds)]
    if bad:
        raise ConfigError(f"fold(s) {bad} do not exist; there are {len(folds)} folds")
    preds, retrieval, seconds = [], {}, {}
    for k in wanted:
        fold_dir = run_dir / f"fold_{k}"
        pred_file = fold_dir / "predictions.csv"
        if resume and pred_file.is_file() and (fold_dir / "fold.json").is_file():
            preds.append(pd.read_csv(pred_file))
            saved = json.loads((fold_dir / "fold.json").read_text())
            retrieval[k], seconds[k] = saved["retrieval"], saved["seconds"]
            continue
        train, test = folds[k]
        res = run_fold(cfg, seqs, train, test, k, fold_dir, graph, resume, **trainer_overrides)
        res["predictions"].to_csv(pred_file, index=False)
        (fold_dir / "fold.json").write_text(json.dumps({"retrieval": res["retrieval"], "seconds": res["seconds"]},
                                                       indent=1))
        preds.append(res["predictions"])
        retrieval[k], seconds[k] = res["retrieval"], res["seconds"]
    if cfg.train.final and cfg.train.fold is None and o["run_folds"] is None:
        rows = np.arange(len(seqs))
        run_fold(cfg, seqs, rows, rows[:0], len(folds), run_dir / "final", graph, resume, **trainer_overrides)
    predictions = pd.concat(preds, ignore_index=True)
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    summary = summarise_experiment(predictions, retrieval, seconds, seqs.spec, float(o["threshold"]))
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1, default=float))
    write_dilbert_report(run_dir, cfg, summary, seqs.spec, wanted)
    return summary


def summarise_experiment(pred: pd.DataFrame, retrieval: dict[int, dict], seconds: dict[int, dict],
                         spec: AnnotationSpec, threshold: float) -> dict[str, Any]:
    """Pooled (all out-of-fold predictions) and per-fold mean ± std annotation metrics per variant, retrieval
    recalls (mean ± std over folds) and stage times."""
    out: dict[str, Any] = {"variants": {}, "threshold": threshold}
    for variant, part in pred.groupby("variant", sort=False):
        pooled = annotation_metrics(part, spec, threshold)
        per_fold = [annotation_metrics(p, spec, threshold) for _, p in part.groupby("fold")]
        fold_macro = {m: _mean_std([f["macro"][m] for f in per_fold]) for m in ("sensitivity", "precision", "f1")}
        rec: dict[str, Any] = {}
        for k, r in retrieval.items():
            for direction, vals in r.get(variant, {}).items():
                for key, v in vals.items():
                    rec.setdefault(direction, {}).setdefault(key, []).append(v)
        out["variants"][variant] = {
            "pooled": pooled, "per_fold_macro": fold_macro,
            "retrieval": {d: {k: _mean_std(v) for k, v in vals.items()} for d, vals in rec.items()},
        }
    times: dict[str, list[float]] = {}
    for k, s in seconds.items():
        for name, v in s.items():
            times.setdefault(name, []).append(float(v))
    out["seconds"] = {name: _mean_std(v) for name, v in times.items()}
    return out


def _mean_std(values: list[float]) -> list[float]:
    v = np.asarray([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if v.size == 0:
        return [float("nan"), float("nan"), 0]
    return [float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)]


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_ms(ms: list[float], digits: int = 3) -> str:
    return "n/a" if math.isnan(ms[0]) else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def write_dilbert_report(run_dir: Path, cfg: RunConfig, summary: dict[str, Any], spec: AnnotationSpec,
                         folds: list[int]) -> Path:
    """report.md: per-finding table, macro, retrieval and training time tables."""
    variants = list(summary["variants"])
    lines = [f"# {cfg.name}: dilbert on {cfg.data.spec}", "",
             f"Folds {folds} of {cfg.train.folds} (grouped by patient). Annotation: threshold "
             f"{summary['threshold']} on sigmoid probabilities (binary), argmax (categorical); pooled over the "
             "out-of-fold predictions. Macro F1 per fold: mean ± std.", ""]
    names = list(spec.binary) + [f"{c}={k}" for c, ks in spec.categorical.items() for k in ks]
    lines += ["## Annotation (pooled out-of-fold)", "",
              "| finding | " + " | ".join(f"{v} sens / prec / F1" for v in variants) + " |",
              "|---|" + "---|" * len(variants)]
    for n in names:
        cells = []
        for v in variants:
            p = summary["variants"][v]["pooled"]
            if "=" in n:
                c, k = n.split("=", 1)
                r = p["categorical"][c]["classes"][k]
            else:
                r = p["findings"][n]
            cells.append(f"{_fmt(r['sensitivity'])} / {_fmt(r['precision'])} / {_fmt(r['f1'])}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| **macro** | " + " | ".join(
        "{} / {} / {}".format(*(_fmt(summary['variants'][v]['pooled']['macro'][m]) for m in ('sensitivity', 'precision', 'f1')))
        for v in variants) + " |")
    lines.append("| macro F1 per fold | " + " | ".join(_fmt_ms(summary["variants"][v]["per_fold_macro"]["f1"])
                                                     for v in variants) + " |")
    lines += ["", "## Retrieval (CMM scores of the pretrained models; mean ± std over folds)", "",
              "| variant | seq→text R@1 | R@5 | R@10 | text→seq R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        r = summary["variants"][v]["retrieval"]
        if not r:
            continue
        cells = [_fmt_ms(r[d][f"R@{k}"]) for d in ("seq2text", "text2seq") for k in (1, 5, 10)]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    r0 = next((summary["variants"][v]["retrieval"] for v in variants if summary["variants"][v]["retrieval"]), None)
    if r0:
        cells = [_fmt_ms(r0[d][f"chance@{k}"]) for d in ("seq2text", "text2seq") for k in (1, 5, 10)]
        lines.append("| random ranking | " + " | ".join(cells) + " |")
    lines += ["", "## Training time per fold (seconds, mean ± std)", "", "| stage | seconds |", "|---|---|"]
    for name, ms in summary["seconds"].items():
        lines.append(f"| {name} | {_fmt_ms(ms, 0)} |")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
