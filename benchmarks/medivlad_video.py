"""MeDiVLAD video-level severity scoring on lus-blues (the layout of the paper's Table 3), 5 patient-grouped folds.

The frozen DINO teacher of `benchmarks/medivlad_frames.py` (OUT/dino) encodes 16 uniformly spaced frames per video
once; every aggregator (max frame score, mean pooling, gated attention-MIL, Bi-LSTM, NetVLAD, dual-level VLAD) is
trained per fold on the same cached features and folds (configs/medivlad-cpu.yaml: 100 epochs, AdamW lr 1e-3,
16 videos per step; no tuning). The same protocol with a randomly initialised encoder is run as a reference.
Writes OUT/video-<encoder>-<target>/ (report.md, predictions.csv, ...) and OUT/table3-<target>.md.

    flock /tmp/sonodistill-heavy.lock python benchmarks/medivlad_video.py --out runs/medivlad-bench

Encoders (`--encoders`): `dino` (the ViT teacher of medivlad_frames.py), `random` (its architecture, random
weights), `imagenet` (the shipped ImageNet EfficientNet-Lite0 at 128 px) and `imagenet-dino` (the same network
after ultrasound DINO, `--dino-effnet RUN`, e.g. configs/dino-efficientnet-imagenet.yaml's run); `--weights NAME=PATH`
(repeatable) adds an encoder NAME: the EfficientNet-Lite0 with the backbone weights of PATH, e.g. a `supervised` run's
`final/` finetuned on pocus-frames (the chain ImageNet [-> DINO] -> finetune on labelled frames -> aggregators). `--seeds 0,1,2`
trains every aggregator with each seed on the same folds (RUN/seed_<s>/). Dual-level VLAD is compared with every
other aggregator by `sonodistill compare RUN:<aggregator> RUN:dual_vlad` (OUT/compare-<encoder>-<target>.md).

Options: --target severity|severity3  --encoders dino,random  --threads 1  --folds 5  --seeds 0
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


EFFICIENTNET = ["model.backbone=efficientnet_lite0", "model.width=1.0", "model.kwargs={}", "data.size=128"]
TITLES = {"dino": "frozen DINO teacher (ViT)", "random": "frozen randomly initialised encoder (reference)",
          "imagenet": "frozen ImageNet EfficientNet-Lite0",
          "imagenet-dino": "frozen ImageNet EfficientNet-Lite0 after ultrasound DINO"}


def encoder_overrides(out: Path, encoder: str, args: argparse.Namespace) -> list[str]:
    """The config overrides that select one frame encoder."""
    if encoder == "dino":
        if not (out / "dino" / "teacher_backbone.safetensors").is_file():
            raise SystemExit(f"no DINO run in {out / 'dino'}: run benchmarks/medivlad_frames.py --stages pretrain "
                             "first")
        return [f"recipe_options.init_from={out / 'dino'}"]
    if encoder == "random":
        return ["recipe_options.init_from=null"]
    if encoder == "imagenet":
        return EFFICIENTNET + ["model.pretrained=imagenet", "recipe_options.init_from=null"]
    if encoder == "imagenet-dino":
        if not Path(args.dino_effnet).is_dir():
            raise SystemExit(f"no EfficientNet DINO run at {args.dino_effnet} (--dino-effnet)")
        return EFFICIENTNET + [f"recipe_options.init_from={args.dino_effnet}"]
    if encoder in args.weights:
        if not Path(args.weights[encoder]).exists():
            raise SystemExit(f"encoder {encoder}: no weights at {args.weights[encoder]} (--weights)")
        return EFFICIENTNET + [f"recipe_options.init_from={args.weights[encoder]}"]
    raise SystemExit(f"unknown encoder {encoder!r}; choose from {sorted(TITLES)} or name one with --weights NAME=PATH")


def parse_weights(specs: list[str]) -> dict[str, str]:
    """`--weights NAME=PATH` values as {NAME: PATH}; a malformed or reused NAME is an error."""
    weights: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--weights {spec!r}: expected NAME=PATH")
        if name in TITLES or name in weights:
            raise SystemExit(f"--weights {spec!r}: encoder name {name!r} is already taken")
        weights[name] = path
    return weights


def title(encoder: str, args: argparse.Namespace) -> str:
    """The table heading of one encoder."""
    if encoder in args.weights:
        return f"frozen EfficientNet-Lite0 with the weights of {args.weights[encoder]} ({encoder})"
    return TITLES[encoder]


def run_encoder(out: Path, encoder: str, args: argparse.Namespace) -> tuple[dict, float, Path]:
    """Every aggregator on one encoder's cached features, for each seed; (first seed's summary, seconds, run dir)."""
    from sonodistill.config import SEED_DIR_PREFIX, load_config, packaged_config
    from sonodistill.evaluation.run_dir import report_from_run_dir
    from sonodistill.protocols.folds import run_protocol, run_seeds

    over = [f"out_dir={out}", f"name=video-{encoder}-{args.target}", "data.spec=lus-blues",
            f"data.target={args.target}", f"train.folds={args.folds}", f"train.seed={args.seeds[0]}",
            f"recipe_options.aggregators=[{','.join(AGGREGATORS)}]"] + encoder_overrides(out, encoder, args)
    cfg = load_config(packaged_config("medivlad-cpu"), over)
    several = len(args.seeds) > 1  # run_seeds: RUN/seed_<s>/ each; one seed: RUN itself
    runs = [cfg.run_dir / f"{SEED_DIR_PREFIX}{s}" for s in args.seeds] if several else [cfg.run_dir]
    t0 = time.perf_counter()
    if not all((r / "predictions.csv").is_file() for r in runs):
        resume = (cfg.run_dir / "config.yaml").exists()
        if several:
            run_seeds(cfg, args.seeds, resume=resume)
        else:
            run_protocol(cfg, resume=resume)
    return report_from_run_dir(runs[0]), time.perf_counter() - t0, cfg.run_dir


def compare_with_dual_vlad(run: Path, out: Path, name: str) -> list[str]:
    """`sonodistill compare RUN:<aggregator> RUN:dual_vlad` for every other aggregator; the Markdown lines."""
    from sonodistill.commands.compare import compare_runs, write_comparison

    lines = []
    for agg in AGGREGATORS[:-1]:
        runs, table = compare_runs([f"{run}:{agg}", f"{run}:dual_vlad"], ["accuracy", "f1", "balanced_accuracy"])
        lines.append(write_comparison(runs, table, out / f"compare-{name}" / agg, 2000, 0.95, 0))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/medivlad-bench")
    p.add_argument("--target", default="severity", choices=["severity", "severity3"])
    p.add_argument("--encoders", default="dino,random", help=f"comma-separated, from {sorted(TITLES)}")
    p.add_argument("--dino-effnet", default="runs/bench17/dino-pocus-effnet",
                   help="the EfficientNet DINO run of the imagenet-dino encoder")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="an encoder NAME (use it in --encoders): EfficientNet-Lite0 with PATH's backbone weights")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (the folds come from the first)")
    add_run_arguments(p, folds=True)
    args = p.parse_args(argv)
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.weights = parse_weights(args.weights)
    start_run(args.threads)
    from sonodistill.evaluation.report import markdown_table

    out = Path(args.out)
    lines = [f"# MeDiVLAD video-level scoring on lus-blues ({args.target}), Table 3 layout\n"]
    results = {}
    for enc in args.encoders.split(","):
        summary, seconds, run = run_encoder(out, enc, args)
        rows = {LABELS[a]: summary[a] for a in AGGREGATORS}
        results[enc] = {"seconds": seconds, "summary": {a: {k: list(v) for k, v in summary[a].items()}
                                                        for a in AGGREGATORS}}
        lines += [f"## {title(enc, args)}\n", markdown_table(rows, COLUMNS, index_name="aggregator"),
                  f"(f1 = macro F1; roc_auc = macro one-vs-rest; mean ± std over {args.folds} folds of seed "
                  f"{args.seeds[0]}; {seconds:.0f} s for {len(args.seeds)} seed(s) incl. feature extraction)\n"]
        cmp = compare_with_dual_vlad(run, out, f"{enc}-{args.target}")
        (out / f"compare-{enc}-{args.target}.md").write_text("\n\n".join(cmp))
        lines.append(f"Paired comparisons with dual-level VLAD over seeds {args.seeds}: "
                     f"{out / f'compare-{enc}-{args.target}.md'}\n")
    lines.append(f"Command: {shlex.join([sys.executable, *sys.argv])}\n")
    (out / f"table3-{args.target}.md").write_text("\n".join(lines))
    (out / f"video-{args.target}.json").write_text(json.dumps(results, indent=1, default=float))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
