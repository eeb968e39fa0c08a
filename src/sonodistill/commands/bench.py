"""`sonodistill bench ...`: benchmarks that produce the documented numbers (`bench data`: the data pipeline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark (data: decode, preprocess and cache speed)")
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])

    data = sub.add_parser(
        "data",
        help="lus-blues: read_clip vs bare PyAV decode, read+preprocess frames/s, cached vs uncached epoch",
        description="Decode, preprocess and cache benchmark on lus-blues. Prints a Markdown table, writes JSON.",
    )
    data.add_argument("--root", default=None, help="lus-blues folder (default: SONODISTILL_DATA/lus-blues)")
    data.add_argument("--out", default="runs/bench/data.json", help="JSON result file (default: %(default)s)")
    data.add_argument("--limit", type=int, default=None, help="use only the first N videos")
    data.add_argument("--size", type=int, default=112, help="preprocessed side in pixels (default: %(default)s)")
    data.add_argument("--num-frames", type=int, default=16, help="frames per ClipDataset item (default: %(default)s)")
    data.add_argument("--cache-dir", default=None,
                      help="folder in which a fresh temporary cache is made and removed (default: system temp)")
    data.add_argument("--no-progress", action="store_true", help="hide progress bars")
    data.set_defaults(func=run_data)

    over = sub.add_parser(
        "overhead",
        help="training/inference step time of a method vs the supervised recipe on the same batches",
        description="Interleaved timing of METHOD and supervised steps on identical batches; prints ratios, writes JSON.",
    )
    over.add_argument("--method", default="dualdistill")
    over.add_argument("--config", default="dualdistill-cpu", help="packaged config name or YAML path")
    over.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    over.add_argument("--batches", type=int, default=4)
    over.add_argument("--repeats", type=int, default=5)
    over.add_argument("--out", default="runs/bench/overhead.json")
    over.set_defaults(func=run_overhead)


def run_data(args: argparse.Namespace) -> int:
    from sonodistill.data.bench import markdown_table, run_data_bench

    result = run_data_bench(root=args.root, limit=args.limit, size=args.size, num_frames=args.num_frames,
                            cache_dir=args.cache_dir, progress=not args.no_progress)
    print(markdown_table(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


def run_overhead(args: argparse.Namespace) -> int:
    from sonodistill.config import load_config, packaged_config
    from sonodistill.evaluation.overhead import measure_overhead, overhead_markdown

    path = Path(args.config) if Path(args.config).suffix in (".yaml", ".yml") else packaged_config(args.config)
    cfg = load_config(path, args.overrides)
    result = measure_overhead(cfg, method=args.method, batches=args.batches, repeats=args.repeats,
                              batch_size=cfg.data.batch_size)
    print(overhead_markdown(result, method=args.method))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0
