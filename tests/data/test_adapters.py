"""Adapters: real data counts (from the data README), grouping rules, folder and CSV user data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sonodistill.data.adapters import ADAPTERS, connected_groups, load_adapter, parse_data_spec, pocus_source_key
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, ManifestError


def _touch(path: Path, data: bytes | None = None) -> Path:
    """A small file; by default its content is its own name (identical files in two groups are refused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(str(path).encode() if data is None else data)
    return path


# -- spec parsing and registry -----------------------------------------------------------------
def test_registry_has_all_adapters():
    assert {"lus-blues", "pocus-frames", "hc18", "busi", "folder", "image-masks", "unlabelled", "csv"} <= set(ADAPTERS)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("lus-blues:../shared/data/lus-blues", ("lus-blues", "../shared/data/lus-blues")),
        ("hc18", ("hc18", None)),
        ("csv:/abs/with:colon.csv", ("csv", "/abs/with:colon.csv")),
    ],
)
def test_parse_data_spec(spec, expected):
    assert parse_data_spec(spec) == expected


def test_parse_data_spec_unknown_name():
    with pytest.raises(ConfigError, match="unknown data set 'nope'"):
        parse_data_spec("nope:/x")


def test_missing_shared_root_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SONODISTILL_DATA", str(tmp_path))  # exists, but holds no data sets
    monkeypatch.setattr("sonodistill.data.adapters.dataset_root", lambda name: None)
    with pytest.raises(ConfigError, match="SONODISTILL_DATA"):
        load_adapter("lus-blues")
    with pytest.raises(ConfigError, match="needs a root"):
        load_adapter("folder")


# -- connected-component grouping --------------------------------------------------------------
def test_connected_groups_merges_patients_sharing_a_source():
    # v1 spans p1 and p2 -> one group; p2 also has v2 -> same group; v3/p3 separate.
    src = ["v1", "v1", "v2", "v3", "v4"]
    pat = ["p1", "p2", "p2", "p3", "p1"]
    g = connected_groups(src, pat)
    assert g[0] == g[1] == g[2] == g[4] == "p1+p2"
    assert g[3] == "p3"


def test_pocus_source_key():
    assert pocus_source_key("Cov-Atlas+(44).gif") == "Cov-Atlas+(44)"
    assert pocus_source_key("Cov_Oliviera_2020_Fig15A.jpg") == "Cov_Oliviera_2020_Fig15A"


def test_pocus_adapter_merges_groups_on_a_fake_layout(tmp_path):
    rows = [
        ("frames/covid/a.gif_frame0.jpg", "covid", "a.gif", 0, "p1"),
        ("frames/covid/a.gif_frame1.jpg", "covid", "a.gif", 1, "p2"),  # same source, other patient id
        ("frames/regular/b.mp4_frame0.jpg", "regular", "b.mp4", 0, "p2"),
        ("frames/pneumonia/c.mp4_frame0.jpg", "pneumonia", "c.mp4", 0, "p3"),
    ]
    for p, *_ in rows:
        _touch(tmp_path / p)
    pd.DataFrame(rows, columns=["path", "label", "source_video", "frame_index", "patient_id"]).to_csv(
        tmp_path / "frames.csv", index=False
    )
    pd.DataFrame(
        {"Filename": ["a", "c"], "Comments first medical doctor (MD1)": ["B-lines", ""], "MD2": ["", "consolidation"],
         "Effusion": [1, 0]}
    ).to_csv(tmp_path / "sources.csv", index=False)
    m = load_adapter("pocus-frames", tmp_path)
    assert list(m.groups) == ["p1+p2", "p1+p2", "p1+p2", "p3"]
    assert list(m.table["text"]) == ["B-lines", "B-lines", "", "consolidation"]
    assert list(m.table["source_matched"]) == [True, True, False, True]
    assert m.table["effusion"].iloc[0] == 1.0 and np.isnan(m.table["effusion"].iloc[2])


