"""The images of the validation splits that chose HDC's c3-prior at 5 % (session 24: `hdc_table.py --validation`
inside the training rows of main folds 0 and 1, fold seed 0), recomputed with that script's own split function on a
grid run's manifest: session 25's list came from runs that are gone. Writes their paths, one a line, for
`sonodistill compare --exclude-items LIST`.

    python benchmarks/studies/hc18-5pct-fixed-sampler/validation_items.py LIST [--run RUN]

`--validation` does not use the protocol's `validation_rows` (`train.on_validation`): it makes a manifest of main fold
k's training rows (`hdc_table.validation_manifest`) and runs the grouped 5-fold protocol on it with `train.fold=k`,
so fold k's validation images are the test rows of fold k of that inner split. (Session 32's version of this script
used `validation_rows` and listed 255 images, 11 more than session 25's 244: a different split, not the one that
chose.)
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from hdc_table import validation_manifest
from sonodistill.config import load_config, packaged_config
from sonodistill.data.folds import load_folds, make_folds
from sonodistill.data.manifest import Manifest

RUN = Path(__file__).parent / "results/hc18-5/f0-s0/hc18-hdc-5pct/seed_0"  # any run of the grid (fold seed 0)

CHOOSING_FOLDS, FOLD_SEED = (0, 1), 0  # session 24's validation runs (benchmarks/studies/hc18-5pct-prior)


def choosing_items(manifest: Manifest, folds: int = 5) -> dict[int, list[str]]:
    """Main fold -> the paths scored by its `hdc_table.py --validation` run (the inner split's fold of that number)."""
    out: dict[int, list[str]] = {}
    for k in CHOOSING_FOLDS:
        cfg = load_config(packaged_config("seg-hc18-imagenet"),
                          ["data.spec=hc18", f"train.folds={folds}", f"train.fold={k}", f"train.fold_seed={FOLD_SEED}"])
        inner = validation_manifest(manifest, cfg)
        _, test = make_folds(inner, folds, FOLD_SEED)[k]
        out[k] = inner.table["path"].iloc[test].tolist()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--run", type=Path, default=RUN)
    args = ap.parse_args(argv)
    manifest, folds = Manifest.from_csv(args.run / "manifest.csv"), load_folds(args.run)
    per_fold = choosing_items(manifest, len(folds))
    chosen = set().union(*per_fold.values())
    paths = manifest.table["path"].tolist()
    test_fold = {paths[r]: k for k, (_, test) in enumerate(folds) for r in test}
    counts = Counter(test_fold[p] for p in chosen)
    print(f"validation images: {' + '.join(str(len(v)) for v in per_fold.values())} ({len(chosen)} distinct); "
          "in test folds: " + ", ".join(f"{k}: {counts[k]}" for k in range(len(folds))))
    args.out.write_text("".join(f"{p}\n" for p in sorted(chosen)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
