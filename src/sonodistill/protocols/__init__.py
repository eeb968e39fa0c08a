"""Protocols: how each method is run and judged. One fold loop (`folds.run_protocol`) for every method; each
recipe name maps to the protocol that fits its folds. `get_protocol(name)` imports lazily."""

from __future__ import annotations

import importlib

from sonodistill.errors import ConfigError
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run

# recipe name -> "module:Class" of its protocol
PROTOCOLS: dict[str, str] = {
    "supervised": "sonodistill.protocols.classification:ClassificationProtocol",
    "dualdistill": "sonodistill.protocols.classification:ClassificationProtocol",
    "seg_supervised": "sonodistill.protocols.segmentation:SegmentationProtocol",
    "mean_teacher": "sonodistill.protocols.segmentation:SegmentationProtocol",
    "fixmatch": "sonodistill.protocols.segmentation:SegmentationProtocol",
    "cps": "sonodistill.protocols.segmentation:SegmentationProtocol",
    "hdc": "sonodistill.protocols.segmentation:SegmentationProtocol",
    "dino": "sonodistill.protocols.dino:DINOProtocol",
    "medivlad": "sonodistill.protocols.medivlad:MeDiVLADProtocol",
    "discovr": "sonodistill.protocols.discovr:DISCOVRProtocol",
    "dilbert": "sonodistill.protocols.dilbert:DILBERTProtocol",
    "linear_probe": "sonodistill.protocols.linear_probe:LinearProbeProtocol",
}


# a recipe registered elsewhere (recipes.RECIPES) runs the protocol of its task
BY_TASK: dict[str, str] = {
    "classification": "sonodistill.protocols.classification:ClassificationProtocol",
    "segmentation": "sonodistill.protocols.segmentation:SegmentationProtocol",
}


def get_protocol(recipe: str) -> Protocol:
    """The protocol that runs recipe `recipe`: its entry in PROTOCOLS, else the protocol of the recipe's `task`."""
    spec = PROTOCOLS.get(recipe)
    if spec is None:
        from sonodistill.recipes import get_recipe

        task = getattr(get_recipe(recipe), "task", "classification")  # ConfigError for an unknown recipe
        if task not in BY_TASK:
            raise ConfigError(f"recipe {recipe!r} has task {task!r}, for which no protocol exists; add it to "
                              "sonodistill.protocols.PROTOCOLS")
        spec = BY_TASK[task]
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["PROTOCOLS", "Fold", "FoldResult", "Protocol", "Run", "get_protocol"]
