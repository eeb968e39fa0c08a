"""Augmentations: frame/mask consistency, exact intensity maps, blur against scipy, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from sonodistill.data.augment import (
    Compose,
    Cutout,
    Gain,
    Gamma,
    GaussianBlur,
    HorizontalFlip,
    RandomResizedCrop,
    RandomRotateZoom,
    SpeckleNoise,
    strong_augment,
    video_train_augment,
    weak_augment,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _disc(h: int = 48, w: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((yy - 20) ** 2 + (xx - 30) ** 2) < 15**2).float()  # H x W in {0, 1}


def test_crop_same_box_for_every_frame_and_mask():
    base = torch.rand(48, 64)
    scales = torch.linspace(0.2, 1.0, 5)
    clip = (base * scales[:, None, None])[None]  # 1 x 5 x H x W, frame t = base * scale_t
    out = RandomResizedCrop(32, scale=(0.2, 0.6), generator=_gen(1))(clip)
    assert out.shape == (1, 5, 32, 32)
    for t in range(5):  # resize is linear: a shared box keeps frame t = frame 0 * scale_t / scale_0
        torch.testing.assert_close(out[0, t], out[0, 0] * scales[t] / scales[0], atol=1e-5, rtol=1e-4)
    # mask follows the image: where the bilinear image of the mask is clearly 0 or 1, nearest mask agrees
    disc = _disc()
    for seed in range(5):
        x, m = RandomResizedCrop(40, scale=(0.3, 1.0), generator=_gen(seed))(disc[None].clone(), disc[None].clone())
        assert m.shape == (1, 40, 40) and set(m.unique().tolist()) <= {0.0, 1.0}
        assert (m[x > 0.99] == 1).all() and (m[x < 0.01] == 0).all()


def test_flip_image_and_mask():
    x = torch.arange(12.0).reshape(1, 3, 4) / 12
    m = (torch.arange(12).reshape(3, 4) % 2).float()
    fx, fm = HorizontalFlip(p=1.0)(x, m)
    torch.testing.assert_close(fx, x.flip(-1))
    torch.testing.assert_close(fm, m.flip(-1))
    assert torch.equal(HorizontalFlip(p=0.0)(x), x)


def test_gain_and_gamma_exact():
    x = torch.linspace(0, 1, 50).reshape(1, 5, 10)
    g = float(torch.rand((), generator=_gen(3)))
    factor = 0.5 + (2.0 - 0.5) * g
    torch.testing.assert_close(Gain((0.5, 2.0), generator=_gen(3))(x), (x * factor).clamp(0, 1))
    gm = float(np.exp(np.log(0.5) + (np.log(2.0) - np.log(0.5)) * g))
    torch.testing.assert_close(Gamma((0.5, 2.0), generator=_gen(3))(x), x ** gm)


def test_speckle_is_multiplicative():
    x = torch.full((1, 200, 200), 0.5)
    out = SpeckleNoise((0.1, 0.1), generator=_gen(0))(x)
    assert abs(out.mean().item() - 0.5) < 0.005
    assert abs(out.std().item() - 0.05) < 0.005  # sigma * x
    zero = SpeckleNoise((0.3, 0.3), generator=_gen(0))(torch.zeros(1, 8, 8))
    assert torch.equal(zero, torch.zeros(1, 8, 8))  # no signal, no speckle


def test_blur_matches_scipy():
    img = torch.rand(1, 2, 20, 24, generator=_gen(5))
    out = GaussianBlur((1.0, 1.0), p=1.0)(img)
    for t in range(2):
        ref = gaussian_filter(img[0, t].double().numpy(), sigma=1.0, mode="mirror", truncate=3.0)
        np.testing.assert_allclose(out[0, t].numpy(), ref, atol=1e-5)


def test_cutout_same_hole_every_frame():
    clip = torch.ones(1, 4, 32, 32)
    out = Cutout(holes=2, max_frac=0.4, p=1.0, generator=_gen(2))(clip)
    zeros = out == 0
    assert zeros.any() and (zeros[0] == zeros[0, :1]).all()


def _rotate_zoom_exact(x: torch.Tensor, degrees: float, factor: float) -> torch.Tensor:
    """The warp of RandomRotateZoom for one fixed angle and factor (its `theta`), nearest sampling."""
    h, w = x.shape[-2:]
    theta = RandomRotateZoom().theta(h, w, math.radians(degrees), factor).float()[None]
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    return F.grid_sample(x.reshape(1, -1, h, w), grid, mode="nearest", align_corners=False).reshape(x.shape)


def test_rotate_zoom_geometry():
    # a quarter turn is torch.rot90 (counter-clockwise on screen), on a non-square image too
    x = torch.rand(1, 8, 8)
    torch.testing.assert_close(_rotate_zoom_exact(x, 90.0, 1.0), torch.rot90(x, 1, dims=(-2, -1)))
    sq = torch.zeros(1, 20, 30)
    sq[0, 8:12, 5:25] = 1.0  # a horizontal bar through the centre (10, 15), 20 px long
    turned = _rotate_zoom_exact(sq, 90.0, 1.0)[0]
    ys, xs = torch.nonzero(turned, as_tuple=True)
    assert int(ys.max() - ys.min()) + 1 == 20 and int(xs.max() - xs.min()) + 1 == 4  # square pixels: still 20 x 4
    # zoom < 1 shrinks the content about the centre and pads with zeros; > 1 enlarges it
    box = torch.zeros(1, 40, 40)
    box[0, 10:30, 10:30] = 1.0
    x, m = RandomRotateZoom(0.0, (0.5, 0.5))(box, box[0].long())
    assert float(x.sum()) == pytest.approx(100.0, abs=1.0) and int(m.sum()) == 100 and float(x[0, :14].sum()) == 0.0
    x, m = RandomRotateZoom(0.0, (1.5, 1.5))(box, box[0].long())
    assert int(m.sum()) == 900 and m.dtype == torch.long


def test_rotate_zoom_same_draw_for_frames_and_mask():
    disc = _disc(48, 48)
    clip = disc[None, None].repeat(1, 4, 1, 1) * torch.tensor([1.0, 0.9, 0.8, 0.7])[None, :, None, None]
    for seed in range(4):
        x, m = RandomRotateZoom(30.0, (0.7, 1.3), generator=_gen(seed))(clip, disc[None].clone())
        assert x.shape == clip.shape and m.shape == (1, 48, 48)
        for t in range(1, 4):  # bilinear is linear: one draw for all frames keeps frame t = frame 0 * scale_t
            torch.testing.assert_close(x[0, t], x[0, 0] * (1.0 - 0.1 * t), atol=1e-5, rtol=1e-4)
        assert (m[0][x[0, 0] > 0.99] == 1).all() and (m[0][x[0, 0] < 0.01] == 0).all()
    a = RandomRotateZoom(30.0, (0.7, 1.3), generator=_gen(1))(clip)
    b = RandomRotateZoom(30.0, (0.7, 1.3), generator=_gen(2))(clip)
    assert not torch.equal(a, b)
    for zoom in ((1.2, 0.8), (0.8,), (0.7, 0.9, 1.2)):
        with pytest.raises(ValueError, match="zoom range"):
            RandomRotateZoom(10.0, zoom)
        with pytest.raises(ValueError, match="zoom range"):
            weak_augment(32, zoom=zoom)


def test_rotate_zoom_off_by_default_keeps_the_draws():
    assert "RandomRotateZoom" not in repr(weak_augment(32)) and "RandomRotateZoom" not in repr(video_train_augment(32))
    assert "RandomRotateZoom" in repr(weak_augment(32, rotate_degrees=15.0))
    assert "RandomRotateZoom" in repr(video_train_augment(32, zoom=(0.8, 1.2)))
    img = torch.rand(1, 50, 60)
    torch.testing.assert_close(weak_augment(40, generator=_gen(3), rotate_degrees=0.0, zoom=(1.0, 1.0))(img),
                               weak_augment(40, generator=_gen(3))(img))


def test_compose_determinism_and_shapes():
    clip = torch.rand(1, 6, 64, 64)
    a = video_train_augment(32, generator=_gen(7))(clip)
    b = video_train_augment(32, generator=_gen(7))(clip)
    c = video_train_augment(32, generator=_gen(8))(clip)
    assert a.shape == (1, 6, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    img = torch.rand(1, 50, 60)
    assert weak_augment(40)(img).shape == (1, 40, 40)
    x, m = strong_augment(40, generator=_gen(0))(img, _disc(50, 60))
    assert x.shape == (1, 40, 40) and m.shape == (40, 40)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="float tensor"):
        Compose([Gain()])(torch.zeros(4, 4))
