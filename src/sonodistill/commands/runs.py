"""`sonodistill runs [FOLDER]`: the run directories under a folder (default runs/) and where each stands: recipe,
data, folds finished, final model, headline score, the time of its last log line, whether an error stopped it and,
while it trains, its epoch and the time left."""

from __future__ import annotations

import argparse
from pathlib import Path

from sonodistill.errors import ConfigError


def run(args: argparse.Namespace) -> int:
    from sonodistill.protocols.run_status import find_runs, format_status_table, run_status

    root = Path(args.folder)
    if not root.is_dir():
        raise ConfigError(f"runs: {root} is not a folder (give the --out folder of your runs; default runs/)")
    found = find_runs(root)
    if not found:
        print(f"no run directories (folders with a config.yaml) in {root}")
        return 0
    print(format_status_table([run_status(p) for p in found], root))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="the run directories under a folder and where each stands (folds done, score, "
                                    "last log line, why it stopped, epoch and time left)")
    p.add_argument("folder", nargs="?", default="runs", help="the --out folder of the runs (default runs/), or one run")
    p.set_defaults(func=run)
