"""`sonodistill train RECIPE --data ADAPTER:ROOT --folds K` and `sonodistill eval RUN_DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from sonodistill.config import RunConfig, load_config, packaged_config

log = logging.getLogger(__name__)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by commands that start a run (train, demo, benchmarks)."""
    p.add_argument("--config", help="YAML config file, or the name of a packaged config (`sonodistill configs` lists "
                                    "them)")
    p.add_argument("--data", help="ADAPTER:ROOT (lus-blues, pocus-frames, hc18, busi, folder, image-masks, unlabelled, "
                                  "csv) or synthetic:PRESET; adapter options: "
                                  "--set data.adapter_options=\"{KEY: VALUE}\"")
    p.add_argument("--target", help="adapter target, e.g. severity | severity3 | b_lines for lus-blues")
    p.add_argument("--folds", type=int, help="number of grouped, stratified folds")
    p.add_argument("--fold", type=int, help="run only this fold (0-based)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--backbone")
    p.add_argument("--name", help="run name: the run directory is OUT/NAME")
    p.add_argument("--out", help="parent folder of run directories (default runs/)")
    p.add_argument("--devices", type=int, help="number of devices/processes (Lightning)")
    p.add_argument("--strategy", help="Lightning strategy, e.g. ddp")
    p.add_argument("--accelerator", help="cpu | gpu | auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set optim.lr=0.01 (repeatable)")


def _drop_foreign_target(args: argparse.Namespace, path: Path | None, recipe: str) -> list[str]:
    """`data.target=null` when `--data` names another adapter than the config file's `data.spec` and the target came
    from the file: a packaged config's target (lus-blues' `severity`, busi's `lesions`) belongs to its data set, and
    other adapters refuse it as an unknown option. A target given on the command line is kept."""
    data = getattr(args, "data", None)
    if data is None or getattr(args, "target", None) is not None \
            or any(o.startswith("data.target=") for o in args.overrides):
        return []
    base = load_config(path, [f"recipe={recipe}"])
    if base.data.target is None or base.data.spec.split(":")[0] == data.split(":")[0]:
        return []
    log.info("data.target %r of the config belongs to %s, not to --data %s: not used (--target sets one)",
             base.data.target, base.data.spec.split(":")[0], data.split(":")[0])
    return ["data.target=null"]


def _is_segmentation(recipe: str) -> bool:
    from sonodistill.recipes import get_recipe

    return getattr(get_recipe(recipe), "task", "classification") == "segmentation"


def config_from_args(args: argparse.Namespace, recipe: str):
    path = None
    if args.config:
        path = Path(args.config) if Path(args.config).suffix in (".yaml", ".yml") else packaged_config(args.config)
    overrides = [f"recipe={recipe}"]
    mapping = {"data": "data.spec", "target": "data.target", "folds": "train.folds", "fold": "train.fold",
               "epochs": "train.epochs", "backbone": "model.backbone", "name": "name", "out": "out_dir",
               "devices": "train.devices", "strategy": "train.strategy", "accelerator": "train.accelerator"}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    labelled = getattr(args, "labelled", None)
    if labelled is not None and not _is_segmentation(recipe):
        from sonodistill.errors import ConfigError

        raise ConfigError(f"--labelled chooses the labelled share of a semi-supervised segmentation run "
                          f"(seg_supervised, mean_teacher, fixmatch, cps, hdc); {recipe} trains on every labelled item "
                          "of --data (to train on fewer, give a data set of fewer)")
    if labelled == "masks":
        overrides.append("recipe_options.labelled_rows=masks")
    elif labelled is not None:
        overrides.append(f"recipe_options.labelled_fraction={labelled}")
    if getattr(args, "final_only", False):
        overrides.append("train.cv=false")
    overrides += _drop_foreign_target(args, path, recipe)
    overrides += args.overrides
    cfg = load_config(path, overrides)
    if args.name is None:
        cfg.name = f"{recipe}-{cfg.data.spec.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def _train(args: argparse.Namespace) -> int:
    """Train (CV, or the ablation rows); SIGTERM/SIGINT stop it cleanly with exit status 128 + signal number."""
    from sonodistill.recipes.trainer import TrainingStopped, stop_on_signals

    if args.resume and args.name is None:
        from sonodistill.errors import ConfigError

        raise ConfigError("--resume needs --name NAME: the run to continue is OUT/NAME (without --name a new, "
                          "dated run name is made)")
    cfg = config_from_args(args, args.recipe)
    with stop_on_signals():
        try:
            return _run_training(args, cfg)
        except TrainingStopped as stop:
            print(f"sonodistill train: {stop}. Finished folds are kept in {cfg.run_dir}. To continue, run the "
                  f"same command again with --resume (same --name {cfg.name} and options).", file=sys.stderr)
            return 128 + stop.signum