# -- real data ------------------------------------------------------------------------------------
def test_lus_blues_counts(shared_data):
    m = load_adapter("lus-blues", shared_data / "lus-blues")
    assert m.modality == "video" and len(m) == 287
    assert m.class_counts() == {"0": 101, "1": 75, "2": 69, "3": 42}
    assert len(set(m.groups)) == 50
    for col in ("bluepoint", "n_frames", "fps", "comments", "a_lines", "b_lines", "severity_score", "cov_test"):
        assert col in m.table.columns
    # severity 3 merges the middle classes; b_lines is yes/no (counts from labels.csv)
    assert load_adapter("lus-blues", target="severity3").class_counts() == {"0": 101, "1-2": 144, "3": 42}
    assert load_adapter("lus-blues", target="b_lines").class_counts() == {"no": 107, "yes": 180}
    # covid: the patient's PCR result on each video (157 positive videos of 26 patients, 130 of 24)
    covid = load_adapter("lus-blues", target="covid")
    assert covid.class_counts() == {"negative": 130, "positive": 157}
    assert all(len(set(covid.labels[covid.groups == g])) == 1 for g in set(covid.groups))
    with pytest.raises(ConfigError, match="unknown target"):
        load_adapter("lus-blues", target="cov")


def test_lus_blues_group_is_patient(shared_data):
    m = load_adapter("lus-blues")
    names = [Path(p).name for p in m.paths]
    assert all(n.startswith(f"patient_{g}_") for n, g in zip(names, m.groups))


def test_pocus_counts_and_source_join(shared_data):
    m = load_adapter("pocus-frames")
    assert len(m) == 2062 and m.modality == "image"
    assert m.class_counts() == {"covid": 437, "pneumonia": 463, "regular": 1162}
    # every frame of a source video sits in one group, and every patient id in one group
    t = m.table
    assert t.groupby("source_video")["group"].nunique().max() == 1
    assert t.groupby("patient_id")["group"].nunique().max() == 1
    assert bool(t["source_matched"].all())  # all 142 sources found in sources.csv by stem
    assert t["source_video"].nunique() == 142


def test_hc18(shared_data):
    m = load_adapter("hc18")
    assert len(m) == 845 and not m.has_labels and m.modality == "image"
    assert len(set(m.groups)) == 686
    assert (m.table["target"] > 0).all() and "pixel_size_mm" in m.table.columns
    assert all(Path(p).is_file() for p in m.table["mask"].iloc[:5])
    assert m.groups[0] == "000"  # leading zeros kept


def test_busi(shared_data):
    m = load_adapter("busi")
    assert len(m) == 780
    assert m.class_counts() == {"benign": 437, "malignant": 210, "normal": 133}
    # no patient ids released: one group per image, except one image stored as benign_433 and malignant_145
    assert len(set(m.groups)) == 779 and "benign_433+malignant_145" in set(m.groups)


# -- folder ---------------------------------------------------------------------------------------
def test_folder_adapter(tmp_path):
    for name in ("patient_1_L1.mp4", "patient_1_R1.mp4", "patient_2_L1.mp4"):
        _touch(tmp_path / "data" / ("b" if "L1" in name else "a") / name)
    m = load_adapter("folder", tmp_path / "data")
    assert m.classes == ["a", "b"] and m.modality == "video"
    assert sorted(m.groups) == ["patient_1_L1", "patient_1_R1", "patient_2_L1"]
    m = load_adapter("folder", tmp_path / "data", group_regex=r"^(patient_\d+)_")
    assert sorted(m.groups) == ["patient_1", "patient_1", "patient_2"]


def test_folder_mixed_modalities_is_an_error(tmp_path):
    _touch(tmp_path / "a" / "x.mp4")
    _touch(tmp_path / "b" / "y.png")
    with pytest.raises(ManifestError, match="mixed videos and images"):
        load_adapter("folder", tmp_path)


def test_folder_regex_mismatch_names_row(tmp_path):
    _touch(tmp_path / "a" / "x.png")
    with pytest.raises(ManifestError, match="row 0"):
        load_adapter("folder", tmp_path, group_regex=r"^(patient_\d+)")


