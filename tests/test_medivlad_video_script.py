"""benchmarks/medivlad_video.py: encoders named by their weights (`--weights NAME=PATH`)."""

from __future__ import annotations

import argparse

import pytest

from tests.benchmark_scripts import benchmark_script


def test_weights_name_an_efficientnet_encoder_initialised_from_the_path(tmp_path):
    final = tmp_path / "pocus-finetune" / "final"
    final.mkdir(parents=True)
    with benchmark_script("medivlad_video") as mv:
        args = argparse.Namespace(weights=mv.parse_weights([f"pocus-ft={final}"]), dino_effnet="")
        over = mv.encoder_overrides(tmp_path, "pocus-ft", args)
        assert f"recipe_options.init_from={final}" in over
        assert "model.backbone=efficientnet_lite0" in over
        assert str(final) in mv.title("pocus-ft", args)
        assert mv.title("imagenet", args) == mv.TITLES["imagenet"]


def test_weights_refuse_missing_files_malformed_specs_and_taken_names(tmp_path):
    with benchmark_script("medivlad_video") as mv:
        args = argparse.Namespace(weights=mv.parse_weights([f"ft={tmp_path / 'absent'}"]), dino_effnet="")
        with pytest.raises(SystemExit, match="no weights at"):
            mv.encoder_overrides(tmp_path, "ft", args)
        with pytest.raises(SystemExit, match="unknown encoder 'other'"):
            mv.encoder_overrides(tmp_path, "other", args)
        for spec, why in (("ft", "expected NAME=PATH"), ("=x", "expected NAME=PATH"),
                          ("imagenet=x", "already taken")):
            with pytest.raises(SystemExit, match=why):
                mv.parse_weights([spec])
        with pytest.raises(SystemExit, match="already taken"):
            mv.parse_weights(["a=x", "a=y"])
