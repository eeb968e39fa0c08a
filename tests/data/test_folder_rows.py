"""`expand_folder_rows`: the one reading of a label row that names a folder, shared by the csv adapter and `score`."""

import pickle
from pathlib import Path

import pandas as pd
import pytest

from sonodistill.data.folder_rows import FolderRowError, expand_folder_rows
from sonodistill.errors import DataError


def _touch(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\x89PNG")


def test_folder_rows_become_a_row_a_file_in_table_order(tmp_path):
    for rel in ("p1/b.png", "p1/deep/a.png", "p1/.hidden/c.png", "p1/notes.txt", "p2/d.png"):
        _touch(tmp_path / rel)
    table = pd.DataFrame({"path": ["p1", "loose.png", "p2"], "label": ["x", "y", "z"], "group": ["G1", "G2", "G3"]})
    folders = [tmp_path / "p1", None, tmp_path / "p2"]

    out = expand_folder_rows(table, "path", folders)
    assert [Path(p).relative_to(tmp_path).as_posix() if p != "loose.png" else p for p in out["path"]] == \
        ["p1/b.png", "p1/deep/a.png", "loose.png", "p2/d.png"]
    assert out["label"].tolist() == ["x", "x", "y", "z"] and out["group"].tolist() == ["G1", "G1", "G2", "G3"]
    assert table["path"].tolist() == ["p1", "loose.png", "p2"]  # the caller's table is not changed

    grouped = expand_folder_rows(table, "path", folders, folder_group="group")
    assert grouped["group"].tolist() == ["p1", "p1", "G2", "p2"]  # a folder's files: the folder is the patient


def test_no_folder_row_returns_the_table_and_a_length_mismatch_is_refused(tmp_path):
    table = pd.DataFrame({"path": ["a.png"], "label": ["x"]})
    assert expand_folder_rows(table, "path", [None]) is table
    with pytest.raises(ValueError, match="2 folders for 1 rows"):
        expand_folder_rows(table, "path", [None, None])


def test_a_folder_without_a_supported_file_names_it_and_its_row(tmp_path):
    _touch(tmp_path / "p1" / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    table = pd.DataFrame({"path": ["p1", "empty"], "label": ["x", "y"]})
    with pytest.raises(FolderRowError, match=r"empty: no supported files in it or its sub-folders") as caught:
        expand_folder_rows(table, "path", [tmp_path / "p1", tmp_path / "empty"])
    assert caught.value.row == 1 and isinstance(caught.value, DataError)
    back = pickle.loads(pickle.dumps(caught.value))  # crosses DataLoader worker processes intact
    assert (back.row, back.path, str(back)) == (1, caught.value.path, str(caught.value))