def test_numeric_class_names_take_their_numeric_order(tmp_path):
    """Folders (or labels) 0..12 of a score: '2' before '10', not after it; names that are not all numbers sort
    as text."""
    for cls in ("10", "2", "0", "1.5"):
        _touch(tmp_path / "score" / cls / f"{cls}.png")
    assert load_adapter("folder", tmp_path / "score").classes == ["0", "1.5", "2", "10"]
    (tmp_path / "score" / "n").mkdir()
    _touch(tmp_path / "score" / "n" / "n.png")
    assert load_adapter("folder", tmp_path / "score").classes == ["0", "1.5", "10", "2", "n"]
    f = tmp_path / "m.csv"
    f.write_text("path,label,group\n" + "".join(f"score/{c}/{c}.png,{c},{c}\n" for c in ("10", "2", "0")))
    assert load_adapter("csv", f).classes == ["0", "2", "10"]


# -- csv ------------------------------------------------------------------------------------------
def _csv_set(tmp_path: Path) -> Path:
    for n in ("a.png", "b.png", "c.png"):
        _touch(tmp_path / "imgs" / n)
    f = tmp_path / "m.csv"
    f.write_text("file,cls,pid\nimgs/a.png,x,1\nimgs/b.png,y,1\nimgs/c.png,y,2\n")
    return f


def test_csv_adapter_declared_columns(tmp_path):
    f = _csv_set(tmp_path)
    m = load_adapter("csv", f, path_col="file", label_col="cls", group_col="pid")
    assert m.paths[0] == str((tmp_path / "imgs" / "a.png").resolve())
    assert m.classes == ["x", "y"] and list(m.groups) == ["1", "1", "2"] and m.modality == "image"


def test_csv_errors_name_the_row(tmp_path):
    f = _csv_set(tmp_path)
    (tmp_path / "imgs" / "b.png").unlink()
    with pytest.raises(ManifestError, match="row 1: path file not found"):
        load_adapter("csv", f, path_col="file", label_col="cls", group_col="pid")
    _touch(tmp_path / "imgs" / "b.png")
    with pytest.raises(ManifestError, match="row 0: unknown label 'x'"):
        load_adapter("csv", f, path_col="file", label_col="cls", group_col="pid", classes="y|z")
    with pytest.raises(ManifestError, match=r"class\(es\) \['z'\] have no items"):
        load_adapter("csv", f, path_col="file", label_col="cls", group_col="pid", classes=["x", "y", "z"])
    with pytest.raises(ManifestError, match="group column 'group' not found"):
        load_adapter("csv", f, path_col="file", label_col="cls")


def test_csv_rows_naming_a_folder_label_every_file_below_it(tmp_path):
    """One row a patient: a row whose path is a folder (a patient's export) stands for every video or image below it
    (hidden folders skipped), each with the row's label and group; without a group column the folder is the group."""
    for rel in ("exports/p1/study/a.png", "exports/p1/b.png", "exports/p1/.ipynb_checkpoints/b-checkpoint.png",
                "exports/p1/notes.txt", "exports/p2/c.png", "loose.png"):
        _touch(tmp_path / rel)
    (tmp_path / "patients.csv").write_text("path,label,group,site\nexports/p1,covid,P1,x\nexports/p2,normal,P2,y\n"
                                           "loose.png,normal,P3,z\n")
    m = load_adapter("csv", tmp_path / "patients.csv")
    rows = sorted(zip([Path(p).relative_to(tmp_path).as_posix() for p in m.table["path"]], m.table["label"],
                      m.table["group"], m.table["site"]))
    assert rows == [("exports/p1/b.png", "covid", "P1", "x"), ("exports/p1/study/a.png", "covid", "P1", "x"),
                    ("exports/p2/c.png", "normal", "P2", "y"), ("loose.png", "normal", "P3", "z")]
    assert m.classes == ["covid", "normal"] and m.modality == "image"
    m = load_adapter("csv", tmp_path / "patients.csv", group_col=None)
    assert sorted(m.groups) == ["loose", "p1", "p1", "p2"]  # a folder row's files: the folder's group

    (tmp_path / "exports" / "empty").mkdir()
    (tmp_path / "exports" / "empty" / "readme.txt").write_text("no images")
    (tmp_path / "bad.csv").write_text("path,label,group\nexports/p1,covid,P1\nexports/empty,normal,P2\n")
    with pytest.raises(ManifestError, match=r"row 1.*path 'exports/empty' is a folder without a video or image"):
        load_adapter("csv", tmp_path / "bad.csv")
    (tmp_path / "mask.csv").write_text("path,mask,group\nexports/p2,loose.png,P2\n")
    with pytest.raises(ManifestError, match=r"path 'exports/p2' is a folder: a mask belongs to one image"):
        load_adapter("csv", tmp_path / "mask.csv", label_col=None, mask_col="mask")


