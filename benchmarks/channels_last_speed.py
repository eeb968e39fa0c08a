"""Training-step time with the weights in channels-last order (`train.channels_last`) against the default order.

    python benchmarks/channels_last_speed.py [--threads 1] [--rounds 3] [--steps 2]

For each model, one AdamW step (forward, backward, update) on a fixed batch, timed in both memory orders from the
same start, the two orders alternating for `--rounds` rounds (a machine's other jobs then weigh on both alike);
prints each order's median seconds per step and their ratio. Random weights (the step's cost does not depend on
them). The models: the EfficientNet-Lite0 U-Net of `seg-hc18-imagenet` / `seg-busi-imagenet` (160 px, batch 8: the
supervised and consistency baselines' network), an HDC step of that config (dual-decoder student and EMA teacher on
4 labelled + 4 unlabelled images), the TSM EfficientNet-Lite0 video network (8 frames of 112 px, batch 2) and the
EfficientNet-Lite0 frame classifier (128 px, batch 16).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import seconds_per_step

from sonodistill.config import load_config, packaged_config
from sonodistill.models.backbones import build_backbone
from sonodistill.models.heads import ClassificationHead
from sonodistill.models.segmentation import SingleDecoderUNet
from sonodistill.models.stages import Classifier
from sonodistill.recipes import get_recipe
from sonodistill.recipes.trainer import to_channels_last

Step = Callable[[torch.nn.Module], torch.Tensor]


def unet() -> tuple[torch.nn.Module, Step]:
    x, y = torch.rand(8, 1, 160, 160), torch.randint(0, 2, (8, 160, 160))
    return SingleDecoderUNet(1, 2, encoder="efficientnet_lite0"), lambda m: F.cross_entropy(m(x).logits1, y)


def hdc() -> tuple[torch.nn.Module, Step]:
    cfg = load_config(packaged_config("seg-busi-imagenet"), ["recipe=hdc", "model.pretrained=none"])
    recipe = get_recipe("hdc")(cfg, num_classes=2, steps_per_epoch=100).train()
    mask = torch.zeros(4, 1, 160, 160)
    mask[:, :, 40:100, 50:120] = 1.0
    labelled = {"x": torch.rand(4, 1, 160, 160), "mask": mask}
    xu = torch.rand(4, 1, 160, 160)
    unlabelled = {"x_weak": xu, "x_strong": (xu * 1.2).clamp(0, 1)}
    return recipe, lambda m: m.compute_loss(labelled, unlabelled)[0]


def video() -> tuple[torch.nn.Module, Step]:
    bb = build_backbone("tsm_efficientnet_lite0", width=1.0)
    x, y = torch.rand(2, 1, 8, 112, 112), torch.randint(0, 3, (2,))
    return Classifier(bb, ClassificationHead(bb.embed_dim, 3)), lambda m: F.cross_entropy(m(x), y)


def frames() -> tuple[torch.nn.Module, Step]:
    bb = build_backbone("efficientnet_lite0", width=1.0)
    x, y = torch.rand(16, 1, 128, 128), torch.randint(0, 3, (16,))
    return Classifier(bb, ClassificationHead(bb.embed_dim, 3)), lambda m: F.cross_entropy(m(x), y)


MODELS = {"U-Net EfficientNet-Lite0, 160 px, batch 8": unet, "HDC step (seg-busi-imagenet, 4 + 4 images)": hdc,
          "TSM EfficientNet-Lite0, 8 x 112 px, batch 2": video, "EfficientNet-Lite0 frames, 128 px, batch 16": frames}


def step_seconds(model: torch.nn.Module, loss: Step, steps: int) -> float:
    """Seconds per AdamW step, after one warm-up step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)

    def step() -> None:
        opt.zero_grad()
        loss(model).backward()
        opt.step()

    return seconds_per_step(step, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), median of {args.rounds} rounds of {args.steps} steps")
    print("| model | default order (s/step) | channels-last (s/step) | default / channels-last |\n|---|---:|---:|---:|")
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model, loss = make()
        times: dict[str, list[float]] = {"default": [], "channels_last": []}
        for r in range(args.rounds):
            for order in (("default", "channels_last") if r % 2 == 0 else ("channels_last", "default")):
                m = copy.deepcopy(model)
                times[order].append(step_seconds(to_channels_last(m) if order == "channels_last" else m, loss,
                                                 args.steps))
        a, b = statistics.median(times["default"]), statistics.median(times["channels_last"])
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
