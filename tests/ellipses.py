"""Hand-drawn ellipse masks for the tests of head circumference and mask post-processing: an oracle written
independently of `evaluation.head_circumference.filled_ellipse`."""

from __future__ import annotations

import math

import numpy as np


def ellipse_mask(h, w, cy, cx, a, b, theta, sy=1.0, sx=1.0):
    """Pixels whose centres (in physical units: y*sy, x*sx) lie inside the ellipse."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = yy * sy - cy, xx * sx - cx
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0
