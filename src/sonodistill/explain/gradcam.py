"""Grad-CAM for staged-backbone classifiers (video or frame) and frame encoders + aggregators (VideoScorer).

The backbone is run once; the target logit is differentiated (`torch.autograd.grad`) with respect to a stage
output (CNNs: `StageOutputs.stages[i]`; ViTs: the output of the block behind that stage, caught by a forward
hook, [CLS] dropped), channel weights are the gradients averaged over T x H x W, and the map is
ReLU(sum_c w_c A_c) upsampled (trilinear / bilinear) to the input size. Selvaraju et al., ICCV 2017.
"""

from __future__ import annotations

from typing import Callable

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


def _is_classifier(model: nn.Module) -> bool:
    """A staged backbone + head (`.backbone`, `.head`), as opposed to a frame encoder + aggregator."""
    return getattr(model, "backbone", None) is not None and getattr(model, "head", None) is not None


def _network(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(staged backbone, its input, pooled features -> logits) of a Classifier (`.backbone` + `.head`) or of a frame
    encoder + aggregator (`.encoder` + `.aggregator`, a VideoScorer: the B x T frames go through the encoder as one
    batch and their pooled features, `B x T x D`, through the aggregator)."""
    if _is_classifier(model):
        return model.backbone, x, model.head
    b, c, t, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    return model.encoder, frames, lambda pooled: model.aggregator(pooled.reshape(b, t, -1), None)


def _stage_and_grads(model: nn.Module, x: torch.Tensor, target_class: int | torch.Tensor | None,
                     stage: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(stage features `B x C x ...`, d target logit / d features) with one forward and one backward pass (frame
    encoders: `B*T x C x h x w`)."""
    backbone, inputs, head = _network(model, x)
    block = _token_block(backbone, stage)
    captured: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda m, i, o: captured.append(o)) if block is not None else None
    try:
        # an input that requires grad keeps the stage in the graph even for frozen (requires_grad=False) backbones
        out = backbone(inputs.detach().requires_grad_(True))
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


def _default_stage(backbone: nn.Module) -> int:
    """The last stage, except for token backbones (pooled from [CLS], which ignores the last block's patch tokens):
    the last stage behind an earlier block (a 2-block ViT has stages on blocks [0, 0, 1, 1]: stage 1)."""
    blocks = list(getattr(backbone, "stage_blocks", None) or [])
    if _token_block(backbone, -1) is None or not blocks:
        return -1
    earlier = [i for i, b in enumerate(blocks) if b < blocks[-1]]
    return earlier[-1] if earlier else -1


def grad_cam_problem(model: nn.Module) -> str | None:
    """Why `grad_cam` cannot explain `model`, or None. It needs `.backbone` (returning StageOutputs) and `.head`, or
    a frame encoder + aggregator (`.encoder` returning StageOutputs per frame, `.aggregator(B x T x D, mask)`)."""
    if _is_classifier(model):
        return None
    if getattr(model, "encoder", None) is not None and getattr(model, "aggregator", None) is not None:
        return None
    return (f"grad_cam needs a model with .backbone (StageOutputs) and .head, or .encoder and .aggregator; got "
            f"{type(model).__name__}")


def grad_cam(model: nn.Module, x: torch.Tensor, target_class: int | torch.Tensor | None = None,
             stage: int | None = None, normalize: bool = True) -> torch.Tensor:
    """Grad-CAM of `model` (a Classifier: `.backbone` returning StageOutputs, `.head` on `.pooled`; or a VideoScorer:
    a frame `.encoder` whose pooled features `.aggregator` turns into logits, explained frame by frame with each
    frame's own channel weights, so a frame the aggregator ignores gets an empty map).

    x: `B x C x T x H x W` (video) or `B x C x H x W` (frame). Returns `B x T x H x W` (video) or
    `B x 1 x H x W` (frame), float32, each sample scaled to [0, 1] (raw non-negative maps with normalize=False).
    target_class: None (each sample's argmax), one index, or `B` indices.
    stage: index into the backbone's stages; None = the last one, except for ViTs (pooled from [CLS], which
    ignores the last block's patch tokens): the last one behind an earlier block.
    """
    problem = grad_cam_problem(model)
    if problem is not None:
        raise ConfigError(problem)
    frame_encoder = not _is_classifier(model)  # encoder + aggregator: maps per frame
    if frame_encoder and x.dim() != 5:
        raise ValueError(f"grad_cam of a frame encoder + aggregator expects B x C x T x H x W, got {tuple(x.shape)}")
    backbone = model.encoder if frame_encoder else model.backbone
    if stage is None:
        stage = _default_stage(backbone)
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
    cam = F.relu((weights * feats).sum(dim=1, keepdim=True)).float()  # B x 1 x [T'] x H' x W' (frames: B*T x 1 ...)
    if frame_encoder:  # per frame: B*T x 1 x h x w -> B x T x H x W
        b, _, t, h, w = x.shape
        cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False).reshape(b, t, h, w)
    elif x.dim() == 5:
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
