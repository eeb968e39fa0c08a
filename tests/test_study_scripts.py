"""The studies' decision scripts (benchmarks/studies/*/score_validation.py) apply their written rules."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

STUDIES = Path(__file__).resolve().parents[1] / "benchmarks" / "studies"


@contextmanager
def study_script(study: str, script: str = "score_validation.py") -> Iterator[ModuleType]:
    """A study's script, loaded as later studies load it (`benchmarks/studies/study_script.py`)."""
    sys.path.insert(0, str(STUDIES))
    try:
        from study_script import load_study_script
        yield load_study_script(study, script)
    finally:
        sys.path.remove(str(STUDIES))


@pytest.fixture()
def dilbert_lus():
    """dilbert-lus-imagenet's score_validation.py (it defines a dataclass)."""
    with study_script("dilbert-lus-imagenet") as script:
        yield script


def _scored(val: Path, a: str, f1: float) -> None:
    run = val / f"a{a}" / "lus"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"variants": {"student": {"pooled": {"macro": {"f1": f1}}}}}))


def _ended(logs: Path, a: str, rc: int, text: str) -> None:
    logs.mkdir(exist_ok=True)
    (logs / f"dlv-a{a}.rc").write_text(f"{rc}\n")
    (logs / f"dlv-a{a}.log").write_text(text)


def test_dilbert_lus_rule_adopts_a1_only_on_a_gain_of_two_points_or_a_collapse_of_the_paper_setting(dilbert_lus):
    O = dilbert_lus.Outcome
    assert dilbert_lus.decide(O("scored", 0.40), O("scored", 0.42)) == "1.0"   # exactly +0.02 (floats)
    assert dilbert_lus.decide(O("scored", 0.40), O("scored", 0.419)) == "0.2"
    assert dilbert_lus.decide(O("collapsed"), O("scored", 0.30)) == "1.0"
    assert dilbert_lus.decide(O("scored", 0.30), O("collapsed")) == "0.2"
    assert dilbert_lus.decide(O("collapsed"), O("collapsed")) == "0.2"


def test_dilbert_lus_decide_waits_for_pending_runs_and_stops_on_a_crash(dilbert_lus, tmp_path, capsys):
    val, logs = tmp_path / "val", tmp_path / "logs"
    args = ["--val", str(val), "--logs", str(logs), "--decide"]
    _scored(val, "0.2", 0.339)
    assert dilbert_lus.main(args) == dilbert_lus.PENDING                     # a = 1.0 still running
    _ended(logs, "1.0", 1, "Traceback ...\nCollapseError: dilbert fold 0, variant 'student': training collapsed")
    capsys.readouterr()
    assert dilbert_lus.main(args) == 0 and capsys.readouterr().out.strip() == "0.2"  # the candidate collapsed
    _ended(logs, "1.0", 1, "Traceback ...\nRuntimeError: out of memory")
    assert dilbert_lus.main(args) == dilbert_lus.FAILED                      # not the guard: no decision
    _scored(val, "1.0", 0.395)
    assert dilbert_lus.main(args) == 0 and capsys.readouterr().out.strip().endswith("1.0")


@pytest.fixture()
def retrieval_study():
    """dilbert-pocus-retrieval-validation's score.py."""
    with study_script("dilbert-pocus-retrieval-validation", "score.py") as script:
        yield script


def _fold(root: Path, k: int, recalls: dict[str, float], chance: float = 0.4) -> None:
    """root/fK/pocus/fold_K/fold.json with R@10 per key (both variants alike) and one chance level."""
    record = {key: {"R@10": r, "chance@10": chance} for key, r in recalls.items()}
    path = root / f"f{k}" / "pocus" / f"fold_{k}" / "fold.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"retrieval": {"student": record, "teacher": record}}))


