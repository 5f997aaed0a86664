"""Pupil rows -> a model's sufficient statistics, batch by batch.

A national extract (millions of pupils) need not fit in memory: :func:`reduce_file` reads the
table of the event-time model or of a per-year two-level model in batches
(:func:`bayesfed.inputs.read.read_batches`; a folder of Parquet files file by file, only the columns
the spec maps), checks each batch with the rules of
:func:`bayesfed.inputs.validate.validate_table` (:func:`bayesfed.inputs.validate.scan`: the same
messages, row numbers counted over the whole table) and reduces its clean rows to per-cell
statistics (:class:`EventReducer`, :func:`bayesfed.design.cells.cell_part`) or to per-school
statistics of each year since founding (:class:`YearReducer`,
:func:`bayesfed.inputs.moments.group_part`), merged exactly batch after batch. Memory holds a few
batches (two checked at once, one read ahead), the statistics (a few numbers per school-by-cohort
cell; per school and year, its counts, means and a small cross-product matrix) and an 8-byte hash
per pupil for the duplicated-id rule, never the table.

The same reduction runs on a Dask cluster over a partitioned dataset
(:mod:`bayesfed.design.distributed`): each worker scans its files, and the scans merge in row order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bayesfed.design.cells import (
    REFERENCE_YEAR,
    CellPart,
    CellStats,
    cell_part,
    event_keys,
    finish_cells,
    merge_cell_parts,
)
from bayesfed.design.centring import centre_summary
from bayesfed.design.columns import Design, build_design
from bayesfed.design.stacked import stacked_data
from bayesfed.design.suffstats import SchoolSummary, summary_from
from bayesfed.errors import DataError
from bayesfed.inputs.coding import predictor_columns
from bayesfed.inputs.moments import GroupPart, group_part, merge_group_parts
from bayesfed.inputs.read import BATCH_ROWS, read_batches, table_columns
from bayesfed.inputs.rules import Rules, column_error, rules_for
from bayesfed.inputs.spec import ModelSpec
from bayesfed.inputs.validate import PupilTable, Scan, conclude, scan


@dataclass(frozen=True)
class Reduced:
    """A pupil table reduced for one ``event_time`` spec.

    Attributes
    ----------
    stats : CellStats
        Everything the model needs of the pupils.
    n_input_rows, n_dropped : int
        Rows read, and rows dropped for a missing value (``drop_incomplete``).
    columns : dict of str to str
        Canonical name -> the user's column it came from.
    """

    stats: CellStats
    n_input_rows: int
    n_dropped: int
    columns: dict[str, str]


class EventReducer:
    """The :class:`bayesfed.inputs.validate.Reducer` of the event-time model: a batch of clean
    rows -> its :class:`~bayesfed.design.cells.CellPart`.

    Rows outside the modelled years (``years_since`` below the earliest lead or above the
    last effect) are counted, not kept, as :func:`bayesfed.design.cells.build_event_design`
    does; with ``leads = "all"`` the earliest lead is known at the end
    (:func:`bayesfed.design.cells.finish_cells`).
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        event = spec.event_options
        self.terms = tuple(spec.predictors.pupil)
        self.coding = spec.categorical_coding()
        self.leads = event.leads if event.leads == "all" else tuple(sorted(event.leads))
        self.years_after = event.years_after

    def of(self, frame: pd.DataFrame) -> CellPart:
        since = frame["years_since"].to_numpy(dtype=np.int64)
        keep = since <= self.years_after
        # with leads = "all" the first modelled year is known only once every batch is read:
        # earlier cells are dropped then (finish_cells)
        if self.leads != "all":
            keep &= since >= min(self.leads, default=REFERENCE_YEAR)
        kept = frame if keep.all() else frame.loc[keep].reset_index(drop=True)
        X, names = predictor_columns(kept, self.terms, self.coding)
        keys = event_keys(kept["school"], kept["cohort"].to_numpy(dtype=np.int64), since[keep],
                          kept["federated"].to_numpy(dtype=np.int64),
                          _labels(kept, "federation"), _labels(kept, "federation_type"))
        return cell_part(keys, kept["outcome"].to_numpy(dtype=float), X, tuple(names),
                         n_dropped=int((~keep).sum()))

    def merge(self, a: CellPart, b: CellPart) -> CellPart:
        return merge_cell_parts(a, b)

    def stats(self, part: CellPart) -> CellStats:
        """The statistics of every pupil; DataError where the data cannot identify a term
        (for the stacked design also where a founding cohort lacks the comparisons that
        identify its effects, :func:`bayesfed.design.stacked.stacked_data`)."""
        try:
            stats = finish_cells(part, self.leads, self.years_after)
            if self.spec.kind.name == "event_stacked":
                stacked_data(stats)
            return stats
        except ValueError as exc:
            raise DataError(f"{self.spec.source}: {exc}") from None


