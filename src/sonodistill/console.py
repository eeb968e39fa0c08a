"""What reaches the user's terminal: our log lines and progress bars, not Lightning's start-up noise (advertising
tips, internal deprecation warnings, every INFO line printed twice by its own console handler)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

_VERBOSE = False
# Warnings raised inside Lightning / torch internals that a user cannot act on (our own warnings still show).
_INTERNAL_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r"Found \d+ module\(s\) in eval mode at the start of training.*",   # frozen stages are eval on purpose
    r"The number of training batches .* is smaller than the logging interval.*",
)


class _LightningTips(logging.Filter):
    """Drops Lightning's advertising tips ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def setup_logging(verbose: bool = False) -> None:
    """The CLI's logging (level, format) and noise filter; also called in worker processes the CLI spawns."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")
    configure(verbose)


def configure(verbose: bool = False) -> None:
    """Filter Lightning's noise once logging is set up; `verbose` (-v) keeps everything."""
    global _VERBOSE
    _VERBOSE = verbose
    if verbose:
        return
    for pattern in _INTERNAL_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for handler in logging.getLogger().handlers:  # every logger's records reach the root's handlers
        if not any(isinstance(f, _LightningTips) for f in handler.filters):
            handler.addFilter(_LightningTips())
    quiet_lightning()


def quiet_lightning() -> None:
    """Once Lightning is imported: its records go to the root handlers only (its own console handlers removed).
    Call after importing Lightning (the trainer does); a no-op before, with -v, or when no root handler exists."""
    if _VERBOSE or "lightning" not in sys.modules or not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)]
        logger.propagate = True


class RunLog:
    """Copy this package's log records (warnings included) into a run's `train.log` (appended: a resumed run adds
    to it) for the duration of a run; an exception that ends the run is written there too, so a run left in the
    background says in its own folder why it stopped."""

    def __init__(self, path: Path, says_why_it_stopped: bool = True) -> None:
        self.says_why_it_stopped = says_why_it_stopped  # False in a fold's worker process: the run's own RunLog says it
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("sonodistill")

    def __enter__(self) -> "RunLog":
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self._level = self.logger.level
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, *_: object) -> None:
        if exc is not None and self.says_why_it_stopped:
            self.logger.error("the run stopped: %s: %s", kind.__name__ if kind else "error", exc)
        self.logger.removeHandler(self.handler)
        self.handler.close()
        if hasattr(self, "_level"):
            self.logger.setLevel(self._level)
