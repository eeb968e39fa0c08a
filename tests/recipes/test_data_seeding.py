"""Training data draws (frames, augmentation) depend on (seed, epoch, item) only: resume-exact, worker-independent."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from sonodistill.config import DataConfig
from sonodistill.recipes.data import build_dataset, set_data_epoch


def _train_set(tiny_carotid, tmp_path, seed: int = 7):
    data = DataConfig(size=32, num_frames=4, augment=True, sampling="random", cache_dir=str(tmp_path / "cache"))
    return build_dataset(tiny_carotid, data, train=True, seed=seed)


def test_augmented_item_depends_only_on_seed_epoch_index(tiny_carotid, tmp_path):
    ds = _train_set(tiny_carotid, tmp_path)
    ds.set_epoch(2)
    torch.manual_seed(0)
    a = ds[5]["x"]
    torch.manual_seed(999)  # another global random state: the same item
    state = torch.get_rng_state()
    b = ds[5]["x"]
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    ds.set_epoch(3)
    assert not torch.equal(ds[5]["x"], a)  # a new epoch draws new augmentations


def test_augmented_items_equal_with_and_without_workers(tiny_carotid, tmp_path):
    ds = _train_set(tiny_carotid, tmp_path)
    ds.set_epoch(1)
    main = [b["x"] for b in DataLoader(ds, batch_size=6, num_workers=0)]
    workers = [b["x"] for b in DataLoader(ds, batch_size=6, num_workers=2)]
    for x, y in zip(main, workers):
        assert torch.equal(x, y)


def test_set_data_epoch_reaches_wrapped_datasets(tiny_carotid, tmp_path):
    from torch.utils.data import ConcatDataset

    from sonodistill.data.two_stream import LabelledStream

    inner = _train_set(tiny_carotid, tmp_path)
    set_data_epoch(ConcatDataset([LabelledStream(inner)]), 4)
    assert inner.epoch == 4
