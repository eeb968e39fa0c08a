"""The deployable model (issue 20): `train.final` for every recipe (segmentation included), `--final-only`
(`train.cv=false`: no CV, and the run directory says so), `--fold` with `train.final` refused, and
`eval --per-group`. Tiny synthetic runs: 1 epoch, a few 32 px images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sonodistill.cli import main
from sonodistill.config import load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, SonoDistillError
from sonodistill.protocols.folds import run_protocol
from tests.recipes.conftest import read_weights

SEG = ["--data", "synthetic:fetal-head", "--set", "data.synthetic_n=8", "--set", "data.synthetic_size=48",
       "--set", "data.size=32", "--set", "data.batch_size=4", "--set", "data.crop_region=false",
       "--set", "data.remove_overlay=false", "--set", "data.augment=false", "--set", "model.backbone=unet",
       "--set", "model.width=0.25", "--set", "train.epochs=1", "--folds", "2", "--set", "optim.warmup_epochs=0",
       "--set", "recipe_options={labelled_fraction: 0.5, iterations_per_epoch: 2, channels: [8, 16, 32], "
                "overlays: 0}"]


def _seg(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return ["train", "hdc", *SEG, "--name", name, "--out", str(tmp_path / "runs"),
            "--set", f"data.cache_dir={tmp_path / 'cache'}", *extra]


def _final_split_is_all_items(run: Path) -> None:
    """final/split.json: every manifest row is labelled or unlabelled, none tested; the labelled share as in CV."""
    from sonodistill.data.manifest import Manifest

    n = len(Manifest.from_csv(run / "manifest.csv"))
    split = json.loads((run / "final" / "split.json").read_text())
    assert split["test"] == [] and split["labelled_fraction"] == 0.5
    assert sorted(split["labelled"] + split["unlabelled"]) == list(range(n))
    assert 0 < len(split["labelled"]) < n


@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory) -> tuple[Path, Path]:
    """An HDC run with CV + final model, and the same config trained with --final-only."""
    tmp = tmp_path_factory.mktemp("final-seg")
    assert main(_seg(tmp, "cv-final", "--set", "train.final=true")) == 0
    assert main(_seg(tmp, "final-only", "--final-only")) == 0
    return tmp / "runs" / "cv-final", tmp / "runs" / "final-only"


def test_segmentation_final_model_is_trained_on_all_items_and_predict_uses_it(seg_runs, tmp_path, capsys):
    run, _ = seg_runs
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "done").is_file()
    assert json.loads((run / "final" / "environment.json").read_text())["seconds"] > 0  # what trained it
    assert (run / "metrics.json").is_file() and (run / "fold_1" / "predictions.csv").is_file()
    _final_split_is_all_items(run)
    from sonodistill.data.manifest import Manifest

    images = Path(Manifest.from_csv(run / "manifest.csv").paths[0]).parent
    capsys.readouterr()
    out = tmp_path / "pred.json"
    assert main(["predict", str(run), str(images), "--out", str(out), "--mask-dir", str(tmp_path / "masks"),
                 "--pixel-size-mm", "0.2"]) == 0
    payload = json.loads(out.read_text())
    assert payload["model"]["members"] == ["final"]
    assert payload["results"] and all(r["task"] == "segmentation" and r["masks"] for r in payload["results"])
    # the final model's outline calibration (its labelled masks) is saved, so predict reports head circumferences
    calibration = json.loads((run / "final" / "hc_calibration.json").read_text())
    assert payload["model"]["head_circumference"]["outline_offset_px"] == calibration["outline_offset_px"]
    assert all("head_circumference_mm" in m for r in payload["results"] for m in r["masks"])
    assert all(r["pixel_spacing_source"] == "option" for r in payload["results"])


def test_final_only_trains_the_same_final_model_and_says_there_is_no_cv_estimate(seg_runs, capsys):
    cv_run, run = seg_runs
    assert not (run / "folds.json").exists() and not list(run.glob("fold_*"))
    assert not (run / "metrics.json").exists() and not (run / "predictions.csv").exists()
    assert (run / "report.md").read_text().splitlines()[2].startswith("NO_CV_ESTIMATE:")
    assert load_config(run / "config.yaml").train.cv is False
    _final_split_is_all_items(run)
    # the run's config, without the CV: the same deployable model as the CV run's final/
    got, want = read_weights(run / "final" / "model.safetensors"), read_weights(cv_run / "final" / "model.safetensors")
    assert list(got) == list(want) and all(bool((got[k] == want[k]).all()) for k in got)
    for extra in ([], ["--per-group"], ["--merge", "a=0"]):
        capsys.readouterr()
        assert main(["eval", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert "no cross-validation estimate" in err and "--final-only" in err and "sonodistill score" in err


def test_final_only_classification(tiny_carotid, tiny_overrides):
    cfg = load_config(None, tiny_overrides + ["name=final-only", "train.epochs=1", "train.cv=false",
                                              "train.folds=1"])
    summary = run_protocol(cfg, manifest=tiny_carotid)
    run = cfg.run_dir
    assert summary["cv"] is False and summary["final"] == str(run / "final")
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "done").is_file()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "final", "manifest.csv", "report.md",
                                                     "timing.json", "train.log"]
    assert "NO_CV_ESTIMATE" in (run / "report.md").read_text()
    assert "single frames" not in (run / "train.log").read_text()  # every clip has 8 frames
    with pytest.raises(SonoDistillError, match="no cross-validation estimate"):
        from sonodistill.evaluation.run_dir import report_from_run_dir

        report_from_run_dir(run)
    # resumed after it finished: the final model is kept, not retrained
    mtime = (run / "final" / "model.safetensors").stat().st_mtime_ns
    run_protocol(cfg, resume=True, manifest=tiny_carotid)
    assert (run / "final" / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("bad, message", [
    (["train.final=true", "train.fold=0"], r"train.final=true with train.fold=0 \(--fold\)"),
    (["train.cv=false", "train.fold=0"], r"train.cv=false \(--final-only\) with train.fold=0"),
])
def test_fold_with_a_final_model_is_refused_before_anything_is_written(tiny_carotid, tiny_overrides, bad, message):
    cfg = load_config(None, tiny_overrides + ["name=refused", "train.epochs=1", *bad])
    with pytest.raises(ConfigError, match=message):
        run_protocol(cfg, manifest=tiny_carotid)
    assert not cfg.run_dir.exists()


def test_final_only_flag_sets_train_cv(tmp_path):
    from sonodistill.commands.train import config_from_args
    from sonodistill.cli import build_parser

    args = build_parser().parse_args(["train", "supervised", "--final-only", "--name", "x"])
    assert config_from_args(args, "supervised").train.cv is False
    args = build_parser().parse_args(["train", "supervised", "--name", "x"])
    assert config_from_args(args, "supervised").train.cv is True


# Every recipe now trains a final model with train.final=true and with --final-only (the last refusal, dilbert's,
# went with issue 15); each method's own test file has its success tests (DILBERT: tests/protocols/
# test_dilbert_protocol.py).


def test_every_recipe_runs_on_the_one_fold_loop():
    """Every registered recipe maps to a Protocol of the fold loop; none keeps a private loop (run_experiment)."""
    from sonodistill.protocols import PROTOCOLS, Protocol, get_protocol
    from sonodistill.recipes import RECIPES, get_recipe

    assert set(PROTOCOLS) == set(RECIPES)
    for name in RECIPES:
        assert isinstance(get_protocol(name), Protocol) and type(get_protocol(name)) is not Protocol
        assert getattr(get_recipe(name), "run_experiment", None) is None, name


def test_eval_per_group_scores_a_run_per_group(tiny_carotid, tiny_overrides, capsys):
    """A run directory as training leaves it (config, manifest, out-of-fold predictions), scored per patient."""
    cfg = load_config(None, tiny_overrides + ["name=per-group"])
    run = cfg.run_dir
    run.mkdir(parents=True)
    cfg.save(run / "config.yaml")
    m = tiny_carotid
    m.to_csv(run / "manifest.csv")
    groups = sorted(set(m.groups))
    fold_of = {g: i % 3 for i, g in enumerate(groups)}
    label_of = {g: m.labels[list(m.groups).index(g)] for g in groups}
    rows = [i for i in range(len(m)) if m.labels[i] == label_of[m.groups[i]]]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(m.classes)), size=len(rows))
    pred = pd.DataFrame({"fold": [fold_of[m.groups[i]] for i in rows], "index": rows,
                         "path": [m.paths[i] for i in rows], "group": m.groups[rows], "y_true": m.labels[rows]})
    for k, c in enumerate(m.classes):
        pred[f"prob_{c}"] = probs[:, k]
    pred.to_csv(run / "predictions.csv", index=False)
    capsys.readouterr()
    assert main(["eval", str(run), "--per-group"]) == 0
    out = capsys.readouterr().out
    assert "scored per group" in out
    per_group = pd.read_csv(run / "per_group" / "predictions.csv")
    assert len(per_group) == len(set(pred["group"])) and (run / "per_group" / "report.md").is_file()

    # a --seeds run: the parent holds config.yaml and seed_<s>/ runs; eval goes through them seed by seed
    import shutil

    parent = run.parent / "per-group-seeds"
    parent.mkdir()
    shutil.copy(run / "config.yaml", parent / "config.yaml")
    for seed in (0, 1):
        (parent / f"seed_{seed}").mkdir()
        for name in ("config.yaml", "manifest.csv", "predictions.csv"):
            shutil.copy(run / name, parent / f"seed_{seed}" / name)
    assert main(["eval", str(parent), "--per-group"]) == 0
    out = capsys.readouterr().out
    assert f"## seed 0: {parent / 'seed_0'}" in out and f"## seed 1: {parent / 'seed_1'}" in out
    for seed in (0, 1):
        assert pd.read_csv(parent / f"seed_{seed}" / "per_group" / "predictions.csv").equals(per_group)
    assert main(["eval", str(parent)]) == 0  # the report of each seed rebuilt
    assert (parent / "seed_1" / "report.md").is_file() and not (parent / "report.md").exists()


def test_the_final_model_can_be_added_on_resume():
    """`--resume --set train.final=true` (the way to a final model after folds run one at a time) is no config
    change; train.cv is: a CV run resumed as final-only would replace its report."""
    from sonodistill.protocols.folds import config_differences

    saved = load_config(None, ["train.fold=0"])
    assert config_differences(saved, load_config(None, ["train.final=true"])) == []
    assert config_differences(saved, load_config(None, ["train.cv=false"])) == ["train.cv: saved True, now False"]


def test_a_packaged_configs_target_is_dropped_for_another_adapter(tmp_path):
    """`--config lus-tsm-imagenet --data folder:...`: the config's `target: severity` belongs to lus-blues and
    the folder adapter refused it ('unknown option(s) ['target']'); a target typed on the command line is kept."""
    from sonodistill.cli import build_parser
    from sonodistill.commands.train import config_from_args

    def target(*flags: str):
        args = build_parser().parse_args(["train", "supervised", "--config", "lus-tsm-imagenet", "--name", "x",
                                          *flags])
        return config_from_args(args, "supervised").data.target

    assert target() == "severity"
    assert target("--data", "lus-blues:/elsewhere/lus") == "severity"  # the same adapter keeps it
    assert target("--data", f"folder:{tmp_path}") is None
    assert target("--data", f"folder:{tmp_path}", "--target", "x") == "x"
    assert target("--data", f"csv:{tmp_path}/a.csv", "--set", "data.target=y") == "y"


def test_stills_in_a_video_set_are_named_in_the_run_log(tiny_carotid, tiny_overrides):
    """A scanner export mixes cine loops with single-frame DICOMs: training a video model on them says so."""
    from tests.serve.conftest import write_dicom

    table = tiny_carotid.table.copy()
    out = Path(table["path"].iloc[0]).parent
    for row in (2, 5):
        frame = np.full((1, 48, 48), 60 + row, dtype=np.uint8)
        table.loc[row, "path"] = str(write_dicom(out / f"still{row}.dcm", frame))
    stills = Manifest(table, tiny_carotid.classes, "video", "with-stills")
    cfg = load_config(None, tiny_overrides + ["name=stills", "train.epochs=1", "train.cv=false", "train.folds=1"])
    run_protocol(cfg, manifest=stills)
    text = (cfg.run_dir / "train.log").read_text()
    assert "WARNING" in text and "2 of 18 files of this video set are single frames (stills: " in text
    assert "still2.dcm" in text and "still5.dcm" in text
