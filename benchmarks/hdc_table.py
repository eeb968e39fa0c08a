"""Semi-supervised segmentation benchmark: methods x labelled fractions on HC18 or BUSI lesions, same splits.

    python benchmarks/hdc_table.py --data hc18 --fractions 0.05,0.1,0.2 --out runs/hdc-bench
    python benchmarks/hdc_table.py --data busi --fractions 0.1 --methods seg_supervised,hdc --out runs/hdc-bench
    # a config's by_recipe section gives one method its own settings (seg-busi-imagenet: HDC's mi_marginal)
    python benchmarks/hdc_table.py --data busi --config seg-busi-imagenet --methods seg_supervised,fixmatch,hdc
    python benchmarks/hdc_table.py --data hc18 --out runs/hdc-bench --table-only   # rebuild the table
    # choose settings WITHOUT the test split: the same protocol inside the training rows of the test split
    python benchmarks/hdc_table.py --data hc18 --validation --methods hdc --tag mi0 --set recipe_options.lambda_mi=0
    # several training seeds on the same folds: RUN/seed_<s>/ each (`sonodistill compare` pairs them seed by seed)
    python benchmarks/hdc_table.py --data hc18 --fractions 0.1 --seeds 0,1,2 --out runs/hdc-bench
    python benchmarks/hdc_table.py --data hc18 --fractions 0.1 --seeds 1 --out runs/hdc-bench   # same folds

Each (method, fraction) is one run directory OUT/DATA[-val]-METHOD[-TAG]-PCT (resumed if it exists), trained with
the packaged config seg-DATA-cpu plus `--set` overrides. The table (Markdown + CSV) goes to OUT/DATA[-val][-TAG]-table;
after each fraction's rows, HDC minus each finished method, paired on the same test images (`sonodistill compare`).
`--validation` replaces the manifest by the training rows of the main split (fold `train.fold` of `train.folds`
grouped folds), so the runs split those rows again into train / validation and never see a test image.
With `--seeds`, the fold split's seed is `train.fold_seed` if set, else the config's `train.seed` (0 unless set),
whichever seeds one command trains: `--seeds 1` alone and `--seeds 0,1,2` give seed 1 the same folds, so one table's
seeds can be run by separate processes. (`sonodistill train --seeds` takes the first seed instead; before session
24 this script did too: add `--set train.fold_seed=S` to reproduce an earlier `--seeds S` command's split.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from sonodistill.commands.compare import ALL_SEEDS, compare_runs
from sonodistill.config import SEED_DIR_PREFIX, RunConfig, load_config, packaged_config, seed_run_dirs
from sonodistill.errors import SonoDistillError
from sonodistill.data.manifest import Manifest
from sonodistill.data.folds import fold_seed_of, make_folds
from sonodistill.protocols.folds import run_protocol, run_seeds
from sonodistill.recipes.data import load_manifest
from _common import add_run_arguments, start_run

METHODS = ["seg_supervised", "mean_teacher", "fixmatch", "cps", "hdc"]
NAMES = {"seg_supervised": "Supervised only", "mean_teacher": "Mean Teacher", "fixmatch": "FixMatch",
         "cps": "CPS", "hdc": "HDC"}
ANCHORS = {"hc18": "fully supervised, full resolution (HC18 literature): Dice 97.75 %, HC error 1.90 mm",
           "busi": "fully supervised (BUSI literature): Dice about 0.76"}
COLUMNS = ["dice", "iou", "hd95", "asd", "hc_abs_err_mm"]
MEDIANS = ["dice", "hc_abs_err_mm", "hc_signed_err_mm"]  # signed = HC(pred) - hc_mm: > 0 over-segments
# HDC - each other method, paired (`sonodistill compare`): Dice, then the first of these the predictions carry
# (HC18: head circumference error; BUSI, which has no HC: the boundary distance)
PAIRED_SECOND = (("hc_abs_err_mm", "HC MAE, mm"), ("hd95", "hd95, px"))


def lesion_manifest(manifest: Manifest) -> Manifest:
    """BUSI benign + malignant images only (the normal images have no lesion)."""
    keep = manifest.table["label"].isin(["benign", "malignant"]).to_numpy()
    return Manifest(manifest.table[keep].copy(), ["benign", "malignant"], manifest.modality, "busi-lesions")


def validation_manifest(manifest: Manifest, cfg: RunConfig) -> Manifest:
    """The training rows of the main split (the same folds run_protocol makes), as a manifest of their own."""
    train_rows, _ = make_folds(manifest, cfg.train.folds, fold_seed_of(cfg))[cfg.train.fold or 0]
    sub = manifest.subset(np.sort(train_rows))
    return Manifest(sub.table, list(sub.classes), sub.modality, f"{manifest.name}-train-part")


def with_table_fold_seed(overrides: list[str], base: RunConfig, seeds: list[int]) -> list[str]:
    """`overrides` plus `train.fold_seed` = `base`'s fold seed (its `train.fold_seed`, else its `train.seed`) when
    seeds are given: every command of a table splits the same folds, whichever seeds it trains."""
    return [*overrides, f"train.fold_seed={fold_seed_of(base)}"] if seeds else list(overrides)


def prefix(data: str, validation: bool) -> str:
    return f"{data}-val" if validation else data


def run_name(pre: str, method: str, fraction: float, tag: str = "") -> str:
    return f"{pre}-{method}{'-' + tag if tag else ''}-{round(100 * fraction, 3):g}pct"


def collect(out: Path, pre: str, methods: list[str], fractions: list[float], tag: str = "") -> pd.DataFrame:
    """One row per finished run and seed: fold-mean of each metric, item std, undefined counts, medians, wall time."""
    rows = []
    for method in methods:
        for frac in fractions:
            base = out / run_name(pre, method, frac, tag)
            for seed, run in (seed_run_dirs(base) or {None: base}).items():  # RUN/seed_<s>/ each, or RUN itself
                metrics = run / "metrics.json"
                if not metrics.is_file():
                    continue
                m = json.loads(metrics.read_text())
                split_file = run / "fold_0" / "split.json"
                split = json.loads(split_file.read_text()) if split_file.is_file() else {}
                timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
                row = {"method": method, "tag": tag, "labelled_fraction": frac, "seed": seed,
                       "n_labelled": len(split.get("labelled", [])),
                       "n_unlabelled": len(split.get("unlabelled", [])), "n_test": m["n_items"],
                       "n_folds": m["n_folds"], "train_eval_s": round(sum(timing.values()), 1)}
                for c in COLUMNS:
                    if c in m["summary"]:
                        row[c] = m["summary"][c]["mean"]
                        row[f"{c}_item_std"] = m["items"][c]["std"]
                        row[f"{c}_n_nan"] = m["items"][c]["n_nan"]
                pred = pd.read_csv(run / "predictions.csv")
                if {"hc_pred_mm", "hc_true_mm"} <= set(pred.columns):
                    pred["hc_signed_err_mm"] = pred["hc_pred_mm"] - pred["hc_true_mm"]
                for c in MEDIANS:
                    if c in pred.columns:
                        row[f"{c}_median"] = float(pred[c].median())
                rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, col: str) -> str:
    if col not in row or pd.isna(row[col]):
        return "–"
    if col in ("dice", "iou"):
        text = f"{100 * row[col]:.2f} ± {100 * row[f'{col}_item_std']:.1f}"
    else:
        text = f"{row[col]:.2f} ± {row[f'{col}_item_std']:.2f}"
    n_nan = int(row.get(f"{col}_n_nan", 0) or 0)
    return text + (f" ({n_nan} n/a)" if n_nan else "")


def run_dirs(run: Path) -> list[Path]:
    """The run's seed folders RUN/seed_<s>/ in seed order, or RUN itself for a one-seed run."""
    return list(seed_run_dirs(run).values()) or [run]