def test_csv_reads_manifest_to_csv_round_trip(tmp_path):
    f = _csv_set(tmp_path)
    m = load_adapter("csv", f, path_col="file", label_col="cls", group_col="pid", classes="y|x")
    out = tmp_path / "sub" / "written.csv"
    m.to_csv(out)
    back = load_adapter("csv", out)
    assert back.classes == ["y", "x"] and back.paths == m.paths and list(back.groups) == list(m.groups)
    assert back.modality == "image" and isinstance(back, Manifest)


def test_busi_lesions_target_keeps_benign_and_malignant(shared_data):
    from sonodistill.data.adapters import load_adapter

    m = load_adapter("busi", shared_data / "busi", target="lesions")
    assert m.classes == ["benign", "malignant"]
    assert m.class_counts() == {"benign": 437, "malignant": 210}


# -- duplicates and numeric labels (issue 16, items 4 and 10) ----------------------------------------
def test_same_file_twice_is_an_error_naming_the_rows(tmp_path):
    from sonodistill.errors import LeakageError
    from sonodistill.data.splits import inspect_report

    for n in ("a.png", "b.png", "c.png", "d.png"):
        _touch(tmp_path / "imgs" / n)
    f = tmp_path / "m.csv"
    f.write_text("path,label,group\nimgs/a.png,x,1\nimgs/b.png,y,2\nimgs/c.png,x,3\nimgs/d.png,y,4\n")
    assert "Leakage check: passed" in inspect_report(load_adapter("csv", f), n_splits=2)
    f.write_text("path,label,group\nimgs/a.png,x,1\nimgs/b.png,y,2\nimgs/c.png,x,3\nimgs/d.png,y,4\nimgs/a.png,x,9\n")
    with pytest.raises(ManifestError, match=r"rows 0 and 4 list the same file .*a\.png \(groups '1' and '9'\)"):
        load_adapter("csv", f)
    f.write_text("path,label,group\nimgs/a.png,x,1\nimgs/b.png,y,2\nimgs/b.png,y,2\n")
    with pytest.raises(ManifestError, match=r"rows 1 and 2 list the same file .*b\.png \(identical rows\)"):
        load_adapter("csv", f)
    _touch(tmp_path / "imgs" / "copy of a.png", (tmp_path / "imgs" / "a.png").read_bytes())
    f.write_text("path,label,group\nimgs/a.png,x,1\nimgs/b.png,y,2\nimgs/copy of a.png,x,3\n")
    with pytest.raises(LeakageError, match=r"rows 0 and 2 have identical content: .*a\.png \(group '1'\) and "
                                           r".*copy of a\.png \(group '3'\)"):
        load_adapter("csv", f)
    f.write_text("path,label,group\nimgs/a.png,x,1\nimgs/b.png,y,2\nimgs/copy of a.png,x,1\n")
    assert len(load_adapter("csv", f)) == 3  # the same content in one group cannot leak: a warning only