def _run_training(args: argparse.Namespace, cfg: RunConfig) -> int:
    from sonodistill.protocols.folds import run_protocol

    t0 = time.perf_counter()
    if args.ablation:
        from sonodistill.errors import ConfigError
        from sonodistill.protocols.ablation import run_ablation

        if args.recipe != "dualdistill":
            raise ConfigError("--ablation is defined for the dualdistill recipe (SD / RGSD / AGSD on or off)")
        if not cfg.train.cv:
            raise ConfigError("--ablation compares cross-validation estimates: it cannot run with --final-only "
                              "(train.cv=false)")
        if args.seeds:
            raise ConfigError("--ablation trains its 8 rows with one seed (train.seed); it does not take --seeds: "
                              "run it once a seed, e.g. --set train.seed=1 --name NAME-s1")
        table = run_ablation(cfg, resume=args.resume)
        print(table.read_text())
        print(f"ablation runs under {cfg.run_dir} (wall time {time.perf_counter() - t0:.0f} s)")
        return 0
    if args.seeds:
        from sonodistill.errors import ConfigError
        from sonodistill.protocols.folds import run_seeds

        try:
            seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes comma-separated integers, e.g. 0,1,2 (got {args.seeds!r})") from None
        run_seeds(cfg, seeds, resume=args.resume)
        wall = f"(wall time {time.perf_counter() - t0:.0f} s)"
        if cfg.train.cv:
            print(f"{len(seeds)} seeds on the same folds under {cfg.run_dir}/seed_<s>/ {wall}; compare runs with: "
                  f"sonodistill compare BASELINE_RUN {cfg.run_dir}")
        else:
            print(f"{len(seeds)} final models, one a seed, in {cfg.run_dir}/seed_<s>/final/ {wall}")
        return 0
    summary = run_protocol(cfg, resume=args.resume)
    if summary is None:  # non-zero ranks of a multi-process run: rank 0 writes the report
        return 0
    report = cfg.run_dir / "report.md"
    if report.is_file():
        print(report.read_text())
    print(f"run directory: {cfg.run_dir}  (wall time {time.perf_counter() - t0:.0f} s)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Rebuild a run's report, re-score it with merged classes (--merge) or per group (--per-group), or join the
    folds of separately trained runs into it (--join)."""
    from sonodistill.evaluation.run_dir import check_has_cv_estimate, merged_report, parse_merge, report_from_run_dir

    if args.join:
        return _eval_join(Path(args.run_dir), args.join, refused=args.merge or args.per_group)
    from sonodistill.config import is_seeds_parent, seed_run_dirs

    if is_seeds_parent(args.run_dir):  # a --seeds run: each seed's own run
        for seed, seed_dir in seed_run_dirs(args.run_dir).items():
            print(f"## seed {seed}: {seed_dir}\n")
            _eval(argparse.Namespace(**{**vars(args), "run_dir": str(seed_dir)}))
        return 0
    check_has_cv_estimate(args.run_dir)
    if args.merge and args.per_group:
        from sonodistill.errors import ConfigError

        raise ConfigError("eval: --merge and --per-group are separate re-scorings; run them one at a time")
    if args.per_group:
        return _eval_per_group(Path(args.run_dir))
    if args.merge:
        merged_report(args.run_dir, parse_merge(args.merge), name=args.merge_name)
        print((Path(args.run_dir) / args.merge_name / "report.md").read_text())
        return 0
    from sonodistill.config import load_config as _load

    if _is_segmentation(_load(Path(args.run_dir) / "config.yaml").recipe):
        from sonodistill.evaluation.segmentation_report import segmentation_report_from_run_dir

        segmentation_report_from_run_dir(args.run_dir)
    else:
        report_from_run_dir(args.run_dir)
    print((Path(args.run_dir) / "report.md").read_text())
    return 0


def _eval_join(dest: Path, sources: list[str], refused: bool) -> int:
    """`eval DEST --join RUN...`: the finished folds of RUN... copied into DEST and reported together (no training)."""
    from sonodistill.errors import ConfigError
    from sonodistill.protocols.join import join_fold_runs

    if refused:
        raise ConfigError("eval: --join writes a run; re-score it with --merge or --per-group in a second command")
    join_fold_runs(dest, sources)
    reports = sorted(dest.glob("seed_*/report.md")) or [dest / "report.md"]
    for report in reports:
        print(report.read_text())
    print(f"joined run directory: {dest}  (compare it with: sonodistill compare BASELINE_RUN {dest})")
    return 0


def _eval_per_group(run_dir: Path) -> int:
    """`eval RUN --per-group`: RUN/per_group/ with each group's (patient's) items' probabilities averaged."""
    from sonodistill.config import load_config as _load
    from sonodistill.errors import ConfigError
    from sonodistill.evaluation.per_group import per_group_report
    from sonodistill.recipes import get_recipe

    recipe = _load(run_dir / "config.yaml").recipe if (run_dir / "config.yaml").is_file() else None
    if recipe is not None and getattr(get_recipe(recipe), "task", "classification") != "classification":
        raise ConfigError(f"eval --per-group: {run_dir} is a {get_recipe(recipe).task} run (recipe {recipe!r}); "
                          "per-group scoring averages class probabilities, so it applies to classification runs")
    per_group_report(run_dir)
    print((run_dir / "per_group" / "report.md").read_text())
    return 0


