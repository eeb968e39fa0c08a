"""How many test images of each main fold were scored in the validation splits that chose c3-prior (folds 0 and 1).

    python benchmarks/studies/hc18-5pct-prior/validation_overlap.py [LIST]   # LIST: write their paths, one a line

The choice saw those images' validation scores (as items of the training rows of folds 0 / 1), so on the grid's
folds 2-4 they are not fully unseen by the decision. Reads runs only; prints a count a test fold, and writes the
images' paths to LIST for `sonodistill compare --exclude-items LIST`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

MAIN = Path("runs/bench36/test5-fold1/hc18-hdc-5pct/seed_0")  # any run of the grid's split (fold seed 0)
VALIDATION = [Path("runs/bench35/val5/hc18-val-hdc-c3-prior-5pct/seed_0"),        # fold 0's validation split
              Path("runs/bench35/val5/hc18-val-hdc-f1-c3-prior-5pct/seed_0")]     # fold 1's


def main() -> int:
    paths = pd.read_csv(MAIN / "manifest.csv", comment="#")["path"].tolist()
    test_fold = {paths[r]: d["fold"] for d in json.loads((MAIN / "folds.json").read_text()) for r in d["test"]}
    scored = [set(pd.read_csv(v / "predictions.csv")["path"]) for v in VALIDATION]
    union = set().union(*scored)
    counts, sizes = Counter(test_fold[p] for p in union), Counter(test_fold.values())
    print(f"validation images: {' + '.join(str(len(s)) for s in scored)} ({len(union)} distinct)")
    for k in sorted(sizes):
        print(f"test fold {k}: {counts[k]} of {sizes[k]} test images were in a validation split")
    later = [k for k in sizes if k >= 2]
    print(f"folds 2-4: {sum(counts[k] for k in later)} of {sum(sizes[k] for k in later)}")
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text("".join(f"{p}\n" for p in sorted(union)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
