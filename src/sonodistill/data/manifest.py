"""One table type for every dataset: a row per item with its file(s), label(s), group and extras."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import pandas as pd

from sonodistill.errors import ManifestError

Modality = Literal["video", "image"]

HEADER_PREFIX = "# sonodistill-manifest"
REQUIRED_COLUMNS = ("path", "group")
OPTIONAL_COLUMNS = ("label", "mask", "text", "split", "target")


@dataclass
class Manifest:
    """A validated table of items.

    Columns: `path` (absolute file path), `group` (patient/subject id used for leakage-free splits),
    `label` (class name, one of `classes`; absent for unlabelled sets), optional `mask` (path),
    `text` (report text), `split`, `target` (regression value) and any adapter-specific extras.
    """

    table: pd.DataFrame
    classes: list[str] = field(default_factory=list)
    modality: Modality = "video"
    name: str = "manifest"

    def __post_init__(self) -> None:
        self.table = self.table.reset_index(drop=True)
        self.validate(check_files=False)

    # -- basic access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    @property
    def paths(self) -> list[str]:
        return self.table["path"].astype(str).tolist()

    @property
    def groups(self) -> np.ndarray:
        return self.table["group"].astype(str).to_numpy()

    @property
    def has_labels(self) -> bool:
        return "label" in self.table.columns and bool(self.classes)

    @property
    def labels(self) -> np.ndarray:
        """Class indices (int64, shape [N]) in the order of `classes`."""
        if not self.has_labels:
            raise ManifestError(f"manifest '{self.name}' has no labels")
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[str(v)] for v in self.table["label"]], dtype=np.int64)

    def subset(self, rows: Sequence[int] | np.ndarray) -> "Manifest":
        """A new manifest with the given row positions (keeps classes, so indices stay stable)."""
        return Manifest(self.table.iloc[np.asarray(rows)].copy(), list(self.classes), self.modality, self.name)

    def where(self, mask: Iterable[bool]) -> "Manifest":
        return self.subset(np.flatnonzero(np.asarray(list(mask), dtype=bool)))

    @property
    def has_mask(self) -> np.ndarray:
        """Bool per row: the row names a mask file (an empty or missing `mask` cell is an unlabelled image); all
        False without a `mask` column."""
        if "mask" not in self.table.columns:
            return np.zeros(len(self.table), dtype=bool)
        return np.array([not (pd.isna(m) or str(m) == "") for m in self.table["mask"]], dtype=bool)

    def without_masks(self) -> "Manifest":
        """The same rows without the `mask` column: datasets built on it can never read a mask (a label)."""
        return Manifest(self.table.drop(columns=["mask"], errors="ignore"), list(self.classes), self.modality,
                        self.name)

    # -- validation ---------------------------------------------------------------------------
    def validate(self, check_files: bool = True) -> None:
        """Raise ManifestError naming the first bad row: missing columns/files, unknown labels, empty classes."""
        t = self.table
        for col in REQUIRED_COLUMNS:
            if col not in t.columns:
                raise ManifestError(f"manifest '{self.name}' lacks required column '{col}'")
        if len(t) == 0:
            raise ManifestError(f"manifest '{self.name}' has no rows")
        if self.modality not in ("video", "image"):
            raise ManifestError(f"manifest '{self.name}': modality must be 'video' or 'image', got {self.modality!r}")
        for i, (p, g) in enumerate(zip(t["path"], t["group"])):
            if not isinstance(p, str) or not p:
                raise ManifestError(f"empty or non-text path {p!r}", row=i)
            if pd.isna(g) or str(g) == "":
                raise ManifestError(f"missing group for {p}", row=i)
        _check_duplicate_paths(t, self.name)
        if "label" in t.columns and self.classes:
            _check_numeric_spellings(t["label"], self.classes, self.name)
            known = set(self.classes)
            for i, v in enumerate(t["label"]):
                if pd.isna(v) or str(v) not in known:
                    raise ManifestError(f"unknown label {v!r} for {t['path'].iloc[i]} (classes: {self.classes})", row=i)
            if len(set(self.classes)) != len(self.classes):
                raise ManifestError(f"duplicate class names in {self.classes}")
        if check_files:
            checked = {"path": np.ones(len(t), dtype=bool), "mask": self.has_mask}
            for col, rows in checked.items():
                if col not in t.columns:
                    continue
                for i, p in enumerate(t[col]):
                    if rows[i] and not Path(str(p)).is_file():
                        raise ManifestError(f"{col} file not found: {p}", row=i)

    def check_classes_nonempty(self) -> None:
        """Raise when a declared class has no item (training on it would be meaningless)."""
        if not self.has_labels:
            return
        counts = np.bincount(self.labels, minlength=len(self.classes))
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise ManifestError(f"manifest '{self.name}': class(es) {empty} have no items")

    # -- summaries ----------------------------------------------------------------------------
    def class_counts(self) -> dict[str, int]:
        if not self.has_labels:
            return {}
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    # -- persistence --------------------------------------------------------------------------
    def to_csv(self, path: str | Path) -> None:
        """Write the table after a one-line header comment: `# sonodistill-manifest {JSON: name, modality, classes}`
        (JSON, so class names keep spaces, punctuation and any Unicode)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"name": self.name, "modality": self.modality, "classes": list(self.classes)},
                            ensure_ascii=False)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"{HEADER_PREFIX} {header}\n")
            self.table.to_csv(f, index=False)

    @classmethod
    def from_csv(cls, path: str | Path) -> "Manifest":
        """Read a file written by `to_csv` (relative paths resolved against the CSV's folder)."""
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"manifest file not found: {path}")
        meta = read_header(path)
        table = pd.read_csv(path, comment=None, skiprows=1 if meta else 0, dtype={"group": str, "label": str})
        table["path"] = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in table["path"]]
        if "mask" in table.columns:
            table["mask"] = [
                "" if pd.isna(p) or p == "" else (str((path.parent / p).resolve()) if not Path(p).is_absolute() else p)
                for p in table["mask"]
            ]
        return cls(table, list(meta.get("classes", [])), meta.get("modality", "video"),  # type: ignore[arg-type]
                   meta.get("name", path.stem))


