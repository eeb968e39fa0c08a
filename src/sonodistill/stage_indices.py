"""The stage-index convention shared by models (heads on backbone stages) and losses (distillation between them).

Stages are 1-based, shallow to deep; the deepest stage is always the teacher. Kept outside the layers (like
`errors`) because `losses` never imports `models` and `models` sits below `losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sonodistill.errors import ConfigError


def validate_student_stages(student_stages: Sequence[int], num_stages: int) -> tuple[int, ...]:
    """Check 1-based student stage indices against a backbone of `num_stages` stages; returns them sorted.

    The deepest stage (`num_stages`) is always the teacher, so students lie in `1 .. num_stages - 1`
    (the paper's Table 2: {1,4}, {2,4}, ..., {1,2,3,4} -> student_stages (1,), (2,), ..., (1, 2, 3)).
    """
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 2:
        raise ConfigError(f"num_stages must be an integer >= 2 (one student and the teacher), got {num_stages!r}")
    stages = tuple(student_stages)
    if not stages:
        raise ConfigError("student_stages is empty: give at least one 1-based stage index below the deepest")
    for s in stages:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"student_stages must be integers (1-based), got {s!r} in {stages}")
        if not 1 <= s < num_stages:
            raise ConfigError(
                f"student stage {s} out of range: students are 1-based indices in 1..{num_stages - 1}; "
                f"stage {num_stages} (the deepest) is always the teacher"
            )
    if len(set(stages)) != len(stages):
        raise ConfigError(f"student_stages has duplicates: {stages}")
    return tuple(sorted(stages))
