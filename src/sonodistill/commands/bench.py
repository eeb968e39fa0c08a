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

    train = sub.add_parser(
        "train",
        help="training speed of configs: items/s and GFLOP/s of a step beside a same-run matmul's GFLOP/s",
        description="Times SGD steps of each config's network on random batches of its input shape (1 and 2 "
                    "torch threads by default; --device cuda on a GPU, --precision bf16-mixed under autocast); "
                    "FLOPs = 3 x forward (flop_counter). Prints Markdown, writes JSON.",
    )
    train.add_argument("configs", nargs="+", metavar="CONFIG", help="packaged config names or YAML paths")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    train.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default: %(default)s)")
    train.add_argument("--processes", default="1",
                       help="comma-separated counts of concurrent processes, each timing the same steps with each "
                            "--threads count; their rates are summed (what train.parallel_folds gains). "
                            "Default: %(default)s")
    train.add_argument("--batch-size", type=int, default=None, help="default: the config's data.batch_size")
    train.add_argument("--repeats", type=int, default=5)
    train.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default: %(default)s)")
    train.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                       help="the step's and the matmul reference's precision (default: %(default)s)")
    train.add_argument("--out", default="runs/bench/train_speed.json")
    train.set_defaults(func=run_train_speed)


def _write_json(path: str, result: object) -> int:
    """Write a benchmark's result as JSON (parents created), say where; exit code 0."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    from sonodistill.data.bench import markdown_table, run_data_bench

    result = run_data_bench(root=args.root, limit=args.limit, size=args.size, num_frames=args.num_frames,
                            cache_dir=args.cache_dir, progress=not args.no_progress)
    print(markdown_table(result))
    return _write_json(args.out, result)


def run_overhead(args: argparse.Namespace) -> int:
    from sonodistill.protocols.overhead import measure_overhead, overhead_markdown

    cfg = _config(args.config, args.overrides)
    result = measure_overhead(cfg, method=args.method, batches=args.batches, repeats=args.repeats,
                              batch_size=cfg.data.batch_size)
    print(overhead_markdown(result, method=args.method))
    return _write_json(args.out, result)


def _config(name: str, overrides: list[str]):  # -> RunConfig
    from sonodistill.config import load_config, packaged_config

    path = Path(name) if Path(name).suffix in (".yaml", ".yml") else packaged_config(name)
    return load_config(path, overrides)


def _speed_row(name: str, overrides: list[str], batch_size: int | None, repeats: int, threads: int,
               device: str = "cpu", precision: str = "32-true") -> dict:
    """`measure_train_speed` of one config with `threads` torch threads on `device`, in this process (a worker's
    job too)."""
    import os

    from sonodistill.protocols.tuning import config_speed

    cfg = _config(name, overrides)
    row = config_speed(cfg, batch_size, repeats, threads, device=device, precision=precision)
    row.update(config=name, backbone=cfg.model.backbone, width=cfg.model.width, load_average=os.getloadavg())
    return row


def _check_device(device: str) -> None:
    """ConfigError unless `device` names the CPU or a CUDA device this machine has."""
    import torch

    from sonodistill.errors import ConfigError

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from exc
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise ConfigError(f"--device {device!r}: training speed is timed on cpu or cuda")
    if not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device!r}: no such CUDA device on this machine "
                          f"({torch.cuda.device_count()} found)")


def run_train_speed(args: argparse.Namespace) -> int:
    from sonodistill.errors import ConfigError
    from sonodistill.evaluation.train_speed import best_setting, combine_concurrent, speed_markdown
    from sonodistill.protocols.processes import map_in_processes

    thread_counts = [int(t) for t in str(args.threads).split(",") if t]
    process_counts = [int(p) for p in str(args.processes).split(",") if p]
    if not thread_counts or not process_counts or min(thread_counts + process_counts) < 1:
        raise ConfigError(f"--threads {args.threads!r} and --processes {args.processes!r} need counts >= 1")
    _check_device(args.device)
    if args.device != "cpu" and max(process_counts) > 1:
        raise ConfigError("--processes above 1 time CPU processes side by side; on an accelerator give --processes 1")
    rows, best = [], []
    for name in args.configs:
        _config(name, args.overrides)  # a bad config fails here, not in a worker
        mine = []
        for processes in process_counts:
            for threads in thread_counts:
                call = (name, args.overrides, args.batch_size, args.repeats, threads, args.device, args.precision)
                row = _speed_row(*call) if processes == 1 else \
                    combine_concurrent(map_in_processes(_speed_row, [call] * processes, processes))
                mine.append(row)
                print(speed_markdown([row]).splitlines()[-1], flush=True)
        rows += mine
        best.append(f"{name}: fastest training throughput with {best_setting(mine)}")
    print(speed_markdown(rows))
    print("\n".join(best))
    return _write_json(args.out, rows)
