"""The `supervised` recipe: plain cross-entropy training of backbone + head; the baseline of every method."""

from __future__ import annotations

from sonodistill.recipes.base import ClassificationRecipe


class SupervisedRecipe(ClassificationRecipe):
    """Cross-entropy on the final logits; nothing else. Inference model = backbone + head."""

    frozen_cache_ok = True  # trains from cached frozen stages with `train.frozen_cache_views`
