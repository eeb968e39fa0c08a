"""The bad-input catalogue: hostile or careless input -> the command -> what the user sees.

One row per case: how the input is made, the command, the exit code (or HTTP status for `serve`) and the
substrings the answer must hold. docs/bad-input.md lists the same cases for users (a test keeps both in step).
Cases marked with an issue item failed before that item was fixed.
"""

from __future__ import annotations

import http.client
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from sonodistill.cli import build_parser, main
from tests.data.hostile import write_huge_frame_count_avi, write_small_avi
from tests.serve.conftest import make_run, synthetic_frames, write_dicom, write_video

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


@dataclass(frozen=True)
class Case:
    """`make(tmp, ctx)` builds the bad input under `tmp` and returns the command's arguments; a command that
    starts with "serve-upload" posts `[extension, file]` to a running `serve` instead."""

    id: str
    make: Callable[[Path, dict], list[str]]
    code: int
    expect: tuple[str, ...]
    issue: str = ""


# -- builders -------------------------------------------------------------------------------------
def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _bomb_png(path: Path) -> Path:
    """A 100 000 x 100 000 PNG header (a few bytes): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return _write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
                  + chunk(b"IEND", b""))


def _truncated_avi(path: Path) -> Path:
    data = write_small_avi(path, frames=20).read_bytes()
    return _write(path, data[: len(data) // 2])


def _images(tmp: Path, names: list[str]) -> None:
    for i, name in enumerate(names):  # distinct content per file
        _write(tmp / name, f"image {i} {name}")


def _csv_set(tmp: Path, rows: str, files: int = 4, sep: str = ",", encoding: str = "utf-8") -> list[str]:
    """A csv data set: files imgs/0.png..; `rows` the CSV body under 'path,label,group' (`sep` between the names)."""
    _images(tmp, [f"imgs/{i}.png" for i in range(files)])
    csv = _write(tmp / "set.csv", (sep.join(["path", "label", "group"]) + "\n" + rows).encode(encoding))
    return ["data", "inspect", "csv", str(csv), "--folds", "2"]


def _run_without(tmp: Path, ctx: dict, name: str) -> list[str]:
    run = make_run(tmp, folds=2)
    (run / name).unlink()
    return ["predict", str(run), str(ctx["video"])]


def _seeds_parent(tmp: Path, ctx: dict) -> list[str]:
    """The parent of a `--seeds` run (config.yaml and seed_<s>/ runs) given where one model is expected."""
    parent = tmp / "seeds"
    for s in (0, 1):
        make_run(parent, name=f"seed_{s}", folds=1)
    (parent / "config.yaml").write_bytes((parent / "seed_0" / "config.yaml").read_bytes())
    return ["predict", str(parent), str(ctx["video"])]


def _still_images(tmp: Path, ctx: dict) -> list[str]:
    """Two PNG images given to a video classifier (a folder of images scored by the wrong model)."""
    from PIL import Image

    frames = synthetic_frames(2)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp / f"still{i}.png")
    return ["predict", ctx["run"], str(tmp / "still0.png"), str(tmp / "still1.png")]


def _dicom_visits(tmp: Path, ctx: dict) -> list[str]:
    """A flat export in visit folders: patient P-1's two visits are two groups (and P-2, P-3 one each)."""
    import pydicom

    for k, (cls, visit, pid) in enumerate([("a", "visit1", "P-1"), ("b", "visit2", "P-1"), ("a", "visit3", "P-2"),
                                           ("b", "visit4", "P-3")]):
        path = write_dicom(tmp / "set" / cls / visit / "IM0001", synthetic_frames(3, 32, 32, seed=k))
        ds = pydicom.dcmread(str(path))
        ds.PatientID = pid
        ds.save_as(str(path))
    return ["data", "inspect", "folder", str(tmp / "set"), "--folds", "2"]


