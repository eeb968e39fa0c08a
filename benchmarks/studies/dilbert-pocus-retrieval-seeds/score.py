"""rule.txt's result: the DILBERT student's raw test-fold R@10 over random ranking at training seeds 0, 1 and 2
(dilbert-imagenet as chosen by dilbert-pocus-pretrain-epochs), per seed and in the mean over seeds, against the
target (>= 0.10 in both directions).

    python benchmarks/studies/dilbert-pocus-retrieval-seeds/score.py [--runs runs/bench53]

Seed 0 is read from dilbert-pocus-pretrain-epochs' kept runs, seeds 1-2 from RUNS/dilbert-pre20-seed{1,2}.
Exits 3 while a run the result needs is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_script import load_study_script  # noqa: E402

cmm_text = load_study_script("dilbert-pocus-cmm-text", "score.py")  # gains, TARGET, DIRECTIONS, retrieval
PENDING = cmm_text.PENDING
SEED0 = Path(__file__).resolve().parents[1] / "dilbert-pocus-pretrain-epochs" / "results" / "dilbert-pre20-test"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench53"), help="the runs of seeds 1 and 2")
    ap.add_argument("--seed0", type=Path, default=SEED0, help="the seed-0 test runs (f0..f4 under it)")
    args = ap.parse_args(argv)
    roots = {0: args.seed0, 1: args.runs / "dilbert-pre20-seed1", 2: args.runs / "dilbert-pre20-seed2"}
    files = {s: cmm_text.retrieval.fold_files(root) for s, root in roots.items()}
    missing = [s for s, f in files.items() if f is None]
    if missing:
        print("test runs not all in: seed " + ", ".join(map(str, missing)), file=sys.stderr)
        return PENDING
    per_seed = {s: cmm_text.gains(f) for s, f in files.items()}
    for s, g in per_seed.items():
        both = all(v >= cmm_text.TARGET for v in g.values())
        print(f"seed {s} (student, raw, 5 test folds): " + ", ".join(f"{d} {v:+.3f}" for d, v in g.items())
              + (" (both >= target)" if both else ""))
    mean = {d: sum(g[d] for g in per_seed.values()) / len(per_seed) for d in cmm_text.DIRECTIONS}
    seeds_met = sum(all(v >= cmm_text.TARGET for v in g.values()) for g in per_seed.values())
    met = all(v >= cmm_text.TARGET for v in mean.values())
    print("target (student, mean over seeds 0-2, raw): " + ", ".join(f"{d} {v:+.3f}" for d, v in mean.items())
          + f"; {seeds_met} of 3 seeds reach it in both directions -> " + ("met" if met else "not met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
