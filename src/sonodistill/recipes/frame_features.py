"""Frame encoders for MeDiVLAD: build, load pretrained weights strictly, extract per-frame and per-video features."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sonodistill.config import DataConfig, RunConfig, load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import CheckpointError, ConfigError
from sonodistill.models.pretrained import TEACHER_WEIGHTS, load_backbone_weights  # noqa: F401 (re-exported)
from sonodistill.models.stages import StagedBackbone

log = logging.getLogger(__name__)

STUDENT_WEIGHTS = "student_backbone.safetensors"

def preprocess_config(data: DataConfig):  # -> PreprocessConfig
    """The PreprocessConfig every dataset of a run uses (same fields as `recipes.data.build_dataset`)."""
    from sonodistill.data.preprocess import PreprocessConfig

    return PreprocessConfig.from_data(data)


def clip_cache(data: DataConfig):  # -> ClipCache
    """The run's decoded-clip cache (`data.cache_dir/clips`, else the default cache)."""
    from sonodistill.data.cache import ClipCache
    from sonodistill.data.cache import cache_root

    return ClipCache(cache_root(data.cache_dir) / "clips")


def build_frame_backbone(cfg: RunConfig, start: bool = False) -> StagedBackbone:
    """The frame backbone of `cfg.model` (1 input channel); a video backbone is a ConfigError. `start=True`
    initialises it from `model.pretrained` (training starts); otherwise weights are loaded next."""
    from sonodistill.models.backbones import build_backbone

    bb = build_backbone(cfg.model.backbone, in_channels=1, width=cfg.model.width, norm=cfg.model.norm,
                        pretrained=cfg.model.pretrained if start else "none", **cfg.model.kwargs)
    if bb.kind != "frame":
        raise ConfigError(f"{cfg.recipe}: model.backbone {cfg.model.backbone!r} is a {bb.kind} backbone; "
                          "MeDiVLAD/DINO need a frame backbone (e.g. vit_tiny_p8, vit_small_p8)")
    return bb


def load_run_backbone(run_dir: str | Path, weights: str | Path | None = None) -> tuple[StagedBackbone, RunConfig]:
    """The frame backbone of a finished run (its config.yaml), with its teacher / model weights loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory: config.yaml is missing")
    cfg = load_config(run_dir / "config.yaml")
    bb = build_frame_backbone(cfg)
    load_backbone_weights(bb, weights if weights is not None else run_dir)
    return bb.eval(), cfg


def frame_loader(manifest: Manifest, data: DataConfig, batch_size: int | None = None) -> DataLoader:
    """Un-augmented, ordered loader of an image manifest (batches {"x": B x 1 x S x S, "index", "y"?})."""
    from sonodistill.data.datasets import FrameDataset

    if manifest.modality != "image":
        raise ConfigError(f"frame_loader needs an image manifest, got {manifest.modality!r} ({manifest.name})")
    ds = FrameDataset(manifest, preprocess_config(data), cache=clip_cache(data), augment=None)
    return DataLoader(ds, batch_size=batch_size or data.batch_size, shuffle=False, num_workers=data.num_workers)


@torch.no_grad()
def encode_frames(encoder: nn.Module, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pooled embeddings of frames `N x 1 x S x S` -> `N x D` (eval mode, in chunks)."""
    out = []
    for start in range(0, frames.shape[0], batch_size):
        res = encoder(frames[start:start + batch_size])
        out.append((res.pooled if hasattr(res, "pooled") else res).float())
    return torch.cat(out)


@torch.no_grad()
def video_frame_features(encoder: nn.Module, manifest: Manifest, data: DataConfig, num_frames: int,
                         batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-video frame features: `num_frames` uniformly spaced frames (fewer for shorter videos, padded).

    Returns feats float32 `N x T x D` and mask bool `N x T` (False on padding); N = manifest rows, in order.
    """
    from sonodistill.data.datasets import ClipDataset
    from sonodistill.data.preprocess import sample_frame_indices

    if manifest.modality != "video":
        raise ConfigError(f"video_frame_features needs a video manifest, got {manifest.modality!r} ({manifest.name})")
    pre = preprocess_config(data)
    ds = ClipDataset(manifest, pre, num_frames=num_frames, cache=clip_cache(data))
    was_training = encoder.training
    encoder.eval()
    feats: np.ndarray | None = None
    mask = np.zeros((len(manifest), num_frames), dtype=bool)
    try:
        for row in range(len(manifest)):
            clip = ds.load(row)
            t = min(len(clip), num_frames)
            idx = sample_frame_indices(len(clip), t, "uniform")
            x = torch.from_numpy(np.array(clip[idx], dtype=np.float32) / 255.0)[:, None]  # t x 1 x S x S
            x = (x - pre.mean) / pre.std                               # as the datasets normalise
            f = encode_frames(encoder, x, batch_size).numpy()
            if feats is None:
                feats = np.zeros((len(manifest), num_frames, f.shape[1]), dtype=np.float32)
            feats[row, :t] = f
            mask[row, :t] = True
    finally:
        encoder.train(was_training)
    assert feats is not None
    return feats, mask
