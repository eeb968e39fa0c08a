"""Reading a CSV a user wrote (labels, patients tables, data sets): the forms spreadsheets save, one rule for all.

- Encoding: UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes. Anything else (Excel's older
  "CSV" saves Windows-1252: `é` as the byte 0xE9) is a DataError naming the file, line and byte: re-save as UTF-8.
  Never guessed: a wrong guess would silently rename a patient's file.
- Paths written on Windows (`exports\\p3\\IM1`) are read with `/` where no file has the name as written
  (`forward_slashes`); a drive letter (`C:\\...`) cannot be opened here and is refused by the csv adapter.
- Separator: the header line decides. A comma if it has one; else a semicolon (what Excel writes where the decimal
  mark is a comma); else a tab; else one column.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sonodistill.errors import DataError

SEPARATORS = (",", ";", "\t")


def forward_slashes(text: str) -> str:
    """A path written on Windows (`exports\\p3\\IM1`) with `/` on this machine (unchanged on Windows). Callers try
    the path as written first: a POSIX file name may hold a backslash."""
    return text.replace("\\", "/") if os.sep == "/" else text


def header_separator(line: str) -> str:
    """The separator of a CSV whose header line is `line`: the first of `,` `;` tab in it (`,` when none is)."""
    return next((s for s in SEPARATORS if s in line), ",")


def read_user_csv(path: str | Path, skip_lines: int = 0, **kwargs: object) -> pd.DataFrame:
    """The table of a user's CSV file (UTF-8, optional BOM; `,`, `;` or tab as its header line shows), the first
    `skip_lines` lines skipped; `kwargs` go to `pandas.read_csv`. A file that is not UTF-8, or that pandas cannot
    parse, is a DataError naming it."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02X} on line {line}): save it as UTF-8 "
                              "(Excel: 'CSV UTF-8 (Comma delimited)'; LibreOffice: character set 'Unicode "
                              "(UTF-8)')") from None
    lines = text.splitlines()
    header = lines[skip_lines] if len(lines) > skip_lines else ""
    try:
        return pd.read_csv(path, sep=header_separator(header), encoding="utf-8-sig", skiprows=skip_lines or None,
                           **kwargs)  # type: ignore[arg-type]
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(path, f"cannot parse CSV: {exc}") from exc
