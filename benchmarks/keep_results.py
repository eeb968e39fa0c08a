"""Keep the scored results of finished runs in the repository, so a later checkout can join and compare them.

    python benchmarks/keep_results.py runs/bench42/busi10 --into benchmarks/studies/busi-10pct-both-decoders/results

`runs/` is not committed and a fresh checkout starts without it, so a study that spans sessions (5 folds x 3 seeds
at 13-30 min a run on two cores) loses its finished runs with the machine. This copies, from every run directory
under each SOURCE, the files that `sonodistill compare`, `sonodistill eval --join` and the study scripts read:
configs, folds and splits, per-item predictions, metrics, per-fold records (`fold.json`), timings, software records
and training-log CSVs; never weights, checkpoints, masks or images. Manifests keep only the columns that identify
and label an item (`path`, `group`, `label`, `target`, `mask`): a data set's other columns (clinicians' comments,
findings, licences) are the data's, which the repository does not copy. The layout under INTO mirrors the layout
under the SOURCE's parent, so `cp -r INTO/* runs/benchNN/` (or the kept paths themselves) stand where the runs
stood. Git stores identical files (a manifest shared by many runs) once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

from sonodistill.evaluation.run_dir import PREDICTIONS

MANIFEST = "manifest.csv"
KEPT_NAMES = frozenset({
    "config.yaml", "folds.json", MANIFEST, PREDICTIONS, "metrics.json", "report.md", "timing.json",
    "split.json", "environment.json", "hc_calibration.json",
    "fold.json",  # a fold's own record where a protocol writes one (DILBERT: its retrieval recalls)
})
KEPT_LOGS = ("logs/metrics.csv",)  # each fold's training curves (foreground shares, losses)
MANIFEST_COLUMNS = ("path", "group", "label", "target", "mask")  # what compare and join check of a manifest


def is_kept(relative: Path) -> bool:
    """Whether a file (its path relative to the copied tree) is one of the scored results this script keeps."""
    if relative.name in KEPT_NAMES or relative.name.endswith("-command.txt"):
        return True
    return any(relative.as_posix().endswith("/" + log) for log in KEPT_LOGS)


def keep_results(source: Path, into: Path) -> list[Path]:
    """Copy the kept files under `source` to `into / source.name / ...`; returns the written paths. FileNotFoundError
    when `source` is not a folder; ValueError when it holds no predictions.csv (nothing was scored)."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a folder")
    files = sorted(p for p in source.rglob("*") if p.is_file() and is_kept(p.relative_to(source.parent)))
    if not any(p.name == PREDICTIONS for p in files):
        raise ValueError(f"{source}: no {PREDICTIONS} under it (no finished, scored run to keep)")
    written = []
    for p in files:
        target = into / p.relative_to(source.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        if p.name == MANIFEST:
            write_item_columns(p, target)
        else:
            shutil.copyfile(p, target)
        written.append(target)
    return written


def write_item_columns(manifest: Path, target: Path) -> None:
    """`manifest` (its `# sonodistill-manifest` header line, if any, then CSV) with only MANIFEST_COLUMNS, to
    `target`; the same input always gives the same bytes (joined runs must hold equal manifests)."""
    with manifest.open() as f:
        first = f.readline()
    header = first if first.startswith("#") else ""
    table = pd.read_csv(manifest, skiprows=1 if header else 0, dtype=str, keep_default_na=False)
    kept = table[[c for c in MANIFEST_COLUMNS if c in table.columns]]
    target.write_text(header + kept.to_csv(index=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", type=Path, help="run directories, or folders holding them")
    p.add_argument("--into", type=Path, required=True, help="folder in the repository that receives the copies")
    args = p.parse_args(argv)
    try:
        for source in args.sources:
            written = keep_results(source, args.into)
            size = sum(w.stat().st_size for w in written)
            print(f"{source} -> {args.into / source.name}: {len(written)} files, {size / 1e6:.2f} MB")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
