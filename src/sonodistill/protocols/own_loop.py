"""Methods whose recipe still runs its own per-fold loop (`run_experiment`): the fold loop validates and writes the
run directory, then hands the whole run to the recipe. TODO(issue 15): each becomes a `Protocol` with `fit`."""

from __future__ import annotations

from typing import Any

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.protocols.base import Protocol, Run

# Why a recipe with its own loop has no final model on all items (None: it trains one with train.final=true).
OWN_LOOP_FINAL: dict[str, str | None] = {
}


class OwnLoopProtocol(Protocol):
    """Hands the run to the recipe's `run_experiment(cfg, manifest, resume, **trainer_overrides)`."""

    runs_own_loop = True
    folds_over_manifest = False

    def final_refusal(self, cfg: RunConfig, manifest: Manifest) -> str | None:
        name = cfg.recipe
        if not cfg.train.cv:
            return "its protocol always cross-validates; train its final model with train.final=true after the CV"
        reason = OWN_LOOP_FINAL.get(name)
        if reason is not None:
            return reason
        return None

    @property
    def scores_validation(self) -> bool:  # type: ignore[override]
        return False

    def run_all(self, run: Run) -> dict[str, Any]:
        from sonodistill.recipes import get_recipe

        runner = get_recipe(run.cfg.recipe).run_experiment
        return runner(run.cfg, run.manifest, resume=run.resume, **run.trainer_overrides)
