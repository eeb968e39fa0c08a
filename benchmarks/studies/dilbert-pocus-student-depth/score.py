"""rule.txt's decision and result: the student's fusion depth in DILBERT (2 or 4 layers at dim 64) chosen on the
pocus validation splits by the student's raw R@10 over random ranking in its weaker direction, with its findings
macro F1 as a guard (dilbert-pocus-cmm-weight's rule); then, if 4 is chosen, its test-fold R@10 against the target.

    python benchmarks/studies/dilbert-pocus-student-depth/score.py [--runs runs/bench52] [--decide-only]

`2 layers` is read from dilbert-pocus-cmm-weight's kept runs, `4 layers` from RUNS/dilbert-student4-{val,test}.
Exits 3 while a run the decision or the result needs is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_script import load_study_script  # noqa: E402

cmm_weight = load_study_script("dilbert-pocus-cmm-weight", "score.py")  # prefer
cmm_text = cmm_weight.cmm_text                                          # show, judge_test
retrieval = cmm_weight.retrieval                                        # fold_files
PENDING = cmm_weight.PENDING
EARLIER = Path(__file__).resolve().parents[1] / "dilbert-pocus-cmm-weight" / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench52"))
    ap.add_argument("--earlier", type=Path, default=EARLIER,
                    help="the runs of the 2-layer student (dilbert-cmm4-val / -test under it)")
    ap.add_argument("--decide-only", action="store_true", help="stop after the validation decision")
    args = ap.parse_args(argv)
    val = {2: retrieval.fold_files(args.earlier / "dilbert-cmm4-val"),
           4: retrieval.fold_files(args.runs / "dilbert-student4-val")}
    if any(v is None for v in val.values()):
        print("validation runs not all in: " + ", ".join(f"{k} layers" for k, v in val.items() if v is None),
              file=sys.stderr)
        return PENDING
    for layers, files in val.items():
        cmm_text.show(f"validation, student fusion {layers} layers (5 splits, mean R@10 / mean over random ranking):",
                      files)
    deeper, score, f1 = cmm_weight.prefer(val[2], val[4])
    choice = 4 if deeper else 2
    print(f"decision: {choice} layers (student, raw, weaker direction's mean gain: 2 {score[0]:+.3f}, "
          f"4 {score[1]:+.3f}; macro F1: 2 {f1[0]:.3f}, 4 {f1[1]:.3f})")
    if args.decide_only:
        return 0
    test = retrieval.fold_files(args.earlier / "dilbert-cmm4-test" if choice == 2
                                else args.runs / "dilbert-student4-test")
    return cmm_text.judge_test(test, f"student fusion {choice} layers", f"{choice} layers")


if __name__ == "__main__":
    sys.exit(main())
