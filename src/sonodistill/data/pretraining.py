"""The pretraining set of DINO: every frame of image manifests plus random frames of video manifests, as multi-crop
views without labels, and a loader whose sampler carries the epoch to the datasets (new frames each epoch, also in
persistent DataLoader workers)."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError


class ViewsOnly(Dataset):
    """Keep only the views of a dataset's items (labels ignored): {"x": list of views, "index": int}.

    Accepts plain indices, or `epoch * len + i` from `EpochIndexSampler`: the epoch then reaches the wrapped
    dataset (random frame choice per epoch) even inside persistent DataLoader workers.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, k: int) -> dict[str, Any]:
        epoch, i = divmod(int(k), len(self))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return {"x": self.dataset[i]["x"], "index": i}


class EpochConcat(ConcatDataset):
    """ConcatDataset passing `epoch * len + i` on to its parts as `epoch * len(part) + j`."""

    def __getitem__(self, k: int) -> dict[str, Any]:
        epoch, i = divmod(int(k), len(self))
        part = int(np.searchsorted(self.cumulative_sizes, i, side="right"))
        j = i - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part][epoch * len(self.datasets[part]) + j]


class EpochIndexSampler(Sampler[int]):
    """Wraps an epoch-seeded sampler `order` (its `set_epoch` and `epoch`: the same order after a resume) and
    yields `epoch * n + i` for each of its indices i, carrying the epoch to the dataset."""

    def __init__(self, order: Any) -> None:
        self.order = order

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        offset = int(self.order.epoch) * len(self.order)
        return (offset + int(i) for i in self.order)

    def __len__(self) -> int:
        return len(self.order)


def pretraining_dataset(manifests: list[Manifest], pre: Any, cache: Any, crops: Callable, frames_per_video: int,
                        seed: int) -> EpochConcat:
    """Every frame of image manifests plus `frames_per_video` random frames per video and epoch, each item the
    multi-crop views `crops` makes of it (`pre`: PreprocessConfig, `cache`: ClipCache); masks are never loaded."""
    from sonodistill.data.datasets import FrameDataset, VideoFrameDataset

    parts: list[Dataset] = []
    for m in (manifest.without_masks() for manifest in manifests):  # views of the image alone: masks are labels
        if m.modality == "image":
            ds: Dataset = FrameDataset(m, pre, cache=cache, augment=crops, seed=seed)
        else:
            ds = VideoFrameDataset(m, pre, frames_per_video=int(frames_per_video), sampling="random", cache=cache,
                                   augment=crops, seed=seed)
        parts.append(ViewsOnly(ds))
    return EpochConcat(parts)


def pretraining_loader(dataset: Dataset, order: Any, batch_size: int, num_workers: int) -> DataLoader:
    """drop_last loader of multi-crop batches {"x": list of `B x 1 x h x w`} in the order of the epoch-seeded
    sampler `order` (over `len(dataset)` items); fewer items than one batch is a ConfigError."""
    n = len(dataset)  # type: ignore[arg-type]
    if n < batch_size:
        raise ConfigError(f"dino: {n} frames are fewer than one batch (data.batch_size={batch_size})")
    w = int(num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochIndexSampler(order), num_workers=w,
                      drop_last=True, persistent_workers=w > 0)