def test_labels_1_and_1_0_are_one_class(tmp_path):
    for n in ("a.png", "b.png", "c.png", "d.png"):
        _touch(tmp_path / "imgs" / n)
    f = tmp_path / "m.csv"
    f.write_text("path,label,group\nimgs/a.png,1,a\nimgs/b.png,1.0,b\nimgs/c.png,0.00,c\nimgs/d.png,0,d\n")
    m = load_adapter("csv", f)
    assert m.classes == ["0", "1"] and m.class_counts() == {"0": 2, "1": 2}
    assert load_adapter("csv", f, classes="1.0|0").classes == ["1", "0"]
    f.write_text("path,label,group\nimgs/a.png,1,a\nimgs/b.png,01,b\nimgs/c.png,0,c\nimgs/d.png,0,d\n")
    with pytest.raises(ManifestError, match=r"labels '1' \(row 0\) and '01' \(row 1\) are the same number"):
        load_adapter("csv", f)
    for cls in ("1", "1.0"):
        _touch(tmp_path / "folders" / cls / f"{cls}.png")
    with pytest.raises(ManifestError, match=r"labels '1' \(row 0\) and '1.0' \(row 1\) are the same number"):
        load_adapter("folder", tmp_path / "folders")


def test_folder_sub_folders_are_groups_and_dicoms_of_any_name_count(tmp_path):
    """A class folder of scanner exports: one sub-folder a patient (their files one group: no leakage between
    folds), DICOMs named IM0001 or by UID, the export's DICOMDIR skipped."""
    from tests.serve.conftest import write_dicom

    frames = np.zeros((2, 8, 8), np.uint8)
    for cls, patient in (("a", "p1"), ("a", "p2"), ("b", "p3")):
        for name in ("IM0001", "1.2.840.10008.7", "DICOMDIR"):  # each file its own SOP instance UID: new bytes
            write_dicom(tmp_path / cls / patient / name, frames)
    write_dicom(tmp_path / "b" / "loose.dcm", frames)
    m = load_adapter("folder", tmp_path)
    assert m.modality == "video" and len(m) == 7
    assert sorted(m.groups) == ["loose", "p1", "p1", "p2", "p2", "p3", "p3"]
    assert sorted(load_adapter("folder", tmp_path, group_by="file").groups) == [  # UID names keep every digit
        "loose", "p1/1.2.840.10008.7", "p1/IM0001", "p2/1.2.840.10008.7", "p2/IM0001", "p3/1.2.840.10008.7",
        "p3/IM0001"]
    (tmp_path / "b" / "p3" / "notes.txt").write_text("not an image")
    with pytest.raises(ManifestError, match=r"unsupported file extension '\.txt'.*notes\.txt"):
        load_adapter("folder", tmp_path)


def test_folder_and_image_masks_skip_hidden_folders(tmp_path):
    """A Jupyter `.ipynb_checkpoints/` copy inside a class, images or masks folder is not a second sample (it would
    train twice and leak across folds) nor a second mask."""
    for rel in ("a/p1/x.png", "a/.ipynb_checkpoints/x-checkpoint.png", "a/p1/.cache/y.png", "b/z.png"):
        _touch(tmp_path / "folders" / rel)
    m = load_adapter("folder", tmp_path / "folders")
    assert sorted(Path(p).name for p in m.table["path"]) == ["x.png", "z.png"]
    _image_masks_tree(tmp_path / "seg")
    n = len(load_adapter("image-masks", tmp_path / "seg"))
    for sub in ("images", "masks"):
        hidden = tmp_path / "seg" / sub / "p1" / ".ipynb_checkpoints"
        hidden.mkdir()
        for f in (tmp_path / "seg" / sub / "p1").iterdir():
            if f.is_file():
                (hidden / f.name).write_bytes(f.read_bytes())
    assert len(load_adapter("image-masks", tmp_path / "seg")) == n


