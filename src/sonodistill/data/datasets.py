"""Torch Datasets over a Manifest: clips for video models, frames (with masks) for image models, and frames
sampled from videos for frame-level self-supervised pretraining. Items are dicts of tensors.

Intensities: uint8 -> [0, 1] -> `augment` (which expects [0, 1]) -> `(x - cfg.mean) / cfg.std`, the same
values as `preprocess.normalise` when there is no augmentation.

Masks: the image's crop box (`crop_region=True`: the detected imaging region's bbox; else the full image) is
applied to the mask, followed by the same aspect-preserving resize and centred padding with nearest-neighbour
resampling, so mask pixels stay on the image pixels they label (see `cache.produce_mask`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from sonodistill.errors import ConfigError, DataError

from .augment import seeded_rng
from .cache import ClipCache, _check_cfg, produce_clip, produce_mask
from .manifest import Manifest
from .preprocess import PreprocessConfig, sample_frame_indices

log = logging.getLogger(__name__)

Augment = Callable[..., Any]


class _ManifestDataset(Dataset):
    """Shared loading: cached or direct decode, labels, targets, per-epoch seeded RNG."""

    def __init__(self, manifest: Manifest, preprocess: PreprocessConfig, cache: ClipCache | None,
                 augment: Augment | None, seed: int) -> None:
        _check_cfg(preprocess)
        self.manifest = manifest
        self.cfg = preprocess
        self.cache = cache
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.paths = manifest.paths
        self.labels = manifest.labels if manifest.has_labels else None
        t = manifest.table
        self.targets = (t["target"].to_numpy(dtype=np.float32)
                        if "target" in t.columns and pd.api.types.is_numeric_dtype(t["target"]) else None)

    def set_epoch(self, epoch: int) -> None:
        """Change the random frame choices of 'random' sampling and the augmentation draws (call once per epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _augmented(self, index: int, *tensors: torch.Tensor) -> Any:
        """`augment(*tensors)` with torch's RNG seeded by (seed, epoch, index): resume-exact, worker-independent."""
        assert self.augment is not None
        with seeded_rng(self.seed, self.epoch, int(index)):
            return self.augment(*tensors)

    def load(self, row: int) -> np.ndarray:
        """uint8 `T x S x S` preprocessed clip of manifest row `row`."""
        path = self.paths[row]
        return self.cache.get(path, self.cfg) if self.cache is not None else produce_clip(path, self.cfg)

    def _to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 array -> float32 tensor in [0, 1] (a copy, never a view of the cache's memory map)."""
        x = np.array(frames, dtype=np.float32)
        x *= np.float32(1.0 / 255.0)
        return torch.from_numpy(x)

    def _normalise(self, x: Any) -> Any:
        """(x - mean) / std, in place on tensors this dataset made (a multi-view list is done view by view)."""
        if isinstance(x, (list, tuple)):  # several views from a multi-crop augmentation
            return [self._normalise(v) for v in x]
        if self.cfg.mean != 0.0:
            x = x.sub_(self.cfg.mean)
        if self.cfg.std != 1.0:
            x = x.div_(self.cfg.std)
        return x

    def _labels(self, row: int, item: dict[str, Any]) -> dict[str, Any]:
        if self.labels is not None:
            item["y"] = torch.tensor(self.labels[row], dtype=torch.int64)
        if self.targets is not None:
            item["target"] = torch.tensor(self.targets[row], dtype=torch.float32)
        return item

    def __len__(self) -> int:
        return len(self.manifest)


class ClipDataset(_ManifestDataset):
    """Video classification: item {"x": float32 1 x T x S x S, "y": int64 (if labelled), "index": int}."""

    def __init__(self, manifest: Manifest, preprocess: PreprocessConfig, num_frames: int = 16,
                 sampling: str = "uniform", stride: int = 1, cache: ClipCache | None = None,
                 augment: Augment | None = None, seed: int = 0) -> None:
        super().__init__(manifest, preprocess, cache, augment, seed)
        sample_frame_indices(1, num_frames, sampling, stride, np.random.default_rng(0))  # validates the options
        self.num_frames, self.sampling, self.stride = int(num_frames), sampling, int(stride)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.load(index)
        idx = sample_frame_indices(len(clip), self.num_frames, self.sampling, self.stride, self._rng(index))
        x = self._to_tensor(clip[idx])[None]  # 1 x T x S x S
        if self.augment is not None:
            x = self._augmented(index, x)
        return self._labels(index, {"x": self._normalise(x), "index": index})


class FrameDataset(_ManifestDataset):
    """Images (or T=1 clips): item {"x": 1 x S x S, "y"?, "target"?, "mask"?: 1 x S x S {0,1}, "has_mask"?, "index"}.

    With a `mask` column every item has "mask" (zeros where the row has no mask) and a bool "has_mask".
    `augment(x, mask)` is called with the mask so geometric transforms move both.
    """

    def __init__(self, manifest: Manifest, preprocess: PreprocessConfig, cache: ClipCache | None = None,
                 augment: Augment | None = None, seed: int = 0) -> None:
        super().__init__(manifest, preprocess, cache, augment, seed)
        self.masks: list[str] | None = None
        if "mask" in manifest.table.columns:
            self.masks = ["" if pd.isna(m) else str(m) for m in manifest.table["mask"]]

    def load_mask(self, row: int) -> np.ndarray:
        """uint8 `1 x S x S` {0,1} mask of row `row`, geometry matching `load(row)`."""
        assert self.masks is not None
        image, mask = self.paths[row], self.masks[row]
        if self.cache is not None:
            return self.cache.get_mask(image, mask, self.cfg)
        return produce_mask(image, mask, self.cfg)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.load(index)
        if clip.shape[0] != 1:
            raise DataError(self.paths[index], f"FrameDataset expects single images, got {clip.shape[0]} frames "
                                               "(use VideoFrameDataset or ClipDataset for videos)")
        x = self._to_tensor(clip)  # 1 x S x S
        item: dict[str, Any] = {"index": index}
        if self.masks is not None:
            has = self.masks[index] != ""
            mask = (self._to_tensor(self.load_mask(index)) * 255.0 if has
                    else torch.zeros_like(x))  # 1 x S x S in {0, 1}
            if self.augment is not None:
                x, mask = self._augmented(index, x, mask)
            item["mask"] = mask
            item["has_mask"] = torch.tensor(has)
        elif self.augment is not None:
            x = self._augmented(index, x)
        item["x"] = self._normalise(x)
        return self._labels(index, item)


class VideoFrameDataset(_ManifestDataset):
    """Single frames from videos (frame-level pretraining): `frames_per_video` items per video.

    Item {"x": 1 x S x S, "index", "video_index", "frame_index", "y"? (the video's label)}. sampling='random'
    draws a new frame per item and epoch (seeded); 'uniform' takes fixed, evenly spaced frames.
    """

    def __init__(self, manifest: Manifest, preprocess: PreprocessConfig, frames_per_video: int = 8,
                 sampling: str = "random", cache: ClipCache | None = None, augment: Augment | None = None,
                 seed: int = 0) -> None:
        super().__init__(manifest, preprocess, cache, augment, seed)
        if frames_per_video < 1:
            raise ConfigError(f"frames_per_video must be >= 1, got {frames_per_video}")
        if sampling not in ("random", "uniform"):
            raise ConfigError(f"VideoFrameDataset sampling must be 'random' or 'uniform', got {sampling!r}")
        if cache is None:
            log.warning("VideoFrameDataset without a ClipCache decodes a whole video for every frame: pass a cache")
        self.frames_per_video, self.sampling = int(frames_per_video), sampling

    def __len__(self) -> int:
        return len(self.manifest) * self.frames_per_video

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        video, k = divmod(int(index), self.frames_per_video)
        clip = self.load(video)
        if self.sampling == "uniform":
            frame = int(sample_frame_indices(len(clip), self.frames_per_video, "uniform")[k])
        else:
            frame = int(self._rng(index).integers(len(clip)))
        x = self._to_tensor(clip[frame : frame + 1])  # 1 x S x S
        if self.augment is not None:
            x = self._augmented(index, x)
        item = {"x": self._normalise(x), "index": int(index), "video_index": video, "frame_index": frame}
        return self._labels(video, item)
