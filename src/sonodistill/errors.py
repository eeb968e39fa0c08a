"""The project's exception types. Every error names the file, row, step or cause it is about.

Each pickles with its own arguments (`__reduce__`), so an error raised in a worker process (parallel folds, the
demo's recipes) reaches the parent as itself."""

from __future__ import annotations

from pathlib import Path


class SonoDistillError(Exception):
    """Base class of every error raised on purpose by sonodistill."""


class DataError(SonoDistillError):
    """A file could not be read or decoded: names the file and the cause."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.cause)


class ManifestError(SonoDistillError):
    """A manifest row (or the manifest as a whole) is invalid: names the row and the cause."""

    def __init__(self, message: str, row: int | None = None) -> None:
        self.row = row
        self.message = message
        super().__init__(message if row is None else f"row {row}: {message}")

    def __reduce__(self) -> tuple:
        return type(self), (self.message, self.row)


class LeakageError(SonoDistillError):
    """A split puts the same group (patient, subject, source video) on both sides."""


class ConfigError(SonoDistillError):
    """A configuration value is unknown, mistyped or inconsistent."""


class NonFiniteLossError(SonoDistillError):
    """A loss term became NaN or infinite: names the step and the term."""

    def __init__(self, step: int, term: str, value: float) -> None:
        self.step = step
        self.term = term
        self.value = value
        super().__init__(
            f"non-finite loss at global step {step}: term '{term}' = {value}. "
            "Training stopped; the last good checkpoint is kept in the run directory."
        )

    def __reduce__(self) -> tuple:
        return type(self), (self.step, self.term, self.value)


class CheckpointError(SonoDistillError):
    """A checkpoint is missing, damaged or does not match the model it is loaded into."""
