"""Post-processing of a binary segmentation mask from its foreground probabilities (an inference setting).

`recipe_options.mask_postprocess` (scoring, `predict`, `serve` and the export's metadata alike):
  none              the argmax mask (foreground where its probability beats the background's)
  largest           the largest 8-connected foreground component, holes filled: one object per image
  largest_nonempty  as `largest`; an empty mask becomes the peak region instead: the 8-connected component, holes
                    filled, of the pixels whose foreground probability is at least half the image's peak, around
                    the peak. For sets where every image holds an object (a head in HC18, a lesion in BUSI benign +
                    malignant), an empty mask is always wrong; the peak region is the model's best guess.
  ellipse           as `largest`, then replaced by the filled least-squares ellipse of its outer contour (the fit
                    head circumference is measured on): for objects that are ellipses and annotated as such (HC18's
                    reference masks are filled ellipses). An empty mask stays empty (a failure, counted); a component
                    no ellipse fits (too few or collinear contour points) stays as `largest` gives it.
It runs on the probabilities mapped back to the original image, after flip TTA, outside the exported graph.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sonodistill.errors import ConfigError
from sonodistill.evaluation.head_circumference import filled_ellipse, fit_ellipse_contour, largest_component

MASK_POSTPROCESS = ("none", "largest", "largest_nonempty", "ellipse")
PEAK_FRACTION = 0.5  # the peak region: pixels at >= this fraction of the peak foreground probability

__all__ = ["MASK_POSTPROCESS", "PEAK_FRACTION", "check_mask_postprocess", "peak_region", "postprocess_mask"]


def check_mask_postprocess(mode: object) -> str:
    """`mode` if it names a post-processing of `MASK_POSTPROCESS`, else ConfigError."""
    if mode not in MASK_POSTPROCESS:
        raise ConfigError(f"recipe_options.mask_postprocess must be one of {', '.join(MASK_POSTPROCESS)}, "
                          f"got {mode!r}")
    return str(mode)


def peak_region(foreground: np.ndarray) -> np.ndarray:
    """Bool H x W: the 8-connected component (holes filled) of the pixels whose foreground probability is at least
    `PEAK_FRACTION` of the peak, that holds the peak; all False when the peak is 0 (nothing anywhere)."""
    p = np.asarray(foreground, dtype=np.float64)
    peak = float(p.max()) if p.size else 0.0
    if not peak > 0.0:
        return np.zeros(p.shape, dtype=bool)
    labels, _ = ndimage.label(p >= PEAK_FRACTION * peak, structure=np.ones((3, 3), bool))
    at_peak = labels[np.unravel_index(int(np.argmax(p)), p.shape)]
    return ndimage.binary_fill_holes(labels == at_peak)


def postprocess_mask(mask: np.ndarray, foreground: np.ndarray, mode: str) -> np.ndarray:
    """Bool H x W mask after `mode` (`MASK_POSTPROCESS`), from the argmax `mask` and the foreground probability
    map `foreground` (float H x W, same shape) it came from."""
    mask = np.asarray(mask).astype(bool)
    if mask.shape != np.shape(foreground):
        raise ValueError(f"mask {mask.shape} and foreground probabilities {np.shape(foreground)} differ in shape")
    mode = check_mask_postprocess(mode)
    if mode == "none":
        return mask
    if mode == "largest_nonempty" and not mask.any():
        return peak_region(foreground)
    if mode == "ellipse":  # fit_ellipse_contour takes the largest component itself; None when empty or no fit
        ellipse = fit_ellipse_contour(mask)
        if ellipse is not None:
            return filled_ellipse(mask.shape, ellipse)
    return largest_component(mask)
