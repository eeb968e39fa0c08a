"""`sonodistill demo`: synthetic carotid plaque set, methods compared with 3-fold grouped CV, on CPU.

The recipes train in parallel processes (`--jobs`, default one per recipe up to the CPU count), each with
`cpus // jobs` torch threads: small CPU models use two single-thread processes far better than one two-thread one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from sonodistill.config import RunConfig, load_config, packaged_config
from sonodistill.data.manifest import Manifest

log = logging.getLogger(__name__)

DEMO_RECIPES = ["supervised", "dualdistill"]


def _train_recipe(cfg: RunConfig, threads: int, manifest: Manifest) -> float:
    """Cross-validate one recipe's config into its run directory with `threads` torch threads; returns seconds.

    SIGTERM/SIGINT stop it cleanly (TrainingStopped), here or in a worker process."""
    import torch

    from sonodistill.protocols.folds import run_protocol
    from sonodistill.recipes.trainer import stop_on_signals

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with stop_on_signals():
        run_protocol(cfg, resume=True, manifest=manifest, enable_progress_bar=False)
    return time.perf_counter() - t0


def run_demo(out: Path, recipes: list[str], overrides: list[str], jobs: int | None = None) -> Path:
    """Train each recipe on the same folds of the synthetic set; write out/report.md with the comparison.

    jobs: parallel processes (None: min(len(recipes), CPU count)); 1 trains the recipes one after another here.
    """
    from sonodistill.evaluation.report import write_cv_report
    from sonodistill.protocols.processes import map_in_processes, threads_per_worker, usable_cpus
    from sonodistill.recipes.data import load_manifest

    if not recipes:
        raise ValueError("demo: no recipes to compare")
    out.mkdir(parents=True, exist_ok=True)
    cfgs = {r: load_config(packaged_config("demo"), [f"recipe={r}", f"name={r}", f"out_dir={out}"] + overrides)
            for r in recipes}
    jobs = max(1, min(len(recipes), usable_cpus() if jobs is None else jobs))
    threads = threads_per_worker(jobs)
    manifest = load_manifest(cfgs[recipes[0]].data)  # synthesised and cached once, here
    log.info("demo: %d recipes, %d parallel job(s) x %d torch thread(s)", len(recipes), jobs, threads)
    if jobs == 1:
        seconds = [_train_recipe(cfgs[r], threads, manifest) for r in recipes]
    else:
        seconds = map_in_processes(_train_recipe, [(cfgs[r], threads, manifest) for r in recipes], jobs)
    frames = [pd.read_csv(cfgs[r].run_dir / "predictions.csv").assign(model=r) for r in recipes]
    write_cv_report(out, pd.concat(frames, ignore_index=True), manifest.classes,
                    title="sonodistill demo: synthetic carotid plaque, 3-fold grouped CV")
    fold_seconds = {r: sum(json.loads((cfgs[r].run_dir / "timing.json").read_text()).values()) for r in recipes}
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write(f"\n\nTraining time (s, sum over folds, from each run's timing.json; {jobs} parallel job(s) x "
                f"{threads} thread(s)): " + ", ".join(f"{k} {v:.0f}" for k, v in fold_seconds.items())
                + "\nThis call: " + ", ".join(f"{r} {t:.0f} s" for r, t in zip(recipes, seconds))
                + " (finished folds of an earlier call are reused)\n")
        f.write("\n" + paired_verdict(out, [cfgs[r].run_dir for r in recipes]))
    return out / "report.md"


def paired_verdict(out: Path, run_dirs: list[Path]) -> str:
    """`sonodistill compare` of every run against the first (out/compare/), and a plain sentence on accuracy."""
    from sonodistill.commands.compare import compare_runs, write_comparison

    runs, table = compare_runs(list(run_dirs))
    text = write_comparison(runs, table, out / "compare", 2000, 0.95, 0)
    lines = [text.replace("# Paired comparison", "## Paired comparison", 1).replace("](comparison.png)",
                                                                                   "](compare/comparison.png)")]
    for row in table[table["metric"] == "accuracy"].itertuples():
        if row.ci_low > 0:
            verdict = "is more accurate than"
        elif row.ci_high < 0:
            verdict = "is less accurate than"
        else:
            verdict = "is not shown to differ in accuracy from"
        lines.append(f"\n**{row.run} {verdict} {runs[0].name} on this set** (difference {row.difference:+.3f}, "
                     f"95 % interval [{row.ci_low:+.3f}, {row.ci_high:+.3f}], bootstrap over patients).\n")
    return "".join(lines)


def _demo(args: argparse.Namespace) -> int:
    from sonodistill.recipes.trainer import TrainingStopped, stop_on_signals

    t0 = time.perf_counter()
    with stop_on_signals():
        try:
            report = run_demo(Path(args.out), args.recipes or DEMO_RECIPES, args.overrides, args.jobs)
        except TrainingStopped as stop:
            print(f"sonodistill demo: {stop}. Finished folds and checkpoints are kept under {args.out}; run the same "
                  "command again to continue (the demo resumes by itself).", file=sys.stderr)
            return 128 + stop.signum
    print(report.read_text())
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; run directories and plots under {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on built-in synthetic data: methods compared by 3-fold CV")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--recipes", nargs="+", help=f"recipes to compare (default {DEMO_RECIPES})")
    p.add_argument("--jobs", type=int, default=None,
                   help="recipes trained in parallel processes (default: one per recipe, up to the CPU count)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=_demo)
