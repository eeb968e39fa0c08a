"""The rule's numbers (rule.txt): A and B's validation accuracy and balanced accuracy per fold, the score, the three
conditions and the decision. Run from the repository root after validation.jobs has finished.

    python benchmarks/studies/pocus-augment/score_validation.py [--val runs/bench39/pocus-val]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FOLDS = range(5)
MIN_GAIN, MAX_ACCURACY_LOSS, MIN_FOLDS_ABOVE = 0.020, 0.010, 3  # rule.txt (a), (b), (c)


def fold_numbers(val: Path, fold: int, setting: str) -> dict[str, float] | None:
    """Accuracy, balanced accuracy and COVID sensitivity of one validation run (None while it has not finished)."""
    path = val / f"f{fold}" / f"pocus-val-{setting}" / "metrics.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())["summary"]
    return {key: summary[key]["mean"] for key in ("accuracy", "balanced_accuracy", "sensitivity/covid")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=Path, default=Path("runs/bench39/pocus-val"))
    args = p.parse_args(argv)
    runs = {s: {k: fold_numbers(args.val, k, s) for k in FOLDS} for s in ("A", "B")}
    missing = [f"{s} fold {k}" for s, by_fold in runs.items() for k, r in by_fold.items() if r is None]
    print("| validation | " + " | ".join(f"fold {k}" for k in FOLDS) + " | mean |")
    print("|---|" + ":---:|" * (len(FOLDS) + 1))
    for key in ("balanced_accuracy", "accuracy", "sensitivity/covid"):
        for s in ("A", "B"):
            cells = [f"{r[key]:.3f}" if r else "-" for r in runs[s].values()]
            done = [r[key] for r in runs[s].values() if r]
            mean = f"{sum(done) / len(done):.3f}" if done else "-"
            print(f"| {s} {key} | " + " | ".join(cells) + f" | {mean} |")
    if missing:
        print(f"not finished: {', '.join(missing)}: no decision")
        return 1
    mean = {s: {key: sum(r[key] for r in runs[s].values()) / len(FOLDS) for key in ("accuracy", "balanced_accuracy")}
            for s in runs}
    gain = mean["B"]["balanced_accuracy"] - mean["A"]["balanced_accuracy"]
    accuracy_change = mean["B"]["accuracy"] - mean["A"]["accuracy"]
    above = sum(runs["B"][k]["balanced_accuracy"] > runs["A"][k]["balanced_accuracy"] for k in FOLDS)
    conditions = {
        f"(a) score gain {gain:+.3f} >= {MIN_GAIN:+.3f}": gain >= MIN_GAIN,
        f"(b) accuracy change {accuracy_change:+.3f} >= {-MAX_ACCURACY_LOSS:+.3f}": accuracy_change >= -MAX_ACCURACY_LOSS,
        f"(c) B above A on {above} of 5 folds (>= {MIN_FOLDS_ABOVE})": above >= MIN_FOLDS_ABOVE,
    }
    for text, ok in conditions.items():
        print(f"{text}: {'yes' if ok else 'no'}")
    print("decision: " + ("B adopted: run test.jobs" if all(conditions.values()) else "A stays (B not adopted)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
