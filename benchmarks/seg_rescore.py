"""Rescore finished segmentation runs with other inference settings, from each fold's last checkpoint.

    python benchmarks/seg_rescore.py runs/hdc-bench/hc18-hdc-10pct --out runs/rescored \
        --set recipe_options.eval_model=teacher --set recipe_options.flip_tta=true

Each RUN goes to OUT/RUN-name (seed_<s>/ folders seed by seed), with the same folds and splits, so
`sonodistill compare RUN OUT/RUN-name` pairs the settings image by image. Only inference settings may be set
(`protocols.segmentation_rescore.INFERENCE_OPTIONS`); with none, the source's predictions are reproduced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sonodistill.errors import SonoDistillError
from sonodistill.protocols.segmentation_rescore import rescore_segmentation_run
from _common import add_run_arguments, start_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished segmentation run directories")
    p.add_argument("--out", type=Path, required=True, help="folder that receives one rescored run per RUN")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an inference setting, e.g. recipe_options.flip_tta=true (repeatable)")
    add_run_arguments(p, folds=False)
    args = p.parse_args(argv)
    start_run(args.threads)
    try:
        for run in args.runs:
            done = rescore_segmentation_run(run, args.out / run.name, args.overrides)
            print(f"{run} -> {', '.join(str(d) for d in done.values())}")
    except SonoDistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