def _labels(frame: pd.DataFrame, column: str) -> pd.Series | str:
    """A label column with "" for blanks, or "" for every row when the table has none."""
    return frame[column].fillna("").reset_index(drop=True) if column in frame else ""


@dataclass(frozen=True)
class ReducedYears:
    """A pupil table reduced for one ``two_level`` spec: per year since founding (None: the
    whole table), the per-school statistics of that year's pupils.

    Attributes
    ----------
    summaries : dict of (int or None) to SchoolSummary
        Everything the collapsed model, its REML cross-check and its checks need of a year's
        pupils (:class:`bayesfed.design.suffstats.SchoolSummary`).
    n_input_rows, n_dropped : int
        Rows read, and rows dropped for a missing value (``drop_incomplete``).
    columns : dict of str to str
        Canonical name -> the user's column it came from.
    """

    summaries: dict[int | None, SchoolSummary]
    n_input_rows: int
    n_dropped: int
    columns: dict[str, str]

    def select_year(self, year: int | None) -> ReducedYears:
        """Only the statistics of one year (what a fit needs)."""
        return ReducedYears({year: self.summaries[year]}, self.n_input_rows, self.n_dropped,
                            self.columns)


class YearReducer:
    """The :class:`bayesfed.inputs.validate.Reducer` of a ``two_level`` spec: a batch of clean rows
    -> per (year since founding, school) counts, means and cross products of the outcome and
    the design's columns (:func:`bayesfed.design.columns.build_design`'s), a
    :class:`~bayesfed.inputs.moments.GroupPart`.

    Rows of years not selected are left out; without a year selection every row is kept
    under the year None.
    """

    def __init__(self, spec: ModelSpec, years: Sequence[int] | None) -> None:
        self.spec = spec
        self.years = None if years is None else tuple(sorted(set(int(y) for y in years)))
        self.coding = spec.categorical_coding()
        # the design's column names and levels depend on the spec only: those of no pupils
        empty = self._design(pd.DataFrame(columns=["outcome", "school", *spec.terms]))
        self.coef_names, self.school_level = empty.coef_names, empty.school_level

    def _design(self, frame: pd.DataFrame) -> Design:
        return build_design(frame, self.spec.pupil_terms, self.spec.school_terms,
                            self.coding)

    def of(self, frame: pd.DataFrame) -> GroupPart:
        if self.years is None:
            kept, year = frame, np.full(len(frame), -1, dtype=np.int64)
        else:
            since = frame["years_since"].to_numpy(dtype=np.int64)
            keep = np.isin(since, self.years)
            kept = frame if keep.all() else frame.loc[keep].reset_index(drop=True)
            year = since[keep]
        design = self._design(kept)
        keys = pd.DataFrame({"year": year, "school": np.asarray(design.schools, dtype=object)[
            design.school_idx]})
        return group_part(keys, np.column_stack([design.y, design.X]))

    def merge(self, a: GroupPart, b: GroupPart) -> GroupPart:
        return merge_group_parts(a, b)

    def summaries(self, part: GroupPart) -> dict[int | None, SchoolSummary]:
        """Each selected year's :class:`~bayesfed.design.suffstats.SchoolSummary`."""
        year = part.keys["year"].to_numpy(dtype=np.int64)
        out = {}
        for key in (None,) if self.years is None else self.years:
            rows = np.flatnonzero(year == (-1 if key is None else key))
            one = GroupPart(part.keys.iloc[rows].reset_index(drop=True), part.n[rows],
                            part.mean[rows], part.within[rows])
            out[key] = centre_summary(summary_from(one, self.coef_names, self.school_level),
                                      self.spec)
        return out


def file_rules(path: str | Path, spec: ModelSpec, years: Sequence[int] | None = None,
               drop_incomplete: bool = False, source: str | None = None,
               complete: Sequence[str] = ()
               ) -> tuple[Rules, Callable[[], Iterable[pd.DataFrame]]]:
    """The validation rules of a spec (and its years) on a file, and the file's batches (only
    the mapped columns). An ``event_time`` spec fits every year at once: its rules have no
    years (``rules.years`` is None), whatever ``years`` says.

    Raises
    ------
    DataError
        The file cannot be read, or a column the spec needs is missing or ambiguous.
    """
    if spec.kind.joint:
        years = None
    rules, problems = rules_for(table_columns(path), spec, years, drop_incomplete,
                                str(path) if source is None else source, complete)
    columns = rules.read_columns

    def batches() -> Iterable[pd.DataFrame]:
        return read_batches(path, columns=columns)

    if problems:
        raise column_error(rules, problems, sum(len(b) for b in batches()))
    return rules, batches


