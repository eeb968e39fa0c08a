"""DILBERT's masked-region targets: a k-means codebook of region pixel descriptors (fitted, not trained)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RegionCodebook(torch.nn.Module):
    """MOC pseudo-classes: k-means centroids of region pixel descriptors (each region average-pooled to
    `cells x cells`, standardised). `assign(x)`: clip `B x 1 x T x H x W` -> class per region `B x (T*g*g)`."""

    def __init__(self, grid: int, n_classes: int, cells: int = 4) -> None:
        super().__init__()
        self.grid, self.cells = int(grid), int(cells)
        d = self.cells * self.cells
        self.register_buffer("centroids", torch.zeros(n_classes, d))
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))

    def descriptors(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = x.shape
        g, c = self.grid, self.cells
        p = F.adaptive_avg_pool2d(x.reshape(b * t, 1, h, w).float(), g * c)  # (B*T) x 1 x gc x gc
        p = p.reshape(b, t, g, c, g, c).permute(0, 1, 2, 4, 3, 5)
        return p.reshape(b, t * g * g, c * c)

    @torch.no_grad()
    def fit(self, clips: list[torch.Tensor], seed: int = 0) -> "RegionCodebook":
        from sklearn.cluster import KMeans

        d = torch.cat([self.descriptors(x) .reshape(-1, self.cells ** 2) for x in clips]).numpy()
        mean, std = d.mean(0), d.std(0) + 1e-6
        k = self.centroids.shape[0]
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit((d - mean) / std)
        self.centroids.copy_(torch.from_numpy(km.cluster_centers_).float())
        self.mean.copy_(torch.from_numpy(mean).float())
        self.std.copy_(torch.from_numpy(std).float())
        return self

    @torch.no_grad()
    def assign(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.descriptors(x) - self.mean) / self.std
        return torch.cdist(z, self.centroids.expand(z.shape[0], -1, -1)).argmin(-1)
