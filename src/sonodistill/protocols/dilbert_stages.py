"""DILBERT's per-fold work for its protocol (`protocols/dilbert.py`): the stages of one fold or of the final model
(`run_fold`, each stage a Lightning fit by `fit_stage`), the annotations of the test sequences, retrieval recalls,
the collapse test and one annotator export per variant (`recipes.dilbert.export_annotator`)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from sonodistill.config import RunConfig, parse_options
from sonodistill.data.sequence_text import SequenceTextDataset
from sonodistill.data.sequences import SequenceSet
from sonodistill.data.text import TextTokenizer
from sonodistill.errors import ConfigError, SonoDistillError
from sonodistill.evaluation.annotation import (
    COLLAPSE_STD,
    bank_normalised,
    bank_statistics,
    collapsed,
    output_spread,
    prediction_table,
    retrieval_recall,
)
from sonodistill.knowledge import KnowledgeGraph
from sonodistill.models.fusion import DILBERTModel, FusionConfig, report_token_ids
from sonodistill.models.region_codebook import RegionCodebook
from sonodistill.recipes.dilbert import VARIANTS, DILBERTOptions, DILBERTRecipe, export_annotator, fusion_config

log = logging.getLogger(__name__)


class CollapseError(SonoDistillError):
    """A finetuned model gives the same outputs for every sequence (training collapsed): names variant and fold."""


def options(cfg: RunConfig) -> DILBERTOptions:
    return parse_options(DILBERTOptions, cfg.recipe_options, "dilbert")


# ================================================================================================ data
def preprocess_config(cfg: RunConfig) -> Any:
    from sonodistill.data.preprocess import PreprocessConfig

    return PreprocessConfig.from_data(cfg.data)


def make_loader(ds: Dataset, batch_size: int, train: bool, seed: int) -> DataLoader:
    """Seeded shuffling per epoch (resumable); training sets drop the last incomplete batch (relational KD needs
    >= 3 items per batch, so batch_size must be >= 3)."""
    from sonodistill.recipes.data import EpochSeededSampler

    sampler = EpochSeededSampler(len(ds), seed, shuffle=train)  # type: ignore[arg-type]
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=0,
                      drop_last=train and len(ds) > batch_size)  # type: ignore[arg-type]


def distinct_reports(graph: KnowledgeGraph, texts: list[str]) -> list[str]:
    """Training reports with distinct normalised text, first occurrence kept, empty ones dropped."""
    seen: dict[str, str] = {}
    for t in texts:
        key = " ".join(graph.words(t))
        if key and key not in seen:
            seen[key] = t
    return list(seen.values())


def pos_weight_of(binary: np.ndarray, mode: Any) -> torch.Tensor | None:
    """BCE positive weight per finding: negatives / positives of the training sequences, clipped to [1, 10]."""
    if mode in ("none", None) or binary.shape[1] == 0:
        return None
    pos = np.nansum(binary == 1, axis=0)
    neg = np.nansum(binary == 0, axis=0)
    return torch.from_numpy(np.clip(neg / np.maximum(pos, 1), 1.0, 10.0)).float()


# ================================================================================================ scoring
@torch.no_grad()
def predict_annotations(model: DILBERTModel, ds: SequenceTextDataset,
                        batch_size: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
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


def _rows_with_text(ds: SequenceTextDataset) -> list[int]:
    """The items of `ds` that have a report."""
    return [i for i in range(len(ds)) if ds.text_key[i] >= 0]


def _sequences_and_texts(ds: SequenceTextDataset) -> tuple[list[int], list[int], torch.Tensor, torch.Tensor] | None:
    """The items of `ds` with a report and its distinct normalised reports: (item rows, text keys, clips
    `N x 1 x T x H x W`, token ids `M x L` cut to the longest text); None when fewer than 2 items have a report."""
    rows = _rows_with_text(ds)
    if len(rows) < 2:
        return None
    keys = sorted({ds.text_key[i] for i in rows})
    first = {k: next(i for i in rows if ds.text_key[i] == k) for k in keys}
    ids = torch.stack([ds[first[k]]["ids"] for k in keys])
    ids = ids[:, : int((ids != ds.tok.pad_id).sum(1).max())]  # the rest is padding for every text
    return rows, keys, torch.stack([ds[i]["x"] for i in rows]), ids


def evaluate_retrieval(model: DILBERTModel, ds: SequenceTextDataset,
                       bank: SequenceTextDataset | None = None) -> dict[str, dict[str, float]]:
    """Sequence->text and text->sequence Recall@1/5/10 with CMM scores. Candidate texts are the distinct
    normalised reports; a text is relevant to every sequence whose report normalises to it. With `bank` (the
    training fold), also `seq2text_bank` / `text2seq_bank`: each candidate's scores normalised against the bank's
    sequences (candidate texts) or distinct texts (candidate sequences), `evaluation.annotation.bank_normalised`."""
    model.eval()
    test = _sequences_and_texts(ds)
    if test is None:
        return {}
    rows, keys, x, ids = test
    inference = model.inference_model()
    scores = inference.match_scores(x, ids).numpy()  # sequences x texts
    relevant = np.array([[ds.text_key[i] == k for k in keys] for i in rows])
    out = {"seq2text": retrieval_recall(scores, relevant), "text2seq": retrieval_recall(scores.T, relevant.T)}
    banked = _sequences_and_texts(bank) if bank is not None else None
    if banked is not None:  # the training fold's items with a report
        _, _, bank_x, bank_ids = banked
        texts_vs_bank = inference.match_scores(bank_x, ids).numpy()  # bank sequences x test texts
        seqs_vs_bank = inference.match_scores(x, bank_ids).numpy().T  # bank texts x test sequences
        out["seq2text_bank"] = retrieval_recall(bank_normalised(scores, texts_vs_bank), relevant)
        out["text2seq_bank"] = retrieval_recall(bank_normalised(scores.T, seqs_vs_bank), relevant.T)
    return out


#: the most training sequences a report bank is computed over (evenly spaced): its cost is one fusion pass per
#: (sequence, report) pair, and a mean and standard deviation are settled well before
REPORT_BANK_SEQUENCES = 256


@torch.no_grad()
def report_bank(model: DILBERTModel, bank: SequenceTextDataset, reports: list[str], graph: KnowledgeGraph,
                max_len: int, max_sequences: int = REPORT_BANK_SEQUENCES) -> dict[str, Any] | None:
    """The statistics `annotate` normalises each training report's score with (query-bank scoring, the export's
    side of `evaluate_retrieval`'s `seq2text_bank`): the mean and standard deviation of every report's CMM logits
    over the bank's sequences with a report (the training fold; at most `max_sequences` of them, evenly spaced).
    None when fewer than 2 have one."""
    rows = _rows_with_text(bank)
    if len(rows) < 2 or not reports:
        return None
    if len(rows) > max_sequences:
        rows = [rows[int(j)] for j in np.linspace(0, len(rows) - 1, max_sequences).round()]
    model.eval()
    x = torch.stack([bank[i]["x"] for i in rows])
    ids = report_token_ids(bank.tok, graph, reports, max_len)
    mean, std = bank_statistics(model.inference_model().match_scores(x, ids).numpy())
    return {"sequences": len(rows), "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std]}


def check_collapse(binary: np.ndarray, cats: list[np.ndarray], variant: str, fold: int | str, scored: str) -> None:
    """CollapseError when every output is constant over the scored sequences (`evaluation.annotation.collapsed`)."""
    if collapsed(binary, cats):
        raise CollapseError(
            f"dilbert {fold}, variant {variant!r}: training collapsed: the finetuned model gives the same annotation "
            f"to all {len(binary)} {scored} sequences (largest standard deviation of any finding or class probability "
            f"over them {output_spread(binary, cats):.2g} < {COLLAPSE_STD:g}). Lower recipe_options.finetune_lr / "
            "optim.lr or train longer; recipe_options.collapse_check=false keeps going without this test")


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
    if not trainer.is_global_zero:  # DDP: the weights are the same on every rank; rank 0 writes them
        return seconds
    save_weights(model, stage_dir / "full.safetensors")
    if stage == "mutual" and teacher is not None:
        save_weights(teacher, stage_dir / "teacher_full.safetensors")
    done.write_text(json.dumps({"stage": stage, "seconds": seconds, "epochs": epochs, "steps_per_epoch": steps}))
    if not options(cfg).keep_checkpoints:
        shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
    return seconds


def _copy(model: DILBERTModel, c: FusionConfig) -> DILBERTModel:
    out = DILBERTModel(c)
    out.load_state_dict(model.state_dict())
    return out


def run_fold(cfg: RunConfig, seqs: SequenceSet, train: np.ndarray, test: np.ndarray, fold: int, fold_dir: Path,
             graph: KnowledgeGraph, resume: bool = False, **trainer_overrides: Any) -> dict[str, Any]:
    """All stages of one fold (no test rows: the final model); returns {"predictions": DataFrame (empty without
    test rows), "retrieval": {variant: {...}}, "seconds": {"<variant>/<stage>": s}}."""
    from sonodistill.protocols.folds import process_rank
    from sonodistill.recipes.trainer import load_weights, save_weights

    o = options(cfg)
    main = process_rank() == 0  # DDP: every rank trains; rank 0 alone writes files, evaluates and exports
    seed = cfg.train.seed + fold
    name = f"fold {fold}" if len(test) else f"final model (fold {fold})"
    fold_dir.mkdir(parents=True, exist_ok=True)
    tr = seqs.subset(train)
    te = seqs.subset(test) if len(test) else None  # (a manifest has rows: the final model has no test set)
    # tokenizer on the training fold's reports + the knowledge graph's terms (no test text)
    tok_path = fold_dir / "tokenizer.json"
    if resume and tok_path.is_file():
        tok = TextTokenizer.load(tok_path)
    else:
        tok = TextTokenizer.train(tr.texts, o.vocab_size, extra_texts=graph.terms(), spelling=graph.spelling)
        if main:
            tok.save(tok_path)
    T, bs = int(cfg.data.num_frames), int(cfg.data.batch_size)
    if bs < 3:
        raise ConfigError(f"dilbert: data.batch_size must be >= 3 (relational distillation compares triplets), got {bs}")
    common = dict(tokenizer=tok, graph=graph, num_frames=T, max_len=o.max_text_len, region_grid=o.region_grid)
    keys: dict[str, int] = {}
    pre_ds = SequenceTextDataset(tr, train=True, seed=seed, pretext=True, augment=o.augment, mask_rate=o.mask_rate,
                                 entity_prob=o.entity_prob, region_mask_rate=o.region_mask_rate, text_keys=keys,
                                 **common)
    fin_ds = SequenceTextDataset(tr, train=True, seed=seed, augment=o.augment, text_keys=keys, **common)
    test_ds = SequenceTextDataset(te, train=False, seed=seed, text_keys={}, **common) if te is not None else None
    eval_tr = SequenceTextDataset(tr, train=False, seed=seed, **common)
    pre_loader, fin_loader = make_loader(pre_ds, bs, True, seed), make_loader(fin_ds, bs, True, seed)
    # MOC pseudo-classes from the training fold's region pixels
    codebook = RegionCodebook(o.region_grid, o.n_region_classes)
    cb_path = fold_dir / "regions.safetensors"
    if resume and cb_path.is_file():
        load_weights(codebook, cb_path)
    else:
        codebook.fit([eval_tr[i]["x"][None] for i in range(len(eval_tr))], seed=seed)
        if main:
            save_weights(codebook, cb_path)
    pos_weight = pos_weight_of(tr.binary, o.pos_weight)
    p_epochs = int(o.pretrain_epochs or cfg.train.epochs)
    f_epochs = int(o.finetune_epochs or cfg.train.epochs)
    p_lr, f_lr = float(cfg.optim.lr), float(o.finetune_lr or cfg.optim.lr)
    cfg_t = fusion_config(o, "teacher", tok, graph, seqs.spec, T)
    cfg_s = fusion_config(o, "student", tok, graph, seqs.spec, T)
    # the collapse test's sequences: the test fold, or the training ones when it has fewer than 2
    check_ds, scored = (test_ds, "test") if test_ds is not None and len(test) >= 2 else (eval_tr, "training")

    started_from: dict[str, dict[str, str]] = {}

    def new(c: FusionConfig, salt: int, variant: str) -> DILBERTModel:  # random init, then the encoders' starts
        torch.manual_seed(seed * 1000 + salt)
        m = DILBERTModel(c)
        started_from[variant] = m.core.visual.load_starts(c)
        return m

    def stage(variant: str, stage_name: str, model: DILBERTModel, loader: DataLoader, epochs: int, lr: float,
              teacher: DILBERTModel | None = None, cb: RegionCodebook | None = None) -> float:
        L.seed_everything(seed, workers=True, verbose=False)
        log.info("%s: %s %s (%d epochs)", name, variant, stage_name, epochs)
        return fit_stage(cfg, fold_dir / variant / stage_name, stage_name, model, loader, epochs, lr, teacher, cb,
                         pos_weight if stage_name in ("finetune", "mutual") else None, resume, **trainer_overrides)

    probs: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}

    def judge(variant: str, model: DILBERTModel) -> None:  # annotations of check_ds, and the collapse test
        probs[variant] = predict_annotations(model, check_ds)
        if o.collapse_check:
            check_collapse(*probs[variant], variant, name, scored)

    seconds: dict[str, float] = {}
    finetuned: dict[str, DILBERTModel] = {}
    pretrained: dict[str, DILBERTModel] = {}
    def pretrain_and_finetune(variant: str, c: FusionConfig, salt: int) -> None:  # the baseline and the teacher
        m = new(c, salt, variant)
        seconds[f"{variant}/pretrain"] = stage(variant, "pretrain", m, pre_loader, p_epochs, p_lr, cb=codebook)
        pretrained[variant] = _copy(m, c)
        seconds[f"{variant}/finetune"] = stage(variant, "finetune", m, fin_loader, f_epochs, f_lr)
        finetuned[variant] = m
        judge(variant, m)

    if "baseline" in o.variants:
        pretrain_and_finetune("baseline", cfg_s, 1)
    if "teacher" in o.variants or "student" in o.variants:
        pretrain_and_finetune("teacher", cfg_t, 2)
    if "student" in o.variants:
        s = new(cfg_s, 3, "student")
        seconds["student/distill"] = stage("student", "distill", s, pre_loader, p_epochs, p_lr,
                                           teacher=pretrained["teacher"], cb=codebook)
        pretrained["student"] = _copy(s, cfg_s)
        t_mut = _copy(finetuned["teacher"], cfg_t)
        seconds["student/mutual"] = stage("student", "mutual", s, fin_loader, f_epochs, f_lr, teacher=t_mut)
        finetuned["student"], finetuned["teacher+mutual"] = s, t_mut
        judge("student", s)
        judge("teacher+mutual", t_mut)
    if not main:
        return {"predictions": pd.DataFrame(), "retrieval": {}, "seconds": seconds}
    (fold_dir / "timing.json").write_text(json.dumps(seconds, indent=1))
    (fold_dir / "pretrained_from.json").write_text(json.dumps(started_from, indent=1))

    # evaluation on the test fold, and one annotator export per variant
    frames, retrieval = [], {}
    reports = distinct_reports(graph, tr.texts)
    pre = preprocess_config(cfg)
    for variant, model in finetuned.items():
        if test_ds is not None:
            b, c = probs[variant] if check_ds is test_ds else predict_annotations(model, test_ds)
            frames.append(prediction_table(seqs, test, b, c, fold, variant))
            if o.retrieval and variant in pretrained:
                retrieval[variant] = evaluate_retrieval(pretrained[variant], test_ds,
                                                        eval_tr if o.retrieval_bank else None)
        if variant in VARIANTS:
            fcfg = cfg_t if variant == "teacher" else cfg_s
            export_annotator(fold_dir / "export" / variant, model, pretrained[variant], fcfg, seqs.spec, tok, reports,
                             pre, {"role": variant, "graph": graph.name, "num_frames": T, "max_text_len": o.max_text_len,
                                   "threshold": float(o.threshold), "run": cfg.name, "fold": fold,
                                   "train_items": int(len(train)), "pretrained_from": started_from[variant],
                                   "report_ranking": o.report_ranking},
                             report_bank(pretrained[variant], eval_tr, reports, graph, o.max_text_len))
    pred = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return {"predictions": pred, "retrieval": retrieval, "seconds": seconds}
