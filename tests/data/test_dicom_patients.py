"""Grouping DICOM files by the PatientID in their headers (as a pseudonym), and the leakage check it allows."""

from pathlib import Path

import pydicom
import pytest

from sonodistill.data.adapters import load_adapter
from sonodistill.data.dicom_patients import dicom_patient_groups, patient_id, pseudonym
from sonodistill.errors import DataError, LeakageError
from tests.serve.conftest import synthetic_frames, write_dicom


def _dicom(path: Path, pid: str | None, seed: int) -> Path:
    """A 3-frame DICOM whose PatientID is `pid` (None: the tag removed); distinct pixels per `seed`."""
    write_dicom(path, synthetic_frames(3, 32, 32, seed=seed))
    ds = pydicom.dcmread(str(path))
    if pid is None:
        del ds.PatientID
    else:
        ds.PatientID = pid
    ds.save_as(str(path))
    return path


def _flat_export(root: Path) -> None:
    """Six visits of six patients, three a class, each visit a folder holding one file named as scanners do."""
    for k, (cls, visit, pid) in enumerate([("a", "v1", "P-001"), ("a", "v2", "P-002"), ("a", "v3", "P-003"),
                                           ("b", "v4", "P-004"), ("b", "v5", "P-005"), ("b", "v6", "P-006")]):
        _dicom(root / cls / visit / f"IM000{k}", pid, seed=k)


def test_pseudonyms_are_stable_and_never_the_id(tmp_path):
    assert pseudonym("P-001") == pseudonym(" P-001 ") != pseudonym("P-002")
    assert pseudonym("P-001").startswith("patient-") and "P-001" not in pseudonym("P-001")
    assert patient_id(_dicom(tmp_path / "x.dcm", "ANONYMOUS", 0)) is None  # an anonymiser's placeholder
    assert patient_id(_dicom(tmp_path / "y.dcm", None, 1)) is None
    assert patient_id(_dicom(tmp_path / "z.dcm", "P-9", 2)) == "P-9"


def test_group_by_dicom_patient_groups_one_patients_files(tmp_path):
    _flat_export(tmp_path / "set")
    _dicom(tmp_path / "set" / "a" / "v7" / "IM0009", "P-001", seed=9)  # P-001's second visit
    by_visit = tmp_path / "set"
    with pytest.raises(LeakageError, match=r"IM0000 \(group 'v1'\) and .*IM0009 \(group 'v7'\) have the same "
                                           r"PatientID.*group_by=dicom-patient"):
        load_adapter("folder", by_visit)  # grouped by visit folder: P-001 in two groups
    m = load_adapter("folder", by_visit, group_by="dicom-patient")
    groups = dict(zip((Path(p).name for p in m.paths), m.groups))
    assert groups["IM0000"] == groups["IM0009"] == pseudonym("P-001") and len(set(m.groups)) == 6
    assert not any("P-0" in g for g in m.groups)  # the IDs never reach the manifest (nor runs, reports)
    u = load_adapter("unlabelled", by_visit, group_by="dicom-patient")
    assert sorted(u.groups) == sorted(m.groups)


def test_inspect_says_how_many_patients_the_headers_name(tmp_path, capsys):
    from sonodistill.cli import main

    _flat_export(tmp_path / "set")
    _dicom(tmp_path / "set" / "b" / "v8" / "IM0010", "ANONYMOUS", seed=10)
    assert main(["data", "inspect", "folder", str(tmp_path / "set"), "--folds", "2"]) == 0  # a visit folder a group
    out = capsys.readouterr().out
    assert ("- DICOM patients (headers): 7 DICOM file(s), 6 distinct PatientID(s) in 6 group(s); 1 without a "
            "PatientID (or with an anonymiser's placeholder)") in out
    assert "- frames per file (headers): min 3 / median 3 / max 3\n" in out and "P-00" not in out


def test_dicom_patient_needs_dicoms_with_an_id(tmp_path):
    _dicom(tmp_path / "set" / "a" / "IM1", "P-1", seed=1)
    _dicom(tmp_path / "set" / "b" / "IM2", None, seed=2)
    with pytest.raises(DataError, match=r"IM2: no PatientID in its DICOM header"):
        load_adapter("folder", tmp_path / "set", group_by="dicom-patient")
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="x.png: group_by dicom-patient reads the PatientID of DICOM files"):
        dicom_patient_groups([str(png)])


def test_one_id_for_every_file_is_not_called_leakage(tmp_path):
    """An anonymised export that wrote one ID for everyone cannot be checked: no error (each folder its group)."""
    for k, cls in enumerate("aabb"):
        _dicom(tmp_path / "set" / cls / f"v{k}" / "IM1", "STUDY-ANON-7", seed=k)
    m = load_adapter("folder", tmp_path / "set")
    assert sorted(m.groups) == ["v0", "v1", "v2", "v3"]


def test_inspect_reads_each_dicom_header_once(tmp_path, capsys, monkeypatch):
    """Typing the set (frame counts), the patient check, and inspect's patient and frames lines read one header a
    file between them (they read it three times: ~1 ms a file each, 10 s of a 10,000-file export)."""
    from sonodistill.cli import main
    from sonodistill.data import readers

    _flat_export(tmp_path / "set")
    reads = []
    real = readers.read_dicom_header
    monkeypatch.setattr(readers, "read_dicom_header", lambda path, tags=None: reads.append(Path(path)) or
                        real(path, tags))
    assert main(["data", "inspect", "folder", str(tmp_path / "set"), "--folds", "2"]) == 0
    assert "6 distinct PatientID(s)" in capsys.readouterr().out
    assert sorted(reads) == sorted((tmp_path / "set").rglob("IM000*"))


def test_header_values_follow_a_changed_file(tmp_path):
    """The kept values belong to the file as it was read: rewriting it (another patient) is read again."""
    from sonodistill.data.readers import dicom_header_values

    path = _dicom(tmp_path / "IM0001", "P-001", seed=0)
    assert dicom_header_values(path)["PatientID"] == "P-001"
    assert dicom_header_values(path)["NumberOfFrames"] == 3
    _dicom(path, "P-002-a-longer-id", seed=1)
    assert dicom_header_values(path)["PatientID"] == "P-002-a-longer-id"
    with pytest.raises(DataError, match="IM0002: cannot read DICOM header"):
        dicom_header_values(tmp_path / "IM0002")
