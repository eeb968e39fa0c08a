"""How many frames a video set's files hold, from their headers: scanner exports mix cine loops with stills.

A single-frame DICOM (a still) in a video set is read as a clip of one frame, which a video model sees as that
frame repeated T times: `data inspect` counts them, and training a video model logs a warning naming them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sonodistill.errors import DataError

from .readers import declared_frames


@dataclass
class FrameCounts:
    """Header frame counts of a set's files: `counts` where declared, the still (1-frame) files, the files whose
    container gives no count, and those whose header could not be read (with the reason)."""

    counts: list[int] = field(default_factory=list)
    stills: list[str] = field(default_factory=list)
    undeclared: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: min / median / max frames, stills, files without a count or an unreadable header."""
        parts = []
        if self.counts:
            c = np.asarray(self.counts)
            parts.append(f"min {c.min()} / median {int(np.median(c))} / max {c.max()}")
        if self.stills:
            parts.append(f"{len(self.stills)} single-frame file(s) (stills, e.g. {self.stills[0]}): a video model "
                         "sees each as its one frame repeated")
        if self.undeclared:
            parts.append(f"{len(self.undeclared)} without a count in their header")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} with an unreadable header ({self.unreadable[0]}; "
                         "`sonodistill data probe` decodes them)")
        return "; ".join(parts)


def frame_counts(paths: Sequence[str]) -> FrameCounts:
    """The header frame counts of `paths` (`readers.declared_frames`), nothing decoded."""
    out = FrameCounts()
    for p in paths:
        try:
            n = declared_frames(p)
        except DataError as exc:
            out.unreadable.append(str(exc))
            continue
        if n is None:
            out.undeclared.append(str(p))
            continue
        out.counts.append(n)
        if n == 1:
            out.stills.append(str(p))
    return out


def stills_warning(paths: Sequence[str]) -> str | None:
    """A warning when some files of a video set are stills (one frame), naming up to three; None otherwise."""
    stills = frame_counts(paths).stills
    if not stills:
        return None
    names = ", ".join(stills[:3]) + (", ..." if len(stills) > 3 else "")
    return (f"{len(stills)} of {len(paths)} files of this video set are single frames (stills: {names}): a clip of T "
            "frames read from one is that frame repeated T times; train on the stills as an image set, or leave them "
            "out")
