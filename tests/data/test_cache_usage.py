"""`sonodistill data cache`: what the cache folder holds, and clearing what runs rebuild (never the weights)."""

from __future__ import annotations

import json
import os
import time

import pytest

from sonodistill.cli import main
from sonodistill.data.cache import ClipCache
from sonodistill.data.cache_usage import cache_items, clear_cache, human_bytes
from sonodistill.data.preprocess import PreprocessConfig
from tests.data.test_cache import _image


def _cache(tmp_path):
    """A cache with clips at two settings, a feature file, a weights file; the 64 px clips built 10 days ago."""
    root = tmp_path / "cache"
    clips = ClipCache(root / "clips")
    for i in range(3):
        clips.get(_image(tmp_path / f"i{i}.png", seed=i), PreprocessConfig(size=32))
    clips.get(_image(tmp_path / "i0.png"), PreprocessConfig(size=64, crop_region=False))
    (root / "features").mkdir()
    (root / "features" / "abc.npz").write_bytes(b"x" * 2048)
    (root / "weights").mkdir()
    (root / "weights" / "effnet.safetensors").write_bytes(b"w" * 4096)
    old = time.time() - 10 * 86400
    folder64 = root / "clips" / f"v1-clip-{PreprocessConfig(size=64, crop_region=False).key()}"
    for p in folder64.rglob("*"):
        os.utime(p, (old, old))
    return root, folder64


def test_items_say_settings_files_and_size(tmp_path):
    root, folder64 = _cache(tmp_path)
    items = {i.path.relative_to(root).as_posix(): i for i in cache_items(root)}
    small = items[f"clips/v1-clip-{PreprocessConfig(size=32).key()}"]
    assert small.files == 4 and small.rebuildable  # 3 entries + settings.json
    assert json.loads((small.path / "settings.json").read_text())["size"] == 32
    assert small.settings() == "32 px, crop on, overlay removal on"
    assert items[folder64.relative_to(root).as_posix()].settings() == "64 px, crop off, overlay removal on"
    assert items["features/abc.npz"].bytes == 2048 and items["features/abc.npz"].rebuildable
    assert not items["weights/effnet.safetensors"].rebuildable
    assert cache_items(tmp_path / "none") == []


def test_clear_keeps_the_weights_and_honours_older_than(tmp_path):
    root, folder64 = _cache(tmp_path)
    removed = clear_cache(root, older_than_days=5)
    assert [i.path for i in removed] == [folder64]  # built 10 days ago; the rest today
    assert not folder64.exists()
    removed = clear_cache(root)
    assert {i.kind for i in removed} == {"clips", "features"}
    assert [i.path.name for i in cache_items(root)] == ["effnet.safetensors"]
    with pytest.raises(ValueError, match="older_than_days must be >= 0"):
        clear_cache(root, older_than_days=-1)


def test_data_cache_command(tmp_path, capsys):
    root, _ = _cache(tmp_path)
    assert main(["data", "cache", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| clips/v1-clip-" in out and "| 32 px, crop on, overlay removal on |" in out
    assert "| weights/effnet.safetensors | weights | - | 1 | 4.0 KB |" in out and "rebuildable" in out
    assert main(["data", "cache", "--dir", str(root), "--older-than", "3"]) == 2  # without --clear
    assert "--older-than chooses what --clear deletes" in capsys.readouterr().err
    assert main(["data", "cache", "--dir", str(root), "--clear"]) == 0
    assert "freed " in capsys.readouterr().out and (root / "weights" / "effnet.safetensors").is_file()
    assert human_bytes(512) == "512 B" and human_bytes(3 * 1024**3) == "3.0 GB"
