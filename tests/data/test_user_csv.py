"""A user's CSV as spreadsheets save it: UTF-8 with or without BOM; `,`, `;` or tab; other encodings refused."""

import pytest

from sonodistill.data.adapters import load_adapter
from sonodistill.data.user_csv import header_separator, read_user_csv
from sonodistill.errors import DataError

ROWS = [("img0.png", "a", "p0"), ("img é.png", "b", "p1")]


def _write(path, sep: str, encoding: str = "utf-8", newline: str = "\n", bom: bool = False) -> None:
    text = newline.join(sep.join(r) for r in [("path", "label", "group"), *ROWS]) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))


@pytest.mark.parametrize("sep", [",", ";", "\t"])
@pytest.mark.parametrize("bom,newline", [(False, "\n"), (True, "\r\n")])
def test_every_spreadsheet_form_reads_the_same_table(tmp_path, sep, bom, newline):
    f = tmp_path / "labels.csv"
    _write(f, sep, bom=bom, newline=newline)
    t = read_user_csv(f, dtype=str)
    assert list(t.columns) == ["path", "label", "group"]
    assert [tuple(r) for r in t.itertuples(index=False)] == ROWS


def test_the_header_line_decides_the_separator():
    assert header_separator("path,label;x") == ","  # a comma first: a ';' is then part of a name
    assert header_separator("path;label\tx") == ";"
    assert header_separator("path\tlabel") == "\t"
    assert header_separator("path") == ","


def test_a_file_in_another_encoding_names_the_line_and_byte(tmp_path):
    f = tmp_path / "excel.csv"
    _write(f, ",", encoding="cp1252")  # Excel's older "CSV": é is the byte 0xE9
    with pytest.raises(DataError, match=r"excel.csv: not UTF-8 text \(byte 0xE9 on line 3\): save it as UTF-8"):
        read_user_csv(f)


def test_skip_lines_keeps_the_separator_of_the_table_header(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text('# sonodistill-manifest {"classes": ["a", "b"]}\npath;label\nx.png;a\n', encoding="utf-8")
    t = read_user_csv(f, skip_lines=1)
    assert list(t.columns) == ["path", "label"] and t["path"].tolist() == ["x.png"]


def test_csv_adapter_reads_a_semicolon_file_and_refuses_windows_1252(tmp_path):
    for name in ("img0.png", "img é.png"):
        (tmp_path / name).write_bytes(f"image {name}".encode())
    _write(tmp_path / "set.csv", ";", bom=True, newline="\r\n")
    m = load_adapter("csv", tmp_path / "set.csv")
    assert sorted(m.classes) == ["a", "b"] and sorted(m.groups) == ["p0", "p1"]
    _write(tmp_path / "old.csv", ",", encoding="cp1252")
    with pytest.raises(DataError, match="old.csv: not UTF-8 text"):
        load_adapter("csv", tmp_path / "old.csv")


def test_paths_written_on_windows_read_with_forward_slashes(tmp_path):
    from sonodistill.commands.score import _candidates, _file_name
    from sonodistill.errors import ManifestError

    for name in ("img0.png", "img1.png"):
        (tmp_path / "exports" / "p1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "exports" / "p1" / name).write_bytes(f"image {name}".encode())
    (tmp_path / "win.csv").write_text("path,label,group\r\nexports\\p1\\img0.png,a,p0\r\nexports\\p1\\img1.png,b,p1\r\n")
    m = load_adapter("csv", tmp_path / "win.csv")
    assert sorted(m.paths) == [str(tmp_path / "exports" / "p1" / n) for n in ("img0.png", "img1.png")]
    (tmp_path / "drive.csv").write_text("path,label,group\nC:\\scans\\img0.png,a,p0\n")
    with pytest.raises(ManifestError, match=r"row 0: path 'C:\\scans\\img0.png' is a Windows path with a drive letter"):
        load_adapter("csv", tmp_path / "drive.csv")
    # score's labels: the same cell matches the prediction of the file, by path or by file name
    assert str(tmp_path / "exports" / "p1" / "img0.png") in _candidates("exports\\p1\\img0.png", [tmp_path])
    assert _file_name("exports\\p1\\img0.png") == "img0.png" and _file_name("a/b.mp4") == "b.mp4"
