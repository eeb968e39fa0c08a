"""Grad-CAM for staged-backbone classifiers (video or frame).

The backbone is run once; the target logit is differentiated (`torch.autograd.grad`) with respect to a stage
output (CNNs: `StageOutputs.stages[i]`; ViTs: the output of the block behind that stage, caught by a forward
hook, [CLS] dropped), channel weights are the gradients averaged over T x H x W, and the map is
ReLU(sum_c w_c A_c) upsampled (trilinear / bilinear) to the input size. Selvaraju et al., ICCV 2017.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sonodistill.errors import ConfigError


def _targets(logits: torch.Tensor, target_class: int | torch.Tensor | None) -> torch.Tensor:
    """Per-sample target indices (int64 B): argmax when None."""
    b, k = logits.shape
    if target_class is None:
        return logits.argmax(dim=1)
    t = torch.as_tensor(target_class, dtype=torch.int64, device=logits.device)
    t = t.expand(b) if t.dim() == 0 else t
    if t.shape != (b,) or bool((t < 0).any()) or bool((t >= k).any()):
        raise ConfigError(f"target_class {target_class!r} is not one class index in [0, {k}) per sample")
    return t


def normalise_maps(cam: torch.Tensor) -> torch.Tensor:
    """Min-max scale each sample of `B x ...` to [0, 1]; a constant map becomes zeros."""
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (cam.dim() - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (cam.dim() - 1))
    span = hi - lo
    return torch.where(span > 0, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))


def _token_block(backbone: nn.Module, stage: int) -> nn.Module | None:
    """The transformer block whose output is stage `stage` (token backbones: `.blocks` + `.stage_blocks`), else None."""
    blocks, idx = getattr(backbone, "blocks", None), getattr(backbone, "stage_blocks", None)
    if isinstance(blocks, nn.ModuleList) and idx:
        return blocks[list(idx)[stage]]
    return None


def _stage_and_grads(model: nn.Module, x: torch.Tensor, target_class: int | torch.Tensor | None,
                     stage: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(stage features `B x C x ...`, d target logit / d features) with one forward and one backward pass."""
    backbone, head = model.backbone, model.head
    block = _token_block(backbone, stage)
    captured: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda m, i, o: captured.append(o)) if block is not None else None
    try:
        # an input that requires grad keeps the stage in the graph even for frozen (requires_grad=False) backbones
        out = backbone(x.detach().requires_grad_(True))
    finally:
        if handle is not None:
            handle.remove()
    logits = head(out.pooled)
    targets = _targets(logits.detach(), target_class)
    score = logits.gather(1, targets[:, None]).sum()
    if block is None:
        feats = out.stages[stage]
        (grads,) = torch.autograd.grad(score, feats, allow_unused=True)
        return feats, grads
    # token backbones: stages are reshaped copies of block outputs, off the graph; use the block output itself
    h = captured[-1]  # B x (1 + N) x D, [CLS] first
    (gh,) = torch.autograd.grad(score, h, allow_unused=True)
    grid = tuple(out.stages[stage].shape[2:])

    def to_grid(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

    return to_grid(h), (to_grid(gh) if gh is not None else None)


def grad_cam_problem(model: nn.Module) -> str | None:
    """Why `grad_cam` cannot explain `model` (it needs `.backbone` returning StageOutputs and `.head`), or None."""
    if getattr(model, "backbone", None) is None or getattr(model, "head", None) is None:
        return f"grad_cam needs a model with .backbone (StageOutputs) and .head; got {type(model).__name__}"
    return None


def grad_cam(model: nn.Module, x: torch.Tensor, target_class: int | torch.Tensor | None = None,
             stage: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Grad-CAM of `model` (a Classifier: `.backbone` returning StageOutputs, `.head` on `.pooled`).

    x: `B x C x T x H x W` (video) or `B x C x H x W` (frame). Returns `B x T x H x W` (video) or
    `B x 1 x H x W` (frame), float32, each sample scaled to [0, 1] (raw non-negative maps with normalize=False).
    target_class: None (each sample's argmax), one index, or `B` indices.
    stage: index into the backbone's stages; None = the last one, except for ViTs (pooled from [CLS], which
    ignores the last block's patch tokens): the one before it.
    """
    problem = grad_cam_problem(model)
    if problem is not None:
        raise ConfigError(problem)
    backbone = model.backbone
    if stage is None:
        stage = -2 if _token_block(backbone, -1) is not None and len(backbone.stage_blocks) > 1 else -1
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            feats, grads = _stage_and_grads(model, x, target_class, stage)
    finally:
        model.train(was_training)
    if grads is None:
        raise ConfigError(f"stage {stage} does not influence the logits: choose another stage")
    feats = feats.detach()
    dims = tuple(range(2, feats.dim()))
    weights = grads.mean(dim=dims, keepdim=True)
    cam = F.relu((weights * feats).sum(dim=1, keepdim=True)).float()  # B x 1 x [T'] x H' x W'
    if x.dim() == 5:
        cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)[:, 0]
    elif x.dim() == 4:
        cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"grad_cam expects B x C x T x H x W or B x C x H x W input, got {tuple(x.shape)}")
    cam = cam.clamp_min(0)
    return normalise_maps(cam) if normalize else cam


def ensemble_cam(models: list[nn.Module], x: torch.Tensor, target_class: int | torch.Tensor | None,
                 explainer=grad_cam, **kwargs) -> torch.Tensor:
    """Mean of each member's map, each scaled to [0, 1] per sample first: same shape as `explainer`'s output."""
    if not models:
        raise ValueError("ensemble_cam needs at least one model")
    maps = [normalise_maps(explainer(m, x, target_class, **kwargs)) for m in models]
    return torch.stack(maps).mean(dim=0)
