"""Segmentation masks drawn over frames: tint, outline and the fitted ellipse, on hand-made label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sonodistill.explain.overlay import CLASS_COLOURS, class_colour, draw_ellipse, mask_overlay


def test_mask_overlay_tints_the_inside_outlines_the_border_and_keeps_the_background():
    frames = np.full((1, 12, 12), 100, dtype=np.uint8)
    labels = np.zeros((1, 12, 12), dtype=np.uint8)
    labels[0, 2:8, 2:8] = 1  # a 6 x 6 square: its 20 border pixels are the outline, the 16 inside are tinted
    labels[0, 9:11, 9:11] = 2
    out = mask_overlay(frames, labels, alpha=0.35)
    assert out.shape == (1, 12, 12, 3) and out.dtype == np.uint8
    orange, blue = CLASS_COLOURS[0], CLASS_COLOURS[1]
    inside = np.rint(0.65 * 100 + 0.35 * orange.astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 4, 4], inside)
    np.testing.assert_array_equal(out[0, 2, 5], orange)  # top edge
    np.testing.assert_array_equal(out[0, 7, 7], orange)  # corner
    assert (out[0, 3:7, 3:7] == inside).all()
    border = (out[0] == orange).all(axis=-1)
    assert border.sum() == 20
    np.testing.assert_array_equal(out[0, 9, 9], blue)  # a 2 x 2 region is all outline
    np.testing.assert_array_equal(out[0, 0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 8, 5], [100, 100, 100])


def test_mask_overlay_refuses_mismatched_shapes_and_class_colours_skip_the_background():
    with pytest.raises(ValueError, match="must both be T x H x W"):
        mask_overlay(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(ValueError, match="background"):
        class_colour(0)
    np.testing.assert_array_equal(class_colour(1 + len(CLASS_COLOURS)), class_colour(1))  # cycled


def test_draw_ellipse_puts_its_points_on_the_ellipse():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    draw_ellipse(image, (20.0, 15.0), (12.0, 4.0), math.pi / 2, (255, 0, 255))  # major axis vertical
    ys, xs = np.nonzero((image == [255, 0, 255]).all(axis=-1))
    assert ys.min() == 3 and ys.max() == 27 and xs.min() == 16 and xs.max() == 24
    # every drawn pixel is within half a pixel (diagonal) of the ellipse x'^2/4^2 + y'^2/12^2 = 1
    u, v = xs - 20.0, ys - 15.0
    t = np.arctan2(v / 12.0, u / 4.0)
    closest = np.hypot(u - 4.0 * np.cos(t), v - 12.0 * np.sin(t))
    assert closest.max() <= 0.75
    assert ((image == 0).all(axis=-1)).sum() == 40 * 40 - len(ys)  # nothing else touched


def test_draw_ellipse_skips_points_outside_the_image():
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    draw_ellipse(image, (0.0, 0.0), (6.0, 6.0), 0.0)  # three quarters outside
    ys, xs = np.nonzero(image.any(axis=-1))
    assert len(ys) > 0 and (np.hypot(xs, ys) <= 6.8).all() and (np.hypot(xs, ys) >= 5.2).all()
