"""`sonodistill data ...` through `sonodistill.cli.main`: probe, crop-check, inspect, preview, synth."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonodistill.cli import main


def _lines(out: str) -> dict[str, str]:
    return {line.split("\t")[0]: line for line in out.strip().splitlines()}


def test_probe_real_files(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    files = [shared_data / "lus-blues" / "videos" / "patient_10_L1.mp4",
             shared_data / "dicom" / "examples_ybr_color.dcm",
             shared_data / "dicom" / "OBXXXX1A.dcm"]
    assert main(["data", "probe", *map(str, files)]) == 0
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 3
    assert lines[str(files[0])].endswith("frames=100\theight=350\twidth=350\tchannels=3\tfps=25")
    assert "frames=30\theight=240\twidth=320\tchannels=3\tfps=30" in lines[str(files[1])]
    assert lines[str(files[2])].endswith("frames=1\theight=600\twidth=800\tchannels=3\tfps=none")


def test_probe_bad_file_exit_1(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video\n")
    good = shared_data / "dicom" / "color-pl.dcm"
    assert main(["data", "probe", str(good), str(bad), str(tmp_path / "missing.avi")]) == 1
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert "frames=1" in lines[str(good)]
    assert "error" in lines[str(bad)] and "cannot open" in lines[str(bad)]
    assert "file not found" in lines[str(tmp_path / "missing.avi")]
    assert "2 of 3" in captured.err


def test_crop_check(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = shared_data / "dicom" / "examples_ybr_color.dcm"
    assert main(["data", "crop-check", str(src), "--out", str(tmp_path)]) == 0
    png = tmp_path / "examples_ybr_color_crop.png"
    assert capsys.readouterr().out.strip() == str(png)
    img = Image.open(png)
    assert img.width > 2 * 240 and img.height >= 240  # original 320 wide + preprocessed 240 wide
    assert np.asarray(img.convert("RGB")).max() > 0


def test_data_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["data"]) == 0
    assert "probe" in capsys.readouterr().out


def test_inspect(shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sonodistill.data.adapters")
    pytest.importorskip("sonodistill.data.splits")
    root = shared_data / "lus-blues"
    assert main(["data", "inspect", "lus-blues", str(root), "--target", "severity3", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "287" in out and "1-2" in out
    assert "- frames per file (headers): min 7 / median 100 / max 101\n" in out  # no stills in lus-blues


def test_preview(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sonodistill.data.adapters")
    assert main(["data", "preview", "hc18", str(shared_data / "hc18"), "--out", str(tmp_path),
                 "--n", "3", "--size", "48"]) == 0
    png = Path(capsys.readouterr().out.strip())
    assert png.is_file() and png.parent == tmp_path
    assert Image.open(png).height >= 3 * 48


def test_synth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("sonodistill.data.synthetic")
    assert main(["data", "synth", "fetal-head", "--out", str(tmp_path), "-n", "2", "--size", "32"]) == 0
    manifest = Path(capsys.readouterr().out.strip())
    assert manifest.is_file() and manifest.parent == tmp_path


def test_probe_reports_an_unexpected_error_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 item 1: any per-file failure is that file's error line; the other files are still probed."""
    from sonodistill.data import readers

    from .hostile import failing_for, write_small_avi

    good, odd = write_small_avi(tmp_path / "good.avi"), write_small_avi(tmp_path / "odd.avi")
    monkeypatch.setattr(readers, "probe_file", failing_for("odd.avi", readers.probe_file,
                                                           MemoryError("cannot allocate")))
    assert main(["data", "probe", str(odd), str(good)]) == 1
    out = capsys.readouterr().out
    assert f"{odd}\terror: MemoryError: cannot allocate" in out and f"{good}\tframes=3" in out