def canonical_label(value: str) -> str:
    """A label as text, with a whole number written as a decimal ('1.0', '2.00', what spreadsheets and pandas
    write for an integer column with a gap) turned into the integer ('1', '2'); anything else unchanged."""
    m = _WHOLE_DECIMAL.fullmatch(value)
    return str(int(m.group(1))) if m else value


_WHOLE_DECIMAL = re.compile(r"([+-]?\d+)\.0*")


def class_order(names: Iterable[str]) -> list[str]:
    """Class names in the order their indices take: by value when every name is a number ('2' before '10', as a
    severity score 0..12 reads), else by text."""
    unique = set(names)
    values = {n: _number(n) for n in unique}
    if unique and all(v is not None for v in values.values()):
        return sorted(unique, key=lambda n: (values[n], n))
    return sorted(unique)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_numeric_spellings(labels: pd.Series, classes: list[str], name: str) -> None:
    """ManifestError when two labels or classes are spellings of one number ('1' and '01', or '1' and '1e0')."""
    first_row: dict[str, int | None] = {c: None for c in classes}
    for i, v in enumerate(labels):
        if not pd.isna(v) and first_row.get(str(v)) is None:
            first_row[str(v)] = i
    seen: dict[float, str] = {}
    by_row = sorted(first_row.items(), key=lambda kv: (kv[1] is None, kv[1] or 0))
    for text, _ in by_row:
        number = _number(text)
        if number is None or number != number:  # not a number, or NaN
            continue
        other = seen.setdefault(number, text)
        if other != text:
            where = [f"'{x}'" + (f" (row {first_row[x]})" if first_row[x] is not None else " (declared class)")
                     for x in (other, text)]
            raise ManifestError(f"manifest '{name}': labels {where[0]} and {where[1]} are the same number written "
                                "two ways; write each class one way")


def _check_duplicate_paths(t: pd.DataFrame, name: str) -> None:
    """ManifestError naming the rows when a file is listed twice (an identical row, or under two groups/labels)."""
    first: dict[str, int] = {}
    for i, p in enumerate(t["path"]):
        j = first.setdefault(os.path.normpath(str(p)), i)
        if j == i:
            continue
        same = t.iloc[i].equals(t.iloc[j])
        what = "identical rows" if same else f"groups {t['group'].iloc[j]!r} and {t['group'].iloc[i]!r}"
        raise ManifestError(f"manifest '{name}': rows {j} and {i} list the same file {p} ({what}); "
                            "list each file once (under two groups it would be on both sides of a split)")


def read_header(path: str | Path) -> dict:
    """The `# sonodistill-manifest` header of a CSV as {"name", "modality", "classes": list}; {} without one.

    Reads the JSON header `to_csv` writes, and the older `name=N modality=M classes=a|b` form (whose values
    could hold no spaces)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # the table's reader refuses non-UTF-8 bytes
        first = f.readline()
    if not first.startswith(HEADER_PREFIX):
        return {}
    rest = first[len(HEADER_PREFIX):].strip()
    if rest.startswith("{"):
        try:
            meta = json.loads(rest)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: line 1: damaged manifest header ({exc.msg} at column {exc.colno})") from None
        classes = meta.get("classes", []) if isinstance(meta, dict) else None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ManifestError(f"{path}: line 1: manifest header must hold 'classes' as a list of names")
        return meta
    meta: dict = {}
    for tok in rest.split():  # the older form
        k, _, v = tok.partition("=")
        meta[k] = v
    meta["classes"] = [c for c in meta.get("classes", "").split("|") if c]
    return meta
