"""DILBERT benchmark on the real sequence-text pairs: pocus-frames sequences and lus-blues videos.

For each data set: patient-grouped 5-fold CV of baseline (student-sized, no distillation), teacher and student
(distilled pretraining + mutual finetuning), with per-finding and macro sensitivity / precision / F1, retrieval
Recall@1/5/10 both ways and the training time of every stage. Writes OUT/<part>/report.md, metrics.json and
OUT/summary.md (the tables that go into docs/dilbert.md), plus the exact command.

    flock /tmp/sonodistill-heavy.lock python benchmarks/dilbert_pocus.py --out runs/dilbert-bench

Options: --parts pocus,lus  --folds 5  --epochs N (pretrain and finetune epochs)  --threads 1  --resume
         --set SECTION.FIELD=VALUE (any config override, repeatable).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from _common import add_run_arguments, start_run

PARTS = {
    "pocus": ["data.spec=pocus-frames"],
    "lus": ["data.spec=lus-blues", "data.target=severity"],
}


def run_part(part: str, out: Path, args: argparse.Namespace) -> dict:
    from sonodistill.config import load_config, packaged_config
    from sonodistill.protocols.folds import run_protocol

    overrides = list(PARTS[part]) + [f"out_dir={out}", f"name={part}", f"train.folds={args.folds}"]
    if args.epochs:
        overrides += [f"recipe_options.pretrain_epochs={args.epochs}", f"recipe_options.finetune_epochs={args.epochs}"]
    cfg = load_config(packaged_config(args.config), overrides + list(args.overrides))
    t0 = time.perf_counter()
    summary = run_protocol(cfg, resume=args.resume)
    summary["wall_seconds"] = time.perf_counter() - t0
    return summary


def _f(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _ms(v: list) -> str:
    return "n/a" if math.isnan(v[0]) else f"{v[0]:.3f} ± {v[1]:.3f}"


def summary_tables(part: str, summary: dict) -> list[str]:
    """Macro annotation, retrieval and time tables of one part, in Markdown."""
    variants = [v for v in summary["variants"]]
    lines = [f"### {part}", "", "| variant | macro sensitivity | macro precision | macro F1 (pooled) | "
             "macro F1 per fold |", "|---|---|---|---|---|"]
    for v in variants:
        p = summary["variants"][v]
        m = p["pooled"]["macro"]
        lines.append(f"| {v} | {_f(m['sensitivity'])} | {_f(m['precision'])} | {_f(m['f1'])} | "
                     f"{_ms(p['per_fold_macro']['f1'])} |")
    lines += ["", "| variant | seq→text R@1 | R@5 | R@10 | text→seq R@1 | R@5 | R@10 |", "|---|---|---|---|---|---|---|"]
    chance = None
    for v in variants:
        r = summary["variants"][v]["retrieval"]
        if not r:
            continue
        chance = r
        lines.append(f"| {v} | " + " | ".join(_ms(r[d][f'R@{k}']) for d in ("seq2text", "text2seq")
                                              for k in (1, 5, 10)) + " |")
    if chance:
        lines.append("| random ranking | " + " | ".join(_ms(chance[d][f'chance@{k}']) for d in ("seq2text", "text2seq")
                                                        for k in (1, 5, 10)) + " |")
    for v in variants:  # query-bank normalised scores (the training fold as bank), where measured
        r = summary["variants"][v]["retrieval"]
        if "text2seq_bank" in r:
            lines.append(f"| {v}, bank-normalised | " + " | ".join(
                _ms(r[d][f'R@{k}']) for d in ("seq2text_bank", "text2seq_bank") for k in (1, 5, 10)) + " |")
    sec = summary["seconds"]
    total = {"baseline": ["baseline/pretrain", "baseline/finetune"], "teacher": ["teacher/pretrain", "teacher/finetune"],
             "student (own stages)": ["student/distill", "student/mutual"]}
    lines += ["", "| variant | training s per fold (mean) | stages |", "|---|---|---|"]
    for name, stages in total.items():
        if all(s in sec for s in stages):
            lines.append(f"| {name} | {sum(sec[s][0] for s in stages):.0f} | "
                         + ", ".join(f"{s.split('/')[1]} {sec[s][0]:.0f}" for s in stages) + " |")
    if all(s in sec for s in total["teacher"] + total["student (own stages)"]):
        lines.append(f"| student incl. its teacher | {sum(sec[s][0] for s in total['teacher'] + total['student (own stages)']):.0f} | |")
    return lines + [""]


def parameter_lines(run_dir: Path) -> list[str]:
    """Parameters of each variant's annotator (all, and trainable: frozen encoder stages excluded), from fold 0's
    export: the paper's claim is a student at most half the teacher's size."""
    from sonodistill.models.fusion import DILBERTModel, FusionConfig

    exports = sorted((run_dir / "fold_0" / "export").glob("*/dilbert.json"))
    if not exports:
        return []
    lines = ["| variant | parameters (annotator) | trainable | frame encoder |", "|---|---|---|---|"]
    for path in exports:
        fusion = json.loads(path.read_text())["fusion"]
        model = DILBERTModel(FusionConfig.from_dict(fusion)).inference_model()
        total = sum(p.numel() for p in model.parameters())
        train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        lines.append(f"| {path.parent.name} | {total:,} | {train:,} | {fusion['frame_backbone']} "
                     f"({fusion.get('frame_pretrained', 'none')}, {fusion.get('frame_freeze_stages', 0)} stages "
                     f"frozen) |")
    return lines + [""]


def write_summary(out: Path) -> Path:
    """OUT/summary.md: the per-part summaries present in OUT (parts may come from separate invocations)."""
    parts = [out / f"summary-{p}.md" for p in PARTS if (out / f"summary-{p}.md").is_file()]
    text = "# DILBERT benchmark\n\n" + "\n".join(p.read_text() for p in parts)
    (out / "summary.md").write_text(text)
    return out / "summary.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/dilbert-bench")
    ap.add_argument("--parts", default="pocus,lus")
    ap.add_argument("--config", default="dilbert-cpu")
    ap.add_argument("--epochs", type=int, default=None)
    add_run_arguments(ap, folds=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    start_run(args.threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    for part in [p for p in args.parts.split(",") if p]:
        if part not in PARTS:
            ap.error(f"unknown part {part!r}; choose from {sorted(PARTS)}")
        summary = run_part(part, out, args)
        (out / f"{part}-summary.json").write_text(json.dumps(summary, indent=1, default=float))
        lines = summary_tables(part, summary) + parameter_lines(out / part) + [
            f"Command: `{command}`; wall time {summary['wall_seconds']:.0f} s; full report: {out / part / 'report.md'}",
            ""]
        (out / f"summary-{part}.md").write_text("\n".join(lines) + "\n")
        write_summary(out)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
