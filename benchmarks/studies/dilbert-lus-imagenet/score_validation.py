"""The rule's decision (rule.txt): the mutual stage's `a` for DILBERT on lus-blues, from fold 0's validation runs.

    python benchmarks/studies/dilbert-lus-imagenet/score_validation.py [--val runs/bench45/dilbert-lus-val]
        [--logs runs/bench45/logs] [--decide]

Prints each candidate's state and score (the student's pooled validation macro F1) and the decision. With
`--decide` prints only the chosen `a` (exit 0), or exits 3 while a validation run is unfinished, 1 when one failed
for another reason than the collapse guard (its log names the cause).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

CANDIDATES = ("0.2", "1.0")   # the paper's a, packaged; and the candidate
PAPER, CANDIDATE = CANDIDATES
MIN_GAIN = 0.02               # rule.txt (ii)
PENDING, FAILED = 3, 1


@dataclass(frozen=True)
class Outcome:
    """One validation run: 'pending', 'collapsed', 'failed' or 'scored' (with the student's macro F1)."""

    state: str
    score: float | None = None


def outcome(val: Path, logs: Path, a: str) -> Outcome:
    """The state of the validation run of candidate `a`: its metrics, or its queue log and exit status."""
    metrics = val / f"a{a}" / "lus" / "metrics.json"
    if metrics.is_file():
        return Outcome("scored", float(json.loads(metrics.read_text())["variants"]["student"]["pooled"]["macro"]["f1"]))
    rc, log = logs / f"dlv-a{a}.rc", logs / f"dlv-a{a}.log"
    if not rc.is_file():
        return Outcome("pending")
    if int(rc.read_text().strip()) != 0 and "CollapseError" in log.read_text(errors="replace"):
        return Outcome("collapsed")
    return Outcome("failed")


def decide(paper: Outcome, candidate: Outcome) -> str:
    """rule.txt: a = 1.0 iff (i) only the paper's setting collapsed, or (ii) neither did and 1.0 gains >= 0.02."""
    if paper.state == "collapsed" and candidate.state == "scored":
        return CANDIDATE
    scored = paper.state == "scored" and candidate.state == "scored"
    if scored and candidate.score - paper.score >= MIN_GAIN - 1e-9:  # (0.42 - 0.40 is a hair under 0.02 in floats)
        return CANDIDATE
    return PAPER


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=Path, default=Path("runs/bench45/dilbert-lus-val"))
    ap.add_argument("--logs", type=Path, default=Path("runs/bench45/logs"))
    ap.add_argument("--decide", action="store_true")
    args = ap.parse_args(argv)
    runs = {a: outcome(args.val, args.logs, a) for a in CANDIDATES}
    if not args.decide:
        for a, o in runs.items():
            print(f"a = {a}: {o.state}" + (f", student validation macro F1 {o.score:.3f}" if o.score is not None else ""))
    if any(o.state == "pending" for o in runs.values()):
        return PENDING
    if any(o.state == "failed" for o in runs.values()):
        print("a validation run failed (not the collapse guard): see its log in " + str(args.logs), file=sys.stderr)
        return FAILED
    chosen = decide(runs[PAPER], runs[CANDIDATE])
    print(chosen if args.decide else f"decision: a = {chosen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
