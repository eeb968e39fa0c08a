"""Leakage-free splits: grouped (and label-stratified) k-fold, group-wise subsampling, a leakage check."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from sonodistill.errors import ConfigError, LeakageError

from .manifest import Manifest

log = logging.getLogger(__name__)


@dataclass
class Fold:
    """One cross-validation fold: row positions (int64) of the training and test items."""

    index: int
    train: np.ndarray
    test: np.ndarray


def check_no_leakage(manifest: Manifest, train_idx: np.ndarray, test_idx: np.ndarray) -> None:
    """Raise LeakageError when a group (patient/subject) has rows on both sides, naming the first few."""
    groups = manifest.groups
    shared = sorted(set(groups[np.asarray(train_idx, dtype=np.int64)]) & set(groups[np.asarray(test_idx, dtype=np.int64)]))
    if shared:
        shown = ", ".join(repr(g) for g in shared[:5])
        more = f" (and {len(shared) - 5} more)" if len(shared) > 5 else ""
        raise LeakageError(
            f"manifest '{manifest.name}': {len(shared)} group(s) on both sides of the split: {shown}{more}"
        )


def check_duplicate_content(manifest: Manifest) -> None:
    """Raise LeakageError naming the rows when files with identical bytes (sha1, the cache's `file_sha1`,
    memoised: the cache reuses it) are in different groups; identical files in one group are logged as a warning.

    Reads every file once; `load_adapter` runs it, so `data inspect`, `data preview` and training all check."""
    from .cache import file_sha1  # imports torch: only when files are hashed

    first: dict[str, int] = {}
    groups = manifest.groups
    paths = manifest.paths
    for i, p in enumerate(paths):
        j = first.setdefault(file_sha1(p), i)
        if j == i:
            continue
        if groups[i] != groups[j]:
            raise LeakageError(
                f"manifest '{manifest.name}': rows {j} and {i} have identical content: {paths[j]} (group "
                f"{groups[j]!r}) and {paths[i]} (group {groups[i]!r}); the same image in two groups can be on both "
                "sides of a split: remove the copy, or give both rows one group"
            )
        log.warning("manifest '%s': rows %d and %d have identical content (%s, %s), both in group %r",
                    manifest.name, j, i, paths[j], paths[i], groups[i])


def _check_fold_feasible(manifest: Manifest, n_splits: int) -> None:
    if n_splits < 2:
        raise ConfigError(f"n_splits must be >= 2, got {n_splits}")
    groups = manifest.groups
    n_groups = len(set(groups))
    if n_splits > n_groups:
        raise ConfigError(
            f"manifest '{manifest.name}': n_splits={n_splits} exceeds the number of groups ({n_groups}); "
            "every fold needs at least one group in its test set"
        )
    if manifest.has_labels:
        labels = manifest.labels
        for k, c in enumerate(manifest.classes):
            n = len(set(groups[labels == k]))
            if n < n_splits:
                raise ConfigError(
                    f"manifest '{manifest.name}': class '{c}' occurs in only {n} group(s), fewer than "
                    f"n_splits={n_splits}; some test folds would lack it (use fewer folds or merge classes)"
                )


def grouped_kfold(manifest: Manifest, n_splits: int = 5, seed: int = 0) -> list[Fold]:
    """K folds with no group on both sides; stratified by label (StratifiedGroupKFold) when labelled."""
    _check_fold_feasible(manifest, n_splits)
    x = np.zeros(len(manifest))
    groups = manifest.groups
    if manifest.has_labels:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(x, manifest.labels, groups)
    else:
        # GroupKFold balances fold sizes; shuffle the group order with the seed first for seed-dependence.
        rng = np.random.default_rng(seed)
        uniq = np.unique(groups)
        perm = {g: i for i, g in enumerate(rng.permutation(uniq))}
        shuffled = np.array([perm[g] for g in groups])
        parts = GroupKFold(n_splits=n_splits).split(x, groups=shuffled)
    folds = []
    for i, (train, test) in enumerate(parts):
        fold = Fold(i, np.sort(train).astype(np.int64), np.sort(test).astype(np.int64))
        check_no_leakage(manifest, fold.train, fold.test)
        folds.append(fold)
    return folds


def grouped_fraction(manifest: Manifest, rows: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A seeded choice of whole groups among `rows` covering about `fraction` of them (sorted row positions).

    Stratified by label when labelled (each group counts under its most frequent label): every class present
    keeps at least one group. Used e.g. to keep 10 % of the training rows labelled.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        raise ConfigError("grouped_fraction: no rows to choose from")
    if fraction == 1.0:
        return np.sort(rows)
    rng = np.random.default_rng(seed)
    groups = manifest.groups[rows]
    uniq, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(uniq))
    if manifest.has_labels:
        labels = manifest.labels[rows]
        counts = np.zeros((len(uniq), len(manifest.classes)), dtype=np.int64)
        np.add.at(counts, (inverse, labels), 1)
        stratum = counts.argmax(axis=1)
    else:
        stratum = np.zeros(len(uniq), dtype=np.int64)
    chosen: list[int] = []
    for s in np.unique(stratum):
        members = rng.permutation(np.flatnonzero(stratum == s))
        target = fraction * sizes[members].sum()
        total = 0
        for g in members:
            # take a group if it brings the stratum's row count closer to the target (always take the first)
            if total == 0 or abs(total + sizes[g] - target) < abs(total - target):
                chosen.append(int(g))
                total += int(sizes[g])
    keep = np.isin(inverse, np.array(chosen, dtype=np.int64))
    return np.sort(rows[keep])


def validation_rows(manifest: Manifest, train_rows: np.ndarray, fraction: float,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training rows into (fit rows, validation rows): whole groups, stratified by label, about
    `fraction` of the rows in validation (`grouped_fraction`); no group on both sides (checked)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    train_rows = np.asarray(train_rows, dtype=np.int64)
    val = grouped_fraction(manifest, train_rows, fraction, seed)
    fit = np.setdiff1d(train_rows, val)
    if len(fit) == 0 or len(val) == 0:
        raise ConfigError(f"validation split of {len(train_rows)} training rows with fraction {fraction} leaves "
                          f"{len(fit)} fit and {len(val)} validation rows: too few groups")
    check_no_leakage(manifest, fit, val)
    return fit, val


def _stats(values: np.ndarray) -> str:
    return f"min {int(values.min())} / median {float(np.median(values)):g} / max {int(values.max())}"


def inspect_report(manifest: Manifest, n_splits: int = 5, seed: int = 0) -> str:
    """Markdown summary: class counts, groups and items per group, per-fold class counts, leakage check result.

    A file listed twice is refused earlier by `Manifest.validate`, identical contents in two groups by
    `check_duplicate_content` (run by `load_adapter`)."""
    lines = [f"# {manifest.name}", "", f"- items: {len(manifest)} ({manifest.modality})"]
    groups = manifest.groups
    _, per_group = np.unique(groups, return_counts=True)
    lines.append(f"- groups: {len(per_group)}; items per group: {_stats(per_group)}")
    if manifest.has_labels:
        counts = manifest.class_counts()
        lines.append("- classes: " + ", ".join(f"{c}: {n}" for c, n in counts.items()))
        labels = manifest.labels
        lines.append(
            "- groups per class: "
            + ", ".join(f"{c}: {len(set(groups[labels == k]))}" for k, c in enumerate(manifest.classes))
        )
    else:
        lines.append("- classes: none (unlabelled)")
    for extra in ("mask", "target", "text"):
        if extra in manifest.table.columns:
            col = manifest.table[extra]
            filled = int((col.astype(str).str.len() > 0).sum()) if col.dtype != float else int(col.notna().sum())
            lines.append(f"- {extra}: {filled} of {len(manifest)} rows")
    folds = grouped_kfold(manifest, n_splits=n_splits, seed=seed)
    lines += ["", f"## {n_splits}-fold grouped split (seed {seed})", ""]
    header = ["fold", "train items", "test items", "test groups"]
    if manifest.has_labels:
        header += [f"test '{c}'" for c in manifest.classes]
    masked = manifest.has_mask if "mask" in manifest.table.columns else None
    if masked is not None and masked.all():
        masked = None  # every row scored: the column would repeat "test items"
    if masked is not None:
        header += ["train with mask", "test with mask"]  # labelled_rows=masks: labelled / scored rows
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in folds:
        row = [str(f.index), str(len(f.train)), str(len(f.test)), str(len(set(groups[f.test])))]
        if manifest.has_labels:
            row += [str(n) for n in np.bincount(manifest.labels[f.test], minlength=len(manifest.classes))]
        if masked is not None:
            row += [str(int(masked[f.train].sum())), str(int(masked[f.test].sum()))]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Leakage check: passed ({n_splits} folds, no group on both sides of any fold)."]
    return "\n".join(lines) + "\n"
