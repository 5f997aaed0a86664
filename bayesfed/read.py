"""Reading a pupil table from CSV or Parquet. The input file is only ever opened for reading."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa

from bayesfed.errors import DataError

#: File endings the reader understands, and what it does with each.
FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}

#: Separators a spreadsheet may have used instead of commas, as they are named in messages.
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a pupil table.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` or ``.parquet`` file, or a folder of Parquet files (a partitioned dataset).

    Returns
    -------
    DataFrame
        One row per pupil, columns as in the file. CSV identifiers are read as text so that
        leading zeros survive; numeric columns are converted during validation, where a
        non-numeric value can be reported with its row. A column name the CSV header holds
        twice is kept twice (validation reports it if the model reads that column).

    Raises
    ------
    DataError
        The file is missing, has an unknown ending, or cannot be parsed: not UTF-8 text, rows
        with more fields than the header, or a header separated by semicolons or tabs.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    kind = "Parquet" if path.is_dir() else FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"data file {path}: unknown file type {path.suffix!r}; "
            f"bayesfed reads {', '.join(FORMATS)} files (or a folder of Parquet files)"
        )
    try:
        if kind == "CSV":
            return _read_csv(path)
        return pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"cannot read CSV file {path}: it is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); save it as UTF-8 (in Excel: 'CSV UTF-8')") from None
    except (OSError, ValueError, pd.errors.ParserError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {kind} file {path}: {str(exc).strip()}") from None


def _read_csv(path: Path) -> pd.DataFrame:
    # index_col=False: a data row with one field more than the header would otherwise turn the
    # first column into the index and shift every value one column to the left, silently.
    options = {"dtype": str, "keep_default_na": True, "skipinitialspace": True,
               "index_col": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(path, **options)
        except (pd.errors.ParserWarning, pd.errors.ParserError) as exc:
            # pandas drops extra fields of the first data row (warning) or stops at a later one
            rows = _long_rows(path)
            if rows:
                raise DataError(
                    f"cannot read CSV file {path}: {len(rows)} data row(s) have more fields "
                    f"than the header has column names (e.g. row(s) "
                    f"{', '.join(map(str, rows[:5]))}; rows count from 1, the header "
                    "excluded): quote values that contain commas, or remove the extra "
                    "fields") from None
            if isinstance(exc, pd.errors.ParserError):
                raise
            warnings.simplefilter("ignore", pd.errors.ParserWarning)  # only empty ones
            frame = pd.read_csv(path, **options)
    if len(frame.columns) == 1:
        name = str(frame.columns[0])
        for sep, names in OTHER_SEPARATORS.items():
            if sep in name:
                raise DataError(
                    f"cannot read CSV file {path}: its header {name[:60]!r} is separated by "
                    f"{names}, not commas; save the file with commas as separators")
    header = _header(path)
    if len(header) == len(frame.columns) and len(set(header)) < len(header):
        # pandas renames a repeated name 'x' to 'x.1'; keep the file's names so that
        # validation can tell the user which column is ambiguous
        frame.columns = [h if h else c for h, c in zip(header, frame.columns, strict=True)]
    return frame


def _header(path: Path) -> list[str]:
    """The first non-blank row of a CSV file, as pandas reads it."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for row in csv.reader(handle, skipinitialspace=True):
            if row:
                return row
    return []


def _long_rows(path: Path) -> list[int]:
    """Data rows (from 1, blank lines skipped) with more non-blank fields than the header.

    Empty fields beyond the header (a delimiter at the end of each row) lose nothing.
    """
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = (row for row in csv.reader(handle, skipinitialspace=True) if row)
            width = len(next(rows, []))
            return [i for i, row in enumerate(rows, 1)
                    if any(field.strip() for field in row[width:])]
    except csv.Error:  # pandas' own message describes what else is wrong
        return []
