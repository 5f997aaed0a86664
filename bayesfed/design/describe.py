"""One screen of counts about a pupil table: pupils, schools, federations, cohorts, years.

What ``bayesfed validate`` and ``bayesfed demo`` print once a table has passed its checks.
:class:`Description` is a :class:`bayesfed.inputs.validate.Reducer`: each batch of clean rows gives
its distinct schools, federations, cohorts and per-year counts (:class:`Counts`), and two
batches' counts merge by set union, so a table is described as it is validated, one batch at
a time (:func:`describe_file`), with memory bounded by the number of schools, not of pupils.
A table already in memory is described by the same reducer in one batch (:func:`describe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bayesfed.design.reduce import file_rules
from bayesfed.inputs.spec import ModelSpec
from bayesfed.inputs.validate import PupilTable, conclude, scan


@dataclass(frozen=True)
class Counts:
    """The distinct values seen in some clean rows (None: the column is not mapped).

    Attributes
    ----------
    pupils : int
        Rows.
    schools : frozenset
        School labels.
    federated : frozenset or None
        Labels of schools with a federated pupil (``federated == 1``).
    federations : frozenset or None
        Federation labels.
    cohorts : frozenset of int or None
        Cohorts (years), missing ones left out.
    years : dict or None
        Year since founding -> (pupils, frozenset of school labels); rows without a year left
        out.
    """

    pupils: int
    schools: frozenset
    federated: frozenset | None
    federations: frozenset | None
    cohorts: frozenset | None
    years: dict[int, tuple[int, frozenset]] | None


def _union(a: frozenset | None, b: frozenset | None) -> frozenset | None:
    return None if a is None else a | b


class Description:
    """The :class:`bayesfed.inputs.validate.Reducer` whose parts are :class:`Counts`."""

    def of(self, frame: pd.DataFrame) -> Counts:
        """The counts of one batch of a validated table's canonical frame."""
        school = frame["school"]
        federated = federations = cohorts = years = None
        if "federated" in frame:
            chosen = frame["federated"].eq(1).fillna(False).to_numpy(dtype=bool)
            federated = frozenset(school[chosen].unique())
        if "federation" in frame:
            federations = frozenset(frame["federation"].dropna().unique())
        if "cohort" in frame:
            cohorts = frozenset(int(c) for c in frame["cohort"].dropna().unique())
        if "years_since" in frame:
            years = {int(year): (len(rows), frozenset(rows.unique()))
                     for year, rows in school.groupby(frame["years_since"], sort=True)}
        return Counts(len(frame), frozenset(school.unique()), federated, federations, cohorts,
                      years)

    def merge(self, a: Counts, b: Counts) -> Counts:
        """The counts of two batches together."""
        years = None
        if a.years is not None:
            years = dict(a.years)
            for year, (pupils, schools) in b.years.items():
                before = years.get(year, (0, frozenset()))
                years[year] = (before[0] + pupils, before[1] | schools)
        return Counts(a.pupils + b.pupils, a.schools | b.schools,
                      _union(a.federated, b.federated), _union(a.federations, b.federations),
                      _union(a.cohorts, b.cohorts), years)

    def summary(self, counts: Counts, n_input_rows: int, n_dropped: int) -> dict[str, object]:
        """The one-screen summary (:func:`describe`'s result) of a table's counts."""
        out: dict[str, object] = {"input_rows": n_input_rows, "dropped": n_dropped,
                                  "pupils": counts.pupils, "schools": len(counts.schools)}
        if counts.federated is not None:
            out["federated_schools"] = len(counts.federated)
        if counts.federations is not None:
            out["federations"] = len(counts.federations)
        if counts.cohorts is not None:
            out["cohorts"] = sorted(counts.cohorts)
        if counts.years is not None:
            out["years_since"] = {year: {"pupils": pupils, "schools": len(schools)}
                                  for year, (pupils, schools) in sorted(counts.years.items())}
        return out


def describe(table: PupilTable) -> dict[str, object]:
    """Counts for a one-screen summary of a table validated in memory.

    Returns
    -------
    dict
        ``input_rows`` and ``dropped`` (rows read, and rows dropped for a missing value),
        ``pupils``, ``schools``; where the columns are mapped, ``federated_schools``,
        ``federations``, ``cohorts`` (sorted list of int) and ``years_since`` (year ->
        ``{"pupils", "schools"}``, in year order).
    """
    reducer = Description()
    return reducer.summary(reducer.of(table.frame), table.n_input_rows, table.n_dropped)


def describe_file(path: str | Path, spec: ModelSpec, years: Sequence[int] | None = None,
                  drop_incomplete: bool = False, source: str | None = None
                  ) -> dict[str, object]:
    """Validate a pupil table for a spec batch by batch and describe it (:func:`describe`'s
    result), never holding the table.

    Parameters
    ----------
    path : str or Path
        CSV or Parquet file, or a folder of Parquet files (a partitioned dataset).
    spec : ModelSpec
        The model specification whose column mapping and rules apply.
    years : sequence of int, optional
        Years since founding to be fitted separately (their rules apply too).
    drop_incomplete : bool
        Drop rows with a missing value in a needed column instead of raising.
    source : str, optional
        Name of the table in messages (default: the path).

    Raises
    ------
    DataError
        Every problem :func:`bayesfed.inputs.validate.validate_table` would report, with the same
        message.
    """
    rules, batches = file_rules(path, spec, years, drop_incomplete, source)
    reducer = Description()
    result = scan(batches(), rules, reduce=reducer)
    conclude(result, rules, batches)
    return reducer.summary(result.reduced, result.n_rows, result.n_dropped)
