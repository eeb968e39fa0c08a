"""The rule's numbers (rule.txt): A (session 27's runs), B (EfficientNet-Lite2) and C (3 epochs) on the validation
splits of the five folds, each candidate's conditions, and the decision. Run from the repository root after
validation.jobs has finished.

    python benchmarks/studies/pocus-lite2/score_validation.py [--val runs/bench41/pocus-val] \
        [--reference runs/bench39/pocus-val]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# one run's numbers, the table and the conditions (a)-(c), as session 27's pocus study reads and judges them
sys.path.insert(0, str(Path(__file__).parents[1]))
from study_script import load_study_script  # noqa: E402

_augment_study = load_study_script("pocus-augment")
FOLDS, fold_numbers = _augment_study.FOLDS, _augment_study.fold_numbers

CANDIDATES = {"B": "EfficientNet-Lite2", "C": "3 epochs"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=Path, default=Path("runs/bench41/pocus-val"), help="this study's runs (B, C)")
    p.add_argument("--reference", type=Path, default=Path("runs/bench39/pocus-val"), help="session 27's A runs")
    args = p.parse_args(argv)
    runs = {"A": {k: fold_numbers(args.reference / f"f{k}" / "pocus-val-A") for k in FOLDS}}
    runs |= {s: {k: fold_numbers(args.val / f"f{k}" / f"pocus-val-{s}") for k in FOLDS} for s in CANDIDATES}
    _augment_study.print_table(runs)
    missing = _augment_study.missing_runs(runs)
    if missing:
        print(f"not finished: {', '.join(missing)}: no decision")
        return 1
    passing = {}
    for s, what in CANDIDATES.items():
        checks, gain = _augment_study.conditions(runs["A"], runs[s], name=s)
        print(f"{s} ({what}):")
        for text, ok in checks.items():
            print(f"  {text}: {'yes' if ok else 'no'}")
        if all(checks.values()):
            passing[s] = gain
    if not passing:
        print("decision: A stays (neither B nor C adopted)")
    else:
        best = max(passing, key=lambda s: (passing[s], s == "B"))  # the higher score; B on a tie (rule.txt)
        print(f"decision: {best} ({CANDIDATES[best]}) adopted: run its lines of test.jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
