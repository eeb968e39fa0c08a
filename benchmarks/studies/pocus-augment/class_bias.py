"""Candidate C of rule.txt's addendum: per-class additive biases on log-probabilities, chosen per fold on A's
validation predictions to maximise balanced accuracy, applied unchanged to the same fold's test predictions of A.

Writes OUT as a run directory `sonodistill compare` reads (config.yaml, folds.json, manifest.csv copied from the test
run; predictions.csv with the biased probabilities) and prints the biases chosen per fold.

    python benchmarks/studies/pocus-augment/class_bias.py --val runs/bench39/pocus-val --test runs/bench39/pocus-test/all/pocus-test-A \
        --out runs/bench39/pocus-test/all/pocus-test-A-bias
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

GRID = np.arange(-3.0, 3.0 + 1e-9, 0.25)  # rule.txt: each free bias on -3..+3 in steps of 0.25
RUN_FILES = ("config.yaml", "folds.json", "manifest.csv")


def prob_columns(frame: pd.DataFrame) -> list[str]:
    """The predictions' probability columns in class order (`prob_<class>`)."""
    return [c for c in frame.columns if c.startswith("prob_")]


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """log p with p clipped at 1e-12: `N x K` -> `N x K`."""
    return np.log(np.clip(probs, 1e-12, 1.0))


def biased_probabilities(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """softmax(log p + b) row by row: `N x K` probabilities, `K` biases -> `N x K` probabilities."""
    logits = log_probabilities(probs) + bias
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def choose_bias(probs: np.ndarray, y: np.ndarray, fixed: int, grid: np.ndarray = GRID) -> np.ndarray:
    """The bias vector (class `fixed` at 0, the others on `grid`) with the highest balanced accuracy of the biased
    argmax on (`probs` `N x K`, labels `y` `N`); ties go to the smallest sum of |bias| (no bias when nothing helps)."""
    k = probs.shape[1]
    free = [c for c in range(k) if c != fixed]
    log_probs = log_probabilities(probs)  # once, not once per grid point
    best, best_key = np.zeros(k), None
    for values in itertools.product(grid, repeat=len(free)):
        bias = np.zeros(k)
        bias[free] = values
        score = balanced_accuracy_score(y, (log_probs + bias).argmax(axis=1))
        key = (round(score, 12), -float(np.abs(bias).sum()))
        if best_key is None or key > best_key:
            best, best_key = bias, key
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", type=Path, default=Path("runs/bench39/pocus-val"), help="holds fK/pocus-val-A")
    p.add_argument("--test", type=Path, required=True, help="A's 5-fold test run (joined)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fixed-class", default="regular", help="the class whose bias stays 0")
    args = p.parse_args(argv)
    test = pd.read_csv(args.test / "predictions.csv", dtype={"group": str})
    columns = prob_columns(test)
    fixed = columns.index(f"prob_{args.fixed_class}")
    out = test.copy()
    chosen = {}
    for fold in sorted(test["fold"].unique()):
        val = pd.read_csv(args.val / f"f{fold}" / "pocus-val-A" / "predictions.csv", dtype={"group": str})
        if prob_columns(val) != columns:
            raise SystemExit(f"fold {fold}: validation classes {prob_columns(val)} differ from the test's {columns}")
        val_probs, val_y = val[columns].to_numpy(), val["y_true"].to_numpy()
        bias = choose_bias(val_probs, val_y, fixed)
        before = balanced_accuracy_score(val_y, val_probs.argmax(axis=1))
        after = balanced_accuracy_score(val_y, biased_probabilities(val_probs, bias).argmax(axis=1))
        rows = test["fold"] == fold
        out.loc[rows, columns] = biased_probabilities(test.loc[rows, columns].to_numpy(), bias)
        t_y = test.loc[rows, "y_true"].to_numpy()
        t_before = balanced_accuracy_score(t_y, test.loc[rows, columns].to_numpy().argmax(axis=1))
        t_after = balanced_accuracy_score(t_y, out.loc[rows, columns].to_numpy().argmax(axis=1))
        chosen[int(fold)] = dict(zip(columns, bias.tolist()))
        print(f"fold {fold}: bias {dict(zip(columns, bias.round(2).tolist()))}; validation balanced accuracy "
              f"{before:.3f} -> {after:.3f}; test {t_before:.3f} -> {t_after:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copy2(args.test / name, args.out / name)
    out.to_csv(args.out / "predictions.csv", index=False)
    (args.out / "class_bias.json").write_text(json.dumps(
        {"source": str(args.test), "chosen_on": str(args.val), "bias_per_fold": chosen}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
