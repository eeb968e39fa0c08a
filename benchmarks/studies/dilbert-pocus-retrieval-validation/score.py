"""rule.txt's decision and result: the DILBERT student's retrieval scoring (raw or query-bank normalised) chosen on
the pocus validation splits, then its test-fold R@10 against random ranking.

    python benchmarks/studies/dilbert-pocus-retrieval-validation/score.py [--runs runs/bench50] [--decide-only]

Prints the validation table and the decision; with every test fold in, the test table (student and teacher, both
scorings, the chosen one marked) and whether the target is met. Exits 3 while a run is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FOLDS = range(5)
DIRECTIONS = ("seq2text", "text2seq")
PENDING = 3


def recalls(fold_json: Path, variant: str) -> dict[str, tuple[float, float]]:
    """{key: (R@10, chance@10)} for the raw and bank keys of `variant` in one fold.json."""
    ret = json.loads(fold_json.read_text())["retrieval"][variant]
    return {k: (float(ret[k]["R@10"]), float(ret[k]["chance@10"]))
            for d in DIRECTIONS for k in (d, f"{d}_bank")}


def fold_files(root: Path) -> list[Path] | None:
    """The 5 fold.json files of a split family (root/fK/pocus/fold_K/fold.json), or None while one is missing."""
    files = [root / f"f{k}" / "pocus" / f"fold_{k}" / "fold.json" for k in FOLDS]
    return files if all(f.is_file() for f in files) else None


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def decide(val_files: list[Path]) -> tuple[str, float]:
    """rule.txt 1: bank iff the student's mean (bank - raw) R@10 over splits and both directions is > 0."""
    diffs = []
    for f in val_files:
        r = recalls(f, "student")
        diffs += [r[f"{d}_bank"][0] - r[d][0] for d in DIRECTIONS]
    d = mean(diffs)
    return ("bank" if d > 0 else "raw"), d


def table(files: list[Path], variant: str) -> dict[str, tuple[float, float]]:
    """Mean over folds of R@10 and of (R@10 - chance@10), per key."""
    rows = [recalls(f, variant) for f in files]
    return {k: (mean([r[k][0] for r in rows]), mean([r[k][0] - r[k][1] for r in rows])) for k in rows[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench50"))
    ap.add_argument("--decide-only", action="store_true", help="stop after the validation decision")
    args = ap.parse_args(argv)
    val = fold_files(args.runs / "dilbert-pocus-val")
    if val is None:
        print("validation runs not all in", file=sys.stderr)
        return PENDING
    print("validation (5 splits, mean R@10 / mean over random ranking):")
    for variant in ("student", "teacher"):
        for k, (r, g) in table(val, variant).items():
            print(f"  {variant:8s} {k:14s} {r:.3f}  {g:+.3f}")
    scoring, d = decide(val)
    print(f"decision: {scoring} (student, mean bank - raw R@10 = {d:+.3f})")
    if args.decide_only:
        return 0
    test = fold_files(args.runs / "dilbert-pocus-test")
    if test is None:
        print("test runs not all in", file=sys.stderr)
        return PENDING
    suffix = "_bank" if scoring == "bank" else ""
    print("test (5 folds, mean R@10 / mean over random ranking; * the chosen scoring):")
    for variant in ("student", "teacher"):
        for k, (r, g) in table(test, variant).items():
            mark = "*" if k.endswith("_bank") == (scoring == "bank") else " "
            print(f"  {variant:8s} {k:14s}{mark} {r:.3f}  {g:+.3f}")
    gains = {d: table(test, "student")[d + suffix][1] for d in DIRECTIONS}
    met = all(g >= 0.10 for g in gains.values())
    print(f"target (student, {scoring}): " + ", ".join(f"{d} {g:+.3f}" for d, g in gains.items())
          + (" -> met" if met else " -> not met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
