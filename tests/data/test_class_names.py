"""Class names with spaces, punctuation and Unicode survive the manifest header and every command (issue 16, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sonodistill.cli import main
from sonodistill.data.manifest import Manifest, read_header

pytestmark = pytest.mark.usefixtures("one_thread")

WEIRD = {"hyperechoic": "hypo: soft", "mixed": "mixte #2", "hypoechoic": "plaque dure ü"}
TINY = ["data.size=32", "data.num_frames=4", "data.batch_size=4", "data.augment=false", "model.width=0.125",
        "model.kwargs={temporal_stride: 1}", "optim.warmup_epochs=0", "train.log_every_n_steps=1"]


def test_header_round_trip_and_old_format(tmp_path: Path) -> None:
    table = pd.DataFrame({"path": ["/a.mp4", "/b.mp4"], "group": ["g 1", "g2"], "label": ["hypo: soft", "a|b =c"]})
    m = Manifest(table, ["hypo: soft", "a|b =c"], "video", "my set #1")
    m.to_csv(tmp_path / "m.csv")
    back = Manifest.from_csv(tmp_path / "m.csv")
    assert back.classes == m.classes and back.name == "my set #1" and list(back.table["label"]) == list(table["label"])
    old = tmp_path / "old.csv"  # the header written before the JSON form
    old.write_text("# sonodistill-manifest name=old modality=image classes=x|y\npath,group,label\n/a.png,g,x\n"
                   "/b.png,h,y\n", encoding="utf-8")
    assert read_header(old) == {"name": "old", "modality": "image", "classes": ["x", "y"]}
    assert Manifest.from_csv(old).classes == ["x", "y"]


def test_train_eval_predict_export_with_odd_class_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sonodistill.data.synthetic import write_dataset

    csv = write_dataset("carotid", tmp_path / "set", n=12, seed=3, frames=8, size=48)
    table = pd.read_csv(csv, skiprows=1)
    table["label"] = table["label"].map(WEIRD)
    table[["path", "label", "group"]].to_csv(tmp_path / "set" / "odd.csv", index=False)
    out = tmp_path / "runs"
    sets = [a for s in TINY + [f"data.cache_dir={tmp_path / 'cache'}"] for a in ("--set", s)]
    assert main(["train", "supervised", "--data", f"csv:{tmp_path / 'set' / 'odd.csv'}", "--name", "odd",
                 "--out", str(out), "--folds", "2", "--epochs", "1", *sets]) == 0
    run = out / "odd"
    classes = sorted(WEIRD.values())
    assert Manifest.from_csv(run / "manifest.csv").classes == classes
    assert main(["eval", str(run)]) == 0
    assert "plaque dure ü" in (run / "report.md").read_text(encoding="utf-8")
    capsys.readouterr()
    clip = tmp_path / "set" / table["path"].iloc[0]
    assert main(["predict", str(run), str(clip)]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert sorted(result["probabilities"]) == classes and result["prediction"] in classes
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "export")]) == 0
    meta = json.loads((tmp_path / "export" / "sonodistill-model.json").read_text(encoding="utf-8"))
    assert meta["classes"] == classes
