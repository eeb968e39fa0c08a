"""`sonodistill configs`: the packaged configs (name, recipe, what each is for), or one config's YAML to copy and
edit (`sonodistill configs seg-busi-imagenet > mine.yaml`, then `train ... --config mine.yaml`)."""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

import yaml

from sonodistill.config import packaged_config, packaged_configs

#: a full stop that ends a sentence: followed by a space, and not the end of "e.g.", "i.e." or "vs."
SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!\bvs)\.\s")


def describe(path: Path) -> tuple[str, str]:
    """A packaged config's recipe and its first comment sentence (the header says what it is for)."""
    text = path.read_text()
    comments = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("#").strip())
    header = " ".join(c for c in comments if c)
    end = SENTENCE_END.search(header)
    sentence = header if end is None else header[: end.start() + 1]
    recipe = (yaml.safe_load(text) or {}).get("recipe", "")
    return str(recipe), sentence


def format_listing(width: int = 120) -> str:
    """One block a packaged config: `name (recipe)` then its description, wrapped to `width`."""
    blocks = []
    for path in packaged_configs():
        recipe, sentence = describe(path)
        blocks.append(f"{path.stem} ({recipe or 'recipe from the command line'})\n"
                      + textwrap.fill(sentence or "(no description)", width, initial_indent="    ",
                                      subsequent_indent="    "))
    return "\n".join(blocks)


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        print(format_listing())
        print("\n`sonodistill configs NAME` prints one (copy it, edit it, pass the file to --config).")
    else:
        print(packaged_config(args.name).read_text(), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("configs", help="list the packaged configs, or print one to copy and edit")
    p.add_argument("name", nargs="?", help="a packaged config to print (YAML, with its comments)")
    p.set_defaults(func=run)
