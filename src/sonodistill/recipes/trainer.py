"""Fit one fold with Lightning: run directory, checkpoints (Lightning for resume, safetensors for weights), logs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from safetensors.torch import load_file, save_file

from sonodistill.console import quiet_lightning
from sonodistill.config import RunConfig
from sonodistill.data.manifest import Manifest
from sonodistill.errors import CheckpointError, SonoDistillError
from sonodistill.recipes import get_recipe
from sonodistill.recipes.data import build_dataset, make_loader

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CALIBRATION_FILE = "calibration.json"  # a fold's (or final/'s) fitted temperature, read by serve.loading


class TrainingStopped(SonoDistillError):
    """Training stopped on SIGTERM or SIGINT between two steps; the checkpoints of finished epochs are kept."""

    def __init__(self, signum: int, where: str = "") -> None:
        self.signum, self.where = int(signum), where
        super().__init__(f"stopped by {signal.Signals(self.signum).name}{where}")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: the demo's worker processes send it back
        return type(self), (self.signum, self.where)


class StopRequest:
    """Set by SIGTERM/SIGINT while `stop_on_signals()` is active; training checks it between steps and folds."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.active = False

    def check(self, where: str = "") -> None:
        """Raise TrainingStopped if a stop was requested."""
        if self.signum is not None:
            raise TrainingStopped(self.signum, where)

    def handle(self, signum: int, frame: Any) -> None:
        """Stop at the next step boundary (never inside a step or a checkpoint write); repeats are ignored."""
        if self.signum is None:
            self.signum = signum
            log.warning("%s received: stopping after the current training step", signal.Signals(signum).name)


STOP = StopRequest()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGTERM and SIGINT request a clean stop (`STOP`) instead of ending the process.

    Re-entrant; outside the main thread (where Python cannot handle signals) it does nothing."""
    if STOP.active or threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = {s: signal.signal(s, STOP.handle) for s in STOP_SIGNALS}
    STOP.signum, STOP.active = None, True
    try:
        yield STOP
    finally:
        STOP.active = False
        for s, handler in previous.items():
            signal.signal(s, handler)


class EpochSummary(Callback):
    """One log line an epoch (rank 0; the run's train.log keeps it): where (fold_K, final), the epoch, its logged
    epoch-level training values and its seconds."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        values = {k.removesuffix("_epoch"): float(v) for k, v in trainer.callback_metrics.items()
                  if torch.is_tensor(v) and v.numel() == 1 and not k.endswith("_step")}
        text = ", ".join(f"{k} {v:.4g}" for k, v in sorted(values.items())) or "nothing logged"
        log.info("%s epoch %d/%d: %s (%.0f s)", self.where, trainer.current_epoch + 1, trainer.max_epochs, text,
                 time.perf_counter() - self.started)


