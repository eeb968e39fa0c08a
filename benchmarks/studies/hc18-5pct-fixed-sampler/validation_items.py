"""The images of the validation splits that chose HDC's c3-prior at 5 % (inside folds 0 and 1's training rows, fold
seed 0, val_fraction 0.2), computed with the protocol's own split function on a grid run's manifest and folds:
session 25's list came from runs that are gone. Writes their paths, one a line, for `sonodistill compare
--exclude-items LIST`.

    python benchmarks/studies/hc18-5pct-fixed-sampler/validation_items.py LIST [--run RUN]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from sonodistill.data.folds import load_folds
from sonodistill.data.manifest import Manifest
from sonodistill.data.splits import validation_rows

RUN = Path(__file__).parent / "results/hc18-5/f0-s0/hc18-hdc-5pct/seed_0"  # any run of the grid (fold seed 0)

CHOOSING_FOLDS, FOLD_SEED, VAL_FRACTION = (0, 1), 0, 0.2  # session 24's validation runs (fold seed + fold = seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--run", type=Path, default=RUN)
    args = ap.parse_args(argv)
    manifest, folds = Manifest.from_csv(args.run / "manifest.csv"), load_folds(args.run)
    paths = manifest.table["path"].tolist()
    chosen = {paths[r] for k in CHOOSING_FOLDS
              for r in validation_rows(manifest, folds[k][0], VAL_FRACTION, FOLD_SEED + k)[1]}
    test_fold = {paths[r]: k for k, (_, test) in enumerate(folds) for r in test}
    counts = Counter(test_fold[p] for p in chosen)
    print(f"{len(chosen)} distinct validation images; in test folds: "
          + ", ".join(f"{k}: {counts[k]}" for k in range(len(folds))))
    args.out.write_text("".join(f"{p}\n" for p in sorted(chosen)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
