"""Where a run directory stands, from its files alone (for `sonodistill runs`): its recipe and data, how many folds
have finished, whether its final model is trained, its headline score once reported, and from its `train.log` when
it last wrote and whether an error stopped it. Reading only."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from sonodistill.errors import SonoDistillError
from sonodistill.provenance import ENVIRONMENT_FILE

#: a finished fold (or final/) has its environment.json, written once its results are saved
FOLD_DONE = ENVIRONMENT_FILE
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ (\w+) [\w.]+: (.*)$")


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


def find_runs(root: Path) -> list[Path]:
    """Run directories under `root` (its own config.yaml, else its sub-folders' and their seed_<s>/ folders'),
    sorted by path; a multi-seed run is listed seed by seed."""
    found: list[Path] = []
    candidates = [root] if (root / "config.yaml").is_file() else sorted(p for p in root.iterdir() if p.is_dir())
    for run in candidates:
        seeds = sorted(p for p in run.glob("seed_*") if (p / "config.yaml").is_file())
        found += seeds or ([run] if (run / "config.yaml").is_file() else [])
    return found


def run_status(run: Path) -> RunStatus:
    """The state of the run directory `run` (which holds config.yaml)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    train, data = cfg.get("train") or {}, cfg.get("data") or {}
    recipe = str(cfg.get("recipe", "?"))
    cv = train.get("cv", True) and _cross_validates(recipe)
    done = sorted(int(p.parent.name.split("_")[1]) for p in run.glob(f"fold_*/{FOLD_DONE}"))
    if not cv:
        folds = "none (final only)" if _cross_validates(recipe) else "none (one run on every item)"
    else:
        total = train.get("folds", 5) if train.get("fold") is None else 1
        folds = f"{len(done)}/{total}"
    final_done = (run / "final" / FOLD_DONE).is_file() or (run / "final" / "done").is_file()
    final = "done" if final_done else ("wanted" if train.get("final") or not cv else "-")
    last, stopped = _log_state(run / "train.log")
    finished = (run / "report.md").is_file() or (not cv and final_done)
    state = f"stopped: {stopped}" if stopped else ("finished" if finished else "unfinished (running, or stopped "
                                                                             "without a word: --resume continues it)")
    return RunStatus(run, recipe, str(data.get("spec", "?")), folds, final,
                     _headline(run / "metrics.json"), last, state)


def _cross_validates(recipe: str) -> bool:
    """Whether the recipe's protocol trains folds (DINO pretrains once on every item); an unknown recipe: True."""
    from sonodistill.protocols import get_protocol

    try:
        return bool(get_protocol(recipe).cross_validates)
    except SonoDistillError:
        return True


def _log_state(log: Path) -> tuple[str, str]:
    """(time of the log's last record, the message of an error after which nothing else was logged, or '')."""
    if not log.is_file():
        return "", ""
    last, stopped = "", ""
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if m is None:
            continue
        last = m.group(1)
        stopped = m.group(3).removeprefix("the run stopped: ") if m.group(2) == "ERROR" and \
            m.group(3).startswith("the run stopped: ") else ""
    return last, stopped


def _headline(metrics: Path) -> str:
    """The run's headline score from metrics.json: classification accuracy (balanced too), segmentation Dice over
    items, else ''."""
    if not metrics.is_file():
        return ""
    m = json.loads(metrics.read_text(encoding="utf-8"))
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
    head = "| run | recipe | data | folds done | final | score | last log line | state |\n|---|---|---|---|---|---|---|---|"
    body = [f"| {_relative(r.path, root)} | {r.recipe} | {r.data} | {r.folds} | {r.final} | {r.score or '-'} | "
            f"{r.last_log or '-'} | {r.state} |" for r in rows]
    return "\n".join([head, *body])


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)
