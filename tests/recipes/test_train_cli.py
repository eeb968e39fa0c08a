"""`sonodistill train` as a user runs it: refused options, and (in subprocesses) a clean stop on SIGTERM."""

from __future__ import annotations

from sonodistill.cli import main


def test_resume_without_a_name_is_refused(tmp_path, capsys):
    rc = main(["train", "supervised", "--data", "synthetic:carotid", "--out", str(tmp_path), "--resume"])
    assert rc == 2
    assert "--resume needs --name NAME" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
