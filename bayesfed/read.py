"""Reading a pupil table from CSV or Parquet. The input file is only ever opened for reading."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bayesfed.errors import DataError

#: File endings the reader understands, and what it does with each.
FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}


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
        non-numeric value can be reported with its row.

    Raises
    ------
    DataError
        The file is missing, has an unknown ending, or cannot be parsed.
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
            return pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
        return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {kind} file {path}: {exc}") from None
