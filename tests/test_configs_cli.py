"""`sonodistill configs`: every packaged config listed with its recipe and description; one printed whole, so a
copy of the output trains exactly as the packaged name does; an unknown name says where to look."""

from __future__ import annotations

import pytest

from sonodistill.cli import main
from sonodistill.config import load_config, packaged_config, packaged_configs


def test_listing_names_every_packaged_config_with_its_recipe_and_purpose(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    names = [p.stem for p in packaged_configs()]
    assert len(names) >= 20 and names == sorted(names)
    for name in names:
        assert f"\n{name} (" in "\n" + out, name
    assert "seg-busi-imagenet (seg_supervised)\n    BUSI lesion segmentation" in out
    assert "dino-efficientnet-imagenet (dino)\n    DINO continued from the ImageNet EfficientNet-Lite0" in out
    assert "demo (recipe from the command line)" in out
    assert "MeDiVLAD frame finetuning on few labels (image data, e.g. pocus-frames): backbone" in out  # not cut at e.g.


def test_printed_config_trains_as_the_packaged_name(capsys, tmp_path):
    assert main(["configs", "seg-hc18-imagenet-5pct"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("#")
    copy = tmp_path / "mine.yaml"
    copy.write_text(text)
    assert load_config(copy) == load_config(packaged_config("seg-hc18-imagenet-5pct"))


def test_unknown_name_lists_the_configs_and_the_command(capsys):
    assert main(["configs", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no packaged config 'nope'" in err and "'seg-busi-imagenet'" in err and "`sonodistill configs`" in err


@pytest.mark.parametrize("name", ["supervised-cpu", "lus-tsm-imagenet"])
def test_train_accepts_the_printed_file(name, capsys, tmp_path):
    from sonodistill.cli import build_parser

    main(["configs", name])
    path = tmp_path / f"{name}.yaml"
    path.write_text(capsys.readouterr().out)
    args = build_parser().parse_args(["train", "supervised", "--config", str(path)])
    assert args.config == str(path) and load_config(path).data == load_config(packaged_config(name)).data
