"""The DILBERT fusion encoder: shapes, cross-stream mixing, region masking, export and matching."""

from __future__ import annotations

import pytest
import torch

from sonodistill.errors import ConfigError
from sonodistill.models.fusion import DILBERTInference, DILBERTModel, FusionConfig, FusionEncoder, VisualEncoder

T, S, V = 4, 32, 50


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> FusionConfig:
    base = dict(vocab_size=V, dim=16, layers=2, heads=2, num_frames=T, max_text_len=12, n_binary=3,
                categorical=[4], n_region_classes=5, dropout=0.0)
    return FusionConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model() -> DILBERTModel:
    torch.manual_seed(0)
    return DILBERTModel(tiny()).eval()


def inputs(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, T, S, S, generator=g), torch.randint(5, V, (b, 7), generator=g)


def test_output_shapes(model):
    x, ids = inputs()
    out = model(x, ids)
    n_regions = T * 2 * 2
    assert out.region.shape == (2, n_regions, 16) and out.clip.shape == (2, 1, 16) and out.text.shape == (2, 7, 16)
    assert out.visual.shape == (2, 16) and out.text_cls.shape == (2, 16) and len(out.layers) == 2
    lg = model.pretext_logits(out)
    assert lg["mlm"].shape == (2, 7, V) and lg["mdc"].shape == (2, 7, 4)
    assert lg["moc"].shape == (2, n_regions, 5) and lg["cmm"].shape == (2, 2)
    assert model.pretext_logits(out, with_cmm=False).keys() == {"mlm", "mdc", "moc"}
    a = model.annotate(x, with_exits=True)
    assert a.binary.shape == (2, 3) and [c.shape for c in a.categorical] == [(2, 4)] and a.embedding.shape == (2, 16)
    assert len(a.exits) == 1 and a.exits[0][0].shape == (2, 3)
    assert model.inference_model()(x).shape == (2, 3 + 4)


def test_cross_attention_mixes_streams(model):
    """Changing only the text changes the region and clip outputs; changing only the clip changes the text."""
    x, ids = inputs()
    with torch.no_grad():
        a = model(x, ids)
        b = model(x, ids.flip(1))
        c = model(x.flip(-1).roll(1, 2), ids)
    assert not torch.allclose(a.region, b.region, atol=1e-5)
    assert not torch.allclose(a.clip, b.clip, atol=1e-5)
    assert not torch.allclose(a.text, c.text, atol=1e-5)


def test_without_cross_attention_streams_would_not_mix():
    """Control: zeroing the cross-attention output projections makes regions independent of the text."""
    torch.manual_seed(1)
    m = DILBERTModel(tiny()).eval()
    for layer in m.core.fusion.layers:
        for block in layer.blocks.values():
            torch.nn.init.zeros_(block.cross_attn.out_proj.weight)
            torch.nn.init.zeros_(block.cross_attn.out_proj.bias)
    x, ids = inputs()
    with torch.no_grad():
        torch.testing.assert_close(m(x, ids).region, m(x, ids.flip(1)).region)


def test_text_padding_is_ignored(model):
    x, ids = inputs()
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)  # pad_id = 0
    with torch.no_grad():
        a, b = model(x, ids), model(x, padded)
    torch.testing.assert_close(a.region, b.region, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.text, b.text[:, :7], atol=1e-5, rtol=1e-4)


def test_region_mask_zeroes_pixels_and_replaces_tokens():
    torch.manual_seed(0)
    enc = VisualEncoder(tiny())
    m = torch.zeros(1, T * 4, dtype=torch.bool)
    m[0, 5] = True  # frame 1, grid cell (0, 1)
    pix = enc.pixel_mask(m, T, S, S)[0, 0]
    assert pix.shape == (T, S, S) and pix.sum() == (S // 2) ** 2
    assert pix[1, :16, 16:].all() and not pix[0].any() and not pix[1, 16:].any()
    x = torch.rand(1, 1, T, S, S)
    reg, _ = enc.eval()(x, m)
    expected = enc.mask_token + (enc.time_pos[1] + enc.space_pos[1]) + enc.region_type
    torch.testing.assert_close(reg[0, 5], expected)


def test_layers_heads_configurable_and_checked():
    enc = FusionEncoder(dim=18, layers=3, heads=9)
    assert len(enc.layers) == 3
    with pytest.raises(ConfigError, match="divisible"):
        tiny(dim=18, heads=4)
    with pytest.raises(ConfigError, match="no annotation target"):
        tiny(n_binary=0, categorical=[])


def test_export_excludes_training_only_heads(model):
    keys = set(model.inference_model().state_dict())
    assert not any(k.startswith(("mlm", "mdc", "moc", "exits")) for k in keys)
    fresh = DILBERTInference.build(model.cfg)
    assert set(fresh.state_dict()) == keys
    fresh.load_state_dict(model.inference_model().state_dict())
    x, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.inference_model()(x))


def test_match_scores_is_the_cmm_probability_of_each_pair(model):
    x, ids = inputs(3)
    inf = model.inference_model()
    scores = inf.match_scores(x, ids[:2], batch_pairs=4)
    assert scores.shape == (3, 2)
    with torch.no_grad():
        out = model(x[2:3], ids[1:2])
        p = torch.softmax(model.matching(out.text_cls, out.visual), -1)[0, 1]
    torch.testing.assert_close(scores[2, 1], p, atol=1e-5, rtol=1e-4)


def test_config_round_trip():
    c = tiny()
    assert FusionConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown"):
        FusionConfig.from_dict({**c.to_dict(), "colour": 1})


def test_pretrained_frame_and_clip_encoders_start_from_imagenet_at_training_only():
    """frame/clip_pretrained load ImageNet weights into DILBERT's encoders when training starts (load_starts);
    building the model (what inference does before loading its own weights) leaves them random."""
    from sonodistill.models import pretrained as pt

    cfg = tiny(frame_backbone="efficientnet_lite0", frame_width=1.0, frame_pretrained="imagenet",
               frame_freeze_stages=2, clip_backbone="tsm_efficientnet_lite0", clip_width=1.0,
               clip_pretrained="imagenet", norm="group")
    state, _ = pt.imagenet_state_dict("efficientnet_lite0")
    ref = state["stem_conv.weight"]
    m = DILBERTModel(cfg)
    frame_stem, clip_stem = m.core.visual.frames.net.stem_conv.weight, m.core.visual.clip.frames.net.stem_conv.weight
    assert not torch.equal(frame_stem, ref) and not torch.equal(clip_stem, ref)  # built: random
    started = m.core.visual.load_starts(cfg)
    assert "imagenet" in started["frame"] and "imagenet" in started["clip"]
    assert torch.equal(frame_stem, ref) and torch.equal(clip_stem, ref)
    # the first two stages of the frame encoder are frozen, the clip encoder is not
    assert not frame_stem.requires_grad and clip_stem.requires_grad
    x, ids = inputs()
    out = m(x, ids)  # EfficientNets keep BatchNorm although the ResNets' norm is 'group'
    assert out.region.shape == (2, T * 4, 16)
    # none: nothing loaded, said so
    plain = tiny()
    assert DILBERTModel(plain).core.visual.load_starts(plain) == {"frame": "none (random initialisation)",
                                                                  "clip": "none (random initialisation)"}
