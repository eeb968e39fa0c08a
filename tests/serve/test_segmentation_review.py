"""A segmentation model on the review server: the head ellipse in the result, the masks drawn over the original
frames, and the pixel size sent with the upload (`X-Pixel-Size-Mm`)."""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonodistill.explain.overlay import class_colour
from sonodistill.serve.app import analyse_file, make_server, parse_pixel_size
from sonodistill.serve.loading import load_model
from sonodistill.serve.predict import PredictOptions, predict_file
from sonodistill.serve.segmentation_view import HEAD_ELLIPSE_COLOUR, display_scale

from .conftest import ellipse_runner, post_upload, serving


@pytest.fixture(scope="module")
def ellipse_model(seg_run):
    """The synthetic HC run's model with a fixed segmenter: an ellipse of semi-axes 18 x 12 pixels in the middle of a 48 px image."""
    return dataclasses.replace(load_model(seg_run), runner=ellipse_runner())


@pytest.fixture(scope="module")
def head_png(seg_run, tmp_path_factory):
    from sonodistill.data.manifest import Manifest

    path = Path(Manifest.from_csv(seg_run / "manifest.csv").paths[0])
    assert path.suffix == ".png"
    return path


def _gif_first_frame(payload: dict) -> np.ndarray:
    data = base64.b64decode(payload["gif"].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_an_hc_model_reports_the_fitted_ellipse_with_or_without_a_pixel_size(ellipse_model, head_png, tmp_path):
    for options in (PredictOptions(mask_dir=tmp_path / "a"), PredictOptions(mask_dir=tmp_path / "b", pixel_size_mm=0.5)):
        ellipse = predict_file(ellipse_model, head_png, options)["masks"][0]["head_ellipse_px"]
        assert ellipse["semi_axes"] == [pytest.approx(18.0, abs=0.6), pytest.approx(12.0, abs=0.6)]
        assert ellipse["center_xy"] == [pytest.approx(23.5, abs=0.3), pytest.approx(23.5, abs=0.3)]
        assert ellipse["angle_deg"] % 180 == pytest.approx(0.0, abs=2.0) or ellipse["angle_deg"] % 180 > 178
    no_hc = dataclasses.replace(ellipse_model, head_circumference=None)
    assert "head_ellipse_px" not in predict_file(no_hc, head_png, PredictOptions(mask_dir=tmp_path / "c"))["masks"][0]
    empty = dataclasses.replace(ellipse_model, runner=ellipse_runner(a=0.1, b=0.1))
    assert "head_ellipse_px" not in predict_file(empty, head_png, PredictOptions(mask_dir=tmp_path / "d"))["masks"][0]


def test_the_review_picture_shows_the_mask_and_the_ellipse_over_the_original_image(ellipse_model, head_png):
    out = analyse_file(ellipse_model, head_png, "head.png", pixel_size_mm=0.5)
    entry = out["result"]["masks"][0]
    assert out["result"]["pixel_spacing_source"] == "option" and entry["head_circumference_mm"] > 0
    assert "magenta" in out["heatmap"] and out["note"] is None
    picture = _gif_first_frame(out)
    assert picture.shape == (48, 48, 3)  # the original image, not the 32 px model input
    gray = np.asarray(Image.open(head_png).convert("L"))
    corner = picture[:5, :5].astype(int)
    assert np.abs(corner - gray[:5, :5, None]).max() <= 8  # background: the image (GIF palette rounding)
    inside = picture[22:26, 20:28].astype(int)  # the ellipse's middle: tinted towards the class colour
    orange = class_colour(1).astype(int)
    assert (np.abs(inside - orange).sum(axis=-1) < np.abs(gray[22:26, 20:28, None].astype(int) - orange).sum(axis=-1)).all()
    magenta = (np.abs(picture.astype(int) - np.array(HEAD_ELLIPSE_COLOUR)).sum(axis=-1) <= 24)
    ys, xs = np.nonzero(magenta)
    assert len(ys) >= 60 and xs.min() in (5, 6) and xs.max() in (41, 42) and ys.min() in (11, 12) and ys.max() in (35, 36)


def test_a_large_image_is_drawn_at_most_512_pixels_wide(ellipse_model, shared_data):
    assert display_scale(600, 800, 512) == pytest.approx(0.64) and display_scale(40, 30, 512) == 1.0
    out = analyse_file(ellipse_model, shared_data / "dicom" / "OBXXXX1A.dcm", "scan.dcm")
    assert out["result"]["pixel_spacing_source"] == "dicom"
    assert _gif_first_frame(out).shape == (384, 512, 3)


def test_parse_pixel_size():
    assert parse_pixel_size(None) is None and parse_pixel_size("  ") is None
    assert parse_pixel_size("0.125") == 0.125
    for bad in ("abc", "-0.1", "0", "nan", "inf"):
        with pytest.raises(ValueError, match="X-Pixel-Size-Mm must be a positive number of mm per pixel"):
            parse_pixel_size(bad)


def test_the_pixel_size_travels_with_the_upload(ellipse_model, head_png, tmp_path):
    srv = make_server(ellipse_model, "127.0.0.1", 0, tmp_root=tmp_path)
    body = head_png.read_bytes()
    with serving(srv):
        status, payload = post_upload(srv, body, ".png", {"X-Pixel-Size-Mm": "0.5"})
        assert status == 200, payload
        result = payload["result"]
        assert result["pixel_spacing_mm"] == [0.5, 0.5] and result["masks"][0]["head_circumference_mm"] > 0
        status, plain = post_upload(srv, body, ".png")
        assert status == 200 and "pixel size is unknown" in plain["result"]["head_circumference_unavailable"]
        status, bad = post_upload(srv, body, ".png", {"X-Pixel-Size-Mm": "-3"})
        assert status == 400 and "X-Pixel-Size-Mm must be a positive number" in bad["error"]
    assert [p for p in tmp_path.iterdir() if p.name.startswith("sonodistill-upload-")] == []
