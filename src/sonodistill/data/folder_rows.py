"""Label tables whose rows may name a folder (a patient's export): one row a supported file below it.

Shared by the `csv` adapter (training) and `sonodistill score` (a new site's labels), so one patients table
(`path,label`, a folder a row) reads the same way in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from sonodistill.errors import DataError

from .readers import files_in_folder


class FolderRowError(DataError):
    """A folder row without a supported file below it: names the folder, the cause and the table's row."""

    def __init__(self, path: str | Path, cause: str, row: int) -> None:
        super().__init__(path, cause)
        self.row = row

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.cause, self.row)


def expand_folder_rows(table: pd.DataFrame, column: str, folders: Sequence[Path | None],
                       folder_group: str | None = None) -> pd.DataFrame:
    """`table` with each row whose `folders[i]` is not None replaced by one row a supported file below that folder
    (any depth, hidden files and an export's DICOMDIR skipped; `column` set to the file's path), the row's other
    columns copied. With `folder_group`, that column of a folder's rows is the folder's name (the patient); other
    rows keep theirs. A folder without a supported file is a FolderRowError naming it and its row."""
    if len(folders) != len(table):
        raise ValueError(f"{len(folders)} folders for {len(table)} rows")
    if not any(f is not None for f in folders):
        return table
    rows: list[int] = []
    values: list[str] = []
    for i, folder in enumerate(folders):
        if folder is None:
            rows.append(i)
            values.append(str(table[column].iloc[i]))
            continue
        try:
            found = files_in_folder(folder, recursive=True)
        except DataError as exc:
            raise FolderRowError(exc.path, exc.cause, row=i) from exc
        rows += [i] * len(found)
        values += [str(f) for f in found]
    out = table.iloc[rows].reset_index(drop=True)
    out[column] = values
    if folder_group is not None:
        out[folder_group] = [Path(folders[i]).name if folders[i] is not None else g  # type: ignore[arg-type]
                             for i, g in zip(rows, out[folder_group])]
    return out
