"""The one fold loop: grouped stratified folds, one `Protocol.fit` per fold, the final model on all items, resume,
repeated seeds and validation-only scoring; the report from the protocol. Every method runs through `run_protocol`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from typing import Any

import numpy as np

from sonodistill.config import SEED_DIR_PREFIX, RunConfig, load_config
from sonodistill.console import RunLog
from sonodistill.data.manifest import Manifest
from sonodistill.errors import ConfigError, SonoDistillError
from sonodistill.data.folds import fold_seed_of, load_folds, make_folds, save_folds
from sonodistill.evaluation.run_dir import NO_CV_ESTIMATE, PREDICTIONS
from sonodistill.protocols import get_protocol
from sonodistill.protocols.base import Fold, FoldResult, Protocol, Run
from sonodistill.protocols.tuning import check_setting, is_auto, resolve_parallelism
from sonodistill.provenance import write_environment

log = logging.getLogger(__name__)

# Fields that say where files go, under which name, or how data is fed, not what is trained: they may change on
# --resume (a renamed or moved run; a one-seed run adopted as RUN/seed_<s> of a multi-seed run). train.final too:
# `--resume --set train.final=true` adds the final model to a run whose folds are done.
RESUME_FREE_FIELDS = ("name", "out_dir", "data.cache_dir", "data.num_workers", "train.fold", "train.final",
                      "train.threads", "train.parallel_folds")
CALIBRATIONS = ("none", "temperature")  # train.calibrate
RUN_LOG = "train.log"  # the run's log lines (and why it stopped), appended by each invocation


def process_rank() -> int:
    """Global rank of this process in a multi-process (DDP) launch; 0 otherwise."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


# ------------------------------------------------------------------------------------------------ folds
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


def final_index(cfg: RunConfig) -> int:
    """The final model's fold number (seed = train.seed + it): train.folds, one past the last fold, so a
    final-only run trains the same model as the final/ of a CV run with the same config."""
    return int(cfg.train.folds)


def final_seed(cfg: RunConfig) -> int:
    return int(cfg.train.seed) + final_index(cfg)


# --------------------------------------------------------------------------------------------- checks
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


def with_resolved_options(cfg: RunConfig) -> RunConfig:
    """A copy of `cfg` whose recipe_options hold every option's value, defaults included (what config.yaml records)."""
    from sonodistill.recipes import resolved_recipe_options

    out = copy.deepcopy(cfg)
    out.recipe_options = resolved_recipe_options(cfg.recipe, cfg.recipe_options)
    return out


