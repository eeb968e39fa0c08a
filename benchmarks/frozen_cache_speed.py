"""Training speed of partial finetuning with and without the frozen-stage cache (`train.frozen_cache_views`).

    python benchmarks/frozen_cache_speed.py [--threads 1] [--batch 32] [--steps 3]

For each (frozen stages, size): images/s of one AdamW step through the whole network, of one step from the cached
frozen-prefix output, and of computing that output (the cache's one-off cost per item and view). ImageNet weights.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import seconds_per_step

from sonodistill.models.backbones import build_backbone
from sonodistill.models.heads import ClassificationHead
from sonodistill.models.stages import Classifier

SETTINGS = ((2, 128), (3, 224), (4, 224))


def images_per_second(fn, inp: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, steps: int) -> float:
    """Training images/s of `steps` steps after one warm-up step."""
    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(fn(inp), y).backward()
        opt.step()

    return len(y) / seconds_per_step(step, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| frozen stages | size | whole network img/s | from the cache img/s | ratio | computing the cache img/s "
          "| cached map |\n|---|---|---|---|---|---|---|")
    for frozen, size in SETTINGS:
        torch.manual_seed(0)
        bb = build_backbone("efficientnet_lite0", width=1.0, pretrained="imagenet", freeze_stages=frozen)
        model = Classifier(bb, ClassificationHead(bb.embed_dim, 3)).train()
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], 1e-3)
        x, y = torch.rand(args.batch, 1, size, size), torch.randint(0, 3, (args.batch,))
        t = time.perf_counter()
        h = bb.frozen_prefix(x)
        prefix = args.batch / (time.perf_counter() - t)
        whole = images_per_second(model, x, y, opt, args.steps)
        cached = images_per_second(model.forward_from_prefix, h, y, opt, args.steps)
        print(f"| {frozen} | {size} | {whole:.1f} | {cached:.1f} | {cached / whole:.1f}x | {prefix:.1f} "
              f"| {' x '.join(map(str, h.shape[1:]))} |", flush=True)


if __name__ == "__main__":
    main()