def reduce_file(path: str | Path, spec: ModelSpec, years: Sequence[int] | None = None,
                drop_incomplete: bool = False, source: str | None = None,
                complete: Sequence[str] = ()
                ) -> Reduced | ReducedYears:
    """Validate a pupil table for a collapsed spec and reduce it to the model's statistics,
    one batch of rows at a time: per school-by-cohort cell for an ``event_time`` spec
    (:class:`Reduced`), per year since founding and school for a ``two_level`` one
    (:class:`ReducedYears`).

    Parameters
    ----------
    path : str or Path
        CSV or Parquet file, or a folder of Parquet files (a partitioned dataset).
    spec : ModelSpec
    years : sequence of int, optional
        A ``two_level`` spec's years since founding, fitted separately (None: the whole
        table as one); an ``event_time`` spec fits every year at once and ignores them.
    drop_incomplete : bool
        Drop rows with a missing value in a needed column instead of raising.
    source : str, optional
        Name of the table in messages (default: the path).
    complete : sequence of str
        More columns whose blank values drop a row with ``drop_incomplete`` (the other
        models' columns of a job: :attr:`bayesfed.inputs.rules.Rules.complete`).

    Returns
    -------
    Reduced or ReducedYears
        A per-year spec's summaries equal :func:`bayesfed.design.suffstats.summary_of` of each
        year's design built in memory, up to rounding (the sums are taken in another order).

    Raises
    ------
    DataError
        Every problem :func:`bayesfed.inputs.validate.validate_table` would report for the whole
        table with the same years, with the same message; or an event year without
        federated pupils.
    """
    rules, batches = file_rules(path, spec, years, drop_incomplete, source, complete)
    reducer = reducer_for(spec, rules.years)
    return reduced_from(scan(batches(), rules, reduce=reducer), rules, batches, reducer)


def reduce_frame(frame: pd.DataFrame, spec: ModelSpec, years: Sequence[int] | None = None,
                 drop_incomplete: bool = False, source: str = "data",
                 complete: Sequence[str] = ()) -> Reduced | ReducedYears:
    """:func:`reduce_file` of a table in memory: the same rules and the same statistics, the
    frame's rows taken in batches of :data:`bayesfed.inputs.read.BATCH_ROWS` as a file's are read
    (so a table gives the same numbers from memory as from its Parquet file). ``frame`` is
    not modified."""
    if spec.kind.joint:
        years = None
    rules, problems = rules_for(frame.columns, spec, years, drop_incomplete, source, complete)
    columns = rules.read_columns

    def batches() -> Iterable[pd.DataFrame]:
        if len(frame) == 0:
            yield frame[columns]
        for start in range(0, len(frame), BATCH_ROWS):
            yield frame.iloc[start:start + BATCH_ROWS][columns].reset_index(drop=True)

    if problems:
        raise column_error(rules, problems, len(frame))
    reducer = reducer_for(spec, rules.years)
    return reduced_from(scan(batches(), rules, reduce=reducer), rules, batches, reducer)


def reduced_from(result: Scan, rules: Rules, batches: Callable[[], Iterable[pd.DataFrame]],
                 reducer: EventReducer | YearReducer) -> Reduced | ReducedYears:
    """The :class:`Reduced` (or :class:`ReducedYears`) of a scan of every row
    (:func:`bayesfed.inputs.validate.conclude` first: DataError for a table that breaks a rule)."""
    conclude(result, rules, batches)
    if isinstance(reducer, YearReducer):
        return ReducedYears(reducer.summaries(result.reduced), result.n_rows,
                            result.n_dropped, dict(rules.present))
    return Reduced(reducer.stats(result.reduced), result.n_rows,
                   result.n_dropped, dict(rules.present))


def reducer_for(spec: ModelSpec, years: Sequence[int] | None) -> EventReducer | YearReducer:
    """The reducer of a spec: per cell for an ``event_time`` spec, per year and school for a
    ``two_level`` one."""
    return EventReducer(spec) if spec.kind.joint else YearReducer(spec, years)


def reduce_table(table: PupilTable, spec: ModelSpec) -> Reduced:
    """The :class:`Reduced` of a table already validated in memory."""
    reducer = EventReducer(spec)
    return Reduced(reducer.stats(reducer.of(table.frame)), table.n_input_rows,
                   table.n_dropped, dict(table.columns))