def config_differences(saved: RunConfig, now: RunConfig) -> list[str]:
    """'field: saved X, now Y' for every field (outside RESUME_FREE_FIELDS) whose value differs. `train.fold_seed`
    is compared as the seed the folds come from (unset means `train.seed`)."""
    a, b = _flatten(saved.to_dict()), _flatten(now.to_dict())
    a["train.fold_seed"], b["train.fold_seed"] = fold_seed_of(saved), fold_seed_of(now)
    return [f"{k}: saved {a.get(k, '(unset)')!r}, now {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b)) if k not in RESUME_FREE_FIELDS and a.get(k) != b.get(k)]


def check_resume_config(cfg: RunConfig) -> bool:
    """On --resume: the resolved config must equal the run's config.yaml (ConfigError naming each differing field).

    Returns False, after saying so, when the run directory holds no run yet (it starts from scratch)."""
    saved_file = cfg.run_dir / "config.yaml"
    if not saved_file.is_file():
        log.warning("--resume: %s holds no run yet (no config.yaml); starting it from scratch", cfg.run_dir)
        return False
    saved = load_config(saved_file)
    diffs = config_differences(with_resolved_options(saved), with_resolved_options(cfg))
    if diffs:
        default_changed = any(d.startswith("recipe_options.") and  # an option not given now whose default moved
                              d.split(":")[0].removeprefix("recipe_options.").split(".")[0] not in cfg.recipe_options
                              for d in diffs)
        raise ConfigError(f"--resume: the resolved config differs from {saved_file} in {len(diffs)} field(s): "
                          + "; ".join(diffs) + ". Resume with the run's original options (same --config, --set, "
                          "--data, ...), or start a new run with another --name"
                          + (". A recipe option's default has changed since the run started: pass its saved "
                             "value with --set recipe_options.FIELD=VALUE" if default_changed else ""))
    return True


def trains_final(cfg: RunConfig) -> bool:
    """Whether the run trains the deployable model on all items: train.final, or train.cv=false (--final-only)."""
    return bool(cfg.train.final or not cfg.train.cv)


def check_final_options(cfg: RunConfig, protocol: Protocol, manifest: Manifest) -> None:
    """train.final / train.cv / train.fold: ConfigError naming the field and the cause when they cannot go together
    or the method has no final model."""
    fold = cfg.train.fold
    if trains_final(cfg):
        why = protocol.final_refusal(cfg, manifest)
        if why is not None:
            field = "train.cv=false (--final-only)" if not cfg.train.cv else "train.final=true"
            raise ConfigError(f"{field}: recipe '{cfg.recipe}' has no final model: {why}")
    if not cfg.train.cv:
        if fold is not None:
            raise ConfigError(f"train.cv=false (--final-only) with train.fold={fold} (--fold): a final-only run "
                              "trains no folds; drop one of them")
        return
    if fold is not None and not protocol.cross_validates:
        raise ConfigError(f"train.fold={fold} (--fold): recipe '{cfg.recipe}' trains once on every item, without "
                          "folds; drop --fold")
    if cfg.train.final and fold is not None and protocol.cross_validates:
        raise ConfigError(f"train.final=true with train.fold={fold} (--fold): a run trains its final model once, "
                          "after all its folds, not beside one fold. Run the folds without train.final, then "
                          "`--resume --set train.final=true` without --fold (finished folds are kept); or train "
                          "the final model alone with --final-only")


def check_val_fraction(cfg: RunConfig, use: str) -> None:
    """ConfigError unless `train.val_fraction` is in (0, 1); `use` says what the share is for."""
    if not 0.0 < float(cfg.train.val_fraction) < 1.0:
        raise ConfigError(f"train.val_fraction must be in (0, 1){use}, got {cfg.train.val_fraction}")


def check_validation_options(cfg: RunConfig, protocol: Protocol) -> None:
    """`train.on_validation` needs cross-validation, no final model, and a protocol that scores its test rows."""
    if not cfg.train.on_validation:
        return
    check_val_fraction(cfg, "")
    if not cfg.train.cv or cfg.train.final:
        raise ConfigError("train.on_validation scores validation splits to choose settings: it cannot train a final "
                          "model (drop train.final / --final-only)")
    if not protocol.cross_validates or not protocol.scores_validation:
        raise ConfigError(f"train.on_validation: recipe {cfg.recipe!r} trains no folds to score on validation "
                          "splits")


def check_calibration_options(cfg: RunConfig, protocol: Protocol) -> None:
    """`train.calibrate`: none or temperature, and temperature only for methods whose models give class
    probabilities (`Protocol.calibrates`), with a validation share in (0, 1)."""
    if cfg.train.calibrate not in CALIBRATIONS:
        raise ConfigError(f"train.calibrate must be one of {list(CALIBRATIONS)}, got {cfg.train.calibrate!r}")
    if cfg.train.calibrate == "none":
        return
    if not protocol.calibrates:
        raise ConfigError(f"train.calibrate={cfg.train.calibrate}: recipe {cfg.recipe!r} has no class probabilities "
                          "to calibrate (the classification recipes have: supervised, dualdistill)")
    check_val_fraction(cfg, " (the share of each fold's training rows that fits the temperature)")


def check_parallel_folds(cfg: RunConfig) -> None:
    """train.parallel_folds 'auto' or >= 1 (train.threads 'auto' or >= 0), and not > 1 beside a multi-device (DDP)
    launch, which has its own processes."""
    check_setting("threads", cfg.train.threads, 0)
    check_setting("parallel_folds", cfg.train.parallel_folds, 1)
    n = 1 if is_auto(cfg.train.parallel_folds) else int(cfg.train.parallel_folds)
    if n > 1 and (int(cfg.train.devices) > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        raise ConfigError(f"train.parallel_folds={n} with a multi-device launch (train.devices="
                          f"{cfg.train.devices}): DDP already runs one process per device; use one of the two")


def build_once(cfg: RunConfig, num_classes: int) -> None:
    """Build the recipe and its optimiser once from the config: a bad option fails before anything is written."""
    from sonodistill.recipes import get_recipe
    from sonodistill.recipes.base import build_optimizer
    from sonodistill.recipes.frozen_cache import check_frozen_cache

    recipe = get_recipe(cfg.recipe)(cfg, num_classes=num_classes, steps_per_epoch=1)
    build_optimizer(recipe.parameters(), cfg.optim, cfg.train.epochs, 1)
    if cfg.train.frozen_cache_views:  # validate_run has refused recipes without `model.backbone` by now
        check_frozen_cache(cfg, type(recipe), recipe.model.backbone)


def validate_run(cfg: RunConfig, manifest: Manifest, protocol: Protocol) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Every check that can fail before training, run before anything is written to the run directory.

    The config's numbers, the manifest, the method's own checks (`Protocol.check`) and, when the folds are made
    over the manifest's items, the folds (returned, not saved; [] for a run without folds)."""
    if cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}: a run must train")
    check_final_options(cfg, protocol, manifest)
    check_validation_options(cfg, protocol)
    check_calibration_options(cfg, protocol)
    check_parallel_folds(cfg)
    if cfg.train.frozen_cache_views:  # recipes without the cache would ignore it: refuse instead
        from sonodistill.recipes import get_recipe
        from sonodistill.recipes.frozen_cache import check_frozen_cache

        check_frozen_cache(cfg, get_recipe(cfg.recipe))
    manifest.validate(check_files=True)
    if manifest.has_labels:
        manifest.check_classes_nonempty()
    if protocol.cross_validates and cfg.train.cv:
        if cfg.train.folds < 2:
            raise ConfigError(f"train.folds must be >= 2 for cross-validation, got {cfg.train.folds}")
        if cfg.train.fold is not None and not 0 <= cfg.train.fold < cfg.train.folds:
            raise ConfigError(f"train.fold={cfg.train.fold} but there are {cfg.train.folds} folds (0 to "
                              f"{cfg.train.folds - 1})")
    protocol.check(cfg, manifest)
    if not cfg.train.cv or not protocol.cross_validates or not protocol.folds_over_manifest:
        return []
    return make_folds(manifest, cfg.train.folds, fold_seed_of(cfg))


def set_threads(threads: int) -> None:
    """`train.threads`: torch's intra-op thread count for this process (0 keeps torch's default)."""
    import torch

    if threads < 0:
        raise ConfigError(f"train.threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(int(threads))
        log.info("torch intra-op threads: %d (train.threads)", threads)


# ----------------------------------------------------------------------------------------------- loop
def _record_time(run: Run, key: str, seconds: float) -> None:
    timing_file = run.dir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    timing[key] = seconds
    timing_file.write_text(json.dumps(timing, indent=1))


def make_fold(run: Run, folds: list[tuple[np.ndarray, np.ndarray]], k: int) -> Fold:
    """Fold k of the run: its rows, its folder RUN/fold_k and its seed train.seed + k."""
    train_rows, test_rows = folds[k]
    return Fold(k, train_rows, test_rows, run.dir / f"fold_{k}", int(run.cfg.train.seed) + k)


def fit_and_save(run: Run, protocol: Protocol, fold: Fold) -> FoldResult | None:
    """`protocol.fit` on one fold, timed (`result.seconds`); rank 0 saves it and gets it back, other DDP ranks None."""
    t0 = time.perf_counter()
    result = protocol.fit(run, fold)
    result.seconds = time.perf_counter() - t0 if result.seconds is None else result.seconds
    if process_rank() != 0:  # DDP: rank 0 saves and reports
        return None
    protocol.save_fold(run, fold, result)
    write_environment(fold.dir, seconds=result.seconds)  # what trained it: code, library versions, threads
    log.info("fold %d done in %.1f s (process %d)", fold.index, result.seconds, os.getpid())
    return result


def fit_folds(run: Run, protocol: Protocol, folds: list[tuple[np.ndarray, np.ndarray]],
              source: Manifest | None = None, fit_missing: bool = True) -> list[FoldResult]:
    """Fit every wanted fold with `protocol.fit`; with resume, a finished fold (`protocol.load_finished`) is kept.
    With train.parallel_folds > 1 the other folds are fitted in worker processes first and read back (`source`:
    the manifest before `protocol.prepare`). `fit_missing=False`: nothing is trained, the unfinished folds are left
    out (SonoDistillError when no fold is finished). Returns the folds' results (rank 0 only saves them)."""
    from sonodistill.recipes.trainer import STOP

    wanted = protocol.folds_to_run(run, len(folds))
    kept = {k: r for k in wanted
            if run.resume and (r := protocol.load_finished(run, make_fold(run, folds, k))) is not None}
    if not fit_missing:
        if not kept:
            raise SonoDistillError(f"{run.dir} holds no finished fold (fold_K/{PREDICTIONS}) to report")
        if left_out := [k for k in wanted if k not in kept]:
            log.info("folds %s of %s are not finished: left out of the report (nothing is trained)", left_out,
                     run.dir)
        wanted = sorted(kept)
    trained: dict[int, float] = {}
    if int(run.cfg.train.parallel_folds) > 1:
        trained = fit_in_processes(run, folds, [k for k in wanted if k not in kept], source or run.manifest)
    results: list[FoldResult] = []
    for k in wanted:
        STOP.check(f" before fold {k}")
        fold = make_fold(run, folds, k)
        if k in kept:
            log.info("fold %d already complete, kept", k)
            results.append(kept[k])
            continue
        result = protocol.load_finished(run, fold) if k in trained else fit_and_save(run, protocol, fold)
        if result is None:  # a DDP rank other than 0
            continue
        _record_time(run, str(k), float(trained.get(k, result.seconds)))
        results.append(result)
    return results


def fit_in_processes(run: Run, folds: list[tuple[np.ndarray, np.ndarray]], todo: list[int],
                     source: Manifest) -> dict[int, float]:
    """The folds `todo`, train.parallel_folds at a time, each in a spawned process with train.threads torch
    threads (0: the CPUs shared evenly); returns {fold: seconds} (empty when fewer than 2 folds are left)."""
    from sonodistill.protocols.processes import map_in_processes, threads_per_worker

    workers = min(int(run.cfg.train.parallel_folds), len(todo))
    if workers < 2:  # nothing to share out: the loop trains it in this process
        return {}
    threads = threads_per_worker(workers, int(run.cfg.train.threads))
    log.info("train.parallel_folds: folds %s in %d processes x %d torch thread(s)", todo, workers, threads)
    calls = [(run.cfg, source, run.resume, run.trainer_overrides, folds, k, threads) for k in todo]
    return dict(zip(todo, map_in_processes(fit_fold_process, calls, workers, log_file=run.dir / RUN_LOG)))


def fit_fold_process(cfg: RunConfig, source: Manifest, resume: bool, trainer_overrides: dict[str, Any],
                     folds: list[tuple[np.ndarray, np.ndarray]], k: int, threads: int) -> float:
    """One fold in a worker process: the protocol prepared here, fold k fitted and saved; returns its seconds.
    SIGTERM/SIGINT stop it at the next training step (its checkpoint kept for --resume)."""
    from sonodistill.recipes.trainer import stop_on_signals

    set_threads(threads)
    protocol = get_protocol(cfg.recipe)
    run = Run(cfg, source, resume, dict(trainer_overrides))
    with stop_on_signals():
        protocol.prepare(run)
        result = fit_and_save(run, protocol, make_fold(run, folds, k))
    return float(result.seconds)


def train_final_model(run: Run, protocol: Protocol) -> FoldResult | None:
    """Train one model on every item (no test rows) into RUN/final/: the model to deploy. With resume, a finished
    final/ (its `done` file) is kept. Returns its result (None when kept)."""
    from sonodistill.recipes.trainer import STOP

    cfg = run.cfg
    final_dir = run.dir / "final"
    if run.resume and (final_dir / "done").is_file():
        log.info("final model already trained, kept: %s", final_dir)
        return None
    STOP.check(" before the final model")
    rows = np.arange(len(run.manifest))
    fold = Fold(final_index(cfg), rows, rows[:0], final_dir, final_seed(cfg), final=True)
    t0 = time.perf_counter()
    result = protocol.fit(run, fold)
    result.seconds = time.perf_counter() - t0
    if process_rank() == 0:
        _record_time(run, "final", result.seconds)
        estimate = ("the CV report is its estimate" if cfg.train.cv and protocol.cross_validates else
                    f"{NO_CV_ESTIMATE}: no cross-validation was run (train.cv=false)" if protocol.cross_validates
                    else "this method trains no folds")
        write_environment(final_dir, seconds=result.seconds)
        (final_dir / "done").write_text(f"trained on all {len(rows)} items; {estimate}\n")
    return result


def final_only_report(run: Run) -> dict[str, Any]:
    """report.md of a final-only run (train.cv=false): it says that no CV estimate exists."""
    cfg = run.cfg
    final_dir = run.dir / "final"
    timing_file = run.dir / "timing.json"
    seconds = json.loads(timing_file.read_text()).get("final") if timing_file.is_file() else None
    trained = f" (trained in {seconds:.0f} s)" if seconds is not None else ""
    lines = [f"# {cfg.name}: {cfg.recipe} on {cfg.data.spec}, final model only", "",
             f"{NO_CV_ESTIMATE}: this run trained only the deployable model (train.cv=false, --final-only) on all "
             f"{len(run.manifest)} items into final/; no cross-validation was run, so there is no estimate of how "
             "well it does on new patients. Estimate it with a CV run of the same config (without --final-only), "
             "or score it on an external labelled set: `sonodistill predict RUN INPUTS --out P.json` then "
             "`sonodistill score P.json --labels LABELS.csv`.", "",
             f"Model: `{final_dir}`{trained}."]
    (run.dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"cv": False, "final": str(final_dir)}


def save_predictions(run: Run, results: list[FoldResult]) -> None:
    """RUN/predictions.csv: the union of the folds' predictions (when they have any)."""
    import pandas as pd

    frames = [r.predictions for r in results if r.predictions is not None and not r.predictions.empty]
    if frames:
        pd.concat(frames, ignore_index=True).to_csv(run.dir / PREDICTIONS, index=False)


def run_protocol(cfg: RunConfig, resume: bool = False, manifest: Manifest | None = None, fit_missing: bool = True,
                 **trainer_overrides: Any) -> dict[str, Any] | None:
    """Run `cfg.recipe`'s protocol: every fold (or `train.fold`), the final model with train.final (only it with
    train.cv=false), then the report; returns the report's summary (None on DDP ranks other than 0).

    Everything is validated before the run directory is written. With `resume`, the config must equal the saved
    one; finished folds are kept and an unfinished fold restarts from its last checkpoint. `fit_missing=False`
    (with `resume`): nothing is trained, the report covers the finished folds (how `join_fold_runs` reports).
    """
    from sonodistill.recipes.data import load_manifest

    run_dir = cfg.run_dir
    rank = process_rank()
    if rank != 0:  # a DDP worker re-running the command: rank 0 owns the run directory
        resume = True
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        if (run_dir / PREDICTIONS).exists() or (run_dir / "config.yaml").exists():
            raise SonoDistillError(f"run directory {run_dir} already holds a run: pass --resume to continue it, "
                                   "or choose another --name")
    protocol = get_protocol(cfg.recipe)
    manifest = manifest if manifest is not None else load_manifest(cfg.data)
    if resume and rank == 0:
        resume = check_resume_config(cfg)
    new_folds = validate_run(cfg, manifest, protocol)
    folds_to_train = cfg.train.folds if protocol.cross_validates and cfg.train.cv and cfg.train.fold is None else 1
    resolved, parallelism = resolve_parallelism(cfg, folds_to_train)  # train.threads / parallel_folds 'auto'
    set_threads(resolved.train.threads)
    recorded = with_resolved_options(cfg)  # a recipe_options key the recipe does not take fails here
    # -- nothing was written before this line --
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        if not resume:
            recorded.save(run_dir / "config.yaml")
        manifest.to_csv(run_dir / "manifest.csv")
        if parallelism is not None:
            (run_dir / "parallelism.json").write_text(json.dumps(parallelism, indent=1), encoding="utf-8")
    run = Run(resolved, manifest, resume, dict(trainer_overrides))
    with RunLog(run_dir / RUN_LOG) if rank == 0 else contextlib.nullcontext():
        log.info("%s: %s on %s, %s", run_dir, cfg.recipe, cfg.data.spec, "resumed" if resume else "started")
        if manifest.modality == "video" and rank == 0:
            from sonodistill.data.frame_counts import stills_warning

            stills = stills_warning(manifest.paths)
            if stills:
                log.warning("%s", stills)
        return _run_folds(run, protocol, new_folds, manifest, fit_missing, rank)


def _run_folds(run: Run, protocol: Protocol, new_folds: list[tuple[np.ndarray, np.ndarray]] | None,
               manifest: Manifest, fit_missing: bool, rank: int) -> dict[str, Any] | None:
    """`run_protocol` once the run directory is written: the folds (or the one model), the final model, the report."""
    cfg, run_dir, resume = run.cfg, run.dir, run.resume
    protocol.prepare(run)
    if not protocol.cross_validates:  # one model on every item (e.g. DINO pretraining): the run is its model
        result = train_final_model(run, protocol)
        return protocol.report(run, [result] if result is not None else [], protocol.title(run)) \
            if rank == 0 else None
    if not cfg.train.cv:
        train_final_model(run, protocol)
        return final_only_report(run) if rank == 0 else None
    if resume and (run_dir / "folds.json").exists():
        folds = load_folds(run_dir)
    else:
        folds = new_folds if protocol.folds_over_manifest and new_folds else \
            make_folds(run.manifest, cfg.train.folds, fold_seed_of(cfg))
        if rank == 0:
            save_folds(run_dir, run.manifest, folds)
    title = protocol.title(run)
    if cfg.train.on_validation:
        folds = validation_folds(cfg, run.manifest, folds)
        title += ", scored on VALIDATION splits of the training rows (test folds not read)"
    results = fit_folds(run, protocol, folds, manifest, fit_missing)
    if cfg.train.final and cfg.train.fold is None and fit_missing:  # (train.final with train.fold: refused earlier)
        train_final_model(run, protocol)
    if rank != 0:
        return None
    save_predictions(run, results)
    return protocol.report(run, results, title)


def run_seeds(cfg: RunConfig, seeds: list[int], resume: bool = False, manifest: Manifest | None = None,
              **trainer_overrides: Any) -> list[dict]:
    """The same folds trained with several seeds, one full run directory each: RUN/seed_<s>/ (what
    `sonodistill compare` pairs seed by seed). RUN/config.yaml holds the shared config; the folds come from
    `train.fold_seed` (default: the first seed), the training seed is s. `manifest` replaces `data.spec`'s (as in
    `run_protocol`). Returns each seed's summary."""
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
        one.out_dir, one.name, one.train.seed = str(run_dir), f"{SEED_DIR_PREFIX}{s}", int(s)
        if s == seeds[0]:  # validate before anything is written, then record the shared config
            from sonodistill.recipes.data import load_manifest

            validate_run(one, manifest if manifest is not None else load_manifest(one.data), get_protocol(one.recipe))
            run_dir.mkdir(parents=True, exist_ok=True)
            with_resolved_options(base).save(run_dir / "config.yaml")
        log.info("seed %d of %s: %s", s, seeds, one.run_dir)
        summaries.append(run_protocol(one, resume=resume and (one.run_dir / "config.yaml").exists(),
                                      manifest=manifest, **trainer_overrides))
    return summaries
