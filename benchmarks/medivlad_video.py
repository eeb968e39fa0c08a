"""MeDiVLAD video-level severity scoring on lus-blues (the layout of the paper's Table 3), 5 patient-grouped folds.

The frozen DINO teacher of `benchmarks/medivlad_frames.py` (OUT/dino) encodes 16 uniformly spaced frames per video
once; every aggregator (max frame score, mean pooling, gated attention-MIL, Bi-LSTM, NetVLAD, dual-level VLAD) is
trained per fold on the same cached features and folds (configs/medivlad-cpu.yaml: 100 epochs, AdamW lr 1e-3,
16 videos per step; no tuning). The same protocol with a randomly initialised encoder is run as a reference.
Writes OUT/video-<encoder>-<target>/ (report.md, predictions.csv, ...) and OUT/table3-<target>.md.

    flock /tmp/sonodistill-heavy.lock python benchmarks/medivlad_video.py --out runs/medivlad-bench

Options: --target severity|severity3  --encoders dino,random  --threads 1  --folds 5  --seed 0
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from _common import add_run_arguments, start_run

AGGREGATORS = ["max", "mean", "attention_mil", "bilstm", "netvlad", "dual_vlad"]
LABELS = {"max": "max frame score", "mean": "mean pooling", "attention_mil": "attention-MIL (gated)",
          "bilstm": "Bi-LSTM", "netvlad": "NetVLAD", "dual_vlad": "dual-level VLAD (MeDiVLAD)"}
COLUMNS = ["accuracy", "f1", "roc_auc", "balanced_accuracy"]


def run_encoder(out: Path, encoder: str, args: argparse.Namespace) -> tuple[dict, float]:
    from sonodistill.config import load_config, packaged_config
    from sonodistill.evaluation.run_dir import report_from_run_dir
    from sonodistill.protocols.folds import run_protocol

    init = str(out / "dino") if encoder == "dino" else "null"
    if encoder == "dino" and not (out / "dino" / "teacher_backbone.safetensors").is_file():
        raise SystemExit(f"no DINO run in {out / 'dino'}: run benchmarks/medivlad_frames.py --stages pretrain first")
    over = [f"out_dir={out}", f"name=video-{encoder}-{args.target}", "data.spec=lus-blues",
            f"data.target={args.target}", f"train.folds={args.folds}", f"train.seed={args.seed}",
            f"recipe_options.init_from={init}", f"recipe_options.aggregators=[{','.join(AGGREGATORS)}]"]
    cfg = load_config(packaged_config("medivlad-cpu"), over)
    t0 = time.perf_counter()
    if (cfg.run_dir / "predictions.csv").is_file():
        return report_from_run_dir(cfg.run_dir), 0.0
    summary = run_protocol(cfg, resume=(cfg.run_dir / "config.yaml").exists())
    return summary, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/medivlad-bench")
    p.add_argument("--target", default="severity", choices=["severity", "severity3"])
    p.add_argument("--encoders", default="dino,random")
    add_run_arguments(p, folds=True, seed=True)
    args = p.parse_args(argv)
    start_run(args.threads)
    from sonodistill.evaluation.report import markdown_table

    out = Path(args.out)
    lines = [f"# MeDiVLAD video-level scoring on lus-blues ({args.target}), Table 3 layout\n"]
    results = {}
    for enc in args.encoders.split(","):
        summary, seconds = run_encoder(out, enc, args)
        rows = {LABELS[a]: summary[a] for a in AGGREGATORS}
        results[enc] = {"seconds": seconds, "summary": {a: {k: list(v) for k, v in summary[a].items()}
                                                        for a in AGGREGATORS}}
        title = "frozen DINO teacher" if enc == "dino" else "frozen randomly initialised encoder (reference)"
        lines += [f"## {title}\n", markdown_table(rows, COLUMNS, index_name="aggregator"),
                  f"(f1 = macro F1; roc_auc = macro one-vs-rest; mean ± std over {args.folds} folds; "
                  f"{seconds:.0f} s incl. feature extraction)\n"]
    lines.append(f"Command: {shlex.join([sys.executable, *sys.argv])}\n")
    (out / f"table3-{args.target}.md").write_text("\n".join(lines))
    (out / f"video-{args.target}.json").write_text(json.dumps(results, indent=1, default=float))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
