"""rule.txt's decision and result: DILBERT's pretraining length (10 or 20 epochs: the teacher's pretraining and the
student's distillation stage) chosen on the pocus validation splits by the student's raw R@10 over random ranking in
its weaker direction, with its findings macro F1 as a guard (dilbert-pocus-cmm-weight's rule); then, if 20 is
chosen, its test-fold R@10 against the target.

    python benchmarks/studies/dilbert-pocus-pretrain-epochs/score.py [--runs runs/bench52] [--decide-only]

`10 epochs` is read from dilbert-pocus-cmm-weight's kept runs, `20 epochs` from RUNS/dilbert-pre20-{val,test}.
Exits 3 while a run the decision or the result needs is missing.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from study_script import load_study_script  # noqa: E402

cmm_weight = load_study_script("dilbert-pocus-cmm-weight", "score.py")  # two_setting_main
PENDING = cmm_weight.PENDING
EARLIER = Path(__file__).resolve().parents[1] / "dilbert-pocus-cmm-weight" / "results"


def main(argv: list[str] | None = None) -> int:
    return cmm_weight.two_setting_main(argv, __doc__, Path("runs/bench52"), EARLIER, (10, "dilbert-cmm4"),
                                       (20, "dilbert-pre20"), lambda k: f"{k} epochs",
                                       lambda k: f"{k} pretraining epochs")


if __name__ == "__main__":
    sys.exit(main())
