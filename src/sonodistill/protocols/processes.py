"""Work shared out to spawned worker processes, each with its share of the cores: the demo's recipes and
`train.parallel_folds`. Small CPU models use two single-thread processes far better than one two-thread one
(README, Training speed).

One process per call, at most `workers` at a time, each sending its result (or its error) back through its own
pipe: no queue or lock is shared, so a worker that dies cannot block the others. A stop request (SIGTERM/SIGINT)
in the parent, or a failed call, is passed on to every running worker, which stops at its next training step
(checkpoint kept); no worker outlives the call. A worker's error is re-raised in the parent as itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable, Sequence

from sonodistill.errors import SonoDistillError


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_worker(workers: int, threads: int = 0) -> int:
    """`threads` when set (> 0), else the usable CPUs shared evenly by `workers` (at least 1)."""
    return int(threads) if threads > 0 else max(1, usable_cpus() // max(1, workers))


def _worker(conn: Connection, verbose: bool, fn: Callable[..., Any], args: tuple, log_file: Path | None) -> None:
    """In the spawned process: logging as the CLI's (and into `log_file`, appended), fn(*args), then ("ok", result)
    or ("error", exception)."""
    from sonodistill.console import RunLog, setup_logging

    setup_logging(verbose)
    try:
        with RunLog(log_file, says_why_it_stopped=False) if log_file is not None else contextlib.nullcontext():
            message: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
        message = ("error", exc)
    try:
        conn.send(message)
    except Exception as exc:  # an unpicklable result or error: say so instead of dying silently
        conn.send(("error", SonoDistillError(f"worker process {os.getpid()}: could not send back its "
                                             f"{message[0]!r} ({type(exc).__name__}: {exc}): {message[1]!r}")))
    conn.close()


def map_in_processes(fn: Callable[..., Any], calls: Sequence[tuple], workers: int,
                     log_file: Path | None = None) -> list[Any]:
    """[fn(*args) for args in calls], each call in its own spawned process, `workers` at a time; results in call
    order. `fn` and its arguments must be picklable (a module-level function). Each process's log lines are also
    appended to `log_file` (a run's train.log) when given."""
    from sonodistill.recipes.trainer import STOP, TrainingStopped, stop_on_signals

    ctx = get_context("spawn")
    verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    pending = list(enumerate(calls))
    running: dict[int, tuple[Any, Connection]] = {}
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    signalled = False
    with stop_on_signals():
        while pending or running:
            while pending and len(running) < max(1, workers) and not errors and STOP.signum is None:
                i, args = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(send, verbose, fn, args, log_file), daemon=False)
                proc.start()
                send.close()
                running[i] = (proc, receive)
            if (errors or STOP.signum is not None) and not signalled:  # stop the others at their next step
                pending.clear()
                for proc, _ in running.values():
                    if proc.is_alive():
                        os.kill(proc.pid, STOP.signum or signal.SIGTERM)
                signalled = True
            ready = wait([conn for _, conn in running.values()], timeout=0.5)
            for i, (proc, conn) in list(running.items()):
                if conn not in ready:
                    continue
                try:
                    kind, value = conn.recv()
                except EOFError:  # it died before sending
                    kind, value = "error", None
                proc.join()
                conn.close()
                del running[i]
                if kind == "ok":
                    results[i] = value
                else:
                    errors.append(value if value is not None else SonoDistillError(
                        f"worker process {proc.pid} (call {i + 1} of {len(calls)}) ended without a result, exit "
                        f"code {proc.exitcode} (killed, or out of memory?)"))
    if STOP.signum is not None:
        raise TrainingStopped(STOP.signum, " (passed on to the worker processes, all ended)")
    if errors:
        raise next((e for e in errors if not isinstance(e, TrainingStopped)), errors[0])
    return [results[i] for i in range(len(calls))]
