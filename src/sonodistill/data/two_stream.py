"""Labelled + unlabelled batches in a fixed ratio for semi-supervised segmentation.

Items come from two datasets joined by `ConcatDataset([labelled, unlabelled])`: indices `[0, n_l)` are labelled,
`[n_l, n_l + n_u)` unlabelled. `TwoStreamBatchSampler` yields every batch as `labelled_bs` labelled +
`unlabelled_bs` unlabelled indices; `two_stream_collate` turns them into
`{"labelled": {"x": B_l x 1 x S x S, "mask": B_l x 1 x S x S, "index": B_l},
  "unlabelled": {"x_weak", "x_strong": B_u x 1 x S x S, "index": B_u} or None}`.
Unlabelled items come from a dataset whose manifest has no mask column, so their masks are never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from sonodistill.data.augment import seeded_rng
from sonodistill.errors import ConfigError

__all__ = [
    "LabelledStream",
    "UnlabelledStream",
    "TwoStreamBatchSampler",
    "two_stream_collate",
    "strong_photometric_augment",
    "default_iterations",
    "build_two_stream_loader",
]

LABELLED, UNLABELLED = "labelled", "unlabelled"


def strong_photometric_augment() -> Callable:
    """Strong intensity noise with no geometry (gain, gamma, speckle, blur, cutout), applied on top of the weak
    view so that student (strong) and teacher (weak) predictions stay pixel-aligned. `C x H x W` -> same."""
    from sonodistill.data.augment import Compose, Cutout, Gain, Gamma, GaussianBlur, SpeckleNoise

    return Compose([
        Gain((0.7, 1.4), p=0.8),
        Gamma((0.6, 1.6), p=0.8),
        SpeckleNoise((0.05, 0.25), p=0.5),
        GaussianBlur((0.1, 1.5), p=0.5),
        Cutout(1, 0.3, p=0.5),
    ])


class LabelledStream(Dataset):
    """Wraps a FrameDataset whose items carry a mask: {"x", "mask", "index", "stream": "labelled"}."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if "mask" not in item:
            raise ConfigError(f"labelled item {i} has no mask: the labelled manifest needs a 'mask' column")
        if "has_mask" in item and not bool(item["has_mask"]):
            raise ConfigError(f"labelled item {i} has an empty mask path: keep rows without masks out of the "
                              "labelled set")
        return {"x": item["x"], "mask": item["mask"], "index": item["index"], "stream": LABELLED}


#: last element of the strong view's random key (seed, epoch, item, STRONG_VIEW): its draws differ from the weak
#: view's, which the wrapped dataset makes under the key (seed, epoch, item).
STRONG_VIEW = 1