def finished(run: Path) -> bool:
    """A run whose every seed (RUN/seed_<s>/, or RUN itself) has its metrics."""
    return all((d / "metrics.json").is_file() for d in run_dirs(run))


def covers_folds(run: Path, folds: list[int]) -> bool:
    """Whether the finished run `run` (one seed's folder) scored every test fold in `folds`: a run of fold 0 alone,
    asked again with train.fold=null, is resumed for the other folds instead of kept."""
    if not (run / "metrics.json").is_file():
        return False
    scored = set(pd.read_csv(run / "predictions.csv", usecols=["fold"])["fold"].astype(int))
    return set(folds) <= scored


def wanted_folds(cfg: RunConfig) -> list[int]:
    """The test folds a run of `cfg` scores: train.fold alone, or all train.folds."""
    return [int(cfg.train.fold)] if cfg.train.fold is not None else list(range(int(cfg.train.folds)))


def _signed(x: float, scale: float) -> str:
    return f"{scale * x:+.2f}"


def paired_lines(out: Path, pre: str, methods: list[str], fraction: float, tag: str = "") -> list[str]:
    """Markdown rows: HDC minus each other finished method of this fraction on the same test items, Dice (points)
    and HC MAE (mm; hd95 in px where the predictions have no HC, as on BUSI), with the 95 % bootstrap interval over
    groups and the permutation p (`sonodistill compare`; over several seeds: the seed-averaged difference, or one row
    per seed where the seeds' fold splits differ). A pair `compare` refuses is listed with the reason."""
    hdc = out / run_name(pre, "hdc", fraction, tag)
    others = [m for m in methods if m != "hdc" and finished(out / run_name(pre, m, fraction, tag))]
    if "hdc" not in methods or not finished(hdc) or not others:
        return []
    columns = pd.read_csv(run_dirs(hdc)[0] / "predictions.csv", nrows=0).columns
    second, second_label = next(((m, label) for m, label in PAIRED_SECOND if m in columns), (None, "HC MAE, mm"))
    metrics = ["dice"] + [second] * (second is not None)
    lines = ["HDC minus each method on the same test images (`sonodistill compare METHOD_RUN HDC_RUN`; 95 % "
             "bootstrap interval over groups, paired permutation p):\n",
             f"| HDC minus | seeds | Dice, points [95 % interval], p | {second_label} [95 % interval], p |",
             "|---|:---:|:---:|:---:|"]
    for method in others:
        name = NAMES.get(method, method)
        try:
            _, table = compare_runs([out / run_name(pre, method, fraction, tag), hdc], metrics=metrics)
        except SonoDistillError as err:  # other items, folds or seeds: said in the table, not dropped
            lines.append(f"| {name} | – | not comparable: {' '.join(str(err).split())} | |")  # one table row
            continue
        seeds = sorted({str(s) for s in table["seed"]} - {ALL_SEEDS})
        # one row: the seed-averaged difference; one per seed where the seeds scored different items (fold splits)
        shown = [ALL_SEEDS] if (table["seed"] == ALL_SEEDS).any() else seeds  # compare writes a mean only for 2+ seeds
        for seed in shown:
            rows = table[table["seed"].astype(str) == seed].set_index("metric")
            cells = []
            for metric, scale in (("dice", 100.0), (second, 1.0)):
                if metric not in rows.index:
                    cells.append("–")
                    continue
                r = rows.loc[metric]
                cells.append(f"{_signed(r['difference'], scale)} [{_signed(r['ci_low'], scale)}, "
                             f"{_signed(r['ci_high'], scale)}], p {r['p_value']:.2g}")
            label = "mean of " + ", ".join(seeds) if seed == ALL_SEEDS else seed
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(df: pd.DataFrame, data: str, command: str, validation: bool,
             paired: dict[float, list[str]] | None = None) -> str:
    """The table's Markdown; `paired` (fraction -> `paired_lines`) follows each fraction's table."""
    cols = [c for c in COLUMNS if c in df.columns]
    meds = [c for c in MEDIANS if f"{c}_median" in df.columns]
    units = "mm" if data == "hc18" else "px"
    where = ("VALIDATION items (a grouped 80/20 split of the main split's training rows; no test image used)"
             if validation else "Test items of the subject-grouped folds that were run (fold 0 alone: one grouped "
             "80/20 split; see each section's fold count)")
    lines = [f"# Semi-supervised segmentation on {data}: method x labelled fraction\n",
             f"Command(s): `{command}`\n",
             f"{where}, scored at the original image resolution; cells are mean ± std over items (Dice/IoU in %, "
             f"hd95/asd in {units}, hc_abs_err_mm = |HC(pred) - hc_mm|, hc_signed_err_mm = HC(pred) - hc_mm: above 0 "
             "over-segments); '(k n/a)': k items where the value is "
             "undefined (empty prediction) and left out; medians over items (NaN left out).\n",
             f"Anchor: {ANCHORS.get(data, '-')}.\n"]
    for frac in sorted(df["labelled_fraction"].unique()):
        part = df[df["labelled_fraction"] == frac]
        lines.append(f"## {100 * frac:g} % labelled ({int(part['n_labelled'].iloc[0])} labelled, "
                     f"{int(part['n_unlabelled'].iloc[0])} unlabelled in fold 0; {int(part['n_test'].iloc[0])} scored "
                     f"images over {int(part['n_folds'].iloc[0])} fold(s))\n")
        lines.append("| method | " + " | ".join(cols + [f"median {c}" for c in meds]) + " | train+eval s |")
        lines.append("|---|" + ":---:|" * (len(cols) + len(meds) + 1))
        for _, row in part.iterrows():
            name = NAMES.get(row["method"], row["method"]) + (f" ({row['tag']})" if row["tag"] else "")
            name += "" if pd.isna(row.get("seed")) else f", seed {int(row['seed'])}"
            medians = ["–" if pd.isna(row[f"{c}_median"]) else  # every prediction empty: no HC to take a median of
                       f"{100 * row[f'{c}_median']:.2f}" if c == "dice" else f"{row[f'{c}_median']:.2f}"
                       for c in meds]
            lines.append(f"| {name} | " + " | ".join([_cell(row, c) for c in cols] + medians)
                         + f" | {row['train_eval_s']:.0f} |")
        for method, seeds in part[part["seed"].notna()].groupby("method", sort=False):
            if len(seeds) > 1:  # the seeds' fold-means averaged, and their spread over seeds
                cells = ["–" if seeds[c].isna().any() else  # a seed without the value: no mean that hides it
                         f"{scale * seeds[c].mean():.2f} ± {scale * seeds[c].std():.2f} (over seeds)"
                         for c in cols for scale in [100 if c in ("dice", "iou") else 1]]
                lines.append(f"| **{NAMES.get(method, method)}, mean of {len(seeds)} seeds** | " + " | ".join(cells)
                             + " |" + " |" * len(meds) + f" {seeds['train_eval_s'].sum():.0f} |")
        lines.append("")
        lines.extend((paired or {}).get(frac, []))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["hc18", "busi"], default="hc18")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--fractions", default="0.05,0.1,0.2")
    p.add_argument("--out", default="runs/hdc-bench")
    p.add_argument("--config", help="YAML or packaged config (default seg-DATA-cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--tag", default="", help="suffix of run names and table for a variant made with --set")
    p.add_argument("--validation", action="store_true",
                   help="run inside the main split's training rows (choose settings without the test split)")
    p.add_argument("--seeds", default="",
                   help="comma-separated training seeds on the same folds (RUN/seed_<s>/ each); default: the "
                        "config's train.seed in RUN itself")
    add_run_arguments(p, folds=False)
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    args = p.parse_args(argv)
    start_run(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {METHODS}")
    fractions = [float(f) for f in args.fractions.split(",") if f]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    pre = prefix(args.data, args.validation)
    table_stem = pre + (f"-{args.tag}" if args.tag else "")
    config = Path(args.config) if args.config and args.config.endswith((".yaml", ".yml")) else \
        packaged_config(args.config or f"seg-{args.data}-cpu")
    command = "python benchmarks/hdc_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    command_file = out / f"{table_stem}-command.txt"
    earlier = command_file.read_text().splitlines() if command_file.is_file() else []
    if args.table_only and earlier:
        command = "`; `".join(earlier)  # the commands that trained the runs
    elif not args.table_only:  # every distinct command that trained runs of this table, in order
        out.mkdir(parents=True, exist_ok=True)
        commands = earlier + [command] * (command not in earlier)
        command_file.write_text("\n".join(commands) + "\n")
        command = "`; `".join(commands)
    if not args.table_only:
        base = load_config(config, [f"data.spec={args.data}", *args.overrides])
        overrides = with_table_fold_seed(args.overrides, base, seeds)
        manifest = load_manifest(base.data)
        if args.data == "busi":
            manifest = lesion_manifest(manifest)
        if args.validation:
            manifest = validation_manifest(manifest, base)
        for frac in fractions:
            for method in methods:
                name = run_name(pre, method, frac, args.tag)
                cfg = load_config(config, [f"recipe={method}", f"name={name}", f"out_dir={out}",
                                           f"data.spec={args.data}", f"recipe_options.labelled_fraction={frac}",
                                           *overrides])
                runs = [cfg.run_dir / f"{SEED_DIR_PREFIX}{s}" for s in seeds] if seeds else [cfg.run_dir]
                if all(covers_folds(r, wanted_folds(cfg)) for r in runs):
                    logging.info("%s: finished earlier, kept", name)
                    continue
                t0 = time.perf_counter()
                if seeds:
                    run_seeds(cfg, seeds, resume=cfg.run_dir.exists(), manifest=manifest, enable_progress_bar=False)
                else:
                    run_protocol(cfg, resume=cfg.run_dir.exists(), manifest=manifest, enable_progress_bar=False)
                logging.info("%s: done in %.0f s", name, time.perf_counter() - t0)
                write_table(out, table_stem, args.data, pre, methods, fractions, args.tag, command, args.validation)
    write_table(out, table_stem, args.data, pre, methods, fractions, args.tag, command, args.validation)
    return 0


def write_table(out: Path, stem: str, data: str, pre: str, methods: list[str], fractions: list[float], tag: str,
                command: str, validation: bool) -> None:
    df = collect(out, pre, methods, fractions, tag)
    if df.empty:
        logging.warning("no finished runs under %s", out)
        return
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{stem}-table.csv", index=False)
    paired = {frac: paired_lines(out, pre, methods, frac, tag) for frac in fractions}
    (out / f"{stem}-table.md").write_text(markdown(df, data, command, validation, paired), encoding="utf-8")
    print((out / f"{stem}-table.md").read_text())


if __name__ == "__main__":
    raise SystemExit(main())
