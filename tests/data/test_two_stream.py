"""Two-stream batches: fixed labelled/unlabelled ratio, disjoint streams, seeded epochs, rank sharding,
and unlabelled masks that are never read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sonodistill.data.two_stream import (
    TwoStreamBatchSampler,
    UnlabelledStream,
    build_two_stream_loader,
    default_iterations,
    strong_photometric_augment,
    two_stream_collate,
)
from sonodistill.errors import ConfigError


def test_every_batch_has_the_fixed_ratio_and_streams_do_not_overlap():
    s = TwoStreamBatchSampler(n_labelled=5, n_unlabelled=17, labelled_bs=2, unlabelled_bs=3, iterations=6, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == 6
    seen_l, seen_u = [], []
    for b in batches:
        lab, unl = b[:2], b[2:]
        assert len(b) == 5 and all(0 <= i < 5 for i in lab) and all(5 <= i < 22 for i in unl)
        seen_l += lab
        seen_u += unl
    # the unlabelled stream is a permutation: 17 distinct items before any repeats (18 drawn)
    assert len(set(seen_u[:17])) == 17
    # the labelled stream cycles whole permutations: 12 draws = 2 full passes + 2
    assert sorted(seen_l[:5]) == list(range(5)) and sorted(seen_l[5:10]) == list(range(5))


def test_order_is_seeded_by_epoch():
    s = TwoStreamBatchSampler(4, 10, 2, 2, iterations=5, seed=3)
    s.set_epoch(0)
    a = list(s)
    s.set_epoch(0)
    assert list(s) == a
    s.set_epoch(1)
    assert list(s) != a


def test_epochs_continue_the_streams_so_short_epochs_reach_every_item():
    """Epoch e takes the next stretch of each stream: with 2 iterations x 3 unlabelled items an epoch (6 of 17),
    epochs 0-2 together are one permutation's first 18 draws (17 distinct), epochs 3-5 continue it; and the
    sequence is one endless stream, the same whether cut into epochs of 2 or drawn as one epoch of 6 iterations."""
    s = TwoStreamBatchSampler(5, 17, 1, 3, iterations=2, seed=4)
    epochs = []
    for e in range(6):
        s.set_epoch(e)
        epochs.append([i for b in s for i in b[1:]])
    drawn = [i for ep in epochs for i in ep]
    assert len(set(drawn[:17])) == 17 and len(set(drawn[17:34])) == 17  # every item once before any twice
    long = TwoStreamBatchSampler(5, 17, 1, 3, iterations=12, seed=4)
    assert [i for b in long for i in b[1:]] == drawn
    assert epochs[1] != epochs[0]


def test_strong_view_depends_on_seed_epoch_and_item_only():
    """The strong view's draws are seeded like the weak view's: the same for (seed, epoch, item) whatever the
    global random state (resume-exact, worker-independent), new for another epoch, and the caller's stream untouched."""
    class Frames(torch.utils.data.Dataset):
        seed, epoch = 5, 0

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"x": torch.full((1, 16, 16), 0.5), "index": i}

    ds = Frames()
    stream = UnlabelledStream(ds, strong_photometric_augment())
    torch.manual_seed(0)
    a = stream[1]["x_strong"]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert torch.equal(stream[1]["x_strong"], a)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(stream[2]["x_strong"], a)
    ds.epoch = 1
    assert not torch.equal(stream[1]["x_strong"], a)


def test_ranks_get_disjoint_shards_of_the_global_sequence():
    full = list(TwoStreamBatchSampler(6, 12, 1, 2, iterations=6, seed=0, rank=0, world_size=1))
    r0 = list(TwoStreamBatchSampler(6, 12, 1, 2, iterations=3, seed=0, rank=0, world_size=2))
    r1 = list(TwoStreamBatchSampler(6, 12, 1, 2, iterations=3, seed=0, rank=1, world_size=2))
    assert r0 == full[0::2] and r1 == full[1::2]
    u0 = {i for b in r0 for i in b[1:]}
    u1 = {i for b in r1 for i in b[1:]}
    assert not u0 & u1 and len(u0 | u1) == 12  # one pass over the unlabelled items, split between ranks


def test_bad_settings_raise():
    with pytest.raises(ConfigError):
        TwoStreamBatchSampler(0, 5, 1, 1, 2)
    with pytest.raises(ConfigError):
        TwoStreamBatchSampler(3, 0, 1, 2, 2)
    with pytest.raises(ConfigError):
        TwoStreamBatchSampler(3, 5, 1, 1, 0)
    assert default_iterations(4, 10, 2, 3) == 4 and default_iterations(5, 0, 2, 0) == 3


def test_collate_splits_streams():
    items = [
        {"x": torch.zeros(1, 4, 4), "mask": torch.ones(1, 4, 4), "index": 0, "stream": "labelled"},
        {"x_weak": torch.zeros(1, 4, 4), "x_strong": torch.ones(1, 4, 4), "index": 3, "stream": "unlabelled"},
        {"x_weak": torch.zeros(1, 4, 4), "x_strong": torch.ones(1, 4, 4), "index": 4, "stream": "unlabelled"},
    ]
    out = two_stream_collate(items)
    assert out["labelled"]["x"].shape == (1, 1, 4, 4) and out["unlabelled"]["x_strong"].shape == (2, 1, 4, 4)
    assert "stream" not in out["labelled"] and out["unlabelled"]["index"].tolist() == [3, 4]
    assert two_stream_collate(items[:1])["unlabelled"] is None


def test_unlabelled_stream_refuses_items_with_masks_and_keeps_geometry():
    class WithMask(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"x": torch.rand(1, 8, 8), "mask": torch.zeros(1, 8, 8), "index": i}

    with pytest.raises(ConfigError, match="never read"):
        UnlabelledStream(WithMask())[0]
    x = torch.zeros(1, 32, 32)
    x[:, 8:24, 8:24] = 0.5
    torch.manual_seed(0)
    for _ in range(10):
        strong = strong_photometric_augment()(x)
        assert strong.shape == x.shape
        # intensity-only (blur radius <= 5 px): the black border stays black, so no crop, flip or shift happened
        assert bool((strong[:, :2, :] == 0).all()) and bool((strong[:, :, :2] == 0).all())
        assert bool((strong[:, -2:, :] == 0).all()) and bool((strong[:, :, -2:] == 0).all())


def test_loader_over_real_frame_datasets_never_reads_unlabelled_masks(tmp_path):
    from sonodistill.data.datasets import FrameDataset
    from sonodistill.data.preprocess import PreprocessConfig
    from tests.recipes.test_semi_supervised import write_ellipse_set

    manifest = write_ellipse_set(tmp_path / "d", n=6)
    lab, unl = manifest.subset([0, 1]), manifest.subset([2, 3, 4, 5])
    for p in unl.table["mask"]:
        Path(p).write_bytes(b"garbage")  # reading any of these would raise
    pre = PreprocessConfig(size=32, crop_region=False, remove_overlay=False)
    loader = build_two_stream_loader(FrameDataset(lab, pre), FrameDataset(unl.without_masks(), pre), labelled_bs=1,
                                     unlabelled_bs=2, iterations=3, seed=0, strong=strong_photometric_augment())
    batches = list(loader)
    assert len(batches) == 3
    for b in batches:
        assert b["labelled"]["mask"].shape == (1, 1, 32, 32) and set(b["labelled"]["mask"].unique().tolist()) <= {0, 1}
        assert set(b["unlabelled"]) == {"x_weak", "x_strong", "index"}
        assert b["unlabelled"]["x_weak"].shape == (2, 1, 32, 32)
