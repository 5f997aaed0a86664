"""The paper's published Tables 2-5, as transcribed in ``data/published_tables.csv``.

The CSV lives in the source tree's top-level ``data/`` folder (provenance in
``data/published_tables.md``); it is not part of the installed package, so the default path
is resolved relative to this module and only exists in a source checkout or editable install.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bayesfed.errors import BayesfedError
from bayesfed.inputs import shipped

#: The transcription's file name in the shipped ``data/`` folder.
FILE_NAME = "published_tables.csv"

_DTYPES = {
    "table": "Int64",
    "model": "string",
    "year": "Int64",
    "term": "string",
    "estimate": "float64",
    "se": "float64",
    "bold": "boolean",
    "unit": "string",
}


class PublishedValueError(BayesfedError, KeyError):
    """No single published value matches a lookup."""

    def __str__(self) -> str:
        # KeyError would print the message as a quoted repr.
        return str(self.args[0])


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Read the transcribed published tables.

    Parameters
    ----------
    path : str or Path, optional
        CSV to read; defaults to ``data/published_tables.csv`` of the source tree.

    Returns
    -------
    DataFrame
        One row per printed cell, with columns ``table`` (Int64), ``model``, ``term`` and
        ``unit`` (string), ``year`` (Int64, missing for Table 2), ``estimate`` and ``se``
        (float, ``se`` NaN where none is printed) and ``bold`` (boolean, missing for
        percentage rows).

    Raises
    ------
    BayesfedError
        If the file does not exist.
    """
    path = Path(shipped.folder("data") / FILE_NAME if path is None else path)
    if not path.is_file():
        raise BayesfedError(
            f"published tables not found at {path}: they ship with the bayesfed source tree "
            "(data/published_tables.csv), not with an installed wheel; pass path= to a copy"
        )
    return pd.read_csv(path, dtype=_DTYPES)


def published_rows(frame: pd.DataFrame, table: int, term: str,
                   years: Iterable[int | None] | None = None) -> pd.DataFrame:
    """The rows of :func:`load_published`'s ``frame`` for one table and term.

    Parameters
    ----------
    frame : DataFrame
        As :func:`load_published` returns it.
    table : int
        The paper's table number (2-5).
    term : str
        As in :func:`published_value`.
    years : iterable of int, optional
        Only these years since founding (all years when None).

    Returns
    -------
    DataFrame
        The matching rows (possibly none), in the file's order.
    """
    hit = (frame["table"] == table) & (frame["term"] == term)
    if years is not None:
        hit &= frame["year"].isin(list(years))
    return frame[hit.fillna(False)]


def published_value(
    table: int,
    year: int | None,
    term: str,
    *,
    model: str | None = None,
    path: str | Path | None = None,
) -> tuple[float, float | None]:
    """Look up one published estimate and its standard error.

    Parameters
    ----------
    table : int
        The paper's table number (2-5).
    year : int or None
        Years since founding (0-5); None for Table 2.
    term : str
        bayesfed's coefficient name (``intercept``, ``fsm``, ``sen[statemented]``,
        ``federated``, ...), a variance row (``vpc_school``, ``prv_pupil``, ...) or, in
        Table 2, a typology name.
    model : str, optional
        Only needed in Table 2, to choose ``typology_all`` or ``typology_rural``.
    path : str or Path, optional
        Passed to :func:`load_published`.

    Returns
    -------
    estimate : float
    se : float or None
        None where the paper prints no standard error.

    Raises
    ------
    PublishedValueError
        If no row, or more than one row, matches.
    """
    frame = load_published(path)
    hit = (frame["table"] == table) & (frame["term"] == term)
    hit &= frame["year"].isna() if year is None else frame["year"] == year
    if model is not None:
        hit &= frame["model"] == model
    rows = frame[hit.fillna(False)]
    where = f"table {table}, year {year}, term {term!r}" + (
        f", model {model!r}" if model is not None else ""
    )
    if rows.empty:
        raise PublishedValueError(f"no published value for {where}")
    if len(rows) > 1:
        raise PublishedValueError(
            f"{len(rows)} published values match {where}; pass model= "
            f"(one of {sorted(rows['model'].unique())})"
        )
    row = rows.iloc[0]
    return float(row["estimate"]), None if pd.isna(row["se"]) else float(row["se"])