# -- unlabelled -----------------------------------------------------------------------------------
def test_unlabelled_adapter_reads_every_file_with_sub_folder_groups(tmp_path):
    """A folder of unlabelled frames (a pretraining set): every image at any depth, a sub-folder of the root one
    group (a patient), loose files their own; hidden files and folders skipped; no labels."""
    for rel in ("p1/a.png", "p1/day2/b.png", "c.jpg", ".cache/x.png", "p2/.DS_Store.png", "p2/d.png"):
        _touch(tmp_path / "u" / rel)
    m = load_adapter("unlabelled", tmp_path / "u")
    assert m.modality == "image" and not m.has_labels and m.classes == []
    assert [Path(p).relative_to(tmp_path / "u").as_posix() for p in m.paths] == [
        "c.jpg", "p1/a.png", "p1/day2/b.png", "p2/d.png"]
    assert list(m.groups) == ["c", "p1", "p1", "p2"]
    assert list(load_adapter("unlabelled", tmp_path / "u", group_by="file").groups) == [
        "c", "p1/a", "p1/day2/b", "p2/d"]
    assert list(load_adapter("unlabelled", tmp_path / "u", group_regex=r"^(\w)").groups) == ["c", "a", "b", "d"]


def test_unlabelled_adapter_errors_name_the_cause(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist: .*nowhere"):
        load_adapter("unlabelled", tmp_path / "nowhere")
    _touch(tmp_path / "one.png")
    with pytest.raises(ConfigError, match=r"unlabelled adapter: root must be a folder.*one\.png"):
        load_adapter("unlabelled", tmp_path / "one.png")
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    with pytest.raises(ManifestError, match=r"unlabelled adapter: no files in .*empty"):
        load_adapter("unlabelled", tmp_path / "empty")
    _touch(tmp_path / "mixed" / "p1" / "a.mp4")
    _touch(tmp_path / "mixed" / "p2" / "b.png")
    with pytest.raises(ManifestError, match="mixed videos and images.*one as --data and the other in "
                                            "recipe_options.extra_data"):  # how to pretrain on both
        load_adapter("unlabelled", tmp_path / "mixed")
    with pytest.raises(ConfigError, match="group_by must be one of"):
        load_adapter("unlabelled", tmp_path / "mixed", group_by="patient")
    with pytest.raises(ConfigError, match="unknown option"):
        load_adapter("unlabelled", tmp_path / "mixed", target="severity")


# -- image-masks ----------------------------------------------------------------------------------
def _image_masks_tree(root: Path) -> None:
    """Patients p1 / p2 in sub-folders (masks named `<stem>_mask`, `<stem>_Annotation` or as the image) and one
    loose image; every file has its own bytes (identical images in two groups would be refused as leakage)."""
    from PIL import Image

    for i, (image, mask) in enumerate([("p1/a.png", "p1/a_mask.png"), ("p1/b.png", "p1/b_Annotation.bmp"),
                                       ("p2/c.jpg", "p2/c.png"), ("loose.png", "loose_mask.png")]):
        for folder, name in (("images", image), ("masks", mask)):
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 10 * i + (folder == "masks"), np.uint8)).save(root / folder / name)


def test_image_masks_pairs_images_and_masks_by_name(tmp_path):
    _image_masks_tree(tmp_path)
    m = load_adapter("image-masks", tmp_path)
    assert m.modality == "image" and m.classes == [] and len(m) == 4
    rows = {Path(p).relative_to(tmp_path / "images").as_posix(): (g, Path(k).relative_to(tmp_path / "masks").as_posix())
            for p, g, k in zip(m.table["path"], m.table["group"], m.table["mask"])}
    assert rows == {"loose.png": ("loose", "loose_mask.png"), "p1/a.png": ("p1", "p1/a_mask.png"),
                    "p1/b.png": ("p1", "p1/b_Annotation.bmp"), "p2/c.jpg": ("p2", "p2/c.png")}
    assert sorted(load_adapter("image-masks", tmp_path, group_regex=r"^(\w)").groups) == ["a", "b", "c", "l"]
    assert sorted(load_adapter("image-masks", tmp_path, group_by="file").groups) == ["loose", "p1/a", "p1/b", "p2/c"]
    with pytest.raises(ConfigError, match=r"group_by must be one of \['folder', 'file'\], got 'patient'"):
        load_adapter("image-masks", tmp_path, group_by="patient")


