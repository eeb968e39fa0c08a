"""DILBERT on the one fold loop (issues 15, 18 and 20): folds over sequences, the per-fold record and report, resume
adding the final model (`train.final=true`), `--final-only` (`train.cv=false`), `--fold` and `run_folds`,
`train.on_validation`, the checks made before anything is written, and the collapse test. Tiny synthetic lung runs
(12 sequences of 4 frames at 32 px, fusion encoders of 2 layers, 1 epoch per stage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sonodistill.cli import main
from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.evaluation.annotation import collapsed, output_spread
from sonodistill.evaluation.run_dir import NO_CV_ESTIMATE
from sonodistill.protocols.folds import run_protocol

N = 12
OPTIONS = ("teacher: {dim: 24, layers: 2, heads: 2, frame_width: 0.125, clip_width: 0.125}, "
           "student: {dim: 16, layers: 2, heads: 2}, vocab_size: 250, n_region_classes: 4, max_text_len: 32")
VARIANTS = {"teacher", "student", "teacher+mutual"}  # variants [student]: the teacher's stages, then the student's
EXPORTS = {"teacher", "student"}
EXPORT_FILES = {"dilbert.json", "tokenizer.json", "annotator.safetensors", "retriever.safetensors", "reports.json",
                "report_bank.json"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lung(tmp_path_factory):
    from sonodistill.data.manifest import Manifest
    from sonodistill.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("synth-lung")
    return Manifest.from_csv(write_dataset("lung", root / "data", n=N, seed=0, frames=8, size=48, workers=1))


def _cfg(root: Path, name: str, *extra: str, options: str = "variants: [student]") -> object:
    return load_config(None, [
        "recipe=dilbert", "data.num_frames=4", "data.size=32", "data.batch_size=4", "data.augment=false",
        "train.epochs=1", "train.folds=2", "train.log_every_n_steps=1", "optim.lr=0.003", "optim.warmup_epochs=0",
        f"out_dir={root / 'runs'}", f"data.cache_dir={root / 'cache'}", f"name={name}",
        "recipe_options={" + OPTIONS + (", " + options if options else "") + "}", *extra])


class FoldSpy:
    """Records every `run_fold` call of the protocol (folder, training and test sequence counts), then runs it."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        import sonodistill.protocols.dilbert as protocol

        self.calls: list[tuple[str, int, int]] = []
        real = protocol.run_fold

        def spy(cfg, seqs, train, test, fold, fold_dir, *args, **kwargs):
            self.calls.append((Path(fold_dir).name, len(train), len(test)))
            return real(cfg, seqs, train, test, fold, fold_dir, *args, **kwargs)

        mp.setattr(protocol, "run_fold", spy)


def _dump(summary: dict) -> str:
    return json.dumps(summary, sort_keys=True, default=float)


