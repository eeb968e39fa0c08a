"""Mask post-processing (`evaluation.mask_postprocess`) on hand-drawn masks and probability maps, and the inverse
geometry's probabilities that it runs on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sonodistill.errors import ConfigError
from sonodistill.evaluation.mask_postprocess import peak_region, postprocess_mask
from tests.ellipses import ellipse_mask


def _two_blobs() -> tuple[np.ndarray, np.ndarray]:
    """A 12 x 12 mask: a 5 x 5 ring (hole at its centre) and a separate 2 x 2 blob; probabilities to match."""
    mask = np.zeros((12, 12), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False          # a hole inside the big blob
    mask[9:11, 9:11] = True     # the small blob
    return mask, np.where(mask, 0.9, 0.1)


def test_none_returns_the_argmax_mask_unchanged():
    mask, fg = _two_blobs()
    np.testing.assert_array_equal(postprocess_mask(mask, fg, "none"), mask)


@pytest.mark.parametrize("mode", ["largest", "largest_nonempty"])
def test_largest_keeps_the_biggest_component_with_its_holes_filled(mode):
    mask, fg = _two_blobs()
    want = np.zeros((12, 12), bool)
    want[1:6, 1:6] = True       # the hole filled, the 2 x 2 blob gone
    np.testing.assert_array_equal(postprocess_mask(mask, fg, mode), want)


def test_diagonal_neighbours_are_one_component():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True   # 8-connected diagonal line of 3
    mask[5, 0] = mask[5, 1] = True                 # 2 pixels elsewhere
    got = postprocess_mask(mask, mask.astype(float), "largest")
    assert got.sum() == 3 and got[1, 1] and got[3, 3] and not got[5, 0]


def test_largest_leaves_an_empty_mask_empty():
    fg = np.full((8, 8), 0.2)
    fg[4, 4] = 0.45
    assert not postprocess_mask(np.zeros((8, 8), bool), fg, "largest").any()


def test_largest_nonempty_turns_an_empty_mask_into_the_peak_region():
    """Peak 0.40 at (2, 2): its neighbours at 0.25 and 0.20 (>= 0.20, half the peak) join it, 0.19 does not; a
    separate patch at 0.30 is above half the peak but not connected to it, so it stays out."""
    fg = np.full((9, 9), 0.05)
    fg[2, 2] = 0.40
    fg[1, 2] = fg[2, 1] = 0.25
    fg[3, 3] = 0.20              # diagonal neighbour at exactly half the peak: in
    fg[2, 3] = 0.19              # just below: out
    fg[7:9, 7:9] = 0.30          # above half the peak, elsewhere: out
    mask = fg > 0.5              # the argmax mask of a two-class softmax: empty
    want = np.zeros((9, 9), bool)
    want[2, 2] = want[1, 2] = want[2, 1] = want[3, 3] = True
    np.testing.assert_array_equal(postprocess_mask(mask, fg, "largest_nonempty"), want)
    np.testing.assert_array_equal(peak_region(fg), want)


def test_peak_region_fills_holes_and_is_empty_without_any_foreground():
    fg = np.zeros((7, 7))
    fg[1:6, 1:6] = 0.3
    fg[3, 3] = 0.1               # a dip below half the peak inside the region: filled
    got = peak_region(fg)
    assert got[3, 3] and got.sum() == 25
    assert not peak_region(np.zeros((7, 7))).any()


def test_a_non_empty_mask_is_not_replaced_by_the_peak_region():
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = True
    fg = np.full((8, 8), 0.1)
    fg[0, 0] = 0.6
    fg[5, 5] = 0.49              # a higher-probability region elsewhere would not be taken: the mask is not empty
    np.testing.assert_array_equal(postprocess_mask(mask, fg, "largest_nonempty"), mask)


def test_ellipse_replaces_the_largest_component_by_its_filled_contour_ellipse():
    """A rotated ellipse whose outline pixels are flipped at random (30 %), with a hole and a separate blob:
    `ellipse` gives back the smooth ellipse (hole filled, blob gone, under a quarter of the wrong pixels); an exact
    ellipse mask comes back nearly unchanged."""
    from scipy import ndimage

    truth = ellipse_mask(80, 100, 40.0, 50.0, 30.0, 18.0, 0.5)
    outline = ndimage.binary_dilation(truth) & ~ndimage.binary_erosion(truth)
    mask = truth ^ (outline & (np.random.default_rng(0).random(truth.shape) < 0.3))
    mask[40, 50] = False                                 # a hole
    mask[2:5, 2:5] = True                                # a separate blob
    got = postprocess_mask(mask, mask.astype(float), "ellipse")
    assert got[40, 50] and not got[2:5, 2:5].any()
    assert (got ^ truth).sum() < (mask ^ truth).sum() / 4
    assert 2 * (got & truth).sum() / (got.sum() + truth.sum()) > 0.99
    exact = postprocess_mask(truth, truth.astype(float), "ellipse")
    assert (exact ^ truth).sum() <= 0.005 * truth.sum()


def test_ellipse_leaves_an_empty_mask_empty_and_a_component_without_an_ellipse_as_largest_gives_it():
    empty = np.zeros((10, 10), bool)
    assert not postprocess_mask(empty, np.full((10, 10), 0.3), "ellipse").any()
    line = np.zeros((10, 10), bool)
    line[5, 2:8] = True          # collinear contour points: no ellipse fits
    line[0, 0] = True
    want = postprocess_mask(line, line.astype(float), "largest")
    np.testing.assert_array_equal(postprocess_mask(line, line.astype(float), "ellipse"), want)


def test_unknown_mode_and_shape_mismatch_are_refused():
    mask, fg = _two_blobs()
    with pytest.raises(ConfigError, match="mask_postprocess must be one of none, largest, largest_nonempty, ellipse"):
        postprocess_mask(mask, fg, "biggest")
    with pytest.raises(ValueError, match="differ in shape"):
        postprocess_mask(mask, fg[:-1], "largest")


def test_segmentation_options_refuse_an_unknown_postprocess():
    from sonodistill.recipes import get_recipe

    cls = get_recipe("seg_supervised")
    assert cls.resolve_options({"mask_postprocess": "largest_nonempty"}).mask_postprocess == "largest_nonempty"
    with pytest.raises(ConfigError, match="mask_postprocess"):
        cls.resolve_options({"mask_postprocess": "fill"})


def test_probabilities_to_original_match_the_label_map_and_pad_with_background():
    from sonodistill.evaluation.head_circumference import PreprocessGeometry

    # a 30 x 50 image whose crop box (rows 5-25, columns 10-50) was resized to 8 x 16 and padded into 16 x 16
    geometry = PreprocessGeometry(height=30, width=50, crop=(5, 25, 10, 50), size=16, nh=8, nw=16, top=4, left=0)
    probs = torch.softmax(torch.randn(2, 16, 16), dim=0)
    original = geometry.probabilities_to_original(probs)
    assert original.shape == (2, 30, 50) and original.dtype == np.float32
    np.testing.assert_allclose(original.sum(axis=0), 1.0, atol=1e-5)  # bilinear resampling keeps the sum
    np.testing.assert_array_equal(original.argmax(axis=0), geometry.to_original(probs))
    outside = np.ones((30, 50), bool)
    outside[5:25, 10:50] = False
    assert (original[0][outside] == 1).all() and (original[1][outside] == 0).all()
    assert 0 < original[1][~outside].min() < original[1][~outside].max() < 1
