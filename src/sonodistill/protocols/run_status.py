"""Where a run directory stands, from its files alone (for `sonodistill runs`): its recipe and data, how many folds
have finished, whether its final model is trained, its headline score once reported, and from its `train.log` when
it last wrote, whether an error stopped it and, while it trains, the epoch it is at and an estimate of the time left.
Reading only."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from sonodistill.config import seed_run_dirs
from sonodistill.errors import SonoDistillError
from sonodistill.provenance import ENVIRONMENT_FILE

#: a finished fold (or final/) has its environment.json, written once its results are saved
FOLD_DONE = ENVIRONMENT_FILE
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ (\w+) [\w.]+: (.*)$")
#: an epoch's line (EpochSummary, DINO's diagnostics line): where (fold_K, final, dino), epoch k of N, its seconds
_EPOCH_LINE = re.compile(r"^(\S+) epoch (\d+)/(\d+): .*\((\d+(?:\.\d+)?) s\)$")


@dataclass(frozen=True)
class RunStatus:
    """One run directory's state; `score` is e.g. 'accuracy 0.838' or 'dice 0.670', '' before the report."""

    path: Path
    recipe: str
    data: str
    folds: str
    final: str
    score: str
    last_log: str
    state: str
    progress: str = ""


def find_runs(root: Path) -> list[Path]:
    """Run directories under `root` (its own config.yaml, else its sub-folders' and their seed_<s>/ folders'),
    sorted by path; a multi-seed run is listed seed by seed (`config.seed_run_dirs`, in seed order)."""
    found: list[Path] = []
    candidates = [root] if (root / "config.yaml").is_file() else sorted(p for p in root.iterdir() if p.is_dir())
    for run in candidates:
        seeds = [p for p in seed_run_dirs(run).values() if (p / "config.yaml").is_file()]
        found += seeds or ([run] if (run / "config.yaml").is_file() else [])
    return found


def run_status(run: Path) -> RunStatus:
    """The state of the run directory `run` (which holds config.yaml); a config.yaml that cannot be read gives a row
    whose state says why (the other runs are still listed)."""
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return _unreadable(run, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    if not isinstance(cfg, dict):
        return _unreadable(run, f"a {type(cfg).__name__}, not a mapping of config sections")
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    recipe = str(cfg.get("recipe", "?"))
    cv = train.get("cv", True) and _cross_validates(recipe)
    done = sorted(int(p.parent.name.split("_")[1]) for p in run.glob(f"fold_*/{FOLD_DONE}"))
    total = 0
    if not cv:
        folds = "none (final only)" if _cross_validates(recipe) else "none (one run on every item)"
    else:
        total = train.get("folds", 5) if train.get("fold") is None else 1
        folds = f"{len(done)}/{total}"
    final_done = (run / "final" / FOLD_DONE).is_file() or (run / "final" / "done").is_file()
    final = "done" if final_done else ("wanted" if train.get("final") or not cv else "-")
    last, stopped, epochs = _log_state(run / "train.log")
    finished = (run / "report.md").is_file() or (not cv and final_done)
    state = f"stopped: {stopped}" if stopped else ("finished" if finished else "unfinished (running, or stopped "
                                                                             "without a word: --resume continues it)")
    progress = ""
    if not finished and epochs:
        trainings_left = (total - len(done) if cv else 0) + (final == "wanted")
        progress = _progress(epochs, trainings_left) if not stopped else "stopped at {} epoch {}/{}".format(
            *epochs[-1][:3])
    return RunStatus(run, recipe, str(data.get("spec", "?")), folds, final,
                     _headline(run / "metrics.json"), last, state, progress)


def _unreadable(run: Path, why: str) -> RunStatus:
    return RunStatus(run, "?", "?", "?", "?", "", "", f"unreadable config.yaml: {why}")


def _progress(epochs: list[tuple[str, int, int, float]], trainings_left: int) -> str:
    """'fold_2 epoch 3/20, ~17 min left in it, ~1.9 h in all' from the epoch lines (where, k, N, seconds) of an
    unfinished run and how many trainings (folds, final) are not finished, the current one included: the time left
    assumes every epoch takes the mean of the current training's epochs so far, its first left out once there are
    more (it builds the data cache: 346 s against 115 s for the next on lus-blues)."""
    where, k, n, _ = epochs[-1]
    seconds = [sec for w, _, _, sec in epochs if w == where]
    seconds = seconds[1:] if len(seconds) > 1 else seconds
    mean = sum(seconds) / len(seconds)
    left = (n - k) * mean
    text = f"{where} epoch {k}/{n}" + (f", ~{_duration(left)} left in it" if k < n else " (its last)")
    if trainings_left > 1:
        text += f", ~{_duration(left + (trainings_left - 1) * n * mean)} in all ({trainings_left - 1} more to train)"
    return text


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def _cross_validates(recipe: str) -> bool:
    """Whether the recipe's protocol trains folds (DINO pretrains once on every item); an unknown recipe: True."""
    from sonodistill.protocols import get_protocol

    try:
        return bool(get_protocol(recipe).cross_validates)
    except SonoDistillError:
        return True


def _log_state(log: Path) -> tuple[str, str, list[tuple[str, int, int, float]]]:
    """(time of the log's last record, the message of an error after which nothing else was logged or '', the epoch
    lines as (where, k, N, seconds) since the run last started or resumed)."""
    if not log.is_file():
        return "", "", []
    last, stopped = "", ""
    epochs: list[tuple[str, int, int, float]] = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if m is None:
            continue
        last = m.group(1)
        stopped = m.group(3).removeprefix("the run stopped: ") if m.group(2) == "ERROR" and \
            m.group(3).startswith("the run stopped: ") else ""
        if m.group(3).endswith((", started", ", resumed")):
            epochs = []
        if e := _EPOCH_LINE.match(m.group(3)):
            epochs.append((e.group(1), int(e.group(2)), int(e.group(3)), float(e.group(4))))
    return last, stopped, epochs


def _headline(metrics: Path) -> str:
    """The run's headline score from metrics.json: classification accuracy (balanced too), segmentation Dice over
    items, else ''."""
    if not metrics.is_file():
        return ""
    try:
        m = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable metrics.json ({type(exc).__name__})"
    if not isinstance(m, dict):
        return "unreadable metrics.json (not an object)"
    summary = m.get("summary") or {}
    if isinstance(m.get("items"), dict) and "dice" in m["items"]:
        return f"dice {m['items']['dice']['mean']:.3f}"
    if isinstance(summary.get("accuracy"), dict):
        text = f"accuracy {summary['accuracy']['mean']:.3f}"
        if isinstance(summary.get("balanced_accuracy"), dict):
            text += f", balanced {summary['balanced_accuracy']['mean']:.3f}"
        return text
    return ""


def format_status_table(rows: list[RunStatus], root: Path) -> str:
    """A Markdown table, one row a run (paths relative to `root`)."""
    head = ("| run | recipe | data | folds done | final | score | last log line | state | progress |\n"
            "|---|---|---|---|---|---|---|---|---|")
    body = [f"| {_relative(r.path, root)} | {r.recipe} | {r.data} | {r.folds} | {r.final} | {r.score or '-'} | "
            f"{r.last_log or '-'} | {r.state} | {r.progress or '-'} |" for r in rows]
    return "\n".join([head, *body])


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)
