"""The rule's numbers (rule.txt): HDC consistency 3's validation Dice, empty masks and unlabelled foreground share per
fold against session 26's runs of the packaged consistency 1, the pooled paired difference, and the decision.
Run from the repository root after validation.jobs has finished.

    python benchmarks/studies/busi-10pct-consistency/score_validation.py [--val runs/bench40] [--reference runs/bench38]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# one validation run's numbers and the pooled per-image difference, as session 26's study reads them (the same
# folders, metrics and log columns)
sys.path.insert(0, str(Path(__file__).parents[1]))
from study_script import load_study_script  # noqa: E402

_prior_weight_study = load_study_script("busi-10pct-prior-weight")
run_numbers = _prior_weight_study.run_numbers
validation_dice = _prior_weight_study.validation_dice
pooled_difference = _prior_weight_study.pooled_difference

FOLDS = range(5)
CANDIDATE, REFERENCE = "prior-w10-c3", "prior-w10"
MAX_DRIFT = 1.5  # (d): unlabelled / labelled foreground share at the last epoch, every fold


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=Path, default=Path("runs/bench40"), help="this study's validation runs")
    p.add_argument("--reference", type=Path, default=Path("runs/bench38"), help="session 26's runs (rule.txt)")
    args = p.parse_args(argv)
    cand = {k: run_numbers(args.val, k, CANDIDATE) for k in FOLDS}
    ref = {k: run_numbers(args.reference, k, REFERENCE) for k in FOLDS}
    missing = [f"{name} fold {k}" for name, runs in (("consistency 3", cand), ("reference", ref))
               for k, r in runs.items() if r is None]
    if missing:
        print("not finished:", ", ".join(missing))
        return 1

    def row(name: str, runs: dict[int, dict[str, float]]) -> str:
        shares = " / ".join(f"{r['share']:.1f} ({r['labelled']:.1f})" for r in runs.values())
        return (f"| {name} | " + " | ".join(f"{r['dice']:.2f}" for r in runs.values())
                + f" | **{np.mean([r['dice'] for r in runs.values()]):.2f}** | {sum(r['empty'] for r in runs.values())}"
                + f" | {shares} |")

    print("| busi validation, 10 %, flip TTA, seed 0 | " + " | ".join(f"fold {k}" for k in FOLDS)
          + " | score | empty masks | unlabelled fg share at the last epoch (labelled), % |")
    print("|---|" + ":---:|" * 8)
    print(row("consistency 1 (packaged; session 26)", ref))
    print(row("consistency 3", cand))
    gain = np.mean([cand[k]["dice"] for k in FOLDS]) - np.mean([ref[k]["dice"] for k in FOLDS])
    lower = sum(cand[k]["dice"] < ref[k]["dice"] for k in FOLDS)
    empty, ref_empty = sum(r["empty"] for r in cand.values()), sum(r["empty"] for r in ref.values())
    drift = max(r["share"] / r["labelled"] for r in cand.values())
    print(f"\nconsistency 3 - 1: {gain:+.2f} points, lower on {lower} fold(s), {empty} empty masks (reference "
          f"{ref_empty}), largest unlabelled / labelled share {drift:.2f}")
    print("consistency 3 - 1,", pooled_difference(validation_dice(args.val, CANDIDATE),
                                                   validation_dice(args.reference, REFERENCE)))
    checks = {"(a) score >= reference + 0.50": gain >= 0.50, "(b) lower on at most two folds": lower <= 2,
              f"(c) empty masks <= {ref_empty}": empty <= ref_empty,
              f"(d) unlabelled / labelled share <= {MAX_DRIFT} on every fold": drift <= MAX_DRIFT}
    for name, ok in checks.items():
        print(f"{name}: {'pass' if ok else 'FAIL'}")
    print("decision:", "adopt consistency 3 at busi 10 %" if all(checks.values()) else "the packaged consistency 1 stays")
    return 0


if __name__ == "__main__":
    sys.exit(main())
