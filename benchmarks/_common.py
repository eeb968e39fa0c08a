"""What every benchmark script shares: the --threads / --folds / --seed arguments and the process set-up."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_run_arguments(p: argparse.ArgumentParser, folds: bool = True, seed: bool = False) -> None:
    """--threads (default 1), and --folds (default 5) / --seed (default 0) where the script uses them."""
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared CPU)")
    if folds:
        p.add_argument("--folds", type=int, default=5)
    if seed:
        p.add_argument("--seed", type=int, default=0)


def start_run(threads: int) -> None:
    """INFO logging with timestamps, and `threads` torch intra-op threads."""
    import torch

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    torch.set_num_threads(threads)


def seconds_per_step(step: Callable[[], None], steps: int) -> float:
    """Seconds per call of `step` (a training step), averaged over `steps` calls after one warm-up call."""
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps
