"""Two-process gloo harness for the data-parallel tests of losses (CPU, no GPU needed)."""

from __future__ import annotations

import time

import pytest
import torch.multiprocessing as mp


def run_two_processes(worker, tmp: str, limit_s: float = 60.0) -> None:
    """Run `worker(rank, 2, tmp)` in two processes (fork where available: no re-import, < 1 s; else spawn).

    The processes are killed and the test fails if they have not finished within `limit_s`.
    """
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(worker, args=(2, tmp), nprocs=2, join=False, start_method=method)
    deadline = time.monotonic() + limit_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the two gloo processes did not finish within {limit_s:.0f} s")
