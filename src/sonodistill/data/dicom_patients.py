"""The patient a DICOM file belongs to, from its header, as a pseudonym: grouping and the leakage check.

Scanner exports often lie flat (`IM0001`, `IM0002`, ... or files named by UID), so neither the folder nor the file
name says whose a file is; the header's PatientID does. It is never written anywhere: a group is `patient-` plus the
first 12 hex digits of the ID's SHA-256 (a pseudonym: stable, so one patient's files share it; not anonymous, as a
short ID can be found again by trying every value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from sonodistill.errors import DataError, LeakageError

from .manifest import Manifest
from .readers import dicom_header_values, is_dicom_file

#: PatientID values that anonymisers write for everyone: they say nothing about who a file belongs to
PLACEHOLDER_IDS = frozenset({"", "anonymous", "anon", "unknown", "none", "null", "0", "n/a", "na", "-"})


def pseudonym(patient_id: str) -> str:
    """The group name of a PatientID: `patient-` + 12 hex digits of its SHA-256 (the ID itself is never kept)."""
    return "patient-" + hashlib.sha256(patient_id.strip().encode("utf-8")).hexdigest()[:12]


def patient_id(path: str | Path) -> str | None:
    """A DICOM file's PatientID (header only; None when absent or a placeholder); DataError when unreadable."""
    value = str(dicom_header_values(path).get("PatientID", "") or "").strip()
    return None if value.lower() in PLACEHOLDER_IDS else value


def dicom_patient_groups(paths: Sequence[str]) -> list[str]:
    """Each file's group by the PatientID in its DICOM header, as a pseudonym (`group_by: dicom-patient`). A file
    that is not a DICOM, or has no usable PatientID, is a DataError naming it."""
    groups = []
    for p in paths:
        if not is_dicom_file(Path(p)):
            raise DataError(p, "group_by dicom-patient reads the PatientID of DICOM files; this is not one (group "
                               "it by folder, file or group_regex instead)")
        pid = patient_id(p)
        if pid is None:
            raise DataError(p, "no PatientID in its DICOM header (absent, or an anonymiser's placeholder): "
                               "group_by dicom-patient cannot tell whose it is; group by folder or group_regex")
        groups.append(pseudonym(pid))
    return groups


def _patients_by_file(manifest: Manifest) -> list[tuple[str, str, str | None]]:
    """(path, group, pseudonym or None) of each DICOM of the manifest; an unreadable header counts as no ID (the file
    fails where it is read, with its own message)."""
    out = []
    for path, group in zip(manifest.paths, manifest.groups):
        if not is_dicom_file(Path(path)):
            continue
        try:
            pid = patient_id(path)
        except DataError:
            pid = None
        out.append((path, str(group), pseudonym(pid) if pid is not None else None))
    return out


def patients_summary(manifest: Manifest) -> str | None:
    """One line for `data inspect`: how many DICOMs, distinct PatientIDs and groups they fall in; None without
    DICOMs."""
    rows = _patients_by_file(manifest)
    if not rows:
        return None
    ids = {key for _, _, key in rows if key is not None}
    groups = {g for _, g, key in rows if key is not None}
    missing = sum(key is None for _, _, key in rows)
    return (f"{len(rows)} DICOM file(s), {len(ids)} distinct PatientID(s) in {len(groups)} group(s)"
            + (f"; {missing} without a PatientID (or with an anonymiser's placeholder)" if missing else ""))


def check_dicom_patients(manifest: Manifest) -> None:
    """LeakageError when one PatientID (DICOM headers) lies in two of the manifest's groups: its files could then
    fall on both sides of a fold. Files without a usable PatientID, and a set whose DICOMs all carry one ID (an
    anonymiser's, or one patient), are not checked."""
    first: dict[str, tuple[str, str]] = {}  # pseudonym -> (group, path)
    clash: tuple[str, str, str, str] | None = None
    for path, group, key in _patients_by_file(manifest):
        if key is None:
            continue
        seen = first.setdefault(key, (group, path))
        if clash is None and seen[0] != group:
            clash = (seen[1], seen[0], path, group)
    if clash is None or len(first) < 2:
        return
    a, ga, b, gb = clash
    raise LeakageError(f"{manifest.name}: {a} (group '{ga}') and {b} (group '{gb}') have the same PatientID in their "
                       "DICOM headers: one patient in two groups could be on both sides of a fold. Group by patient "
                       "(folder / unlabelled adapters: option group_by=dicom-patient; csv: a group column holding "
                       "the patient)")
