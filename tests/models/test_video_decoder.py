"""The light video decoder: shapes, scatter of kept tokens to their positions, positional embedding."""

from __future__ import annotations

import pytest
import torch

from sonodistill.data.masking import tube_mask
from sonodistill.models.video_decoder import VideoTokenDecoder, sincos_pos_embed_3d


pytestmark = pytest.mark.usefixtures("one_thread")


def test_decoder_shapes_with_and_without_mask():
    dec = VideoTokenDecoder(in_dim=24, out_dim=16, dim=12, depth=2, heads=2)
    keep = tube_mask(3, (2, 4, 4), 0.75)
    out = dec(torch.randn(3, keep.shape[1], 24), keep, (2, 4, 4))
    assert out.shape == (3, 32, 16) and torch.isfinite(out).all()
    assert dec(torch.randn(3, 32, 24), None, (2, 4, 4)).shape == (3, 32, 16)
    with pytest.raises(ValueError, match="without keep"):
        dec(torch.randn(3, 8, 24), None, (2, 4, 4))


def test_kept_token_order_does_not_matter():
    """Each kept token lands at its own index: permuting tokens and indices together changes nothing."""
    torch.manual_seed(0)
    dec = VideoTokenDecoder(in_dim=8, out_dim=8, dim=12, depth=1, heads=2).eval()
    keep = torch.tensor([[0, 3, 5, 9, 14]])
    tokens = torch.randn(1, 5, 8)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = dec(tokens, keep, (1, 4, 4))
    b = dec(tokens[:, perm], keep[:, perm], (1, 4, 4))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # masked positions all start from the same mask token: before the blocks, only the position differs
    c = dec(tokens * 2, keep, (1, 4, 4))
    assert not torch.allclose(a, c)


def test_gradients_reach_embedding_and_mask_token():
    dec = VideoTokenDecoder(in_dim=8, out_dim=4, dim=12, depth=1, heads=2)
    tokens = torch.randn(2, 4, 8, requires_grad=True)
    dec(tokens, tube_mask(2, (1, 4, 4), 0.75), (1, 4, 4)).square().sum().backward()
    assert tokens.grad.abs().sum() > 0 and dec.mask_token.grad.abs().sum() > 0


def test_sincos_pos_embed_3d():
    emb = sincos_pos_embed_3d((2, 3, 4), 14)
    assert emb.shape == (24, 14)
    assert torch.equal(emb[:, 12:], torch.zeros(24, 2))  # 14 = 3 * 4 + 2 padding channels
    assert torch.unique(emb, dim=0).shape[0] == 24  # every position distinct
    # the t-channels depend on t only: positions (t, h, w) and (t, h', w') share them
    assert torch.equal(emb[0, :4], emb[11, :4]) and not torch.equal(emb[0, :4], emb[12, :4])
    with pytest.raises(ValueError):
        sincos_pos_embed_3d((1, 1, 1), 5)
