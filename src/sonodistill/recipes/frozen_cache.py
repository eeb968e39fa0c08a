"""Partial finetuning on cached frozen stages (`train.frozen_cache_views`, issue 14): the frozen stem and first
stages of an ImageNet encoder run once per cached augmented view of each training item instead of once per step.

With `model.freeze_stages: N` those stages have no gradient and fixed (ImageNet) BatchNorm statistics, so their
output for a given input never changes during training. Caching it is exact: epoch `e` trains on view `e mod K`,
the augmentation that an uncached run draws in epoch `e mod K` (the data sets seed it by (seed, epoch, item)), so
with K >= epochs the cached run sees the same inputs as the uncached one; with K < epochs the augmentations repeat
with period K. Test items are never cached: prediction runs the whole network on the images.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from sonodistill.config import RunConfig
from sonodistill.errors import ConfigError

log = logging.getLogger(__name__)


def check_frozen_cache(cfg: RunConfig, recipe_cls: type, backbone: Any = None) -> None:
    """ConfigError unless `train.frozen_cache_views` fits the run: a recipe that supports it (`frozen_cache_ok`),
    frozen stages, a backbone with `frozen_prefix`, and more than one view only when the data are augmented."""
    views = cfg.train.frozen_cache_views
    if views == 0:
        return
    where = f"train.frozen_cache_views={views}"
    if views < 0:
        raise ConfigError(f"{where}: must be >= 0 (0: no cache; K: cache K augmented views of the frozen stages)")
    if not getattr(recipe_cls, "frozen_cache_ok", False):
        raise ConfigError(f"{where}: recipe {cfg.recipe!r} uses more than the last stages' output (or trains its "
                          "own encoders); the frozen-stage cache is for plain supervised finetuning (recipe: "
                          "supervised)")
    if cfg.model.freeze_stages < 1:
        raise ConfigError(f"{where} needs frozen stages to cache: set model.freeze_stages >= 1")
    if views > 1 and not cfg.data.augment:
        raise ConfigError(f"{where}: without augmentation (data.augment=false) every view is the same; use 1")
    if backbone is not None and not hasattr(backbone, "frozen_prefix"):
        raise ConfigError(f"{where}: backbone {cfg.model.backbone!r} cannot run its frozen stages apart "
                          "(no frozen_prefix; the EfficientNet-Lite0 encoders can)")


class FrozenPrefixCache(Dataset):
    """The items of `dataset` with `x` replaced by `backbone.frozen_prefix(x)` of view `epoch mod views`.

    Built at construction: `views` passes over `dataset` with its augmentation drawn for epochs 0..views-1, each
    through the frozen prefix in batches of `batch_size`. `set_epoch(e)` selects view `e mod views`."""

    def __init__(self, dataset: Dataset, backbone: Any, views: int, batch_size: int) -> None:
        from sonodistill.recipes.data import set_data_epoch

        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ConfigError("train.frozen_cache_views: the training set is empty, nothing to cache")
        self.views, self.view = int(views), 0
        self.maps: list[torch.Tensor] = []
        self.fields: list[list[dict[str, Any]]] = []  # per view, the items' other fields (y, index, ...)
        t0 = time.perf_counter()
        for v in range(self.views):
            set_data_epoch(dataset, v)
            maps: torch.Tensor | None = None
            fields: list[dict[str, Any]] = []
            for start in range(0, n, batch_size):
                items = [dataset[i] for i in range(start, min(n, start + batch_size))]
                out = backbone.frozen_prefix(default_collate([it["x"] for it in items]))
                if maps is None:
                    maps = torch.empty((n, *out.shape[1:]), dtype=out.dtype)
                maps[start:start + len(items)] = out
                fields += [{k: val for k, val in it.items() if k != "x"} for it in items]
            assert maps is not None
            self.maps.append(maps)
            self.fields.append(fields)
        set_data_epoch(dataset, 0)
        log.info("frozen-stage cache: %d view(s) x %d items of %s (%.0f MB) in %.1f s", self.views, n,
                 "x".join(map(str, self.maps[0].shape[1:])), self.nbytes / 2**20, time.perf_counter() - t0)

    @property
    def nbytes(self) -> int:
        return sum(m.numel() * m.element_size() for m in self.maps)

    def set_epoch(self, epoch: int) -> None:
        self.view = int(epoch) % self.views

    def __len__(self) -> int:
        return len(self.fields[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.fields[self.view][index], "x": self.maps[self.view][index]}


class FromPrefix(nn.Module):
    """A classifier as a cached run trains it: `forward(h)` = `model.forward_from_prefix(h)`, h the frozen stages'
    output (what `sonodistill bench train` times for a config with `train.frozen_cache_views`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from_prefix(h)


def cache_frozen_prefix(cfg: RunConfig, recipe: Any, train_set: Dataset) -> Dataset:
    """The training set as the recipe's frozen-prefix outputs (`FrozenPrefixCache`), and the recipe switched to
    train from them; `train_set` unchanged when `train.frozen_cache_views` is 0."""
    if not cfg.train.frozen_cache_views:
        return train_set
    backbone = recipe.model.backbone
    check_frozen_cache(cfg, type(recipe), backbone)
    cache = FrozenPrefixCache(train_set, backbone, cfg.train.frozen_cache_views, cfg.data.batch_size)
    recipe.inputs_are_prefix = True
    return cache
