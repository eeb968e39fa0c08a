"""The software environment recorded beside each trained fold (provenance.py) and `compare`'s note on it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sonodistill.provenance import (
    ENVIRONMENT_FILE,
    environment_differences,
    read_environment,
    software_environment,
    source_digest,
    write_environment,
)
from tests.test_compare_cli import make_run, sonodistill


def test_the_record_names_the_code_and_the_numerical_libraries(tmp_path) -> None:
    import numpy
    import torch

    env = software_environment()
    assert env["torch"]["version"] == torch.__version__
    assert env["packages"]["numpy"] == numpy.__version__
    assert len(env["source_sha256"]) == 64 and env["source_sha256"] == source_digest()
    path = write_environment(tmp_path / "fold_0", seconds=1.5)
    assert path == tmp_path / "fold_0" / ENVIRONMENT_FILE
    saved = read_environment(tmp_path / "fold_0")
    assert saved["seconds"] == 1.5 and saved["packages"] == env["packages"] and "written" in saved
    assert read_environment(tmp_path / "nowhere") is None


def test_the_source_digest_changes_with_one_byte_of_code(tmp_path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "notes.txt").write_text("not code")
    before = source_digest.__wrapped__(package)
    (package / "notes.txt").write_text("other text")
    assert source_digest.__wrapped__(package) == before  # only .py files count
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert source_digest.__wrapped__(package) != before


def test_differences_name_versions_and_code_but_not_threads_or_time() -> None:
    a = {"sonodistill": "0.1", "source_sha256": "c0de", "python": "3.11.9", "torch": {"version": "2.13.0",
         "threads": 1}, "packages": {"numpy": "2.3.0", "monai": "1.6.1"}, "written": "t0", "cpu_count": 2}
    b = json.loads(json.dumps(a))
    b["torch"]["threads"], b["written"], b["cpu_count"] = 2, "t1", 16
    assert environment_differences(a, b) == []
    b["packages"]["numpy"], b["source_sha256"] = "2.4.1", "beef"
    del b["packages"]["monai"]
    assert environment_differences(a, b) == ["monai: 1.6.1 vs None", "numpy: 2.3.0 vs 2.4.1",
                                             "source_sha256: c0de vs beef"]


@pytest.mark.parametrize("other_numpy", [None, "0.0-other"])
def test_compare_says_when_the_folds_were_trained_with_other_software(tmp_path, other_numpy) -> None:
    a, b = make_run(tmp_path, "base"), make_run(tmp_path, "other")
    for run in (a, b):
        for k in range(3):
            write_environment(run / f"fold_{k}")
    if other_numpy:
        record = read_environment(b / "fold_1")
        record["packages"]["numpy"] = other_numpy
        (b / "fold_1" / ENVIRONMENT_FILE).write_text(json.dumps(record))
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--resamples", 50, "--permutations", 50) == 0
    text = (out / "comparison.md").read_text()
    if other_numpy:
        assert "**Software differs**" in text and "other seed 0 fold_1: numpy: " in text and other_numpy in text
    else:
        assert "every recorded fold was trained with the same code and library versions" in text


def test_compare_says_when_folds_record_no_environment(tmp_path) -> None:
    a, b = make_run(tmp_path, "base"), make_run(tmp_path, "other")
    for k in range(3):
        (a / f"fold_{k}").mkdir()
        write_environment(b / f"fold_{k}")
    out = tmp_path / "cmp"
    assert sonodistill("compare", a, b, "--out", out, "--resamples", 50, "--permutations", 50) == 0
    assert "3 of 6 folds record no software environment" in (out / "comparison.md").read_text()
    for k in range(3):
        (b / f"fold_{k}" / ENVIRONMENT_FILE).unlink()
    assert sonodistill("compare", a, b, "--out", out, "--resamples", 50, "--permutations", 50) == 0
    assert "Software: no compared fold records its environment" in (out / "comparison.md").read_text()


def test_git_is_named_only_for_files_git_tracks(tmp_path) -> None:
    from sonodistill.provenance import PACKAGE_DIR, git_commit

    here = git_commit.__wrapped__(PACKAGE_DIR)
    if here is not None:  # a git checkout (CI, development): the commit of HEAD
        assert len(here["commit"]) == 40 and isinstance(here["dirty"], bool)
    copy = tmp_path / "site-packages" / "sonodistill"  # an installed copy outside any checkout
    copy.mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    assert git_commit.__wrapped__(copy) is None
    if shutil.which("git") is None:
        return
    repo = tmp_path / "checkout"  # the same copy inside a checkout that ignores it (a .venv in the repository)
    (repo / ".venv" / "sonodistill").mkdir(parents=True)
    (repo / ".venv" / "sonodistill" / "__init__.py").write_text("")
    (repo / ".gitignore").write_text(".venv/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for args in (["init", "-q"], ["add", ".gitignore"], ["commit", "-qm", "init"]):
        subprocess.run(git + args, check=True, capture_output=True)
    assert git_commit.__wrapped__(repo / ".venv" / "sonodistill") is None