def test_retrieval_rule_takes_the_bank_only_when_it_gains_on_validation_and_judges_the_test_folds(
        retrieval_study, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["--runs", str(runs)]
    raw = {"seq2text": 0.6, "text2seq": 0.5}
    for k in range(4):
        _fold(runs / "dilbert-pocus-val", k, {**raw, "seq2text_bank": 0.6, "text2seq_bank": 0.5})
    assert retrieval_study.main(args) == retrieval_study.PENDING                # one validation split missing
    _fold(runs / "dilbert-pocus-val", 4, {**raw, "seq2text_bank": 0.6, "text2seq_bank": 0.5})
    assert retrieval_study.main([*args, "--decide-only"]) == 0
    assert "decision: raw" in capsys.readouterr().out                          # a tie keeps the paper's raw scores
    _fold(runs / "dilbert-pocus-val", 4, {**raw, "seq2text_bank": 0.6, "text2seq_bank": 0.56})  # bank gains
    assert retrieval_study.main(args) == retrieval_study.PENDING                # decided; test folds missing
    assert "decision: bank (student, mean bank - raw R@10 = +0.006)" in capsys.readouterr().out
    for k in range(5):  # bank: +0.2 over chance sequence -> text, +0.09 text -> sequence (raw would pass both)
        _fold(runs / "dilbert-pocus-test", k, {"seq2text": 0.7, "text2seq": 0.6, "seq2text_bank": 0.6,
                                               "text2seq_bank": 0.49})
    assert retrieval_study.main(args) == 0
    out = capsys.readouterr().out
    assert "target (student, bank): seq2text +0.200, text2seq +0.090 -> not met" in out


def _raw(root: Path, k: int, seq2text: float, text2seq: float) -> None:
    """A fold.json with these raw R@10 (chance 0.4) and bank-normalised ones that would reverse every decision."""
    _fold(root, k, {"seq2text": seq2text, "text2seq": text2seq, "seq2text_bank": 1.0 - seq2text,
                    "text2seq_bank": 1.0 - text2seq})


def test_cmm_text_rule_takes_original_only_when_its_weaker_direction_gains_and_judges_its_test_folds(tmp_path, capsys):
    """dilbert-pocus-cmm-text's score.py: masked from the earlier study's runs, original from --runs."""
    masked, runs = tmp_path / "masked", tmp_path / "runs"
    args = ["--runs", str(runs), "--masked", str(masked)]
    with study_script("dilbert-pocus-cmm-text", "score.py") as cmm_study:
        for k in range(5):  # masked: +0.3 over chance sequence -> text, -0.05 text -> sequence
            _raw(masked / "dilbert-pocus-val", k, 0.7, 0.35)
            _raw(masked / "dilbert-pocus-test", k, 0.7, 0.35)
            if k < 4:  # original: +0.1 and 0.0 (a lower mean over directions, a higher minimum)
                _raw(runs / "dilbert-cmm-original-val", k, 0.5, 0.4)
        assert cmm_study.main(args) == cmm_study.PENDING                          # one split of original missing
        _raw(runs / "dilbert-cmm-original-val", 4, 0.5, 0.3)
        assert cmm_study.main([*args, "--decide-only"]) == 0                      # its minimum -0.02 > -0.05
        assert "decision: original (student, raw, weaker direction's mean gain: masked -0.050, original -0.020)" in (
            capsys.readouterr().out)
        assert cmm_study.main(args) == cmm_study.PENDING                          # its test folds missing
        for k in range(5):
            _raw(runs / "dilbert-cmm-original-test", k, 0.55, 0.5 if k else 0.45)
        capsys.readouterr()
        assert cmm_study.main(args) == 0
        assert "target (student, original, raw): seq2text +0.150, text2seq +0.090 -> not met" in capsys.readouterr().out
        _raw(runs / "dilbert-cmm-original-val", 4, 0.5, 0.1)  # minimum -0.06 < -0.05
        assert cmm_study.main(args) == 0
        out = capsys.readouterr().out
        assert "decision: masked" in out and "target (student, masked, raw): seq2text +0.300, text2seq -0.050" in out


def _with_f1(root: Path, k: int, seq2text: float, text2seq: float, f1: float) -> None:
    """_raw's fold.json and its run's metrics.json with the student's pooled macro F1."""
    _raw(root, k, seq2text, text2seq)
    (root / f"f{k}" / "pocus" / "metrics.json").write_text(
        json.dumps({"variants": {"student": {"pooled": {"macro": {"f1": f1}}}}}))


def test_cmm_weight_rule_needs_the_weaker_direction_to_gain_without_losing_macro_f1(tmp_path, capsys):
    """dilbert-pocus-cmm-weight's score.py: weight 1 from the cmm-text study's runs, weight 4 from --runs."""
    earlier, runs = tmp_path / "earlier", tmp_path / "runs"
    args = ["--runs", str(runs), "--earlier", str(earlier)]
    with study_script("dilbert-pocus-cmm-weight", "score.py") as weight_study:
        for k in range(5):  # weight 1: +0.1 / 0.0 over chance, macro F1 0.50
            _with_f1(earlier / "dilbert-cmm-original-val", k, 0.5, 0.4, 0.50)
            _with_f1(earlier / "dilbert-cmm-original-test", k, 0.6, 0.4, 0.50)
            if k < 4:
                _with_f1(runs / "dilbert-cmm4-val", k, 0.5, 0.45, 0.47)
        assert weight_study.main(args) == weight_study.PENDING                    # one split of weight 4 missing
        _with_f1(runs / "dilbert-cmm4-val", 4, 0.5, 0.45, 0.47)  # weaker direction +0.05, macro F1 -0.03
        assert weight_study.main([*args, "--decide-only"]) == 0
        assert "decision: cmm 1 (student, raw, weaker direction's mean gain: 1 +0.000, 4 +0.050; macro F1: 1 0.500, " \
               "4 0.470)" in capsys.readouterr().out                              # the guard keeps weight 1
        assert weight_study.main(args) == 0
        assert "target (student, cmm 1, raw): seq2text +0.200, text2seq +0.000 -> not met" in capsys.readouterr().out
        for k in range(5):
            _with_f1(runs / "dilbert-cmm4-val", k, 0.5, 0.45, 0.49)               # macro F1 -0.01: within the guard
        assert weight_study.main(args) == weight_study.PENDING                    # weight 4 chosen; its tests missing
        assert "decision: cmm 4" in capsys.readouterr().out
        for k in range(5):
            _with_f1(runs / "dilbert-cmm4-test", k, 0.6, 0.55, 0.5)
        assert weight_study.main(args) == 0
        assert "target (student, cmm 4, raw): seq2text +0.200, text2seq +0.150 -> met" in capsys.readouterr().out


def test_student_depth_rule_reads_two_layers_from_the_cmm_weight_study_and_applies_its_guard(tmp_path, capsys):
    """dilbert-pocus-student-depth's score.py: 2 layers from the cmm-weight study's runs, 4 layers from --runs."""
    earlier, runs = tmp_path / "earlier", tmp_path / "runs"
    args = ["--runs", str(runs), "--earlier", str(earlier)]
    with study_script("dilbert-pocus-student-depth", "score.py") as depth_study:
        for k in range(5):  # 2 layers: +0.1 / +0.05 over chance, macro F1 0.50
            _with_f1(earlier / "dilbert-cmm4-val", k, 0.5, 0.45, 0.50)
            _with_f1(earlier / "dilbert-cmm4-test", k, 0.6, 0.45, 0.50)
            _with_f1(runs / "dilbert-student4-val", k, 0.6, 0.55, 0.45)          # +0.15 weaker, macro F1 -0.05
        assert depth_study.main(args) == 0                                        # the guard keeps 2 layers
        out = capsys.readouterr().out
        assert "decision: 2 layers (student, raw, weaker direction's mean gain: 2 +0.050, 4 +0.150; macro F1: " \
               "2 0.500, 4 0.450)" in out
        assert "target (student, 2 layers, raw): seq2text +0.200, text2seq +0.050 -> not met" in out
        for k in range(5):
            _with_f1(runs / "dilbert-student4-val", k, 0.6, 0.55, 0.49)          # within the guard
        assert depth_study.main(args) == depth_study.PENDING                      # 4 chosen; its tests missing
        assert "decision: 4 layers" in capsys.readouterr().out
        for k in range(5):
            _with_f1(runs / "dilbert-student4-test", k, 0.6, 0.52, 0.5)
        assert depth_study.main(args) == 0
        assert "target (student, 4 layers, raw): seq2text +0.200, text2seq +0.120 -> met" in capsys.readouterr().out


def test_pretrain_epochs_rule_reads_ten_epochs_from_the_cmm_weight_study(tmp_path, capsys):
    """dilbert-pocus-pretrain-epochs' score.py: 10 epochs from the cmm-weight study's runs, 20 from --runs."""
    earlier, runs = tmp_path / "earlier", tmp_path / "runs"
    args = ["--runs", str(runs), "--earlier", str(earlier)]
    with study_script("dilbert-pocus-pretrain-epochs", "score.py") as epochs_study:
        for k in range(5):
            _with_f1(earlier / "dilbert-cmm4-val", k, 0.5, 0.45, 0.50)           # +0.1 / +0.05
            _with_f1(runs / "dilbert-pre20-val", k, 0.5, 0.5, 0.49)              # +0.1 / +0.1, within the guard
        assert epochs_study.main(args) == epochs_study.PENDING                    # 20 chosen; its tests missing
        assert "decision: 20 epochs (student, raw, weaker direction's mean gain: 10 +0.050, 20 +0.100" in (
            capsys.readouterr().out)
        for k in range(5):
            _with_f1(runs / "dilbert-pre20-test", k, 0.55, 0.45, 0.5)
        assert epochs_study.main(args) == 0
        assert "target (student, 20 epochs, raw): seq2text +0.150, text2seq +0.050 -> not met" in (
            capsys.readouterr().out)


def test_retrieval_seeds_result_is_the_mean_over_three_seeds_in_both_directions(tmp_path, capsys):
    """dilbert-pocus-retrieval-seeds' score.py: seed 0 from --seed0, seeds 1-2 from --runs; met iff the mean over
    the seeds reaches 0.10 both ways, with the count of seeds that reach it."""
    seed0, runs = tmp_path / "seed0", tmp_path / "runs"
    args = ["--runs", str(runs), "--seed0", str(seed0)]
    with study_script("dilbert-pocus-retrieval-seeds", "score.py") as seeds_study:
        for k in range(5):
            _raw(seed0, k, 0.7, 0.6)                                  # +0.3 / +0.2
            _raw(runs / "dilbert-pre20-seed1", k, 0.5, 0.45)          # +0.1 / +0.05
        assert seeds_study.main(args) == seeds_study.PENDING        # seed 2 missing
        for k in range(5):
            _raw(runs / "dilbert-pre20-seed2", k, 0.5, 0.42)          # +0.1 / +0.02
        capsys.readouterr()
        assert seeds_study.main(args) == 0
        out = capsys.readouterr().out
        assert "seed 0 (student, raw, 5 test folds): seq2text +0.300, text2seq +0.200 (both >= target)" in out
        assert "text2seq +0.090; 1 of 3 seeds reach it in both directions -> not met" in out
        for k in range(5):
            _raw(runs / "dilbert-pre20-seed2", k, 0.5, 0.46)          # +0.1 / +0.06: mean text2seq +0.103
        assert seeds_study.main(args) == 0
        assert "text2seq +0.103; 1 of 3 seeds reach it in both directions -> met" in capsys.readouterr().out
