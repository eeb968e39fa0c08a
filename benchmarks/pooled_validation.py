"""Choose settings on validation splits: pool the validation predictions of several single-fold runs per setting.

Each setting was trained with `--set train.on_validation=true --set train.fold=K` for a few folds K (one run
directory per fold, `NAME-fK`); this script pools their predictions.csv per setting (optionally with classes
merged, e.g. lus-blues severity 0 / 1-2 / 3) and prints accuracy, balanced accuracy, macro F1 and macro ROC-AUC
per setting, computed on the pooled validation items. Test folds are never read by such runs.

    python benchmarks/pooled_validation.py runs/bench19/val --settings sup dd dd23 ddlight --folds 0 1 \
        --merge 0=0 --merge 1-2=1,2 --merge 3=3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("accuracy", "balanced_accuracy", "f1", "roc_auc")


def pooled_metrics(runs: list[Path], merge: dict[str, list[str]] | None) -> dict[str, float]:
    """Metrics of the pooled predictions.csv of `runs` (classes merged first when `merge` is given)."""
    from sonodistill.data.manifest import Manifest
    from sonodistill.evaluation.metrics import classification_metrics
    from sonodistill.evaluation.run_dir import merge_classes

    frames, classes = [], None
    for run in runs:
        if not (run / "predictions.csv").is_file():
            raise SystemExit(f"{run}: predictions.csv is missing (unfinished run?)")
        run_classes = list(Manifest.from_csv(run / "manifest.csv").classes)
        if classes is not None and run_classes != classes:
            raise SystemExit(f"{run}: classes {run_classes} differ from {classes}")
        classes = run_classes
        frames.append(pd.read_csv(run / "predictions.csv"))
    pred = pd.concat(frames, ignore_index=True)
    if merge:
        pred, classes = merge_classes(pred, classes, merge)
    probs = pred[[f"prob_{c}" for c in classes]].to_numpy(np.float64)
    m = classification_metrics(pred["y_true"].to_numpy(np.int64), probs, classes)
    return {"n": len(pred), **{k: float(m[k]) for k in COLUMNS}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path, help="folder holding NAME-fK run directories")
    p.add_argument("--settings", nargs="+", required=True)
    p.add_argument("--folds", nargs="+", type=int, required=True)
    p.add_argument("--merge", action="append", default=[], help="NEW=OLD1,OLD2 (repeated)")
    args = p.parse_args(argv)
    from sonodistill.evaluation.run_dir import parse_merge  # what `eval` / `compare --merge` use

    merge = parse_merge(args.merge) or None
    lines = ["| setting | validation items | " + " | ".join(COLUMNS) + " |", "|---|---:|" + "---:|" * len(COLUMNS)]
    for name in args.settings:
        m = pooled_metrics([args.root / f"{name}-f{k}" for k in args.folds], merge)
        lines.append(f"| {name} | {m['n']} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