def _run_weights(tmp: Path, ctx: dict, data: bytes | None) -> list[str]:
    run = make_run(tmp, folds=2)
    weights = run / "fold_1" / "model.safetensors"
    if data is None:
        weights.unlink()
    else:
        weights.write_bytes(data)
    return ["predict", str(run), str(ctx["video"])]


_PICKLE = b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x05echo!\x94\x85\x94R\x94."

CASES = [
    # files: data probe decodes completely; predict and serve keep going past a bad file
    Case("huge-frame-count-avi", lambda t, c: ["data", "probe", str(write_huge_frame_count_avi(t / "huge.avi"))],
         1, ("huge.avi", "decoded 3 of the 2147483647 frames its header declares"), "16.1"),
    Case("huge-frame-count-avi-predict",
         lambda t, c: ["predict", c["run"], str(c["video"]), str(write_huge_frame_count_avi(t / "huge.avi"))],
         1, ('"probabilities"', "2147483647 frames", "1 input(s) could not be read"), "16.1"),
    Case("huge-frame-count-avi-serve",
         lambda t, c: ["serve-upload", ".avi", str(write_huge_frame_count_avi(t / "huge.avi"))],
         422, ('"input": "upload.avi"', "2147483647 frames"), "16.1"),
    Case("truncated-video", lambda t, c: ["data", "probe", str(_truncated_avi(t / "cut.avi"))],
         1, ("cut.avi", "video decode failed after")),
    Case("zero-byte-file", lambda t, c: ["data", "probe", str(_write(t / "empty.mp4", b""))],
         1, ("empty.mp4", "empty file (0 bytes)")),
    Case("text-renamed-mp4", lambda t, c: ["data", "probe", str(_write(t / "notes.mp4", "not a video\n" * 20))],
         1, ("notes.mp4", "cannot open as video")),
    Case("dicom-without-pixels",
         lambda t, c: ["data", "probe", str(_strip_pixels(write_dicom(t / "nopix.dcm", synthetic_frames(2, 32, 40))))],
         1, ("nopix.dcm", "DICOM file has no pixel data")),
    Case("dicom-huge-frame-count",
         lambda t, c: ["data", "probe", str(_huge_dicom(write_dicom(t / "big.dcm", synthetic_frames(2, 32, 40))))],
         1, ("big.dcm", "number of bytes of pixel data is less than expected")),
    Case("decompression-bomb-png", lambda t, c: ["data", "probe", str(_bomb_png(t / "bomb.png"))],
         1, ("bomb.png", "could be decompression bomb")),
    Case("missing-file", lambda t, c: ["data", "probe", str(t / "nowhere.mp4")], 1, ("nowhere.mp4", "file not found")),
    Case("missing-input-predict", lambda t, c: ["predict", c["run"], str(c["video"]), str(t / "gone.mp4")],
         1, ('"probabilities"', "gone.mp4: file not found"), "16.1"),
    Case("folder-without-supported-files",
         lambda t, c: (_write(t / "export" / "notes.txt", "no pixels"), _images(t, ["export/series1/1.png"]),
                       ["data", "probe", str(t / "export")])[-1],
         1, ("export\terror: no supported files in it (its sub-folders are read with --recursive)",)),
    # data sets: data inspect (and train) load them through the same adapters
    Case("empty-class-folder", lambda t, c: (_images(t, ["set/a/1.png"]), (t / "set" / "b").mkdir(),
                                            ["data", "inspect", "folder", str(t / "set")])[-1],
         2, ("class folder 'b' is empty",)),
    Case("patient-sub-folders-one-group",
         lambda t, c: (_images(t, [f"set/{k}/p{k}{j}/{i}.png" for k in "ab" for j in (1, 2) for i in (1, 2)]),
                       ["data", "inspect", "folder", str(t / "set"), "--folds", "2"])[-1],
         0, ("- groups: 4; items per group: min 2", "Leakage check: passed")),
    Case("image-without-mask",
         lambda t, c: (_images(t, ["set/images/1.png", "set/images/2.png", "set/masks/2_mask.png"]),
                       ["data", "inspect", "image-masks", str(t / "set")])[-1],
         2, ("1 image(s) without a mask", "e.g. 1.png", "option unmasked=unlabelled")),
    Case("classifier-on-unlabelled-folder",
         lambda t, c: (_images(t, ["frames/p1/1.png", "frames/p2/2.png"]),
                       ["train", "supervised", "--data", f"unlabelled:{t / 'frames'}", "--out", str(t / "runs"),
                        "--name", "x"])[-1],
         2, ("supervised trains a classifier, and frames has no labels", "train dino")),
    Case("images-with-a-video-backbone",
         lambda t, c: (_images(t, [f"set/{k}/{i}.png" for k in "ab" for i in range(5)]),
                       ["train", "supervised", "--data", f"folder:{t / 'set'}", "--out", str(t / "runs"),
                        "--name", "x"])[-1],
         2, ("set holds images, and model.backbone 'resnet10_3d' is a video backbone", "give a frame backbone",
             "--config pocus-finetune-imagenet")),
    Case("dualdistill-on-images",
         lambda t, c: (_images(t, [f"set/{k}/{i}.png" for k in "ab" for i in range(5)]),
                       ["train", "dualdistill", "--data", f"folder:{t / 'set'}", "--out", str(t / "runs"),
                        "--name", "x"])[-1],
         2, ("dualdistill is defined on videos, and set holds images",)),
    Case("segmentation-without-masks",
         lambda t, c: (_images(t, [f"set/{k}/{i}.png" for k in "ab" for i in range(5)]),
                       ["train", "seg_supervised", "--data", f"folder:{t / 'set'}", "--out", str(t / "runs"),
                        "--name", "x"])[-1],
         2, ("manifest 'set' has no mask column: segmentation needs masks",)),
    Case("labelled-share-of-a-classifier",
         lambda t, c: (_images(t, [f"set/{k}/{i}.png" for k in "ab" for i in range(5)]),
                       ["train", "supervised", "--config", "pocus-finetune-imagenet", "--data", f"folder:{t / 'set'}",
                        "--labelled", "0.1", "--out", str(t / "runs"), "--name", "x"])[-1],
         2, ("--labelled chooses the labelled share of a semi-supervised segmentation run",
             "supervised trains on every labelled item")),
    Case("option-of-another-recipe",
         lambda t, c: (_images(t, [f"set/{k}/{i}.png" for k in "ab" for i in range(5)]),
                       ["train", "supervised", "--config", "pocus-finetune-imagenet", "--data", f"folder:{t / 'set'}",
                        "--set", "recipe_options.alpha=0.5", "--out", str(t / "runs"), "--name", "x"])[-1],
         2, ("recipe 'supervised' takes no recipe_options, got ['alpha']",)),
    Case("learning-rate-zero",
         lambda t, c: (_images(t, [f"set/{k}/{i}.png" for k in "ab" for i in range(5)]),
                       ["train", "supervised", "--config", "pocus-finetune-imagenet", "--data", f"folder:{t / 'set'}",
                        "--set", "optim.lr=0", "--out", str(t / "runs"), "--name", "x"])[-1],
         2, ("optim.lr must be > 0, got 0.0: a run must learn",)),
    Case("frame-size-zero",
         lambda t, c: (_images(t, [f"set/{k}/{i}.png" for k in "ab" for i in range(5)]),
                       ["train", "supervised", "--config", "pocus-finetune-imagenet", "--data", f"folder:{t / 'set'}",
                        "--set", "data.size=0", "--out", str(t / "runs"), "--name", "x"])[-1],
         2, ("data.size must be >= 1, got 0",)),
    Case("class-names-with-spaces",
         lambda t, c: _csv_set(t, "imgs/0.png,hypo: soft,a\nimgs/1.png,plaque dure ü,b\nimgs/2.png,hypo: soft,c\n"
                                  "imgs/3.png,plaque dure ü,d\n"),
         0, ("classes: hypo: soft: 2, plaque dure ü: 2", "Leakage check: passed")),
    Case("class-names-with-spaces-run",
         lambda t, c: ["predict", str(make_run(t, classes=["hypo: soft", "mixte #2", "plaque dure ü"])),
                       str(c["video"])],
         0, ('"hypo: soft"', '"mixte #2"', '"plaque dure \\u00fc"'), "16.2"),
    Case("csv-windows-1252",
         lambda t, c: _csv_set(t, "imgs/0.png,plaque dure \xfc,a\nimgs/1.png,y,b\n", encoding="cp1252"),
         2, ("set.csv: not UTF-8 text (byte 0xFC on line 2): save it as UTF-8",)),
    Case("csv-semicolons",
         lambda t, c: _csv_set(t, "imgs/0.png;x;a\nimgs/1.png;y;b\nimgs/2.png;x;c\nimgs/3.png;y;d\n", sep=";"),
         0, ("classes: x: 2, y: 2", "Leakage check: passed")),
    Case("csv-windows-drive-letter",
         lambda t, c: _csv_set(t, "C:\\scans\\0.png,x,a\nimgs/1.png,y,b\n"),
         2, ("row 0: path 'C:\\scans\\0.png' is a Windows path with a drive letter", "relative to the CSV's folder")),
    Case("same-file-two-groups",
         lambda t, c: _csv_set(t, "imgs/0.png,x,a\nimgs/1.png,y,b\nimgs/2.png,x,c\nimgs/3.png,y,d\nimgs/0.png,x,e\n"),
         2, ("rows 0 and 4 list the same file", "(groups 'a' and 'e')"), "16.4"),
    Case("exact-duplicate-rows",
         lambda t, c: _csv_set(t, "imgs/0.png,x,a\nimgs/1.png,y,b\nimgs/1.png,y,b\nimgs/2.png,x,c\n"),
         2, ("rows 1 and 2 list the same file", "(identical rows)"), "16.4"),
    Case("identical-content-two-paths",
         lambda t, c: (_write(t / "imgs" / "copy.png", "image 0 imgs/0.png"),
                       _csv_set(t, "imgs/0.png,x,a\nimgs/1.png,y,b\nimgs/2.png,x,c\nimgs/copy.png,x,d\n"))[-1],
         2, ("rows 0 and 3 have identical content", "copy.png (group 'd')"), "16.4"),
    Case("one-patient-two-groups-dicom", _dicom_visits, 2,
         ("have the same PatientID in their DICOM headers", "(group 'visit1')", "(group 'visit2')",
          "group_by=dicom-patient")),
    Case("csv-without-group-column",
         lambda t, c: (_images(t, [f"imgs/{i}.png" for i in range(4)]),
                       ["data", "inspect", "csv", str(_write(t / "set.csv", "path,label\nimgs/0.png,x\nimgs/1.png,y\n"
                                                             "imgs/2.png,x\nimgs/3.png,y\n")), "--folds", "2"])[-1],
         2, ("group column 'group' not found (columns: ['path', 'label'])", "option group_col=COLUMN",
             "group_col=null (each row its own group; a row naming a folder: its files one group)")),
    Case("csv-rows-independent",
         lambda t, c: (_images(t, [f"imgs/{i}.png" for i in range(4)]),
                       ["data", "inspect", "csv", str(_write(t / "set.csv", "path,label\nimgs/0.png,x\nimgs/1.png,y\n"
                                                             "imgs/2.png,x\nimgs/3.png,y\n")), "--folds", "2",
                        "--option", "group_col=null"])[-1],
         0, ("- groups: 4; items per group: min 1", "Leakage check: passed")),
    Case("labels-1-and-1.0",
         lambda t, c: _csv_set(t, "imgs/0.png,1,a\nimgs/1.png,1.0,b\nimgs/2.png,0,c\nimgs/3.png,0.0,d\n"),
         0, ("classes: 0: 2, 1: 2",), "16.10"),
    Case("labels-1-and-01",
         lambda t, c: _csv_set(t, "imgs/0.png,1,a\nimgs/1.png,01,b\nimgs/2.png,0,c\nimgs/3.png,0,d\n"),
         2, ("labels '1' (row 0) and '01' (row 1) are the same number written two ways",), "16.10"),
    # configuration and command line
    Case("unknown-config-field",
         lambda t, c: ["train", "supervised", "--out", str(t / "runs"), "--set", "train.epoch=1"],
         2, ("unknown field(s) ['epoch']",)),
    Case("ablation-with-seeds",
         lambda t, c: ["train", "dualdistill", "--config", "demo", "--data", "synthetic:carotid", "--ablation",
                       "--seeds", "0,1", "--out", str(t / "runs"), "--name", "x"],
         2, ("--ablation trains its 8 rows with one seed (train.seed); it does not take --seeds",)),
    Case("fold-of-a-run-without-folds",
         lambda t, c: (_images(t, [f"frames/{i}.png" for i in range(4)]),
                       ["train", "dino", "--config", "dino-efficientnet-imagenet", "--data", f"unlabelled:{t / 'frames'}",
                        "--fold", "1", "--out", str(t / "runs"), "--name", "x"])[-1],
         2, ("train.fold=1 (--fold): recipe 'dino' trains once on every item, without folds",)),
    Case("invalid-group-regex",
         lambda t, c: (_images(t, [f"frames/{i}.png" for i in range(4)]),
                       ["data", "inspect", "unlabelled", str(t / "frames"), "--option", "group_regex=(patient"])[-1],
         2, ("group_regex '(patient' is not a valid regular expression: missing ), unterminated subpattern",)),
    Case("hash-in-data-path",
         lambda t, c: ["train", "supervised", "--data", f"folder:{t / 'set #1'}", "--out", str(t / "runs"),
                       "--name", "x"],
         2, ("does not exist", "set #1"), "16.5"),
    # run directories
    Case("missing-run-file", lambda t, c: _run_without(t, c, "manifest.csv"), 2, ("manifest.csv is missing",)),
    Case("missing-fold-weights", lambda t, c: _run_weights(t, c, None),
         0, ('"warnings"', "ensemble of 1 of the run's 2 fold models", "fold_1"), "16.10"),
    Case("pickle-as-weights", lambda t, c: _run_weights(t, c, _PICKLE),
         2, ("fold_1/model.safetensors", "cannot read safetensors")),
    Case("still-image-into-video-model", _still_images,
         0, ('"warnings"', "2 of 2 inputs have fewer frames than this video model's 8-frame clips (2 still image(s))",
             '"input_warning": "a still image (one frame)')),
    Case("unwritable-output", lambda t, c: ["export", c["run"], "--out", "/proc/sonodistill-export"],
         2, ("error: /proc/sonodistill-export", "(-v shows the traceback)")),
    Case("seeds-run-as-model", _seeds_parent,
         2, ("is a run of several seeds (seed_0, seed_1), each with its own models: serve one of them", "seed_0")),
    # serve uploads
    Case("path-traversal-extension",
         lambda t, c: ["serve-upload", "../../../tmp/evil.mp4", str(c["video"])], 415, ("unsupported file type",)),
    Case("extension-content-mismatch",
         lambda t, c: ["serve-upload", ".mp4", str(_write(t / "x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200))],
         415, ("does not match the extension .mp4",)),
]


def _huge_dicom(path: Path) -> Path:
    """Declare 2^31-1 frames of 65535 x 65535 over two small frames of pixel data."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.NumberOfFrames, ds.Rows, ds.Columns = 2**31 - 1, 65535, 65535
    ds.save_as(path)
    return path


def _strip_pixels(path: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


# -- running a case -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("catalogue")
    return {"run": str(make_run(root / "runs")), "video": write_video(root / "clip.mp4", synthetic_frames(10))}


@pytest.fixture(scope="module")
def server(ctx):
    from sonodistill.serve.app import make_server
    from sonodistill.serve.loading import load_model

    srv = make_server(load_model(ctx["run"]), "127.0.0.1", 0, explain=False, read_timeout=10)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _upload(srv, ext: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=60)
    conn.request("POST", "/api/predict", body=Path(path).read_bytes(), headers={"X-File-Extension": ext})
    resp = conn.getresponse()
    status, body = resp.status, resp.read().decode("utf-8")
    conn.close()
    return status, body


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, ctx: dict, request: pytest.FixtureRequest,
                   capsys: pytest.CaptureFixture) -> None:
    args = case.make(tmp_path, ctx)
    if args[0] == "serve-upload":
        code, text = _upload(request.getfixturevalue("server"), *args[1:])
    else:
        code = main(args)
        out = capsys.readouterr()
        text = out.out + out.err
    assert code == case.code, text
    for part in case.expect:
        assert part in text, f"{part!r} not in:\n{text}"
    if args[0] == "train" and case.code == 2:  # refused before anything was written
        assert not (tmp_path / "runs").exists(), sorted((tmp_path / "runs").rglob("*"))


def test_docs_list_every_case() -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/bad-input.md lacks {missing}"


# -- command-line values are text, not YAML (issue 16, item 5) ------------------------------------------------
def _config(argv: list[str]):
    from sonodistill.commands.train import config_from_args

    args = build_parser().parse_args(["train", "supervised", *argv])
    return config_from_args(args, "supervised")


def test_cli_paths_and_names_are_text_not_yaml(tmp_path: Path) -> None:
    cfg = _config(["--data", "folder:/data/set #1", "--name", "run #2", "--out", "runs #3"])
    assert cfg.data.spec == "folder:/data/set #1" and cfg.run_dir == Path("runs #3") / "run #2"
    for word in ("yes", "no", "on", "null", "1e3", "[a]"):
        assert _config(["--name", word]).name == word
    assert _config(["--set", "data.target=severity: 3"]).data.target == "severity: 3"
    from sonodistill.config import load_config

    assert load_config(None, ["name=on", "out_dir=runs #1"]).run_dir == Path("runs #1") / "on"


def test_set_values_are_typed_by_the_declared_field() -> None:
    cfg = _config(["--set", "train.epochs=3", "--set", "optim.lr=1e-3", "--set", "data.augment=no",
                   "--set", "model.kwargs={temporal_stride: 1}", "--set", "data.target=null",
                   "--set", "optim.milestones=[2, 4]", "--set", "recipe_options.beta=0.5"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == pytest.approx(1e-3) and cfg.data.augment is False
    assert cfg.model.kwargs == {"temporal_stride": 1} and cfg.data.target is None
    assert cfg.optim.milestones == [2, 4] and cfg.recipe_options == {"beta": 0.5}
    from sonodistill.errors import ConfigError

    with pytest.raises(ConfigError, match="train.epochs: expected int, got 'three'"):
        _config(["--set", "train.epochs=three"])
    assert np.isclose(_config(["--set", "train.limit_train_batches=0.5"]).train.limit_train_batches, 0.5)


def test_an_os_error_without_a_file_keeps_its_traceback(monkeypatch) -> None:
    """Only file-system errors naming a file become `error: FILE: cause`; any other OSError is not hidden."""
    import sonodistill.commands.bedside as bedside

    def fail(args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bedside, "_export", fail)
    with pytest.raises(OSError, match="No space left"):
        main(["export", "some-run"])
