"""The recipe names and where each recipe class lives ("module:Class"), imported lazily by `recipes.get_recipe`.

Kept outside the layers (like `errors`) so that `config` can check recipe names (`by_recipe` sections) without
importing the recipes, which import `config`.
"""

from __future__ import annotations

RECIPES: dict[str, str] = {
    "supervised": "sonodistill.recipes.supervised:SupervisedRecipe",
    "dualdistill": "sonodistill.recipes.dualdistill:DualDistillRecipe",
    # semi-supervised segmentation (one engine, different losses)
    "seg_supervised": "sonodistill.recipes.semi_supervised:SupervisedSegmentationRecipe",
    "mean_teacher": "sonodistill.recipes.semi_supervised:MeanTeacherRecipe",
    "fixmatch": "sonodistill.recipes.semi_supervised:FixMatchRecipe",
    "cps": "sonodistill.recipes.semi_supervised:CrossPseudoSupervisionRecipe",
    "hdc": "sonodistill.recipes.hdc:HDCRecipe",
    # self-supervised and multimodal
    "dino": "sonodistill.recipes.dino:DINORecipe",
    "medivlad": "sonodistill.recipes.medivlad:MeDiVLADRecipe",
    "discovr": "sonodistill.recipes.discovr:DISCOVRRecipe",
    "dilbert": "sonodistill.recipes.dilbert:DILBERTRecipe",
    # frozen pretrained features + logistic regression (CPU baseline)
    "linear_probe": "sonodistill.recipes.linear_probe:LinearProbeRecipe",
}
