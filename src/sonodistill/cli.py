"""The `sonodistill` command. Each command group lives in `sonodistill.commands.<group>` and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from sonodistill import __version__
from sonodistill import console
from sonodistill.errors import SonoDistillError

# Modules under sonodistill.commands, each with `register(subparsers) -> None`.
COMMAND_MODULES = [
    "data",
    "models",
    "configs",
    "train",
    "demo",
    "bench",
    "bedside",
    "annotate",
    "compare",
    "score",
    "runs",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonodistill",
        description="Ultrasound image and video models from few labels, by knowledge distillation.",
    )
    parser.add_argument("--version", action="version", version=f"sonodistill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sonodistill.commands.{name}")
        except ModuleNotFoundError as exc:  # a command group not written yet must not break the others
            if exc.name and exc.name.startswith("sonodistill.commands"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.setup_logging(verbose=args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SonoDistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug or the system; keep the traceback
            raise
        if args.verbose:
            traceback.print_exc()
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
        hint = "" if args.verbose else " (-v shows the traceback)"
        print(f"error: {where}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
