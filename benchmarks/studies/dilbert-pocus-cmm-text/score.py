"""rule.txt's decision and result: the text the DILBERT student's CMM pairs read (the MLM-masked ids or the original
report) chosen on the pocus validation splits by its raw R@10 over random ranking in its weaker direction, then the
chosen setting's test-fold R@10 against the target.

    python benchmarks/studies/dilbert-pocus-cmm-text/score.py [--runs runs/bench51] [--decide-only]

`masked` is read from dilbert-pocus-retrieval-validation's kept runs (session 40), `original` from
RUNS/dilbert-cmm-original-{val,test}. Prints the validation table and the decision; then the chosen setting's test
table and whether the target is met. Exits 3 while a run the decision or the result needs is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_script import load_study_script  # noqa: E402

MASKED = Path(__file__).resolve().parents[1] / "dilbert-pocus-retrieval-validation"
retrieval = load_study_script(MASKED.name, "score.py")  # its fold.json readers: fold_files, table

DIRECTIONS = retrieval.DIRECTIONS
PENDING = retrieval.PENDING
TARGET = 0.10


def gains(files: list[Path], variant: str = "student") -> dict[str, float]:
    """Mean over folds of raw (R@10 - chance@10) per direction."""
    t = retrieval.table(files, variant)
    return {d: t[d][1] for d in DIRECTIONS}


def decide(masked: list[Path], original: list[Path]) -> tuple[str, dict[str, float]]:
    """rule.txt 1: original iff min over directions of its mean raw gain is above masked's."""
    score = {"masked": min(gains(masked).values()), "original": min(gains(original).values())}
    return ("original" if score["original"] > score["masked"] else "masked"), score


def show(title: str, files: list[Path]) -> None:
    print(title)
    for variant in ("student", "teacher"):
        for k, (r, g) in retrieval.table(files, variant).items():
            print(f"  {variant:8s} {k:14s} {r:.3f}  {g:+.3f}")


def judge_test(files: list[Path] | None, setting: str, name: str) -> int:
    """rule.txt 2 for the chosen setting's test folds: its table and whether the student's raw gain reaches TARGET in
    both directions (`setting` titles the table, `name` the target line); PENDING while a fold is missing."""
    if files is None:
        print(f"test runs of {setting} not all in", file=sys.stderr)
        return PENDING
    show(f"test, {setting} (5 folds, mean R@10 / mean over random ranking):", files)
    g = gains(files)
    met = all(v >= TARGET for v in g.values())
    print(f"target (student, {name}, raw): " + ", ".join(f"{d} {v:+.3f}" for d, v in g.items())
          + (" -> met" if met else " -> not met"))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench51"))
    ap.add_argument("--masked", type=Path, default=MASKED / "results",
                    help="the runs of cmm_text: masked (dilbert-pocus-val / dilbert-pocus-test under it)")
    ap.add_argument("--decide-only", action="store_true", help="stop after the validation decision")
    args = ap.parse_args(argv)
    val = {"masked": retrieval.fold_files(args.masked / "dilbert-pocus-val"),
           "original": retrieval.fold_files(args.runs / "dilbert-cmm-original-val")}
    if any(v is None for v in val.values()):
        print("validation runs not all in: " + ", ".join(k for k, v in val.items() if v is None), file=sys.stderr)
        return PENDING
    for name, files in val.items():
        show(f"validation, cmm_text {name} (5 splits, mean R@10 / mean over random ranking):", files)
    choice, score = decide(val["masked"], val["original"])
    print(f"decision: {choice} (student, raw, weaker direction's mean gain: masked {score['masked']:+.3f}, "
          f"original {score['original']:+.3f})")
    if args.decide_only:
        return 0
    test = retrieval.fold_files(args.masked / "dilbert-pocus-test" if choice == "masked"
                                else args.runs / "dilbert-cmm-original-test")
    return judge_test(test, f"cmm_text {choice}", choice)


if __name__ == "__main__":
    sys.exit(main())
