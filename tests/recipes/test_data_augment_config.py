"""`data.rotate_degrees` / `data.zoom` reach the training augmentation of image and video sets, checked."""

from __future__ import annotations

import pytest

from sonodistill.config import load_config
from sonodistill.errors import ConfigError
from sonodistill.recipes.data import train_augment


def test_rotation_and_zoom_from_the_config():
    cfg = load_config(None, ["data.rotate_degrees=20", "data.zoom=[0.7,1.2]"])
    assert cfg.data.zoom == [0.7, 1.2]
    for modality in ("image", "video"):
        aug = train_augment(cfg.data, modality)
        rz = [t for t in aug.transforms if type(t).__name__ == "RandomRotateZoom"]
        assert len(rz) == 1 and rz[0].degrees == 20.0 and rz[0].zoom == (0.7, 1.2)
    assert "RandomRotateZoom" not in repr(train_augment(load_config(None, []).data, "image"))
    assert train_augment(load_config(None, ["data.augment=false", "data.rotate_degrees=20"]).data, "image") is None


@pytest.mark.parametrize("override", ["data.zoom=[1.3,0.8]", "data.zoom=[0.8]", "data.zoom=[0,1]",
                                      "data.rotate_degrees=-5"])
def test_bad_rotation_or_zoom_is_a_config_error(override):
    # refused when the config is loaded (before a run directory is written), augmentation on or off
    for augment in ("true", "false"):
        with pytest.raises(ConfigError, match="data.rotate_degrees / data.zoom"):
            load_config(None, [override, f"data.augment={augment}"])
