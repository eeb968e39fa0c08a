"""Cross-validation runner: grouped stratified folds, one fit per fold, report from the run directory alone."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from sonodistill.config import RunConfig, load_config
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, SonoDistillError

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"


def process_rank() -> int:
    """Global rank of this process in a multi-process (DDP) launch; 0 otherwise."""
    import os

    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def make_folds(manifest: Manifest, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified folds; each checked for leakage."""
    from sonodistill.data.splits import check_no_leakage, grouped_kfold

    folds = grouped_kfold(manifest, n_splits=n_folds, seed=seed)
    for f in folds:
        check_no_leakage(manifest, f.train, f.test)
    return [(f.train, f.test) for f in folds]


def save_folds(run_dir: Path, manifest: Manifest, folds: list[tuple[np.ndarray, np.ndarray]]) -> None:
    data = [{"fold": k, "train": tr.tolist(), "test": te.tolist(),
             "test_groups": sorted(set(manifest.groups[te].tolist()))} for k, (tr, te) in enumerate(folds)]
    (run_dir / "folds.json").write_text(json.dumps(data))


def load_folds(run_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    data = json.loads((run_dir / "folds.json").read_text())
    return [(np.asarray(d["train"], dtype=np.int64), np.asarray(d["test"], dtype=np.int64)) for d in data]


def fold_seed_of(cfg: RunConfig) -> int:
    """The seed of the fold split: `train.fold_seed`, else `train.seed`."""
    return int(cfg.train.seed if cfg.train.fold_seed is None else cfg.train.fold_seed)


def cv_folds(cfg: RunConfig, manifest: Manifest, resume: bool, save: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """The run's folds: the saved folds.json when resuming, else new grouped folds (saved when `save`)."""
    if resume and (cfg.run_dir / "folds.json").exists():
        return load_folds(cfg.run_dir)
    if cfg.train.folds < 2:
        raise ConfigError(f"train.folds must be >= 2 for cross-validation, got {cfg.train.folds}")
    folds = make_folds(manifest, cfg.train.folds, fold_seed_of(cfg))
    if save:
        save_folds(cfg.run_dir, manifest, folds)
    return folds


# Fields that say where files go or how data is fed, not what is trained: they may change on --resume.
# train.final too: `--resume --set train.final=true` adds the final model to a run whose folds are done.
RESUME_FREE_FIELDS = ("out_dir", "data.cache_dir", "data.num_workers", "train.fold", "train.final", "train.threads")

NO_CV_ESTIMATE = "NO_CV_ESTIMATE"

# Recipes with their own protocol (`run_experiment`): why they have no final model on all items, or None when
# they train one with train.final=true (medivlad on video data sets, dilbert when every fold runs).
OWN_PROTOCOL_FINAL: dict[str, str | None] = {
    "dino": "it pretrains one encoder on every frame of --data (no folds): the run itself is the model to use "
            "(RUN/model.safetensors, RUN/teacher_backbone.safetensors)",
    "discovr": "its protocol pretrains and evaluates one encoder per fold (kNN and linear probes on frozen "
               "embeddings), and trains none on all items; use a fold's fold_k/model.safetensors",
    "linear_probe": "it fits scikit-learn probes on frozen features and has no PyTorch model to deploy",
    "medivlad": None,
    "dilbert": None,
}


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'folds': 3}} -> {'train.folds': 3}; recipe_options and model.kwargs are flattened too."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: RunConfig, now: RunConfig) -> list[str]:
    """'field: saved X, now Y' for every field (outside RESUME_FREE_FIELDS) whose value differs."""
    a, b = _flatten(saved.to_dict()), _flatten(now.to_dict())
    return [f"{k}: saved {a.get(k, '(unset)')!r}, now {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b)) if k not in RESUME_FREE_FIELDS and a.get(k) != b.get(k)]


def check_resume_config(cfg: RunConfig) -> bool:
    """On --resume: the resolved config must equal the run's config.yaml (ConfigError naming each differing field).

    Returns False, after saying so, when the run directory holds no run yet (it starts from scratch)."""
    saved_file = cfg.run_dir / "config.yaml"
    if not saved_file.is_file():
        log.warning("--resume: %s holds no run yet (no config.yaml); starting it from scratch", cfg.run_dir)
        return False
    diffs = config_differences(load_config(saved_file), cfg)
    if diffs:
        raise ConfigError(f"--resume: the resolved config differs from {saved_file} in {len(diffs)} field(s): "
                          + "; ".join(diffs) + ". Resume with the run's original options (same --config, --set, "
                          "--data, ...), or start a new run with another --name")
    return True


def trains_final(cfg: RunConfig) -> bool:
    """Whether the run trains the deployable model on all items: train.final, or train.cv=false (--final-only)."""
    return bool(cfg.train.final or not cfg.train.cv)


def final_model_refusal(cfg: RunConfig, recipe_cls: type, manifest: Manifest) -> str | None:
    """Why `cfg.recipe` cannot train a final model on all items with this config; None when it can."""
    if getattr(recipe_cls, "run_experiment", None) is None:
        return None  # the shared fold loop (classification and segmentation): `train_final_model`
    name = cfg.recipe
    if name not in OWN_PROTOCOL_FINAL:
        return (f"recipe '{name}' runs its own protocol (run_experiment) and does not declare a final model "
                "(add it to evaluation.crossval.OWN_PROTOCOL_FINAL)")
    reason = OWN_PROTOCOL_FINAL[name]
    if reason is not None:
        return f"recipe '{name}' has no final model: {reason}"
    if name == "medivlad" and manifest.modality == "image":
        return ("recipe 'medivlad' has no final model for frame data sets: its frame protocol finetunes one model "
                "per fold only (the final model, frozen encoder + first aggregator, exists for video data sets)")
    if name == "dilbert" and cfg.recipe_options.get("run_folds") is not None:
        return (f"recipe 'dilbert' trains its final model only when every fold runs: recipe_options.run_folds="
                f"{cfg.recipe_options['run_folds']} selects folds; leave it unset")
    return None


def check_final_options(cfg: RunConfig, recipe_cls: type, manifest: Manifest) -> None:
    """train.final / train.cv / train.fold: ConfigError naming the field and the cause when they cannot go together
    or the recipe has no final model."""
    fold = cfg.train.fold
    if not cfg.train.cv:
        if fold is not None:
            raise ConfigError(f"train.cv=false (--final-only) with train.fold={fold} (--fold): a final-only run "
                              "trains no folds; drop one of them")
        if getattr(recipe_cls, "run_experiment", None) is not None:
            why = final_model_refusal(cfg, recipe_cls, manifest)
            raise ConfigError(f"train.cv=false (--final-only): recipe '{cfg.recipe}' runs its own protocol, which "
                              "always cross-validates" + (f"; {why}" if why else "; train its final model with "
                                                          "train.final=true after the CV instead"))
        return
    if not cfg.train.final:
        return
    why = final_model_refusal(cfg, recipe_cls, manifest)
    if why is not None:
        raise ConfigError(f"train.final=true: {why}")
    if fold is not None:
        raise ConfigError(f"train.final=true with train.fold={fold} (--fold): a run trains its final model once, "
                          "after all its folds, not beside one fold. Run the folds without train.final, then "
                          "`--resume --set train.final=true` without --fold (finished folds are kept); or train "
                          "the final model alone with --final-only")


def validate_run(cfg: RunConfig, manifest: Manifest, recipe_cls: type) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Every check that can fail before training, run before anything is written to the run directory.

    The config's numbers, the manifest, the recipe built once from the config (model, options, optimiser) and,
    for recipes on the shared fold loop, the folds (returned, not saved; None for recipes with their own protocol,
    [] for a final-only run).
    """
    from sonodistill.recipes.base import build_optimizer

    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}: a run must train")
    check_final_options(cfg, recipe_cls, manifest)
    check_validation_options(cfg, recipe_cls)
    manifest.validate(check_files=True)
    if manifest.has_labels:
        manifest.check_classes_nonempty()
    if getattr(recipe_cls, "run_experiment", None) is not None:
        return None
    if cfg.train.cv and cfg.train.folds < 2:
        raise ConfigError(f"train.folds must be >= 2 for cross-validation, got {cfg.train.folds}")
    if cfg.train.fold is not None and not 0 <= cfg.train.fold < cfg.train.folds:
        raise ConfigError(f"train.fold={cfg.train.fold} but there are {cfg.train.folds} folds (0 to "
                          f"{cfg.train.folds - 1})")
    segmentation = getattr(recipe_cls, "task", "classification") != "classification"
    num_classes = len(manifest.classes)
    if segmentation:
        from sonodistill.evaluation.segmentation_cv import SEGMENTATION_CLASSES

        num_classes = SEGMENTATION_CLASSES
    recipe = recipe_cls(cfg, num_classes=num_classes, steps_per_epoch=1)
    build_optimizer(recipe.parameters(), cfg.optim, cfg.train.epochs, 1)
    if segmentation and trains_final(cfg):  # the final model's labelled share of all items
        from sonodistill.evaluation.segmentation_cv import split_labelled

        options = recipe_cls.resolve_options(cfg.recipe_options)
        split_labelled(manifest, np.arange(len(manifest)), float(options["labelled_fraction"]),
                       final_seed(cfg))
    if not cfg.train.cv:
        return []
    return make_folds(manifest, cfg.train.folds, fold_seed_of(cfg))


def run_seeds(cfg: RunConfig, seeds: list[int], resume: bool = False, **trainer_overrides: Any) -> list[dict]:
    """The same folds trained with several seeds, one full run directory each: RUN/seed_<s>/ (what
    `sonodistill compare` pairs seed by seed). RUN/config.yaml holds the shared config; the folds come from
    `train.fold_seed` (default: the first seed), the training seed is s. Returns each seed's summary."""
    import copy

    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct seeds, got {seeds}")
    base = copy.deepcopy(cfg)
    if base.train.fold_seed is None:
        base.train.fold_seed = seeds[0]
    run_dir = base.run_dir
    if (run_dir / "config.yaml").exists() and not resume:
        raise SonoDistillError(f"run directory {run_dir} already holds a run: pass --resume to continue it, "
                               "or choose another --name")
    summaries = []
    for s in seeds:
        one = copy.deepcopy(base)
        one.out_dir, one.name, one.train.seed = str(run_dir), f"seed_{s}", int(s)
        if s == seeds[0]:  # validate before anything is written, then record the shared config
            from sonodistill.recipes import get_recipe
            from sonodistill.recipes.data import load_manifest

            validate_run(one, load_manifest(one.data), get_recipe(one.recipe))
            run_dir.mkdir(parents=True, exist_ok=True)
            base.save(run_dir / "config.yaml")
        log.info("seed %d of %s: %s", s, seeds, one.run_dir)
        summaries.append(run_crossval(one, resume=resume and (one.run_dir / "config.yaml").exists(),
                                      **trainer_overrides))
    return summaries


def set_threads(threads: int) -> None:
    """`train.threads`: torch's intra-op thread count for this process (0 keeps torch's default)."""
    import torch

    if threads < 0:
        raise ConfigError(f"train.threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(int(threads))
        log.info("torch intra-op threads: %d (train.threads)", threads)


def run_crossval(cfg: RunConfig, resume: bool = False, manifest: Manifest | None = None,
                 **trainer_overrides: Any) -> dict[str, Any]:
    """Train every fold (or `cfg.train.fold` only), write predictions and the report; returns the summary.

    Everything is validated before the run directory is written. With `resume`, the config must equal the saved
    one; folds whose predictions exist are kept and an unfinished fold restarts from its last checkpoint.
    """
    from sonodistill.evaluation.report import write_cv_report
    from sonodistill.recipes import get_recipe
    from sonodistill.recipes.data import load_manifest
    from sonodistill.recipes.trainer import fit_fold

    run_dir = cfg.run_dir
    rank = process_rank()
    if rank != 0:  # a DDP worker re-running the command: rank 0 owns the run directory
        resume = True
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if (run_dir / PREDICTIONS).exists() or (run_dir / "config.yaml").exists():
            raise SonoDistillError(f"run directory {run_dir} already holds a run: pass --resume to continue it, "
                                   "or choose another --name")
    recipe_cls = get_recipe(cfg.recipe)
    manifest = manifest if manifest is not None else load_manifest(cfg.data)
    if resume and rank == 0:
        resume = check_resume_config(cfg)
    new_folds = validate_run(cfg, manifest, recipe_cls)
    set_threads(cfg.train.threads)
    # -- nothing was written before this line --
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        if not resume:
            cfg.save(run_dir / "config.yaml")
        manifest.to_csv(run_dir / "manifest.csv")
    runner = getattr(recipe_cls, "run_experiment", None)
    if runner is not None:  # pretraining and multi-stage recipes run their own protocol
        return runner(cfg, manifest, resume=resume, **trainer_overrides)
    assert new_folds is not None
    if not cfg.train.cv:
        return run_final_only(cfg, manifest, resume, **trainer_overrides)
    folds = new_folds
    if resume and (run_dir / "folds.json").exists():
        folds = load_folds(run_dir)
    elif rank == 0:
        save_folds(run_dir, manifest, folds)
    title = f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}"
    if cfg.train.on_validation:
        folds = validation_folds(cfg, manifest, folds)
        title += ", scored on VALIDATION splits of the training rows (test folds not read)"
    if getattr(recipe_cls, "task", "classification") != "classification":
        from sonodistill.evaluation.segmentation_cv import run_segmentation_cv

        return run_segmentation_cv(cfg, manifest, folds, resume=resume, **trainer_overrides)

    def fit(k: int, train_rows: np.ndarray, test_rows: np.ndarray, fold_dir: Path) -> pd.DataFrame | None:
        return fit_fold(cfg, manifest, train_rows, test_rows, k, fold_dir, resume=resume, **trainer_overrides)

    frames, times = fit_folds(cfg, folds, resume, fit)
    if cfg.train.final and cfg.train.fold is None:  # (train.final with train.fold is refused by validate_run)
        train_final_model(cfg, manifest, resume, **trainer_overrides)
    if rank != 0:
        return None  # type: ignore[return-value]
    predictions = save_predictions(run_dir, frames, times)
    return write_cv_report(run_dir, predictions, manifest.classes, title=title)


def check_validation_options(cfg: RunConfig, recipe_cls: type) -> None:
    """`train.on_validation` needs cross-validation, no final model, and a recipe on the shared fold loop (or
    linear_probe, which scores its own validation splits)."""
    if not cfg.train.on_validation:
        return
    if not 0.0 < float(cfg.train.val_fraction) < 1.0:
        raise ConfigError(f"train.val_fraction must be in (0, 1), got {cfg.train.val_fraction}")
    if not cfg.train.cv or cfg.train.final:
        raise ConfigError("train.on_validation scores validation splits to choose settings: it cannot train a final "
                          "model (drop train.final / --final-only)")
    own = getattr(recipe_cls, "run_experiment", None) is not None
    if own and cfg.recipe != "linear_probe":
        raise ConfigError(f"train.on_validation: recipe {cfg.recipe!r} runs its own protocol, which has no "
                          "validation mode yet (issue 15: one fold loop for every method)")


def validation_folds(cfg: RunConfig, manifest: Manifest,
                     folds: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """`train.on_validation`: each fold becomes (fit rows, validation rows) of its training rows, seeded by
    (fold seed, fold); the test rows are dropped and never read."""
    from sonodistill.data.splits import validation_rows

    seed = fold_seed_of(cfg)
    out = [validation_rows(manifest, train, float(cfg.train.val_fraction), seed + k)
           for k, (train, _) in enumerate(folds)]
    log.info("train.on_validation: scoring %s validation rows (val_fraction %.2f); test folds are not read",
             "/".join(str(len(v)) for _, v in out), cfg.train.val_fraction)
    return out


def fit_folds(cfg: RunConfig, folds: list[tuple[np.ndarray, np.ndarray]], resume: bool,
              fit: Callable[[int, np.ndarray, np.ndarray, Path], pd.DataFrame | None],
              ) -> tuple[list[pd.DataFrame], dict[int, float]]:
    """Train every fold (or `cfg.train.fold`) with `fit(k, train_rows, test_rows, fold_dir)`.

    Writes each fold's predictions.csv; with `resume`, a fold that has one is kept. `fit` returns None on DDP
    ranks other than 0 (they train but do not predict). Returns (predictions per fold, seconds per trained fold).
    """
    if cfg.train.fold is not None and not 0 <= cfg.train.fold < len(folds):
        raise ConfigError(f"train.fold={cfg.train.fold} but there are {len(folds)} folds")
    wanted = range(len(folds)) if cfg.train.fold is None else [cfg.train.fold]
    frames: list[pd.DataFrame] = []
    times: dict[int, float] = {}
    from sonodistill.recipes.trainer import STOP

    for k in wanted:
        STOP.check(f" before fold {k}")
        fold_dir = cfg.run_dir / f"fold_{k}"
        pred_file = fold_dir / PREDICTIONS
        if resume and pred_file.exists():
            log.info("fold %d already complete, kept", k)
            frames.append(pd.read_csv(pred_file))
            continue
        train_rows, test_rows = folds[k]
        t0 = time.perf_counter()
        pred = fit(k, train_rows, test_rows, fold_dir)
        times[k] = time.perf_counter() - t0
        if pred is None:  # not rank 0: predictions and the report are rank 0's
            continue
        pred.to_csv(pred_file, index=False)
        frames.append(pred)
        log.info("fold %d done in %.1f s", k, times[k])
    return frames, times


def save_predictions(run_dir: Path, frames: list[pd.DataFrame], times: dict[int, float]) -> pd.DataFrame:
    """Concatenate the folds' predictions into run_dir/predictions.csv and merge `times` into timing.json."""
    predictions = pd.concat(frames, ignore_index=True)
    predictions.to_csv(run_dir / PREDICTIONS, index=False)
    timing_file = run_dir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    timing.update({str(k): v for k, v in times.items()})
    timing_file.write_text(json.dumps(timing, indent=1))
    return predictions


def final_index(cfg: RunConfig) -> int:
    """The final model's fold number (seed = train.seed + it): train.folds, one past the last fold, so a
    final-only run trains the same model as the final/ of a CV run with the same config."""
    return int(cfg.train.folds)


def final_seed(cfg: RunConfig) -> int:
    return int(cfg.train.seed) + final_index(cfg)


def train_final_model(cfg: RunConfig, manifest: Manifest, resume: bool = False, **trainer_overrides: Any) -> Path:
    """Train one model on every item (no test fold) into RUN/final/: the model to deploy.

    The same fold code as the CV (`fit_fold`, or `fit_segmentation_fold`: `labelled_fraction` of all items keeps
    its masks, the rest is unlabelled, recorded in final/split.json). With `resume`, a finished final/ is kept."""
    from sonodistill.recipes import get_recipe
    from sonodistill.recipes.trainer import STOP, fit_fold

    final_dir = cfg.run_dir / "final"
    if resume and (final_dir / "model.safetensors").is_file() and (final_dir / "done").is_file():
        log.info("final model already trained, kept: %s", final_dir)
        return final_dir
    STOP.check(" before the final model")
    fit = fit_fold
    if getattr(get_recipe(cfg.recipe), "task", "classification") != "classification":
        from sonodistill.evaluation.segmentation_cv import fit_segmentation_fold as fit
    rows = np.arange(len(manifest))
    t0 = time.perf_counter()
    fit(cfg, manifest, rows, rows[:0], final_index(cfg), final_dir, resume=resume, **trainer_overrides)
    if process_rank() == 0:
        timing_file = cfg.run_dir / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        timing["final"] = time.perf_counter() - t0
        timing_file.write_text(json.dumps(timing, indent=1))
        estimate = ("the CV report is its estimate" if cfg.train.cv else
                    f"{NO_CV_ESTIMATE}: no cross-validation was run (train.cv=false)")
        (final_dir / "done").write_text(f"trained on all {len(rows)} items; {estimate}\n")
    return final_dir


def run_final_only(cfg: RunConfig, manifest: Manifest, resume: bool = False,
                   **trainer_overrides: Any) -> dict[str, Any] | None:
    """train.cv=false (--final-only): train only RUN/final/, and write a report.md saying no CV estimate exists
    (no folds.json, predictions.csv or metrics.json). Returns {'cv': False, 'final': path}; None on other ranks."""
    final_dir = train_final_model(cfg, manifest, resume, **trainer_overrides)
    if process_rank() != 0:
        return None
    timing_file = cfg.run_dir / "timing.json"
    seconds = json.loads(timing_file.read_text()).get("final") if timing_file.is_file() else None
    trained = f" (trained in {seconds:.0f} s)" if seconds is not None else ""
    lines = [f"# {cfg.name}: {cfg.recipe} on {cfg.data.spec}, final model only", "",
             f"{NO_CV_ESTIMATE}: this run trained only the deployable model (train.cv=false, --final-only) on all "
             f"{len(manifest)} items into final/; no cross-validation was run, so there is no estimate of how well "
             "it does on new patients. Estimate it with a CV run of the same config (without --final-only), or "
             "score it on an external labelled set: `sonodistill predict RUN INPUTS --out P.json` then "
             "`sonodistill score P.json --labels LABELS.csv`.", "",
             f"Model: `{final_dir / 'model.safetensors'}`{trained}."]
    (cfg.run_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"cv": False, "final": str(final_dir)}


def check_has_cv_estimate(run_dir: str | Path) -> None:
    """SonoDistillError when the run is final-only (train.cv=false): it has no CV predictions to score."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if config.is_file() and not load_config(config).train.cv:
        raise SonoDistillError(f"{run_dir} holds a final model only (trained with --final-only, train.cv=false): "
                               "there is no cross-validation estimate to report, re-score or merge. Score its "
                               "final/ model on labelled data with `sonodistill predict` and `sonodistill score`, "
                               "or run the CV with the same config (without --final-only)")


def read_run_dir(run_dir: str | Path) -> tuple[RunConfig, Manifest, pd.DataFrame]:
    """(config, manifest, predictions) of a finished run directory; SonoDistillError naming a missing file, or
    saying that a final-only run has no CV estimate."""
    run_dir = Path(run_dir)
    check_has_cv_estimate(run_dir)
    for name in ("config.yaml", "manifest.csv", PREDICTIONS):
        if not (run_dir / name).is_file():
            raise SonoDistillError(f"{run_dir} is not a complete run directory: {name} is missing")
    return load_config(run_dir / "config.yaml"), Manifest.from_csv(run_dir / "manifest.csv"), \
        pd.read_csv(run_dir / PREDICTIONS)


def report_from_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Rebuild the report from a run directory alone (config.yaml, manifest.csv, predictions.csv)."""
    from sonodistill.evaluation.report import write_cv_report

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    return write_cv_report(run_dir, predictions, manifest.classes, title=f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}")


def parse_merge(specs: list[str]) -> dict[str, list[str]]:
    """['0=0', '1-2=1,2', '3=3'] -> {'0': ['0'], '1-2': ['1', '2'], '3': ['3']} (new class -> old classes)."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        new, sep, old = spec.partition("=")
        if not sep or not new or not old:
            raise ConfigError(f"--merge {spec!r}: expected NEW=OLD1,OLD2")
        out[new] = [c for c in old.split(",") if c]
    return out


def merged_report(run_dir: str | Path, merge: dict[str, list[str]], name: str = "merged") -> dict[str, Any]:
    """Re-score a run's predictions with classes merged (probabilities summed), e.g. severity 0 / 1-2 / 3.

    Writes RUN/<name>/report.md etc. Every original class must go to exactly one new class.
    """
    from sonodistill.evaluation.report import write_cv_report

    run_dir = Path(run_dir)
    cfg, manifest, predictions = read_run_dir(run_dir)
    olds = [c for cs in merge.values() for c in cs]
    if sorted(olds) != sorted(manifest.classes):
        raise ConfigError(f"merge {merge} must use each class of {manifest.classes} exactly once")
    new_classes = list(merge)
    to_new = {manifest.classes.index(c): new_classes.index(n) for n, cs in merge.items() for c in cs}
    out = predictions[[c for c in predictions.columns if not c.startswith("prob_")]].copy()
    out["y_true"] = predictions["y_true"].map(to_new)
    for n, cs in merge.items():
        out[f"prob_{n}"] = predictions[[f"prob_{c}" for c in cs]].sum(axis=1)
    target = run_dir / name
    target.mkdir(exist_ok=True)
    out.to_csv(target / PREDICTIONS, index=False)
    return write_cv_report(target, out, new_classes,
                           title=f"{cfg.name}: {cfg.recipe} on {cfg.data.spec}, classes merged as {merge}")
