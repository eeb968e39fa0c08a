"""`sonodistill predict --per-group`: one prediction a patient (an exam, a study) from its inputs' predictions.

A lung exam is several videos of one patient; a label such as COVID belongs to the patient. As `sonodistill eval
--per-group` scores a run, a group's class probabilities are the mean of its inputs' probabilities, and its
prediction the most probable class of that mean.

Which inputs form a group (`input_groups`):
- a folder given as INPUT is one group, named by the folder as given; with `-r`, each of its sub-folders (and all
  below it) is a group of its own, named `INPUT/SUB` (a DICOM export: one folder a patient);
- a file given as INPUT, or a folder read as one clip (`--folder-as-clip`), is its own group;
- with `group_regex`, the first capture group (else the whole match) of the regex searched in each file's name, as
  the training adapters' `group_regex` (a name it does not match is an error naming the file);
- with `by_patient`, the PatientID of each DICOM's header as a pseudonym (`patient-` + 12 hex digits of its SHA-256,
  the training adapters' `group_by: dicom-patient`): a flat export (`IM0001`, ...) of several patients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sonodistill.errors import ConfigError


def input_groups(given: Path, files: list[Path], group_regex: str | None = None, by_patient: bool = False) -> list[str]:
    """The group of each of `files`, expanded from one INPUT `given` (a file or a folder); see the module."""
    if group_regex is not None and by_patient:
        raise ConfigError("group by a regex or by the DICOM PatientID, not both")
    if by_patient:
        from sonodistill.data.dicom_patients import dicom_patient_groups

        return dicom_patient_groups([str(f) for f in files])
    if group_regex is not None:
        from sonodistill.data.adapters import regex_groups

        return regex_groups([str(f) for f in files], group_regex)
    if not given.is_dir() or files == [given]:
        return [str(given) for _ in files]
    groups = []
    for f in files:
        below = f.relative_to(given).parts
        groups.append(str(given / below[0]) if len(below) > 1 else str(given))
    return groups


def group_results(results: list[dict[str, Any]], classes: list[str], decimals: int = 4) -> list[dict[str, Any]]:
    """One entry a group, in order of first appearance, from results carrying `group`: its inputs, the mean of the
    class probabilities of those that were predicted (`prediction`, `probabilities`, `n_predicted`) and the inputs
    that failed (`failed`); a group whose every input failed has `error` instead of probabilities."""
    order: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if "group" not in r:
            raise ConfigError(f"result for {r.get('input')!r} has no group: predict with per_group")
        order.setdefault(str(r["group"]), []).append(r)
    out = []
    for group, members in order.items():
        ok = [r for r in members if "error" not in r]
        entry: dict[str, Any] = {"group": group, "inputs": [str(r["input"]) for r in members],
                                 "n_predicted": len(ok), "failed": [str(r["input"]) for r in members if "error" in r]}
        if ok:
            probs = np.mean([[float(r["probabilities"][c]) for c in classes] for r in ok], axis=0)
            entry["prediction"] = classes[int(np.argmax(probs))]
            entry["probabilities"] = {c: round(float(p), decimals) for c, p in zip(classes, probs)}
        else:
            entry["error"] = f"every input of the group failed ({len(members)})"
        out.append(entry)
    return out