class StopOnSignal(Callback):
    """Ends `fit` with TrainingStopped at the first step boundary after a stop request (see `stop_on_signals`).

    The partial epoch is dropped: resuming from the last epoch-end checkpoint keeps the resumed run exact."""

    def _check(self, trainer: L.Trainer) -> None:
        if STOP.signum is None:
            return
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        kept = (f"{last} (end of epoch {trainer.current_epoch - 1}) is kept" if last.exists()
                else "no epoch had finished, nothing to keep")
        STOP.check(f" in {Path(trainer.default_root_dir).name} at step {trainer.global_step} of epoch "
                   f"{trainer.current_epoch}: {kept}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._check(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)  # after the checkpoint callbacks: this epoch's checkpoint is kept


def fit(trainer: L.Trainer, recipe: L.LightningModule, loader: Any, fold_dir: Path, resume: bool,
        fold: int | str) -> None:
    """`trainer.fit`, continuing from the fold's checked last.ckpt when resuming; a stop request ends it with
    TrainingStopped (also when Lightning's own SIGTERM handling ends the epoch loop first)."""
    try:
        trainer.fit(recipe, train_dataloaders=loader, ckpt_path=resume_checkpoint(fold_dir, resume, fold))
    except SystemExit as exc:  # Lightning's SIGTERMException, raised after an epoch's checkpoint
        if STOP.signum is None:
            raise
        raise TrainingStopped(STOP.signum, f" in {fold_dir.name} after epoch {trainer.current_epoch - 1}: its "
                                           "checkpoint is kept") from exc


class SaveInferenceWeights(Callback):
    """After every epoch, write the inference model's weights as safetensors (atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            save_weights(pl_module.inference_model(), self.path)  # type: ignore[operator]


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with its 4-D parameters and buffers in channels-last memory order and its 5-D ones in
    channels-last-3d (in place, as `Module.to(memory_format=...)` does for 4-D tensors only); the values and the
    Parameter objects are unchanged, so optimisers and state dicts see the same model."""
    def convert(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t

    return module._apply(convert)


class ChannelsLast(Callback):
    """`train.channels_last`: the recipe's weights in channels-last order before the optimiser and any strategy
    wrapper are set up (`setup` runs first in `Trainer.fit`); a resumed checkpoint is copied into them."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        to_channels_last(pl_module)


class SeedEachEpoch(Callback):
    """Reseed torch, numpy and `random` at every epoch start from (the seed set before fit, epoch).

    Whatever a recipe draws from the global random state during an epoch (dropout, masks, feature noise) is then the
    same after a resume from the previous epoch's checkpoint. One detail makes that exact: Lightning creates the
    train DataLoader's iterator, which draws its base seed from torch's global generator, before this hook in a
    process's first epoch (`FitLoop.setup_data`) but after it in every later one (`TrainingEpochLoop.on_run_start`).
    An uninterrupted run's epochs >= 1 therefore start one draw further on than a resumed run's first epoch would;
    that draw is made here for a resumed first epoch (tests/recipes/test_semi_supervised.py: HDC's feature noise
    draws from the global generator, and its resumed run differs from the uninterrupted one without the draw)."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self.first_epoch_of_fit = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seed = torch.initial_seed()  # the seed of `L.seed_everything` in the fit functions
        self.first_epoch_of_fit = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.seed is not None
        epoch_seed = int(np.random.SeedSequence([self.seed, int(trainer.current_epoch)]).generate_state(1)[0])
        L.seed_everything(epoch_seed, workers=True, verbose=False)
        if self.first_epoch_of_fit and trainer.current_epoch > 0 and _new_iterator_each_epoch(trainer.train_dataloader):
            torch.empty((), dtype=torch.int64).random_()  # the base-seed draw of DataLoader's iterator
        self.first_epoch_of_fit = False


def _new_iterator_each_epoch(loader: Any) -> bool:
    """Whether a DataLoader makes a new iterator every epoch, drawing its base seed from torch's global generator
    (not when its workers persist: their iterator is reset, with no draw; not with a generator of its own)."""
    if not isinstance(loader, torch.utils.data.DataLoader) or loader.generator is not None:
        return False
    return not (loader.num_workers > 0 and loader.persistent_workers)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Write a model's state_dict as safetensors via a temporary file (this process's own) and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    os.chmod(tmp, _file_mode())  # safetensors writes 0600; other run files are 0666 less the umask
    tmp.replace(path)


def _file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Load safetensors weights strictly; any missing/unexpected/mismatched key is an error naming the file."""
    if not Path(path).is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for damaged files
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: does not match the model: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: does not match the model: missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    return model


def check_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless `path` is a complete, undamaged torch checkpoint (zip CRCs, pickle, tensors)."""
    try:
        if path.is_symlink() and not path.exists():
            raise FileNotFoundError(f"it links to {path.readlink()}, which is missing")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise ValueError(f"member {bad} fails its CRC check")
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # zipfile, OSError, pickle and torch errors alike: all mean "cannot resume from it"
        raise CheckpointError(f"{path}: damaged checkpoint, cannot resume from it ({type(exc).__name__}: {exc}). "
                              f"To retrain this fold from its start, delete {path.parent} (finished folds are kept) "
                              "and run again with --resume; or start a new run with another --name") from exc


def resume_checkpoint(fold_dir: Path, resume: bool, fold: int | str) -> str | None:
    """The checkpoint a resumed fold continues from (checked), or None to train it from its start."""
    last = fold_dir / "checkpoints" / "last.ckpt"
    if not resume or not (last.exists() or last.is_symlink()):
        return None
    check_checkpoint(last)
    log.info("fold %s: resuming from %s", fold, last)
    return str(last)


def build_trainer(cfg: RunConfig, fold_dir: Path, extra_callbacks: list[Callback] | None = None,
                  epoch_summary: bool = True, **overrides: Any) -> L.Trainer:
    """A Lightning Trainer configured from the run config; checkpoints and logs under `fold_dir`. `epoch_summary`:
    the EpochSummary line an epoch (off for a recipe whose own callback logs a richer one)."""
    quiet_lightning()  # Lightning is imported by now: its console handler's duplicate lines and tips go
    # Keep the newest epoch checkpoint (no metric monitored: no selection on a test fold) and `last.ckpt` linking it.
    ckpt = ModelCheckpoint(dirpath=fold_dir / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                           save_last="link", save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True)
    callbacks: list[Callback] = [ckpt, SaveInferenceWeights(fold_dir / WEIGHTS), SeedEachEpoch(), StopOnSignal()]
    if epoch_summary:
        callbacks.append(EpochSummary(fold_dir.name))
    if cfg.train.channels_last:
        callbacks.append(ChannelsLast())
    callbacks += list(extra_callbacks or [])
    kwargs: dict[str, Any] = dict(
        max_epochs=cfg.train.epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        strategy=cfg.train.strategy,
        precision=cfg.train.precision,
        default_root_dir=str(fold_dir),
        logger=[CSVLogger(str(fold_dir), name="logs", version=""), TensorBoardLogger(str(fold_dir), name="tb", version="")],
        callbacks=callbacks,
        limit_train_batches=cfg.train.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.train.log_every_n_steps,
        enable_model_summary=False,
        deterministic=False,
        use_distributed_sampler=True,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def fit_fold(cfg: RunConfig, manifest: Manifest, train_rows: np.ndarray, test_rows: np.ndarray, fold: int,
             fold_dir: Path, resume: bool = False, extra_callbacks: list[Callback] | None = None,
             **trainer_overrides: Any) -> pd.DataFrame | None:
    """Train on `train_rows`, predict `test_rows`; returns one row per test item (fold, index, group, y_true, prob_*).

    Under multi-process training only rank 0 predicts (on one device, the whole fold); other ranks return None."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.train.seed + fold
    L.seed_everything(seed, workers=True, verbose=False)
    calibration_rows = None
    if cfg.train.calibrate == "temperature":  # a grouped, stratified share of the training rows fits T
        from sonodistill.data.splits import validation_rows

        train_rows, calibration_rows = validation_rows(manifest, train_rows, float(cfg.train.val_fraction), seed)
    train_set = build_dataset(manifest.subset(train_rows), cfg.data, train=True, seed=seed)
    train_loader = make_loader(train_set, cfg.data, train=True, seed=seed)
    n_batches = len(train_loader)
    if isinstance(cfg.train.limit_train_batches, int) and not isinstance(cfg.train.limit_train_batches, bool):
        n_batches = min(n_batches, cfg.train.limit_train_batches)
    elif isinstance(cfg.train.limit_train_batches, float) and cfg.train.limit_train_batches < 1.0:
        n_batches = max(1, int(n_batches * cfg.train.limit_train_batches))
    steps_per_epoch = max(1, n_batches // max(1, cfg.train.devices))
    recipe = get_recipe(cfg.recipe)(cfg, num_classes=len(manifest.classes), steps_per_epoch=steps_per_epoch)
    if cfg.train.frozen_cache_views:  # the same items and order; batches of cached tensors need no workers
        from sonodistill.recipes.frozen_cache import cache_frozen_prefix

        train_set = cache_frozen_prefix(cfg, recipe, train_set)
        train_loader = make_loader(train_set, dataclasses.replace(cfg.data, num_workers=0), train=True, seed=seed)
    trainer = build_trainer(cfg, fold_dir, extra_callbacks, **trainer_overrides)
    fit(trainer, recipe, train_loader, fold_dir, resume, fold)
    if trainer.world_size > 1:
        # Distributed prediction would shard the test fold; rank 0 predicts it whole on one device.
        if not trainer.is_global_zero:
            return None  # type: ignore[return-value]
        trainer = L.Trainer(accelerator=cfg.train.accelerator, devices=1, logger=False, enable_checkpointing=False,
                            enable_model_summary=False, precision=cfg.train.precision)
    temperature = None
    if calibration_rows is not None:
        held_out = predict_held_out(trainer, recipe, cfg, manifest, calibration_rows, fold, seed)
        temperature = calibrate_fold(held_out, manifest, calibration_rows, fold, fold_dir)
    if len(test_rows) == 0:  # a final model trained on everything: nothing held out to predict
        return pd.DataFrame()
    frame = predict_held_out(trainer, recipe, cfg, manifest, test_rows, fold, seed)
    if temperature is not None and len(frame):
        from sonodistill.evaluation.calibration import apply_temperature

        columns = [f"prob_{c}" for c in manifest.classes]
        frame[columns] = apply_temperature(frame[columns].to_numpy(), temperature)
    return frame


def predict_held_out(trainer: L.Trainer, recipe: L.LightningModule, cfg: RunConfig, manifest: Manifest,
                     rows: np.ndarray, fold: int, seed: int) -> pd.DataFrame:
    """`predict_rows` of manifest `rows` through the evaluation dataset and loader (no augmentation)."""
    loader = make_loader(build_dataset(manifest.subset(rows), cfg.data, train=False, seed=seed), cfg.data,
                         train=False, seed=seed)
    return predict_rows(trainer, recipe, loader, manifest, rows, fold)


def calibrate_fold(frame: pd.DataFrame, manifest: Manifest, rows: np.ndarray, fold: int, fold_dir: Path) -> float:
    """Fit the fold's temperature on the predictions `frame` of its held-out calibration `rows` and write
    `fold_dir/calibration.json` (T, the rows, NLL and ECE before and after); returns T."""
    from sonodistill.evaluation.calibration import T_RANGE, apply_temperature, fit_temperature, nll
    from sonodistill.evaluation.metrics import expected_calibration_error

    probs, y = frame[[f"prob_{c}" for c in manifest.classes]].to_numpy(np.float64), frame["y_true"].to_numpy()
    temperature = fit_temperature(probs, y)
    scaled = apply_temperature(probs, temperature)
    record = {"method": "temperature", "temperature": temperature, "rows": [int(r) for r in rows],
              "nll_before": nll(probs, y), "nll_after": nll(scaled, y),
              "ece_before": expected_calibration_error(y, probs), "ece_after": expected_calibration_error(y, scaled)}
    (fold_dir / CALIBRATION_FILE).write_text(json.dumps(record, indent=1))
    log.info("fold %s: temperature %.3f on %d held-out rows (NLL %.3f -> %.3f, ECE %.3f -> %.3f)", fold,
             temperature, len(rows), record["nll_before"], record["nll_after"], record["ece_before"],
             record["ece_after"])
    if not T_RANGE[0] * 1.01 < temperature < T_RANGE[1] / 1.01:
        log.warning("fold %s: the temperature %.3f lies at the end of the searched %s-%s: on its %d held-out rows "
                    "the model is %s; its calibrated probabilities are close to %s", fold, temperature, *T_RANGE,
                    len(rows), *(("no better than chance", "uniform") if temperature > 1 else
                                 ("never wrong", "0 or 1")))
    return temperature


def predict_rows(trainer: L.Trainer, recipe: L.LightningModule, loader: Any, manifest: Manifest,
                 rows: np.ndarray, fold: int) -> pd.DataFrame:
    """Predict class probabilities for the given manifest rows, as a predictions table."""
    outputs = trainer.predict(recipe, dataloaders=loader)
    if not outputs:
        return pd.DataFrame()
    index = torch.cat([o["index"] for o in outputs]).numpy()
    probs = torch.cat([o["probs"] for o in outputs]).numpy()
    order = np.argsort(index)
    index, probs = index[order], probs[order]
    original = np.asarray(rows)[index]
    frame = pd.DataFrame({
        "fold": fold,
        "index": original,
        "path": [manifest.table["path"].iloc[i] for i in original],
        "group": manifest.groups[original],
        "y_true": manifest.labels[original],
    })
    for k, c in enumerate(manifest.classes):
        frame[f"prob_{c}"] = probs[:, k]
    return frame
