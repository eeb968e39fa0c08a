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
from collections.abc import Callable
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


def choose_and_judge(val: dict[int, list[Path] | None], test: dict[int, Path], name: Callable[[int], str],
                     title: Callable[[int], str], decide_only: bool = False) -> int:
    """rule.txt 1 and 2 for two settings, the current one first: the validation tables, the decision (prefer), then
    the chosen setting's test folds (test[setting] holds f0..f4) against the target. `name` and `title` label a
    setting in the decision and table lines; PENDING while a run the decision or the result needs is missing."""
    if any(v is None for v in val.values()):
        print("validation runs not all in: " + ", ".join(name(k) for k, v in val.items() if v is None), file=sys.stderr)
        return PENDING
    for k, files in val.items():
        cmm_text.show(f"validation, {title(k)} (5 splits, mean R@10 / mean over random ranking):", files)
    current, candidate = val
    wins, score, f1 = prefer(val[current], val[candidate])
    choice = candidate if wins else current
    print(f"decision: {name(choice)} (student, raw, weaker direction's mean gain: {current} {score[0]:+.3f}, "
          f"{candidate} {score[1]:+.3f}; macro F1: {current} {f1[0]:.3f}, {candidate} {f1[1]:.3f})")
    if decide_only:
        return 0
    return cmm_text.judge_test(retrieval.fold_files(test[choice]), title(choice), name(choice))


def two_setting_main(argv: list[str] | None, doc: str, runs: Path, earlier: Path, current: tuple[int, str],
                     candidate: tuple[int, str], name: Callable[[int], str], title: Callable[[int], str]) -> int:
    """A two-setting retrieval study's command line (--runs, --earlier, --decide-only) and choose_and_judge: the
    current setting's runs are EARLIER/<prefix>-{val,test}, the candidate's RUNS/<prefix>-{val,test}; a setting is
    (its key, its run-folder prefix)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=runs, help="the candidate's runs")
    ap.add_argument("--earlier", type=Path, default=earlier,
                    help=f"the runs of {title(current[0])} ({current[1]}-val / -test under it)")
    ap.add_argument("--decide-only", action="store_true", help="stop after the validation decision")
    args = ap.parse_args(argv)
    roots = {current[0]: (args.earlier, current[1]), candidate[0]: (args.runs, candidate[1])}
    val = {k: retrieval.fold_files(root / f"{prefix}-val") for k, (root, prefix) in roots.items()}
    test = {k: root / f"{prefix}-test" for k, (root, prefix) in roots.items()}
    return choose_and_judge(val, test, name, title, args.decide_only)


def main(argv: list[str] | None = None) -> int:
    return two_setting_main(argv, __doc__, Path("runs/bench51"), EARLIER, (1, "dilbert-cmm-original"),
                            (4, "dilbert-cmm4"), lambda k: f"cmm {k}", lambda k: f"cmm weight {k}")


if __name__ == "__main__":
    sys.exit(main())
