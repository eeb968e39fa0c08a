"""Run a study's long jobs from a jobs file, N at a time, resumable: the benchmark runs of a session on a shared CPU.

    python benchmarks/job_queue.py benchmarks/studies/hc18-5pct-consistency/validation.jobs --logs runs/bench35/logs
    nohup python benchmarks/job_queue.py JOBS --logs DIR --workers 2 > DIR/runner.out 2>&1 &   # in the background

A jobs file holds one job a line, `NAME COMMAND` (NAME: letters, digits, `.`, `_`, `-`; COMMAND: a bash command run
in the current folder); blank lines and lines starting with `#` are skipped. Each worker takes the first job that
is neither finished nor taken, runs it with its output in `DIR/NAME.log`, and writes its exit status to
`DIR/NAME.rc`; `DIR/queue.log` gets a line a start and an end. The file is read again before each job, so jobs
appended while the queue runs are picked up. Run the same command again to resume: jobs that exited 0 are skipped,
jobs that failed are skipped unless `--retry-failed`, and a job taken by a runner that is gone (its process no
longer exists) is taken again. `python` in a command is this interpreter (its folder leads PATH), and every job gets
`OMP_NUM_THREADS` / `MKL_NUM_THREADS` = `--threads` (default 1: one heavy job per core on a shared CPU).
`--status` prints each job's state (waiting, running, finished, failed, orphaned) and runs nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

NAME = re.compile(r"[A-Za-z0-9_.-]+")


class JobsFileError(ValueError):
    """A jobs file that cannot be run as it is: the message names the file and line."""


@dataclass(frozen=True)
class Job:
    name: str
    command: str


def read_jobs(path: Path) -> list[Job]:
    """The jobs of a jobs file, in file order; raises JobsFileError on a line without a command, a bad name or a
    name used twice."""
    if not path.is_file():
        raise JobsFileError(f"{path}: no such jobs file")
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, command = line.partition(" ")
        command = command.strip()
        if not NAME.fullmatch(name):
            raise JobsFileError(f"{path}:{number}: job name {name!r} may hold only letters, digits, '.', '_', '-'")
        if not command:
            raise JobsFileError(f"{path}:{number}: job {name!r} has no command (a line is 'NAME COMMAND')")
        if name in seen:
            raise JobsFileError(f"{path}:{number}: job name {name!r} is used already on line {seen[name]}")
        seen[name] = number
        jobs.append(Job(name, command))
    return jobs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _held(claim: Path) -> bool:
    """Whether a claim file's runner (the pid it holds) is still alive."""
    text = claim.read_text().strip()
    return text.isdigit() and _alive(int(text))


class JobQueue:
    """The state of a jobs file's jobs in a log folder: `NAME.claim` (taken: the runner's pid), `NAME.rc` (finished:
    the exit status), `NAME.log` (output)."""

    def __init__(self, jobs_file: Path, logs: Path, retry_failed: bool = False, threads: int = 1) -> None:
        self.jobs_file, self.logs, self.retry_failed, self.threads = jobs_file, logs, retry_failed, threads
        self.logs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.retried: set[str] = set()  # failed jobs taken again by this runner (each once)

    def status(self, name: str) -> int | None:
        """The exit status of a finished job, else None."""
        rc = self.logs / f"{name}.rc"
        return int(rc.read_text().strip()) if rc.is_file() else None

    def release_stale_claims(self) -> list[str]:
        """Removes the claims of runners whose process is gone (a killed or crashed runner): their jobs run again."""
        released = []
        for claim in self.logs.glob("*.claim"):
            if not _held(claim):
                claim.unlink(missing_ok=True)
                released.append(claim.stem)
        return released

    def claim_next(self) -> Job | None:
        """Takes the first job not finished (or failed, with retry_failed) and not taken; None when none is left."""
        with self._lock:
            for job in read_jobs(self.jobs_file):
                rc = self.status(job.name)
                if rc == 0 or (rc is not None and (not self.retry_failed or job.name in self.retried)):
                    continue
                try:
                    fd = os.open(self.logs / f"{job.name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(str(os.getpid()))
                if rc is not None:  # a failed job taken again: its old status goes, so --status shows it running
                    (self.logs / f"{job.name}.rc").unlink(missing_ok=True)
                    self.retried.add(job.name)
                return job
        return None

    def note(self, text: str) -> None:
        with self._lock, open(self.logs / "queue.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def run(self, job: Job, worker: str) -> int:
        """Runs one claimed job to its end; returns (and records) its exit status."""
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        self.note(f"{worker} start {job.name}")
        start = time.monotonic()
        with open(self.logs / f"{job.name}.log", "w") as log:
            log.write(f"# {job.command}\n")
            log.flush()
            rc = subprocess.run(["bash", "-c", job.command], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        (self.logs / f"{job.name}.rc").write_text(f"{rc}\n")
        (self.logs / f"{job.name}.claim").unlink(missing_ok=True)
        self.note(f"{worker} end {job.name} rc={rc} {time.monotonic() - start:.0f} s")
        return rc

    def state(self, name: str) -> str:
        """'finished' (exit 0), 'failed (exit N)', 'running' (claimed by a live runner), 'orphaned' (claimed by a
        runner that is gone: runs again on resume) or 'waiting'."""
        rc = self.status(name)
        if rc is not None:
            return "finished" if rc == 0 else f"failed (exit {rc})"
        claim = self.logs / f"{name}.claim"
        if claim.is_file():
            return "running" if _held(claim) else "orphaned"
        return "waiting"

    def work(self, worker: str) -> None:
        """Runs jobs until none is left; stops (with a note) if the jobs file is made unreadable meanwhile."""
        while True:
            try:
                job = self.claim_next()
            except JobsFileError as e:
                self.note(f"{worker} stops: {e}")
                print(f"job_queue: {worker} stops: {e}", file=sys.stderr)
                return
            if job is None:
                return
            self.run(job, worker)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jobs", type=Path, help="jobs file: one 'NAME COMMAND' a line")
    p.add_argument("--logs", type=Path, required=True, help="folder of the jobs' logs, exit statuses and claims")
    p.add_argument("--workers", type=int, default=2, help="jobs run at once (default 2)")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of each job (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="run jobs that exited non-zero again (once)")
    p.add_argument("--status", action="store_true", help="print each job's state and run nothing")
    args = p.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        p.error("--workers and --threads must be >= 1")
    try:
        jobs = read_jobs(args.jobs)
    except JobsFileError as e:
        print(f"job_queue: {e}", file=sys.stderr)
        return 2
    queue = JobQueue(args.jobs, args.logs, args.retry_failed, args.threads)
    if args.status:
        for job in jobs:
            print(f"{job.name}\t{queue.state(job.name)}")
        return 0
    for name in queue.release_stale_claims():
        queue.note(f"released the claim of {name} (its runner is gone)")
    workers = [threading.Thread(target=queue.work, args=(f"w{i}",)) for i in range(args.workers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    statuses = {job.name: queue.status(job.name) for job in read_jobs(args.jobs)}
    failed = sorted(name for name, rc in statuses.items() if rc not in (0, None))
    for name in failed:
        print(f"job_queue: {name} exited {statuses[name]} (log: {args.logs / (name + '.log')})", file=sys.stderr)
    print(f"job_queue: {len(jobs)} jobs at the start, {sum(rc == 0 for rc in statuses.values())} finished, "
          f"{len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
