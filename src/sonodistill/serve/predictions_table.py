"""`sonodistill predict --csv`: the predictions JSON as one table for a spreadsheet, whatever the model kind.

One row an input (a segmentation model: one row a frame of each input, `frame` 0, 1, ...), a failed input as a row
with its `error`. Nested values become dotted columns: `probabilities.<class>`, `findings.<name>.probability`,
`categorical.<target>.probabilities.<class>`, `area_mm2.<class>`, `pixel_spacing_mm.0`. Lists of words (the present
entities) are joined with "; ", lists of up to four numbers are a column each. Per-frame and per-window scores,
embeddings (`JSON_ONLY`), longer arrays and inline mask images stay in the JSON only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

#: a list of numbers up to this long is a few columns (pixel spacing, an ellipse's centre); longer ones are arrays
SHORT_LIST = 4
#: the key of a result whose entries are one row each (segmentation: one mask a frame)
ROW_LISTS = ("masks",)
#: a result's arrays, left to the JSON: per-frame scores, per-window scores and starts, an encoder's embedding
JSON_ONLY = ("per_frame", "windows", "embedding")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    """Add `value`'s table cells to `out` under dotted names starting with `prefix` (see the module's rules)."""
    if _is_scalar(value):
        if not (isinstance(value, str) and value.startswith("data:")):  # an inline PNG is no cell
            out[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        if all(isinstance(v, dict) and "name" in v for v in value) and value:
            for v in value:
                flatten({k: x for k, x in v.items() if k != "name"}, f"{prefix}.{v['name']}", out)
        elif all(isinstance(v, str) for v in value):
            out[prefix] = "; ".join(value)
        elif len(value) <= SHORT_LIST and all(_is_scalar(v) for v in value):
            for i, v in enumerate(value):
                out[f"{prefix}.{i}"] = v


def predictions_table(results: list[dict[str, Any]], first: str = "input") -> pd.DataFrame:
    """The `results` of a predictions JSON (`predict_many`) as a table; columns in order of first appearance,
    `first` (`input`; `group` for the per-group entries) and `error` first."""
    rows: list[dict[str, Any]] = []
    for result in results:
        base: dict[str, Any] = {first: result.get(first), "error": result.get("error")}
        flatten({k: v for k, v in result.items() if k not in ROW_LISTS + JSON_ONLY and k not in base}, "", base)
        entries = [entry for key in ROW_LISTS for entry in result.get(key, [])]
        if not entries:
            rows.append(base)
        for entry in entries:
            row = dict(base)
            flatten(entry, "", row)
            rows.append(row)
    columns: dict[str, None] = {first: None, "error": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pd.DataFrame(rows, columns=list(columns))


def write_predictions_csv(results: list[dict[str, Any]], path: str | Path, first: str = "input") -> int:
    """Write `predictions_table(results, first)` to a CSV file (its folder created); returns the number of rows."""
    table = predictions_table(results, first)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return len(table)