def _labelled(text: str) -> float | str:
    """`--labelled`: a fraction, or 'masks'."""
    if text == "masks":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.1, or 'masks', got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    from sonodistill.recipes import RECIPES

    p = sub.add_parser("train", help="train a recipe with grouped k-fold cross-validation")
    p.add_argument("recipe", choices=sorted(RECIPES))
    add_run_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT/NAME")
    p.add_argument("--labelled", type=_labelled, metavar="FRACTION|masks",
                   help="semi-supervised segmentation: fraction of each training fold that keeps its masks "
                        "(grouped, seeded choice; alias of --set recipe_options.labelled_fraction=FRACTION), or "
                        "'masks': the items with a mask are labelled, the rest unlabelled (alias of --set "
                        "recipe_options.labelled_rows=masks)")
    p.add_argument("--ablation", action="store_true",
                   help="dualdistill: run the 8 SD/RGSD/AGSD on-off rows of Table 1 on the same folds")
    p.add_argument("--seeds", metavar="S1,S2,...",
                   help="train the same folds with each seed into OUT/NAME/seed_<s>/ (sonodistill compare pairs "
                        "them seed by seed); the folds come from train.fold_seed (default: the first seed)")
    p.add_argument("--final-only", action="store_true",
                   help="train only the deployable model on all items into OUT/NAME/final/, no cross-validation "
                        "(so no CV estimate); alias of --set train.cv=false")
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="rebuild the report (tables, plots) from a run directory alone")
    e.add_argument("run_dir")
    e.add_argument("--merge", action="append", default=[], metavar="NEW=OLD1,OLD2",
                   help="re-score with classes merged (probabilities summed), e.g. --merge 0=0 --merge 1-2=1,2 "
                        "--merge 3=3 for the 3-class lung severity grouping")
    e.add_argument("--merge-name", default="merged", help="subfolder for the merged report")
    e.add_argument("--per-group", action="store_true",
                   help="score per group (patient): each group's probabilities averaged over its items, for "
                        "per-patient labels; writes RUN/per_group/")
    e.add_argument("--join", nargs="+", metavar="RUN",
                   help="copy the finished folds of runs trained separately (one job or machine a fold: --set "
                        "train.fold=K; same config and folds.json) into RUN_DIR and report them together, without "
                        "training; multi-seed runs are joined seed by seed, and RUN_DIR may already hold some folds")
    e.set_defaults(func=_eval)