def test_probe_folders(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dicoms = sorted(p for p in (shared_data / "dicom").iterdir() if p.suffix == ".dcm")
    assert main(["data", "probe", "--no-progress", str(shared_data / "dicom")]) == 0
    lines = _lines(capsys.readouterr().out)
    assert list(lines) == [str(p) for p in dicoms]  # the folder's DICOMs in order; inventory.csv, licence skipped
    assert "frames=30\theight=240\twidth=320\tchannels=3\tfps=30" in lines[str(shared_data / "dicom" /
                                                                         "examples_ybr_color.dcm")]
    series = tmp_path / "export" / "series1"
    series.mkdir(parents=True)
    (series / "IM0001").write_bytes((shared_data / "dicom" / "color-pl.dcm").read_bytes())
    assert main(["data", "probe", str(tmp_path / "export")]) == 1  # its file is in a sub-folder
    captured = capsys.readouterr()
    assert "export\terror: no supported files in it (its sub-folders are read with --recursive)" in captured.out
    assert "1 of 1 file(s) failed" in captured.err
    assert main(["data", "probe", "-r", str(tmp_path / "export")]) == 0
    assert list(_lines(capsys.readouterr().out)) == [str(series / "IM0001")]


def test_adapter_options_reach_the_adapter_from_inspect_and_from_a_config(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """folder's group_by through `data inspect --option` and through `data.adapter_options` (what train reads);
    a malformed option and a target given twice are errors."""
    from sonodistill.config import load_config
    from sonodistill.errors import ConfigError
    from sonodistill.recipes.data import load_manifest

    for cls in ("a", "b"):
        for patient in range(2):
            for i in range(2):
                path = tmp_path / "set" / cls / f"{cls}{patient}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), 40 * patient + 10 * i + (cls == "b"), np.uint8)).save(path)
    assert main(["data", "inspect", "folder", str(tmp_path / "set"), "--folds", "2"]) == 0
    assert "- groups: 4;" in capsys.readouterr().out  # one a patient's sub-folder
    assert main(["data", "inspect", "folder", str(tmp_path / "set"), "--folds", "2", "--option", "group_by=file"]) == 0
    assert "- groups: 8;" in capsys.readouterr().out
    assert main(["data", "inspect", "folder", str(tmp_path / "set"), "--option", "group_by"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    cfg = load_config(None, [f"data.spec=folder:{tmp_path / 'set'}", "data.adapter_options={group_by: file}"])
    assert len(set(load_manifest(cfg.data).groups)) == 8
    cfg = load_config(None, [f"data.spec=folder:{tmp_path / 'set'}", "data.target=x",
                             "data.adapter_options={target: y}"])
    with pytest.raises(ConfigError, match="data target given twice"):
        load_manifest(cfg.data)


def test_inspect_writes_the_folds_a_run_makes(shared_data: Path, tmp_path: Path) -> None:
    """`data inspect --write-folds`: each item's test fold, as `train` splits with the same folds and seed."""
    import pandas as pd

    from sonodistill.data.adapters import load_adapter
    from sonodistill.data.folds import make_folds

    out = tmp_path / "folds" / "lus.csv"
    assert main(["data", "inspect", "lus-blues", str(shared_data / "lus-blues"), "--target", "severity3",
                 "--folds", "3", "--seed", "7", "--write-folds", str(out)]) == 0
    table = pd.read_csv(out, dtype={"group": str, "label": str})
    manifest = load_adapter("lus-blues", shared_data / "lus-blues", target="severity3")
    assert list(table.columns) == ["path", "group", "label", "fold"] and len(table) == len(manifest)
    for k, (_, test) in enumerate(make_folds(manifest, 3, 7)):
        assert sorted(table.index[table["fold"] == k]) == sorted(test.tolist())
    assert set(table.groupby("group")["fold"].nunique()) == {1}  # a patient in one test fold


def test_probe_progress_bar_only_on_a_terminal(shared_data: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A log file or a pipe gets the result lines and no bar frames (`2> probe.log` filled with them)."""
    folder = str(shared_data / "dicom")
    assert main(["data", "probe", folder]) == 0  # captured stderr is not a terminal
    assert "probe:" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["data", "probe", folder]) == 0
    assert "probe:" in capsys.readouterr().err
