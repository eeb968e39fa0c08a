"""rule.txt's decision and result: the CMM weight of DILBERT's pretraining (1 or 4) chosen on the pocus validation
splits by the student's raw R@10 over random ranking in its weaker direction, with its findings macro F1 as a guard;
then, if 4 is chosen, its test-fold R@10 against the target.

    python benchmarks/studies/dilbert-pocus-cmm-weight/score.py [--runs runs/bench51] [--decide-only]

`cmm 1` is read from dilbert-pocus-cmm-text's kept `original` runs, `cmm 4` from RUNS/dilbert-cmm4-{val,test}.
Exits 3 while a run the decision or the result needs is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_script import load_study_script  # noqa: E402

cmm_text = load_study_script("dilbert-pocus-cmm-text", "score.py")  # gains, show, judge_test
retrieval = cmm_text.retrieval                                       # fold_files
PENDING = cmm_text.PENDING
EARLIER = Path(__file__).resolve().parents[1] / "dilbert-pocus-cmm-text" / "results"
F1_GUARD = 0.02


def macro_f1(files: list[Path]) -> float:
    """Mean over the splits of the student's pooled macro F1 (each fold.json's run: ../metrics.json)."""
    values = [json.loads((f.parents[1] / "metrics.json").read_text())["variants"]["student"]["pooled"]["macro"]["f1"]
              for f in files]
    return sum(values) / len(values)


def prefer(current: list[Path], candidate: list[Path]) -> tuple[bool, tuple[float, float], tuple[float, float]]:
    """Whether the candidate's runs beat the current ones: the student's raw weaker direction's mean gain above, and
    its macro F1 at most F1_GUARD lower; with both (current, candidate) scores and macro F1s."""
    score = (min(cmm_text.gains(current).values()), min(cmm_text.gains(candidate).values()))
    f1 = (macro_f1(current), macro_f1(candidate))
    return score[1] > score[0] and f1[1] >= f1[0] - F1_GUARD, score, f1


def decide(one: list[Path], four: list[Path]) -> tuple[int, dict[int, float], dict[int, float]]:
    """rule.txt 1: 4 iff its weaker direction's gain is above 1's and its macro F1 at most F1_GUARD lower."""
    four_wins, score, f1 = prefer(one, four)
    return (4 if four_wins else 1), dict(zip((1, 4), score)), dict(zip((1, 4), f1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench51"))
    ap.add_argument("--earlier", type=Path, default=EARLIER,
                    help="the runs of cmm weight 1 (dilbert-cmm-original-val / -test under it)")
    ap.add_argument("--decide-only", action="store_true", help="stop after the validation decision")
    args = ap.parse_args(argv)
    val = {1: retrieval.fold_files(args.earlier / "dilbert-cmm-original-val"),
           4: retrieval.fold_files(args.runs / "dilbert-cmm4-val")}
    if any(v is None for v in val.values()):
        print("validation runs not all in: cmm " + ", ".join(str(k) for k, v in val.items() if v is None),
              file=sys.stderr)
        return PENDING
    for w, files in val.items():
        cmm_text.show(f"validation, cmm weight {w} (5 splits, mean R@10 / mean over random ranking):", files)
    choice, score, f1 = decide(val[1], val[4])
    print(f"decision: cmm {choice} (student, raw, weaker direction's mean gain: 1 {score[1]:+.3f}, 4 {score[4]:+.3f}; "
          f"macro F1: 1 {f1[1]:.3f}, 4 {f1[4]:.3f})")
    if args.decide_only:
        return 0
    test = retrieval.fold_files(args.earlier / "dilbert-cmm-original-test" if choice == 1
                                else args.runs / "dilbert-cmm4-test")
    return cmm_text.judge_test(test, f"cmm weight {choice}", f"cmm {choice}")


if __name__ == "__main__":
    sys.exit(main())
