"""benchmarks/job_queue.py: jobs run once each, N at a time, resumable; bad jobs files are refused by line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmark_scripts import benchmark_script


def _jobs(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_job_runs_once_with_its_log_and_status_and_a_rerun_skips_finished_jobs(tmp_path, capsys):
    with benchmark_script("job_queue") as script:
        out = tmp_path / "out"
        out.mkdir()
        jobs = _jobs(tmp_path / "a.jobs", ["# a comment", "",
                                           *[f"j{i} echo {i} >> {out}/ran; echo threads=$OMP_NUM_THREADS" for i in range(4)],
                                           "bad exit 3", "py python -c 'import sys; print(sys.executable)'"])
        logs = tmp_path / "logs"
        assert script.main([str(jobs), "--logs", str(logs), "--workers", "2", "--threads", "1"]) == 1
        assert sorted((out / "ran").read_text().split()) == ["0", "1", "2", "3"]
        assert "threads=1" in (logs / "j2.log").read_text()
        assert (logs / "j0.rc").read_text().strip() == "0" and (logs / "bad.rc").read_text().strip() == "3"
        assert not list(logs.glob("*.claim"))
        assert "bad exited 3" in capsys.readouterr().err
        assert script.main([str(jobs), "--logs", str(logs), "--status"]) == 0
        assert "bad\tfailed (exit 3)" in capsys.readouterr().out
        queue_log = (logs / "queue.log").read_text()
        assert (logs / "py.log").read_text().splitlines()[-1] == sys.executable   # `python` is this interpreter
        assert queue_log.count(" start ") == 6 and "end bad rc=3" in queue_log
        # resume: finished and failed jobs are not run again; a new job appended to the file is
        with open(jobs, "a") as f:
            f.write(f"j4 echo 4 >> {out}/ran\n")
        assert script.main([str(jobs), "--logs", str(logs)]) == 1
        assert sorted((out / "ran").read_text().split()) == ["0", "1", "2", "3", "4"]
        # --retry-failed runs the failed job again, once
        _jobs(jobs, [f"bad test -e {out}/ran"])
        assert script.main([str(jobs), "--logs", str(logs), "--retry-failed"]) == 0
        assert (logs / "bad.rc").read_text().strip() == "0"
        capsys.readouterr()
        assert script.main([str(jobs), "--logs", str(logs), "--status"]) == 0
        assert capsys.readouterr().out.split() == ["bad", "finished"]


def test_a_job_taken_by_a_runner_that_is_gone_runs_again_and_a_live_claim_is_left(tmp_path, capsys):
    with benchmark_script("job_queue") as script:
        logs = tmp_path / "logs"
        logs.mkdir()
        jobs = _jobs(tmp_path / "a.jobs", [f"dead touch {tmp_path}/dead", f"live touch {tmp_path}/live"])
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (logs / "dead.claim").write_text(str(gone.pid))
        (logs / "live.claim").write_text(str(os.getpid()))   # a runner still alive (this test)
        assert script.main([str(jobs), "--logs", str(logs), "--status"]) == 0
        assert capsys.readouterr().out.split() == ["dead", "orphaned", "live", "running"]
        assert script.main([str(jobs), "--logs", str(logs)]) == 0
        assert (tmp_path / "dead").exists() and not (tmp_path / "live").exists()
        assert "released the claim of dead" in (logs / "queue.log").read_text()


@pytest.mark.parametrize("line, message", [
    ("lonely", "job 'lonely' has no command"),
    ("a/b echo", "job name 'a/b' may hold only"),
    ("twice echo 1\ntwice echo 2", "job name 'twice' is used already on line 1"),
])
def test_a_bad_jobs_file_is_refused_naming_file_and_line(tmp_path, capsys, line, message):
    with benchmark_script("job_queue") as script:
        jobs = tmp_path / "bad.jobs"
        jobs.write_text(line + "\n")
        assert script.main([str(jobs), "--logs", str(tmp_path / "logs")]) == 2
        err = capsys.readouterr().err
        assert message in err and f"{jobs}:" in err
        assert script.main([str(tmp_path / "missing.jobs"), "--logs", str(tmp_path / "logs")]) == 2
        assert "no such jobs file" in capsys.readouterr().err