def test_image_masks_errors_name_the_files(tmp_path):
    _image_masks_tree(tmp_path)
    (tmp_path / "masks" / "p2" / "c_seg.png").write_bytes((tmp_path / "masks" / "p2" / "c.png").read_bytes())
    with pytest.raises(ManifestError, match=r"c\.jpg has 2 masks: .*c\.png, .*c_seg\.png"):
        load_adapter("image-masks", tmp_path)
    (tmp_path / "masks" / "p2" / "c_seg.png").unlink()
    (tmp_path / "masks" / "p1" / "a_mask.png").rename(tmp_path / "masks" / "p1" / "a-Mask-v2.png")
    with pytest.raises(ManifestError, match=r"1 image\(s\) without a mask .*e\.g\. p1/a\.png"):
        load_adapter("image-masks", tmp_path)
    with pytest.raises(ManifestError, match=r"3 image\(s\) without a mask .*\['-Mask-v2'\]\), e\.g\. loose\.png"):
        load_adapter("image-masks", tmp_path, mask_suffix="-Mask-v2")  # a's mask found (case ignored), not the rest
    (tmp_path / "masks" / "p1" / "a-Mask-v2.png").rename(tmp_path / "masks" / "p1" / "a_mask.png")
    (tmp_path / "masks" / "p3").mkdir()
    (tmp_path / "masks" / "p1" / "a_mask.png").rename(tmp_path / "masks" / "p3" / "a_mask.png")
    with pytest.raises(ManifestError, match=r"without a mask"):  # a mask in another patient's folder is no match
        load_adapter("image-masks", tmp_path)
    (tmp_path / "masks" / "p3" / "a_mask.png").rename(tmp_path / "masks" / "p1" / "a_mask.png")
    (tmp_path / "masks" / "stray.png").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"1 mask\(s\) belong to no image .*stray\.png"):
        load_adapter("image-masks", tmp_path)
    (tmp_path / "masks" / "stray.png").unlink()
    (tmp_path / "images" / "loose_mask.png").write_bytes(b"another image")
    with pytest.raises(ManifestError, match=r"mask .*loose_mask\.png matches two images"):
        load_adapter("image-masks", tmp_path)
    with pytest.raises(ConfigError, match=r"expected ROOT/images/ and ROOT/masks/"):
        load_adapter("image-masks", tmp_path / "images")


def test_image_masks_keeps_images_without_a_mask_as_unlabelled_when_asked(tmp_path):
    _image_masks_tree(tmp_path)
    (tmp_path / "masks" / "p1" / "b_Annotation.bmp").unlink()
    with pytest.raises(ManifestError, match=r"1 image\(s\) without a mask .*option unmasked=unlabelled"):
        load_adapter("image-masks", tmp_path)
    m = load_adapter("image-masks", tmp_path, unmasked="unlabelled")
    masks = dict(zip((Path(p).name for p in m.table["path"]), m.table["mask"]))
    assert masks["b.png"] == "" and all(masks[k] for k in ("a.png", "c.jpg", "loose.png")) and len(m) == 4
    from sonodistill.data.splits import inspect_report

    report = inspect_report(m, n_splits=2)  # how many rows each fold labels and scores (labelled_rows=masks)
    assert "- mask: 3 of 4 rows" in report and "| train with mask | test with mask |" in report
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert sum(int(r[-1].rstrip(" |")) for r in rows) == 3  # every masked row is scored in one fold
    for mask in (tmp_path / "masks").rglob("*.*"):
        mask.unlink()
    with pytest.raises(ManifestError, match=r"none of the 4 images .* has a mask"):
        load_adapter("image-masks", tmp_path, unmasked="unlabelled")