class UnlabelledStream(Dataset):
    """Wraps a mask-free FrameDataset (weak geometric augmentation inside): {"x_weak", "x_strong", "index"}.

    `x_strong` = `strong(x_weak)`, intensity-only, so both views share the geometry. Its draws are seeded by the
    wrapped dataset's (seed, epoch) and the item, as the weak view's are: the same after a resume and with any number
    of DataLoader workers. A wrapped item that carries a mask is an error: the unlabelled manifest must have no mask
    column (so masks are never read)."""

    def __init__(self, dataset: Dataset, strong: Callable | None = None) -> None:
        self.dataset = dataset
        self.strong = strong

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if "mask" in item:
            raise ConfigError(f"unlabelled item {i} came with a mask: drop the 'mask' column from the unlabelled "
                              "manifest so that masks of unlabelled images are never read")
        x = item["x"]
        if self.strong is None:
            strong = x
        else:
            with seeded_rng(int(self.dataset.seed), int(self.dataset.epoch), int(i), STRONG_VIEW):  # type: ignore[attr-defined]
                strong = self.strong(x)
        return {"x_weak": x, "x_strong": strong, "index": item["index"], "stream": UNLABELLED}


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TwoStreamBatchSampler(Sampler[list[int]]):
    """Batches of `labelled_bs` indices from `[0, n_labelled)` + `unlabelled_bs` from `[n_labelled, n_l + n_u)`.

    An epoch is `iterations` batches per process. Each stream is an endless sequence of permutations of its items,
    permutation k drawn from a generator seeded by (seed, stream, k), and epoch e takes the next stretch of it (from
    position e x the items an epoch uses): every item comes once before any comes twice, across epochs too, and the
    order depends only on (seed, epoch), so a resumed run sees the same batches. `set_epoch` must be called every
    epoch (the recipes' `TrainingHooks.on_train_epoch_start` does; Lightning's own
    `_set_sampler_epoch` looks only at a loader's `sampler` and `batch_sampler.sampler`, never at the batch sampler
    itself): without it every epoch repeats epoch 0's batches, and with fewer iterations than one pass the same
    subset of the unlabelled images. With a process group active (or explicit `rank`/`world_size`), every process draws
    the same global sequence of `iterations * world_size` batches and keeps batches `rank, rank + W, ...`: the
    processes see disjoint items within a pass. Use it with `use_distributed_sampler=False` in the Trainer.
    """

    def __init__(self, n_labelled: int, n_unlabelled: int, labelled_bs: int, unlabelled_bs: int, iterations: int,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None) -> None:
        if labelled_bs < 1 or n_labelled < 1:
            raise ConfigError(f"two-stream sampler needs labelled items and labelled_bs >= 1, got "
                              f"n_labelled={n_labelled}, labelled_bs={labelled_bs}")
        if unlabelled_bs < 0 or (unlabelled_bs > 0 and n_unlabelled < 1):
            raise ConfigError(f"two-stream sampler: unlabelled_bs={unlabelled_bs} needs unlabelled items "
                              f"(got {n_unlabelled})")
        if iterations < 1:
            raise ConfigError(f"two-stream sampler: iterations per epoch must be >= 1, got {iterations}")
        self.n_labelled, self.n_unlabelled = int(n_labelled), int(n_unlabelled)
        self.labelled_bs, self.unlabelled_bs = int(labelled_bs), int(unlabelled_bs)
        self.iterations, self.seed, self.epoch = int(iterations), int(seed), 0
        self._rank, self._world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.iterations

    def _shard(self) -> tuple[int, int]:
        rank, world = _dist_info()
        rank = rank if self._rank is None else self._rank
        world = world if self._world_size is None else self._world_size
        if not 0 <= rank < world:
            raise ConfigError(f"two-stream sampler: rank {rank} outside world size {world}")
        return rank, world

    def _stream(self, stream: int, n: int, count: int, offset: int) -> list[int]:
        """Items [start, start + count) of stream `stream`'s endless permutation sequence, start = epoch x count;
        indices shifted by `offset` (the stream's place in the ConcatDataset)."""
        start = self.epoch * count
        k, skip = divmod(start, n)
        out: list[int] = []
        while len(out) < skip + count:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + stream * 100_003 + k)
            out += torch.randperm(n, generator=g).tolist()
            k += 1
        return [offset + i for i in out[skip:skip + count]]

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self._shard()
        total = self.iterations * world
        lab = self._stream(0, self.n_labelled, total * self.labelled_bs, 0)
        unl = (self._stream(1, self.n_unlabelled, total * self.unlabelled_bs, self.n_labelled)
               if self.unlabelled_bs else [])
        for b in range(rank, total, world):
            batch = lab[b * self.labelled_bs:(b + 1) * self.labelled_bs]
            batch += unl[b * self.unlabelled_bs:(b + 1) * self.unlabelled_bs]
            yield batch


def two_stream_collate(items: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor] | None]:
    """Split a list of labelled/unlabelled items by stream and collate each (see the module docstring)."""
    out: dict[str, dict[str, torch.Tensor] | None] = {}
    for stream in (LABELLED, UNLABELLED):
        part = [{k: v for k, v in it.items() if k != "stream"} for it in items if it["stream"] == stream]
        out[stream] = default_collate(part) if part else None
    if out[LABELLED] is None:
        raise ValueError("a two-stream batch holds no labelled item")
    return out


def default_iterations(n_labelled: int, n_unlabelled: int, labelled_bs: int, unlabelled_bs: int) -> int:
    """One pass over the unlabelled stream (or over the labelled one when there is no unlabelled stream)."""
    if unlabelled_bs > 0 and n_unlabelled > 0:
        return max(1, math.ceil(n_unlabelled / unlabelled_bs))
    return max(1, math.ceil(n_labelled / labelled_bs))


def build_two_stream_loader(labelled: Dataset, unlabelled: Dataset | None, labelled_bs: int, unlabelled_bs: int,
                            iterations: int, seed: int, num_workers: int = 0,
                            strong: Callable | None = None) -> DataLoader:
    """DataLoader over `LabelledStream(labelled)` + `UnlabelledStream(unlabelled, strong)`, two-stream sampler."""
    parts: list[Dataset] = [LabelledStream(labelled)]
    n_unl = 0
    if unlabelled is not None and unlabelled_bs > 0:
        parts.append(UnlabelledStream(unlabelled, strong))
        n_unl = len(unlabelled)  # type: ignore[arg-type]
    else:
        unlabelled_bs = 0
    sampler = TwoStreamBatchSampler(len(labelled), n_unl, labelled_bs, unlabelled_bs,  # type: ignore[arg-type]
                                    iterations, seed)
    return DataLoader(ConcatDataset(parts), batch_sampler=sampler, collate_fn=two_stream_collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=False)
