"""Header frame counts: stills among a video set's files are counted without decoding anything."""

import numpy as np
import pytest

from sonodistill.data.frame_counts import frame_counts, stills_warning
from sonodistill.data.readers import declared_frames
from sonodistill.errors import DataError
from tests.serve.conftest import synthetic_frames, write_dicom, write_video


@pytest.fixture
def export(tmp_path):
    """A scanner export: a 12-frame mp4, a 5-frame cine DICOM, a still DICOM named as scanners do, a PNG."""
    from PIL import Image

    files = {
        "cine.mp4": write_video(tmp_path / "cine.mp4", synthetic_frames(12, 32, 32)),
        "loop.dcm": write_dicom(tmp_path / "loop.dcm", synthetic_frames(5, 32, 32)),
        "IM0001": write_dicom(tmp_path / "IM0001", synthetic_frames(1, 32, 32)),
    }
    Image.fromarray(synthetic_frames(1, 32, 32)[0]).save(tmp_path / "still.png")
    files["still.png"] = tmp_path / "still.png"
    return files


def test_declared_frames_reads_headers_only(export, tmp_path):
    assert {k: declared_frames(p) for k, p in export.items()} == {"cine.mp4": 12, "loop.dcm": 5, "IM0001": 1,
                                                                  "still.png": 1}
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")  # a header cut short
    with pytest.raises(DataError, match="broken.dcm: .*DICOM header"):  # never counted as a still
        declared_frames(broken)
    with pytest.raises(DataError, match="missing.mp4"):
        declared_frames(tmp_path / "missing.mp4")


def test_frame_counts_summary_names_stills_and_unreadable_headers(export, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    counts = frame_counts([str(export["cine.mp4"]), str(export["loop.dcm"]), str(export["IM0001"]), str(broken)])
    assert counts.counts == [12, 5, 1] and counts.stills == [str(export["IM0001"])]
    line = counts.summary()
    assert line.startswith("min 1 / median 5 / max 12; 1 single-frame file(s) (stills, e.g. ")
    assert "IM0001" in line and "1 with an unreadable header (" in line and "broken.mp4" in line


def test_stills_warning_only_when_there_are_stills(export):
    assert stills_warning([str(export["cine.mp4"]), str(export["loop.dcm"])]) is None
    stills = [str(write_dicom(export["cine.mp4"].parent / f"s{i}.dcm", np.full((1, 32, 32), i, np.uint8)))
              for i in range(4)]
    text = stills_warning([str(export["cine.mp4"]), *stills])
    assert text.startswith("4 of 5 files of this video set are single frames (stills: ")
    assert text.count(".dcm") == 3 and ", ...)" in text  # three named, the rest counted


def test_a_set_of_dicom_stills_is_an_image_set(export):
    """A DICOM's modality follows its header's frame count: stills alone (or with images) are an image set, so 2D
    models train on them; with cines or videos they join the video set (training then names them)."""
    from sonodistill.data.adapters import modality_of
    from sonodistill.errors import ManifestError

    still, loop, cine, png = (str(export[k]) for k in ("IM0001", "loop.dcm", "cine.mp4", "still.png"))
    assert modality_of([still]) == "image" and modality_of([still, png]) == "image"
    assert modality_of([still, loop]) == "video" and modality_of([still, cine]) == "video"
    assert modality_of([loop, cine]) == "video"
    with pytest.raises(ManifestError, match="mixed videos and images"):
        modality_of([loop, png])
