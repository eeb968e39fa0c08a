"""The rule's numbers (rule.txt): A and B's validation accuracy and balanced accuracy per fold, the score, the three
conditions and the decision. Run from the repository root after validation.jobs has finished.

    python benchmarks/studies/pocus-augment/score_validation.py [--val runs/bench39/pocus-val] [--candidate B]

`fold_numbers`, `print_table` and `conditions` are shared with later pocus studies (pocus-lite2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FOLDS = range(5)
MIN_GAIN, MAX_ACCURACY_LOSS, MIN_FOLDS_ABOVE = 0.020, 0.010, 3  # rule.txt (a), (b), (c)
KEYS = ("balanced_accuracy", "accuracy", "sensitivity/covid")
Runs = dict[int, "dict[str, float] | None"]


def fold_numbers(run: Path) -> dict[str, float] | None:
    """Accuracy, balanced accuracy and COVID sensitivity of one validation run (None while it has not finished)."""
    path = run / "metrics.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())["summary"]
    return {key: summary[key]["mean"] for key in KEYS}


def missing_runs(runs: dict[str, Runs]) -> list[str]:
    """'SETTING fold K' for every run that has not finished."""
    return [f"{s} fold {k}" for s, by_fold in runs.items() for k, r in by_fold.items() if r is None]


def print_table(runs: dict[str, Runs]) -> None:
    """Per fold and mean, each measure of KEYS for every setting (a dash for an unfinished run)."""
    print("| validation | " + " | ".join(f"fold {k}" for k in FOLDS) + " | mean |")
    print("|---|" + ":---:|" * (len(FOLDS) + 1))
    for key in KEYS:
        for s, by_fold in runs.items():
            cells = [f"{r[key]:.3f}" if r else "-" for r in by_fold.values()]
            done = [r[key] for r in by_fold.values() if r]
            mean = f"{sum(done) / len(done):.3f}" if done else "-"
            print(f"| {s} {key} | " + " | ".join(cells) + f" | {mean} |")


def conditions(reference: Runs, candidate: Runs, name: str = "B",
               ref_name: str = "A") -> tuple[dict[str, bool], float]:
    """The rule's conditions (a)-(c) for `candidate` against `reference` (finished runs of every fold), and the
    candidate's score gain (mean validation balanced accuracy minus the reference's)."""
    def mean(runs: Runs, key: str) -> float:
        return sum(r[key] for r in runs.values()) / len(FOLDS)

    gain = mean(candidate, "balanced_accuracy") - mean(reference, "balanced_accuracy")
    accuracy_change = mean(candidate, "accuracy") - mean(reference, "accuracy")
    above = sum(candidate[k]["balanced_accuracy"] > reference[k]["balanced_accuracy"] for k in FOLDS)
    return {
        f"(a) score gain {gain:+.3f} >= {MIN_GAIN:+.3f}": gain >= MIN_GAIN,
        f"(b) accuracy change {accuracy_change:+.3f} >= {-MAX_ACCURACY_LOSS:+.3f}":
            accuracy_change >= -MAX_ACCURACY_LOSS,
        f"(c) {name} above {ref_name} on {above} of 5 folds (>= {MIN_FOLDS_ABOVE})": above >= MIN_FOLDS_ABOVE,
    }, gain


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=Path, default=Path("runs/bench39/pocus-val"))
    p.add_argument("--candidate", default="B", help="the candidate's run name (pocus-val-NAME); A: the packaged")
    args = p.parse_args(argv)
    c = args.candidate
    runs = {s: {k: fold_numbers(args.val / f"f{k}" / f"pocus-val-{s}") for k in FOLDS} for s in ("A", c)}
    print_table(runs)
    missing = missing_runs(runs)
    if missing:
        print(f"not finished: {', '.join(missing)}: no decision")
        return 1
    checks, _ = conditions(runs["A"], runs[c], name=c)
    for text, ok in checks.items():
        print(f"{text}: {'yes' if ok else 'no'}")
    print("decision: " + (f"{c} adopted: run test.jobs" if all(checks.values()) else f"A stays ({c} not adopted)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
