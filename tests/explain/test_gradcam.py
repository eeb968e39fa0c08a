"""Grad-CAM against hand-computed maps, a backbone whose answer is known, and real staged backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sonodistill.errors import ConfigError
from sonodistill.explain.gradcam import ensemble_cam, grad_cam, normalise_maps
from sonodistill.explain.overlay import colorize, gif_bytes, overlay, strip_indices, write_gif, write_strip
from sonodistill.models.heads import ClassificationHead
from sonodistill.models.stages import Classifier, StagedBackbone, StageOutputs


class FixedFeatures(StagedBackbone):
    """Stage = x times a fixed per-channel, per-position pattern; pooled = its global mean."""

    def __init__(self, pattern: torch.Tensor, kind: str = "video") -> None:
        super().__init__()
        self.register_buffer("pattern", pattern)  # C x [T] x H x W
        self.kind = kind
        self.stage_channels = [pattern.shape[0]]
        self.embed_dim = pattern.shape[0]

    def forward(self, x: torch.Tensor) -> StageOutputs:
        stage = x * self.pattern.unsqueeze(0)  # B x C x [T] x H x W (x has C = 1)
        return StageOutputs(stages=[stage * 0.5, stage], pooled=stage.flatten(2).mean(dim=2))


def _model(pattern: torch.Tensor, weight: torch.Tensor, kind: str = "video") -> Classifier:
    head = ClassificationHead(pattern.shape[0], weight.shape[0])
    with torch.no_grad():
        head.fc.weight.copy_(weight)
        head.fc.bias.zero_()
    return Classifier(FixedFeatures(pattern, kind), head).eval()


def test_matches_hand_computed_formula():
    g = torch.Generator().manual_seed(0)
    c, t, h, w = 3, 4, 6, 5
    pattern = torch.randn(c, t, h, w, generator=g)
    weight = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.3, 2.0]])
    model = _model(pattern, weight)
    x = torch.rand(2, 1, t, h, w, generator=g)
    for k in (0, 1):
        cam = grad_cam(model, x, target_class=k)
        # d logit_k / d A_c(p) = W[k, c] / N at every position: weights are W[k, c] / N
        a = (x * pattern.unsqueeze(0)).numpy()  # B x C x T x H x W
        raw = np.maximum(np.einsum("c,bcthw->bthw", weight[k].numpy() / (t * h * w), a), 0)
        lo = raw.reshape(2, -1).min(1)[:, None, None, None]
        hi = raw.reshape(2, -1).max(1)[:, None, None, None]
        np.testing.assert_allclose(cam.numpy(), (raw - lo) / (hi - lo), atol=1e-5)
        np.testing.assert_allclose(grad_cam(model, x, k, normalize=False).numpy(), raw, rtol=1e-4, atol=1e-7)


def test_peaks_where_the_last_stage_responds():
    t, h, w = 4, 16, 16
    box = torch.zeros(1, t, h, w)
    box[:, :, 4:8, 9:13] = 1.0  # the deepest stage only sees this region
    model = _model(box, torch.tensor([[2.0], [-2.0]]))
    x = torch.rand(1, 1, t, h, w, generator=torch.Generator().manual_seed(1)) + 0.1
    cam = grad_cam(model, x)  # argmax: class 0 (positive weight, positive features)
    assert cam.shape == (1, t, h, w)
    inside = box[0].bool()
    assert float(cam[0][inside].min()) >= 0.0 and float(cam.max()) == pytest.approx(1.0)
    assert float(cam[0][~inside].abs().max()) == 0.0
    flat = int(cam[0].flatten().argmax())
    _, yy, xx = np.unravel_index(flat, (t, h, w))
    assert 4 <= yy < 8 and 9 <= xx < 13
    # the other class lowers its score in the region: ReLU leaves nothing
    assert float(grad_cam(model, x, target_class=1, normalize=False).max()) == 0.0


def test_frame_model_and_upsampling_to_input_size():
    pattern = torch.zeros(2, 4, 4)
    pattern[:, 0, 0] = 1.0  # top-left cell of a 4 x 4 stage
    backbone = FixedFeatures(pattern, kind="frame")

    class Down(nn.Module):  # stage at quarter resolution: 16 x 16 input -> 4 x 4
        def __init__(self) -> None:
            super().__init__()
            self.backbone = _Pooled(backbone)
            self.head = ClassificationHead(2, 2)
            with torch.no_grad():
                self.head.fc.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))

    model = Down().eval()
    x = torch.ones(1, 1, 16, 16)
    cam = grad_cam(model, x, target_class=0)
    assert cam.shape == (1, 1, 16, 16)
    assert float(cam[0, 0, :4, :4].mean()) > float(cam[0, 0, 8:, 8:].mean())
    assert float(cam[0, 0, 0, 0]) == pytest.approx(1.0)


class _Pooled(StagedBackbone):
    """Average-pool the input by 4 before the fixed features (for the upsampling test)."""

    def __init__(self, inner: FixedFeatures) -> None:
        super().__init__()
        self.inner = inner
        self.kind = inner.kind

    def forward(self, x: torch.Tensor) -> StageOutputs:
        return self.inner(nn.functional.avg_pool2d(x, 4))


def test_per_sample_targets_and_errors():
    pattern = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    model = _model(pattern, torch.randn(3, 3, generator=torch.Generator().manual_seed(3)))
    x = torch.rand(2, 1, 2, 4, 4)
    both = grad_cam(model, x, target_class=torch.tensor([0, 2]))
    np.testing.assert_allclose(both[0].numpy(), grad_cam(model, x[:1], 0)[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(both[1].numpy(), grad_cam(model, x[1:], 2)[0].numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="target_class"):
        grad_cam(model, x, target_class=3)
    with pytest.raises(ConfigError, match="backbone"):
        grad_cam(nn.Linear(2, 2), x)


def test_real_backbones():
    from sonodistill.models.backbones import build_backbone

    torch.manual_seed(0)
    bb = build_backbone("resnet10_3d", width=0.125)
    model = Classifier(bb, ClassificationHead(bb.embed_dim, 3)).train()
    x = torch.rand(2, 1, 8, 32, 32)
    cam = grad_cam(model, x)
    assert cam.shape == (2, 8, 32, 32)
    assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    assert model.training  # mode restored
    for p in model.parameters():
        assert p.grad is None  # no parameter gradients accumulated
    mean = ensemble_cam([model, model], x, None)
    np.testing.assert_allclose(mean.numpy(), normalise_maps(cam).numpy(), atol=1e-6)
    vit = build_backbone("vit_tiny_p16", width=0.25, img_size=32, depth=4)
    vmodel = Classifier(vit, ClassificationHead(vit.embed_dim, 2))
    xv = torch.rand(1, 1, 32, 32)
    vcam = grad_cam(vmodel, xv)  # default: the stage before the last (the last block's patch tokens are unused)
    assert vcam.shape == (1, 1, 32, 32) and float(vcam.max()) == pytest.approx(1.0)
    assert float(grad_cam(vmodel, xv, stage=-1, normalize=False).abs().max()) == 0.0


def test_frame_encoder_and_aggregator_is_explained_frame_by_frame():
    """A VideoScorer (frame encoder + aggregator): with a mean-pool aggregator each frame's raw map is 1/T of the
    map the same encoder and linear head give for that frame alone; an aggregator that reads only the first frame
    leaves the other frames' maps empty. ViT encoders go through the token path."""
    from sonodistill.models.aggregators import MeanPool
    from sonodistill.models.backbones import build_backbone
    from sonodistill.models.wrappers import VideoScorer

    torch.manual_seed(0)
    encoder = build_backbone("resnet18_2d", in_channels=1, width=0.125).eval()
    agg = MeanPool(encoder.embed_dim, 3).eval()
    scorer = VideoScorer(encoder, agg)
    head = ClassificationHead(encoder.embed_dim, 3)
    head.fc.load_state_dict(agg.fc.state_dict())
    per_frame = Classifier(encoder, head).eval()
    x = torch.rand(2, 1, 4, 32, 32)
    cam = grad_cam(scorer, x, target_class=1, normalize=False)
    assert cam.shape == (2, 4, 32, 32) and float(cam.max()) > 0
    for b in range(2):
        for t in range(4):
            alone = grad_cam(per_frame, x[b : b + 1, :, t], target_class=1, normalize=False)[0, 0]
            torch.testing.assert_close(cam[b, t], alone / 4, atol=1e-6, rtol=1e-4)

    class FirstFrame(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(encoder.embed_dim, 3)

        def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            return self.fc(feats[:, 0])

    reader = VideoScorer(encoder, FirstFrame())
    first = torch.stack([grad_cam(reader, x, target_class=k, normalize=False) for k in range(3)])  # a ReLU'd map
    assert float(first[:, :, 0].max()) > 0 and float(first[:, :, 1:].abs().max()) == 0.0  # may be 0 for one class
    vit = build_backbone("vit_tiny_p8", width=0.25, img_size=32, depth=2)  # stages on blocks [0, 0, 1, 1]
    vscorer = VideoScorer(vit, MeanPool(vit.embed_dim, 2))
    vcam = torch.stack([grad_cam(vscorer, torch.rand(1, 1, 3, 32, 32), k, normalize=False) for k in range(2)])
    assert vcam.shape == (2, 1, 3, 32, 32) and float(vcam.max()) > 0  # block 0's tokens, not the last block's
    with pytest.raises(ValueError, match="B x C x T x H x W"):
        grad_cam(scorer, torch.rand(1, 1, 32, 32))


def test_overlay_strip_and_gif(tmp_path):
    clip = np.tile(np.arange(0, 250, 10, dtype=np.uint8)[None, None, :], (5, 4, 1))  # 5 x 4 x 25
    clip[np.arange(5), 0, np.arange(5)] = 255  # frames differ (a GIF merges identical frames)
    cold = overlay(clip, np.zeros(clip.shape))
    np.testing.assert_array_equal(cold, np.repeat(clip[..., None], 3, axis=-1))
    hot = overlay(clip, np.ones(clip.shape), alpha=1.0)
    np.testing.assert_array_equal(hot, colorize(np.ones(clip.shape)))
    assert tuple(colorize(np.array([0.0, 1.0])).shape) == (2, 3)
    np.testing.assert_array_equal(strip_indices(100, 4), [0, 33, 66, 99])
    np.testing.assert_array_equal(strip_indices(3, 16), [0, 1, 2])
    strip = Image.open(write_strip(hot, tmp_path / "s.png", max_frames=3, gap=2))
    assert strip.size == (3 * 25 + 2 * 2, 4)
    gif = Image.open(write_gif(cold, tmp_path / "c.gif", fps=25))
    assert gif.n_frames == 5 and gif.info["duration"] == 40
    assert gif_bytes(clip)[:6] == b"GIF89a"
    with pytest.raises(ValueError, match="differ"):
        overlay(clip, np.zeros((5, 4, 24)))
