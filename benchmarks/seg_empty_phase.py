"""Empty-mask phases of the segmentation recipes on a synthetic small, low-contrast target (issue 17's collapse).

    python benchmarks/seg_empty_phase.py --methods seg_supervised,mean_teacher,fixmatch,cps --seeds 0,1,2
    python benchmarks/seg_empty_phase.py --option dice_background=true       # background in the supervised Dice (the
                                                                             # default before 2026-12-04)

Each method trains a quarter-width 3-level U-Net (32 px) for `--steps` steps of 4 labelled + 4 unlabelled images
(discs of 8 % of the image, `--contrast` above uniform noise of width 0.4), consistency weight at full value from
step 0 (no ramp-up), AdamW lr 3e-3, one thread; every 10 steps it measures the predicted foreground fraction of
16 held-out images (true fraction about 0.087). Prints one line per (method, seed): the trajectory, the number of
checkpoints after step 100 where the prediction is (almost) empty (< 1/10 of the true fraction) and the final one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sonodistill.config import load_config
from sonodistill.recipes import get_recipe


def discs(n: int, size: int, contrast: float, g: torch.Generator, fg: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images `n x 1 x size x size`: a disc covering `fg` of the image, `contrast` brighter than the noise."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = (fg * size * size / torch.pi) ** 0.5
    cy = torch.randint(int(r), int(size - r), (n,), generator=g)
    cx = torch.randint(int(r), int(size - r), (n,), generator=g)
    mask = (((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < r * r).float()[:, None]
    return 0.4 * torch.rand(n, 1, size, size, generator=g) + contrast * mask + 0.3, mask


def trajectory(method: str, seed: int, steps: int, contrast: float, work: Path,
               options: list[str] = ()) -> tuple[list[float], float]:
    """Held-out predicted foreground fraction every 10 steps, and the held-out true fraction. `options`:
    extra `recipe_options` as KEY=VALUE."""
    cfg = load_config(None, [
        f"recipe={method}", f"out_dir={work}", "name=probe", "data.size=32", "data.batch_size=8",
        "model.backbone=unet", "model.width=0.25", "train.epochs=1", "optim.warmup_epochs=0",
        "recipe_options={labelled_fraction: 0.3, labelled_bs: 4, channels: [8, 16, 32], rampup_fraction: 0.0}",
        *(f"recipe_options.{o}" for o in options)])
    torch.manual_seed(seed)
    recipe = get_recipe(method)(cfg, num_classes=2, steps_per_epoch=steps)
    opt = torch.optim.AdamW([p for p in recipe.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    x_held, m_held = discs(16, 32, contrast, torch.Generator().manual_seed(99))
    fractions = []
    for step in range(steps):
        recipe.train()
        xl, ml = discs(4, 32, contrast, g)
        xu, _ = discs(4, 32, contrast, g)
        gain = 0.8 + 0.4 * torch.rand(4, 1, 1, 1, generator=g)
        unlabelled = {"x_weak": xu, "x_strong": (xu * gain).clamp(0, 1)}
        loss, _ = recipe.compute_loss({"x": xl, "mask": ml}, unlabelled if recipe.uses_unlabelled else None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(recipe, "update_teacher"):
            recipe.update_teacher(step)
        if step % 10 == 9:
            with torch.no_grad():
                pred = recipe.inference_model().eval()(x_held).argmax(1)
            fractions.append(float((pred > 0).float().mean()))
    return fractions, float(m_held.mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="seg_supervised,mean_teacher,fixmatch,cps")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--contrast", type=float, default=0.05)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra recipe_options")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        for method in args.methods.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.perf_counter()
                fr, true = trajectory(method, seed, args.steps, args.contrast, Path(work), args.option)
                late = fr[10:]
                empty = sum(f < true / 10 for f in late)
                print(f"{method:15s} seed {seed}: empty at {empty:2d} of {len(late)} checkpoints after step 100, "
                      f"final {fr[-1]:.3f} (true {true:.3f}); {time.perf_counter() - t0:.0f} s | "
                      + " ".join(f"{f:.2f}" for f in fr), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
