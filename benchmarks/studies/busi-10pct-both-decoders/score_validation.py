"""The rule's numbers (rule.txt): HDC scored with both decoders against D1 only, on the validation splits of five
folds (the same trained runs), the pooled paired difference, and the decision. Run from the repository root after
validation.jobs has finished and each run was rescored:

    for k in 0 1 2 3 4; do python benchmarks/seg_rescore.py runs/bench42/busi-val-f$k/busi-val-hdc-prior-w10-10pct \
        --out runs/bench42/both/busi-val-f$k --threads 1 --set recipe_options.inference_decoders=both; done
    python benchmarks/studies/busi-10pct-both-decoders/score_validation.py [--val runs/bench42]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# one validation run's numbers and the pooled per-image difference, as session 26's study reads them
sys.path.insert(0, str(Path(__file__).parents[1]))
from study_script import load_study_script  # noqa: E402

session26 = load_study_script("busi-10pct-prior-weight")

FOLDS = range(5)
TAG = "prior-w10"  # the packaged HDC's runs (validation.jobs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=Path, default=Path("runs/bench42"), help="this study's validation runs")
    args = p.parse_args(argv)
    both_root = args.val / "both"
    d1 = {k: session26.run_numbers(args.val, k, TAG) for k in FOLDS}
    both = {k: session26.run_numbers(both_root, k, TAG) for k in FOLDS}
    missing = [f"{name} fold {k}" for name, runs in (("D1 (trained)", d1), ("both (rescored)", both))
               for k, r in runs.items() if r is None]
    if missing:
        print("not finished:", ", ".join(missing))
        return 1

    def row(name: str, runs: dict[int, dict[str, float]]) -> str:
        score, empty = np.mean([r["dice"] for r in runs.values()]), sum(r["empty"] for r in runs.values())
        cells = " | ".join(f"{r['dice']:.2f}" for r in runs.values())
        return f"| {name} | {cells} | **{score:.2f}** | {empty} |"

    print("| busi validation, 10 %, flip TTA, seed 0 | " + " | ".join(f"fold {k}" for k in FOLDS)
          + " | score | empty masks |")
    print("|---|" + ":---:|" * 7)
    print(row("D1 (packaged)", d1))
    print(row("D1 + D2 averaged (`inference_decoders: both`)", both))
    shares = " / ".join(f"{r['share']:.1f} ({r['labelled']:.1f})" for r in d1.values() if "share" in r)
    print(f"\nunlabelled foreground share at the last epoch (labelled), %, folds 0-4: {shares}")
    gain = np.mean([both[k]["dice"] for k in FOLDS]) - np.mean([d1[k]["dice"] for k in FOLDS])
    lower = sum(both[k]["dice"] < d1[k]["dice"] for k in FOLDS)
    empty, d1_empty = sum(r["empty"] for r in both.values()), sum(r["empty"] for r in d1.values())
    print(f"both - D1: {gain:+.2f} points, lower on {lower} fold(s), {empty} empty masks (D1 {d1_empty})")
    print("both - D1,", session26.pooled_difference(session26.validation_dice(both_root, TAG),
                                                   session26.validation_dice(args.val, TAG)))
    checks = {"(a) score >= D1 + 0.50": gain >= 0.50, "(b) lower on at most two folds": lower <= 2,
              f"(c) empty masks <= {d1_empty}": empty <= d1_empty}
    for name, ok in checks.items():
        print(f"{name}: {'pass' if ok else 'FAIL'}")
    print("decision:", "adopt inference_decoders: both for HDC at busi 10 %" if all(checks.values())
          else "D1 stays (inference_decoders: d1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
