"""Canonical form of report text, shared by the knowledge graphs (entity forms) and the tokenizer (`data.text`).

`normalise_text`: accents stripped, lower case, characters outside `ALPHABET` replaced by spaces, punctuation
split off as separate words, hyphens kept only inside words ("b-lines", "1-2"), listed misspellings corrected
word by word, single spaces.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

PUNCTUATION = ".,;:!?()[]/+'\"%<>=&*"
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-" + PUNCTUATION

_DROP = re.compile("[^a-z0-9\\-\\s" + re.escape(PUNCTUATION) + "]")
_LONE_HYPHEN = re.compile(r"(?<![a-z0-9])-|-(?![a-z0-9])")
_PUNCT = re.compile("([" + re.escape(PUNCTUATION) + "])")


def normalise_text(text: str, spelling: Mapping[str, str] | None = None) -> str:
    """Canonical form of a report: see the module docstring. `spelling` maps a word to its correction."""
    t = unicodedata.normalize("NFKD", str(text))
    t = "".join(c for c in t if not unicodedata.combining(c)).lower()
    t = _DROP.sub(" ", t)
    t = _LONE_HYPHEN.sub(" ", t)
    t = _PUNCT.sub(r" \1 ", t)
    words = t.split()
    if spelling:
        words = [spelling.get(w, w) for w in words]
    return " ".join(words)
