"""The linear-probe protocol: frozen features of every item once (`prepare`), per fold a logistic regression with
C chosen on a grouped validation split of the fold's training rows, saved as encoder + probe head."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run

log = logging.getLogger(__name__)


class LinearProbeProtocol(Protocol):
    """Frozen encoder + logistic regression per fold; the fold's model is the encoder with the probe as its head."""

    def check(self, cfg: RunConfig, manifest: Manifest) -> None:
        from sonodistill.recipes.linear_probe import probe_options

        probe_options(cfg)
        if not manifest.has_labels:
            raise ConfigError(f"linear_probe: manifest {manifest.name} has no labels to score")

    def prepare(self, run: Run) -> None:
        from sonodistill.recipes.linear_probe import cached_features

        t0 = time.perf_counter()
        run.state = cached_features(run.cfg, run.manifest)
        log.info("linear_probe: features of %d items ready in %.0f s", len(run.manifest), time.perf_counter() - t0)

    def fit(self, run: Run, fold: Fold) -> FoldResult:
        from sonodistill.data.splits import validation_rows
        from sonodistill.evaluation.probes import choose_C, fit_linear_probe
        from sonodistill.recipes.linear_probe import CLASS_WEIGHTS, LinearProbeRecipe, probe_options
        from sonodistill.recipes.trainer import save_weights

        cfg, manifest, feats = run.cfg, run.manifest, run.state
        o = probe_options(cfg)
        labels, k = manifest.labels, len(manifest.classes)
        fit_rows, val_rows = validation_rows(manifest, fold.train, float(o.val_fraction), fold.seed)
        tried = {}  # class weight -> (its best C, every C's validation balanced accuracy)
        for w in CLASS_WEIGHTS[o.class_weight]:
            tried[w or "none"] = choose_C(feats, labels, fit_rows, val_rows, list(o.C_grid), k, fold.seed,
                                          class_weight=w)
        weight = max(tried, key=lambda w: tried[w][1][str(tried[w][0])])  # ties: the first (unweighted)
        c, scores = tried[weight]
        log.info("linear_probe fold %s: C=%g, class_weight %s (validation balanced accuracy %.3f)",
                 "final" if fold.final else fold.index, c, weight, scores[str(c)])
        clf = fit_linear_probe(feats[fold.train], labels[fold.train], C=c, seed=fold.seed,
                               class_weight=None if weight == "none" else weight)
        if clf is None:
            raise ConfigError(f"linear_probe fold {fold.index}: the training rows hold one class only")
        model = LinearProbeRecipe.build_inference_model(cfg, manifest)
        from sonodistill.recipes.frame_features import build_frame_backbone

        encoder = build_frame_backbone(cfg, start=True)  # the frozen encoder the features came from
        target = model.encoder if hasattr(model, "encoder") else model.backbone
        target.load_state_dict(encoder.state_dict())
        head = model.aggregator if hasattr(model, "aggregator") else model.head
        scaler, logreg = clf[0], clf[-1]
        head.load_probe(scaler.mean_, scaler.scale_, logreg.coef_, logreg.intercept_, logreg.classes_)
        fold.dir.mkdir(parents=True, exist_ok=True)
        save_weights(model, fold.dir / "model.safetensors")
        record = {"C": c, "class_weight": weight, "validation_balanced_accuracy": scores,
                  "validation_balanced_accuracy_by_class_weight": {w: t[1] for w, t in tried.items()},
                  "fit_rows": int(len(fit_rows)), "validation_rows": int(len(val_rows))}
        if len(fold.test) == 0:
            return FoldResult(record=record)
        test = fold.test
        probs = np.zeros((len(test), k))
        probs[:, logreg.classes_] = clf.predict_proba(np.asarray(feats[test], dtype=np.float64))
        frame = pd.DataFrame({"fold": fold.index, "index": test, "path": [manifest.paths[i] for i in test],
                              "group": manifest.groups[test], "y_true": labels[test]})
        for j, cls in enumerate(manifest.classes):
            frame[f"prob_{cls}"] = probs[:, j]
        return FoldResult(predictions=frame, record=record)

    def title(self, run: Run) -> str:
        cfg = run.cfg
        return (f"{cfg.name}: linear probe on frozen {cfg.model.backbone} ({cfg.model.pretrained}) features, "
                f"{cfg.data.spec}")

    def report(self, run: Run, results: list[FoldResult], title: str) -> dict[str, Any]:
        import json

        from sonodistill.evaluation.report import write_cv_report

        predictions = pd.concat([r.predictions for r in results if r.predictions is not None], ignore_index=True)
        choices = {f"fold_{int(r.predictions['fold'].iloc[0])}": r.record for r in results
                   if r.predictions is not None and len(r.predictions)}
        (run.dir / "probe_choices.json").write_text(json.dumps(choices, indent=1))
        scored = "" if "VALIDATION" in title else ", scored on test folds"
        return write_cv_report(run.dir, predictions, run.manifest.classes, title=title + scored)
