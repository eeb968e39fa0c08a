"""From a DataConfig to a Manifest and DataLoaders for one fold (deterministic, resumable order)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sonodistill.config import DataConfig
from sonodistill.data.cache import cache_root
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError


def load_manifest(data: DataConfig) -> Manifest:
    """Resolve `data.spec`: 'synthetic:PRESET' generates (once, cached by parameters) or 'ADAPTER:ROOT' loads."""
    if data.spec.startswith("synthetic:"):
        return synthetic_manifest(data.spec.split(":", 1)[1], data.synthetic_n, data.synthetic_frames,
                                  data.synthetic_size, cache_root(data.cache_dir), seed=data.synthetic_seed)
    from sonodistill.data.adapters import adapter_options, load_adapter, parse_data_spec

    name, root = parse_data_spec(data.spec)
    return load_adapter(name, root, **adapter_options(data.adapter_options, data.target or None))


def synthetic_manifest(preset: str, n: int, frames: int, size: int, cache_root: Path, seed: int = 0) -> Manifest:
    """Generate a simulator data set once per parameter set under the cache folder and load its manifest."""
    from sonodistill.data.synthetic import write_dataset

    import sonodistill.data.synthetic as sim
    import sonodistill.data.synthetic_scenes as scenes

    # The simulator's own source is part of the key: a changed simulator never reuses stale clips.
    code = b"".join(Path(m.__file__).read_bytes() for m in (sim, scenes))  # type: ignore[arg-type]
    key = hashlib.sha1(json.dumps([preset, n, frames, size, seed]).encode() + code).hexdigest()[:12]
    out = cache_root / "synthetic" / f"{preset}-{key}"
    csv = out / "manifest.csv"
    if not (out / ".complete").is_file():
        csv = write_dataset(preset, out, n=n, seed=seed, frames=frames, size=size)
        (out / ".complete").write_text("ok")
    return Manifest.from_csv(csv)


class EpochSeededSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch): the same order after a resume as without one."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def set_data_epoch(dataset: object, epoch: int) -> None:
    """Call `set_epoch(epoch)` on a dataset and on every dataset it wraps (`.dataset`, `.datasets`)."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # type: ignore[attr-defined]
    inner = getattr(dataset, "dataset", None)
    for child in ([inner] if inner is not None else []) + list(getattr(dataset, "datasets", [])):
        set_data_epoch(child, epoch)


def train_augment(data: DataConfig, modality: str) -> Any:
    """The training augmentation of `data` for a video or image set (`data.rotate_degrees`, `data.zoom`
    included, checked by DataConfig when the config is loaded), or None when `data.augment` is off."""
    from sonodistill.data import augment as aug

    if not data.augment:
        return None
    builder = aug.video_train_augment if modality == "video" else aug.weak_augment
    return builder(data.size, rotate_degrees=float(data.rotate_degrees), zoom=tuple(data.zoom))


def build_dataset(manifest: Manifest, data: DataConfig, train: bool, seed: int) -> Dataset:
    """ClipDataset for video manifests, FrameDataset for image manifests; augmentation on training sets only."""
    from sonodistill.data.cache import ClipCache
    from sonodistill.data.datasets import ClipDataset, FrameDataset
    from sonodistill.data.preprocess import PreprocessConfig

    pre = PreprocessConfig.from_data(data)
    cache = ClipCache(cache_root(data.cache_dir) / "clips")
    if manifest.modality == "video":
        transform = train_augment(data, "video") if train else None
        return ClipDataset(manifest, pre, num_frames=data.num_frames,
                           sampling=data.sampling if train else "uniform", cache=cache, augment=transform, seed=seed)
    if manifest.modality == "image":
        transform = train_augment(data, "image") if train else None
        return FrameDataset(manifest, pre, cache=cache, augment=transform, seed=seed)
    raise ConfigError(f"unsupported modality {manifest.modality!r}")


def make_loader(dataset: Dataset, data: DataConfig, train: bool, seed: int) -> DataLoader:
    sampler = EpochSeededSampler(len(dataset), seed, shuffle=train)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=data.batch_size, sampler=sampler, num_workers=data.num_workers,
                      drop_last=train and len(dataset) > data.batch_size,  # type: ignore[arg-type]
                      persistent_workers=False, pin_memory=False)  # workers re-created per epoch see set_epoch


def fold_arrays(manifest: Manifest, rows: np.ndarray) -> Manifest:
    return manifest.subset(rows)