@pytest.fixture(scope="module")
def cv_run(lung, tmp_path_factory):
    """A 2-fold CV run, then `--resume --set train.final=true` on it: (run dir, both summaries, both call lists)."""
    import torch

    root = tmp_path_factory.mktemp("dilbert-cv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture, which a module fixture runs before
    try:
        with pytest.MonkeyPatch.context() as mp:
            spy = FoldSpy(mp)
            cv = run_protocol(_cfg(root, "cv"), manifest=lung)
            cv_calls, spy.calls = spy.calls, []
            final = run_protocol(_cfg(root, "cv", "train.final=true"), resume=True, manifest=lung)
    finally:
        torch.set_num_threads(threads)
    return root / "runs" / "cv", cv, final, cv_calls, spy.calls


def test_cv_folds_are_made_over_sequences_and_reported(cv_run):
    run, summary, _, calls, _ = cv_run
    assert calls == [("fold_0", N // 2, N // 2), ("fold_1", N // 2, N // 2)]  # the CV run: no final model
    sequences = pd.read_csv(run / "sequences.csv", comment="#")
    assert len(sequences) == N
    folds = json.loads((run / "folds.json").read_text())
    assert sorted(i for f in folds for i in f["test"]) == list(range(N))  # sequence rows, not manifest rows
    frames = []
    for k in (0, 1):
        fold = run / f"fold_{k}"
        pred = pd.read_csv(fold / "predictions.csv")
        assert set(pred["variant"]) == VARIANTS and set(pred["fold"]) == {k}
        record = json.loads((fold / "fold.json").read_text())
        assert set(record) == {"retrieval", "seconds"} and set(record["retrieval"]) == EXPORTS
        assert set(record["seconds"]) == {"teacher/pretrain", "teacher/finetune", "student/distill",
                                          "student/mutual"}
        for variant in EXPORTS:  # the layout the serve layer's "annotation" kind reads
            assert {p.name for p in (fold / "export" / variant).iterdir()} == EXPORT_FILES
        frames.append(pred)
    oof = pd.read_csv(run / "predictions.csv")
    assert len(oof) == N * len(VARIANTS) and sorted(oof[oof["variant"] == "student"]["index"]) == list(range(N))
    pd.testing.assert_frame_equal(oof, pd.concat(frames, ignore_index=True))
    assert set(summary["variants"]) == VARIANTS
    assert _dump(json.loads((run / "metrics.json").read_text())) == _dump(summary)
    report = (run / "report.md").read_text()
    assert report.startswith("# cv: dilbert on ") and "Folds [0, 1] of 2" in report and "## Retrieval" in report


def test_resume_with_train_final_trains_the_final_model_on_every_sequence(cv_run):
    """`--resume --set train.final=true` keeps both folds (their fold.json records feed the same report) and trains
    the final model on all sequences into final/, exported as the annotator folders predict and annotate load."""
    run, cv, final, _, calls = cv_run
    assert calls == [("final", N, 0)]
    assert _dump(final) == _dump(cv)
    assert (run / "final" / "done").is_file() and "final" in json.loads((run / "timing.json").read_text())
    for variant in EXPORTS:
        export = run / "final" / "export" / variant
        assert {p.name for p in export.iterdir()} == EXPORT_FILES
        info = json.loads((export / "dilbert.json").read_text())
        assert info["role"] == variant and info["train_items"] == N and info["fold"] == 2
    reports = json.loads((run / "final" / "export" / "student" / "reports.json").read_text())
    assert len(reports) >= 2
    bank = json.loads((run / "final" / "export" / "student" / "report_bank.json").read_text())
    assert len(bank["mean"]) == len(bank["std"]) == len(reports) and bank["sequences"] == N  # every sequence's report


def test_annotate_on_the_run_uses_the_final_student(cv_run, lung, capsys):
    run = cv_run[0]
    assert main(["annotate", str(run), lung.paths[0]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["model"]["folder"]) == run / "final" / "export" / "student"
    assert result["findings"] and isinstance(result["description"], str)


def test_final_only_trains_only_the_final_model(lung, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        spy = FoldSpy(mp)
        out = run_protocol(_cfg(tmp_path, "final-only", "train.cv=false"), manifest=lung)
    run = tmp_path / "runs" / "final-only"
    assert spy.calls == [("final", N, 0)] and out == {"cv": False, "final": str(run / "final")}
    assert not list(run.glob("fold_*")) and not (run / "folds.json").exists()
    assert (run / "final" / "done").is_file() and NO_CV_ESTIMATE in (run / "report.md").read_text()
    assert {p.name for p in (run / "final" / "export").iterdir()} == EXPORTS
    assert len(pd.read_csv(run / "sequences.csv", comment="#")) == N


@pytest.mark.parametrize("extra, options", [(["train.fold=1"], "variants: [baseline]"),
                                            ([], "variants: [baseline], run_folds: [1]")])
def test_fold_options_train_that_fold_alone(lung, tmp_path, extra, options):
    summary = run_protocol(_cfg(tmp_path, "one", *extra, options=options), manifest=lung)
    run = tmp_path / "runs" / "one"
    assert sorted(p.name for p in run.glob("fold_*")) == ["fold_1"] and set(summary["variants"]) == {"baseline"}
    assert "Folds [1] of 2" in (run / "report.md").read_text()
    assert {p.name for p in (run / "fold_1" / "export").iterdir()} == {"baseline"}


def test_on_validation_scores_validation_splits_of_the_training_sequences(tmp_path):
    """`train.on_validation`: each fold scores a grouped validation split of its training sequences (test folds
    unread), and the report's title says so."""
    from sonodistill.data.manifest import Manifest
    from sonodistill.data.synthetic import write_dataset

    lung = Manifest.from_csv(write_dataset("lung", tmp_path / "data", n=30, seed=0, frames=4, size=32, workers=1))
    run_protocol(_cfg(tmp_path, "val", "train.on_validation=true", "train.val_fraction=0.5",
                      options="variants: [baseline]"), manifest=lung)
    run = tmp_path / "runs" / "val"
    folds = json.loads((run / "folds.json").read_text())
    pred = pd.read_csv(run / "predictions.csv")
    for k, fold in enumerate(folds):
        scored = set(pred[pred["fold"] == k]["index"])
        assert scored and scored <= set(fold["train"]) and not scored & set(fold["test"])
    assert "scored on VALIDATION splits" in (run / "report.md").read_text().splitlines()[0]


def test_region_tokens_from_imagenet_are_recorded_in_the_run_and_the_export(lung, tmp_path):
    """`student.frame_pretrained: imagenet`: the fold records where each encoder started, the annotator export and
    its model card say so."""
    from sonodistill.serve.annotate import load_annotator
    from sonodistill.serve.annotation import annotation_info
    from sonodistill.serve.model_card import model_card

    student = ("student: {dim: 16, layers: 2, heads: 2, frame_backbone: efficientnet_lite0, frame_width: 1.0, "
               "frame_pretrained: imagenet, frame_freeze_stages: 4}")
    cfg = load_config(None, [
        "recipe=dilbert", "data.num_frames=4", "data.size=32", "data.batch_size=4", "data.augment=false",
        "train.epochs=1", "train.cv=false", "optim.warmup_epochs=0", f"out_dir={tmp_path / 'runs'}",
        f"data.cache_dir={tmp_path / 'cache'}", "name=imagenet-regions",
        "recipe_options={variants: [baseline], vocab_size: 250, n_region_classes: 4, max_text_len: 32, "
        + student + "}"])
    run_protocol(cfg, manifest=lung)
    final = tmp_path / "runs" / "imagenet-regions" / "final"
    started = json.loads((final / "pretrained_from.json").read_text())
    assert started["baseline"]["frame"].startswith("imagenet (") and started["baseline"]["clip"].startswith("none")
    meta = json.loads((final / "export" / "baseline" / "dilbert.json").read_text())
    assert meta["pretrained_from"] == started["baseline"]
    info = annotation_info(load_annotator(final / "export" / "baseline"), "final/baseline")
    card = model_card(tmp_path / "runs" / "imagenet-regions", {"annotation": info})
    assert "frame encoder: ImageNet" in card and "clip encoder: random initialisation" in card


def test_a_bad_encoder_start_fails_before_anything_is_written(lung, tmp_path):
    cfg = _cfg(tmp_path, "bad-start", options="variants: [baseline], student: {frame_pretrained: imagenet}")
    with pytest.raises(ConfigError, match="no ImageNet weights for"):
        run_protocol(cfg, manifest=lung)
    assert not cfg.run_dir.exists()


@pytest.mark.parametrize("extra, options, message", [
    (["data.batch_size=2"], "", "data.batch_size must be >= 3"),
    (["data.size=33"], "", "data.size 33 is not divisible by recipe_options.region_grid 2"),
    ([], "student: {dim: 10, heads: 4}", "dim 10 is not divisible by heads 4"),
    ([], "teacher: {dim: 10, heads: 4}", "dim 10 is not divisible by heads 4"),
    ([], "run_folds: [0, 2]", r"recipe_options.run_folds: fold\(s\) \[2\] do not exist; there are 2 folds"),
    (["train.fold=0"], "run_folds: [1]", r"train.fold=0 \(--fold\) is not in recipe_options.run_folds=\[1\]"),
    ([], "alpha: 1", r"unknown field\(s\) \['alpha'\]"),
    ([], "variants: [bert]", "variants: unknown"),
])
def test_bad_settings_fail_before_anything_is_written(lung, tmp_path, extra, options, message):
    cfg = _cfg(tmp_path, "bad", *extra, options=options)
    with pytest.raises(ConfigError, match=message):
        run_protocol(cfg, manifest=lung)
    assert not cfg.run_dir.exists()


# ------------------------------------------------------------------------------------------- collapse (issue 18)
def test_collapse_test_by_hand():
    rng = np.random.default_rng(0)
    varied = (rng.random((5, 3)), [rng.dirichlet(np.ones(4), 5)])
    constant = (np.tile([[0.2, 0.9, 0.5]], (5, 1)), [np.tile([[0.1, 0.2, 0.3, 0.4]], (5, 1))])
    assert not collapsed(*varied) and output_spread(*varied) > 0.1
    assert collapsed(*constant) and output_spread(*constant) == 0.0
    assert collapsed(constant[0] + 1e-6 * rng.random((5, 3)), constant[1])  # below the 1e-4 tolerance
    one_varies = constant[0].copy()
    one_varies[:, 1] = [0.1, 0.9, 0.5, 0.4, 0.2]
    assert not collapsed(one_varies, constant[1])  # one finding told apart: not collapsed
    assert not collapsed(constant[0][:1], [c[:1] for c in constant[1]])  # one sequence: nothing to compare
    assert collapsed(np.zeros((3, 0)), [np.tile([[0.5, 0.5]], (3, 1))])  # categorical targets only


@pytest.fixture(scope="module")
def pairs():
    from sonodistill.data.sequences import synthetic_sequences

    return synthetic_sequences("lung", n=8, seed=0, frames=4, size=32)


def _tiny_fold(pairs, root: Path, name: str, options: str):
    from sonodistill.knowledge import load_graph
    from sonodistill.protocols.dilbert import run_fold

    cfg = _cfg(root, name, options="variants: [baseline], " + options)
    return run_fold(cfg, pairs, np.arange(5), np.arange(5, 8), 0, cfg.run_dir / "fold_0", load_graph("lung"))


def test_a_collapsed_finetune_stops_the_fold_naming_variant_and_fold(pairs, tmp_path):
    """finetune_lr 100 saturates every output on the tiny set: the fold stops after the finetune stage with a
    CollapseError naming the variant and the fold, before anything of it is exported."""
    from sonodistill.protocols.dilbert import CollapseError

    with pytest.raises(CollapseError, match=r"fold 0, variant 'baseline': training collapsed: .* all 3 test "
                                            r"sequences .* recipe_options.collapse_check=false"):
        _tiny_fold(pairs, tmp_path, "collapsed", "finetune_lr: 100")
    fold = tmp_path / "runs" / "collapsed" / "fold_0"
    assert (fold / "baseline" / "finetune" / "done.json").is_file() and not (fold / "export").exists()
    # the same fold with the test off: it finishes, and its predictions are indeed constant
    res = _tiny_fold(pairs, tmp_path, "unchecked", "finetune_lr: 100, collapse_check: false")
    p = res["predictions"][[c for c in res["predictions"].columns if c.startswith("p_")]].to_numpy(float)
    assert p.std(axis=0).max() < 1e-4
    # and a working learning rate passes the test
    res = _tiny_fold(pairs, tmp_path, "working", "finetune_lr: 0.003")
    p = res["predictions"][[c for c in res["predictions"].columns if c.startswith("p_")]].to_numpy(float)
    assert p.std(axis=0).max() > 1e-3
