"""Validation of a pupil table against a model specification, before any model is built.

Every problem found is collected and raised together as one :class:`~bayesfed.errors.DataError`
whose lines name the column (and its role), how many rows break the rule, a few example rows
and the fix. Row numbers count data rows from 1, the header excluded, as a spreadsheet user
would find them (row 1 is the file's second line in a CSV).

The rules, in the order they are reported:

1. Columns: a column the model needs is not in the table; a column name the table holds more
   than once; one column mapped to several roles; an identifier or label column used as a
   numeric predictor.
2. ``not numeric``: text (or dates) in a numeric column.
3. ``missing value``: blank / NA in a needed column (``drop_incomplete=True`` drops those rows
   instead and reports how many). With a year selection, years since founding are needed.
4. ``out of range``: infinities; magnitudes above ``MAX_ABS``; flags not 0/1; IDACI outside 0-1;
   years not whole numbers; categorical labels not among the spec's levels.
5. ``not constant within school``: a school-level column (federated flag, founding year,
   federation id and type) that varies within a school.
6. ``inconsistent years since founding``: ``years_since != cohort - founding_year``.
7. ``federation id without flag``: a federation id on a school whose federated flag is 0, or the
   reverse.
8. ``duplicated pupil id``: the same pupil id twice in one cohort.
9. Selection rules: a requested year (or, without years, the table) with no pupils or a single
   school, an outcome or predictor with no variation among the selected pupils (or variation
   too small to scale the default priors by), and predictors that are exact linear
   combinations of each other (their coefficients would not be identified).

The rules run batch by batch, so a table larger than memory is checked with the same code and
messages as one held whole (:func:`validate_table` itself works in batches of
:data:`BATCH_ROWS`): :func:`check_batch` applies the rules of single rows (2-4, 6, 7);
:func:`scan` gathers, from the clean rows, what the rules across rows need, as a
:class:`Scan` that merges over consecutive row ranges (distinct school-level values per
school, a hash per pupil id, and per fit a :class:`Sample`: moments, labels seen and the QR
factor of the design); :func:`conclude` applies rules 5, 8 and 9 to the merged scan and
raises, reading the table a second time only to name the rows of a broken cross-row rule.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from bayesfed.errors import DataError
from bayesfed.inputs.coding import predictor_columns
from bayesfed.inputs.schema import ROLES
from bayesfed.inputs.spec import ModelSpec

#: How many example rows an error line shows, and how many characters of each value.
N_EXAMPLES = 5
MAX_SHOWN = 40

#: Largest magnitude a numeric value may have. Beyond it float64 no longer holds whole numbers
#: exactly, and such values in a pupil table are export errors (an identifier or a sentinel
#: code in a numeric column) that would overflow the variance computations.
MAX_ABS = 1e15

#: Roles read when present (never required): they feed summaries and consistency checks.
OPTIONAL_ROLES = ("pupil_id", "federation", "federation_type", "federated", "cohort",
                  "founding_year", "years_since")


@dataclass(frozen=True)
class Problem:
    """One broken rule: which column, how many rows, examples and the fix."""

    column: str
    role: str
    what: str
    fix: str
    rows: tuple[int, ...] = ()
    n_rows: int = 0
    values: tuple[str, ...] = ()

    def line(self) -> str:
        """One line of the error message."""
        if not self.column:
            label = "table"
        else:
            label = f"column {self.column!r}" + (
                f" (role {self.role})" if self.role != self.column else "")
        where = ""
        if self.n_rows:
            shown = ", ".join(str(r) for r in self.rows)
            more = ", ..." if self.n_rows > len(self.rows) else ""
            rows = "rows" if self.n_rows > 1 else "row"
            examples = "rows" if len(self.rows) > 1 else "row"
            where = f" in {self.n_rows} {rows} (e.g. {examples} {shown}{more})"
            if self.values:
                where += f", values {', '.join(self.values)}"
        return f"{label}: {self.what}{where}. Fix: {self.fix}"


@dataclass(frozen=True)
class PupilTable:
    """A validated pupil table with canonical column names.

    Attributes
    ----------
    frame : DataFrame
        A new frame (the input is never modified) whose columns are named by role or term:
        ``outcome``, ``school``, each predictor term, and whichever optional roles were present
        or derived (``years_since`` is derived from ``cohort - founding_year`` when absent).
        Numeric columns are float or int; identifiers are strings.
    n_input_rows : int
        Rows in the table as read.
    n_dropped : int
        Rows dropped for missing values (only with ``drop_incomplete=True``).
    columns : dict of str to str
        Canonical name -> the user's column it came from.
    """

    frame: pd.DataFrame
    n_input_rows: int
    n_dropped: int
    columns: dict[str, str] = field(default_factory=dict)

    def select_year(self, year: int | None) -> pd.DataFrame:
        """Pupils with ``years_since == year``; the whole table when ``year`` is None."""
        if year is None:
            return self.frame
        return self.frame.loc[self.frame["years_since"] == year].reset_index(drop=True)


def _rows(mask: np.ndarray, positions: np.ndarray | None = None) -> tuple[tuple[int, ...], int]:
    """Example row numbers (1-based) and the count of rows where ``mask`` holds.

    ``positions`` gives each row's 0-based position in the input table (rows of a later batch,
    or rows kept when others were dropped).
    """
    idx = np.flatnonzero(mask)
    if positions is not None:
        idx = positions[idx]
    return tuple(int(i) + 1 for i in idx[:N_EXAMPLES]), int(idx.size)


def _values(series: pd.Series, mask: np.ndarray) -> tuple[str, ...]:
    """Example values where ``mask`` holds (see :func:`_shown`)."""
    return _shown(series.to_numpy()[np.flatnonzero(mask)[:N_EXAMPLES]])


def _shown(values: np.ndarray) -> tuple[str, ...]:
    """The first values, as Python writes them, each cut to ``MAX_SHOWN`` characters."""
    out = []
    for v in values[:N_EXAMPLES]:
        if isinstance(v, (np.datetime64, np.timedelta64)):
            text = repr(str(v))
        else:
            text = repr(v.item() if isinstance(v, np.generic) else v)
        out.append(text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "...")
    return tuple(out)


def _is_na(value: object) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, float | np.floating) and bool(np.isnan(value)))


def _text(series: pd.Series) -> pd.Series:
    """Values as text (string dtype), missing ones kept missing.

    Objects that are not text (bytes, lists, ...) become what ``str`` writes for them: pandas
    would try to decode bytes, and fail on bytes that are not UTF-8.
    """
    if series.dtype == object:
        series = series.map(lambda v: v if isinstance(v, str) or _is_na(v) else str(v))
    return series.astype("string")


def _blank(series: pd.Series) -> np.ndarray:
    """True where a value is missing: NA, or text that is empty after stripping."""
    missing = series.isna().to_numpy(dtype=bool).copy()
    if series.dtype == object or isinstance(series.dtype, (pd.StringDtype, pd.CategoricalDtype)):
        text = _text(series).str.strip()
        missing |= (text == "").fillna(True).to_numpy(dtype=bool)
    return missing


def needed_roles(spec: ModelSpec, years: Sequence[int] | None) -> list[str]:
    """Roles and terms the model cannot do without, in reporting order.

    An ``event_time`` model also needs the federated flag and the cohort (and years since
    founding, see :func:`validate_table`), and the federation and its type when it models
    their deviations of the effect.
    """
    needed = ["outcome", "school", *spec.terms]
    needed += list(spec.kind.roles)
    if spec.kind.joint:
        event = spec.event_options
        needed += ["federation"] if event.federation_deviations else []
        needed += ["federation_type"] if event.type_effects else []
    return list(dict.fromkeys(needed))


_FLAG_FIX = "code it 1 for yes and 0 for no"
_LARGE_FIX = ("such values are export errors (an identifier or a sentinel code in a numeric "
              "column); correct them, or blank them as missing")
_FIX = {
    "idaci": "IDACI is a share between 0 and 1; divide percentages by 100",
    "outcome": "the outcome must be a finite number for every pupil",
    "year": "years are whole calendar years (cohort, founding_year) or whole year offsets",
}


def _one_float(value: object) -> float:
    """One value as a float: NaN when it is not a real number, +-inf beyond float range."""
    if isinstance(value, (complex, np.complexfloating)):
        return math.nan
    try:
        return float(value)  # text as Python reads numbers; bytes, Decimal and bool too
    except OverflowError:  # an integer beyond float range
        if isinstance(value, int):
            return math.inf if value > 0 else -math.inf
        return math.nan
    except (TypeError, ValueError):
        return math.nan


def _as_float(series: pd.Series) -> pd.Series:
    """Numbers as float, NaN where a value is not a number (text, dates, complex numbers).

    Arrow-backed text (every CSV column) is first parsed by Arrow in bulk, which succeeds only
    when every value is a number as Arrow writes numbers: then the values are those pandas
    would give (both round correctly; ``tests/test_validate.py`` compares them), ten times
    faster. Anything else, a single value Arrow cannot parse included, goes through pandas.
    """
    if isinstance(series.dtype, pd.StringDtype) and series.dtype.storage == "pyarrow":
        try:
            parsed = pa.array(series.array).cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # a value Arrow does not read as a number: pandas decides, below
        else:
            return pd.Series(parsed.to_numpy(zero_copy_only=False), index=series.index,
                             dtype=float)
    if (pd.api.types.is_datetime64_any_dtype(series.dtype)
            or pd.api.types.is_timedelta64_dtype(series.dtype)
            or isinstance(series.dtype, pd.PeriodDtype)):
        return pd.Series(np.nan, index=series.index)  # dates are not numbers
    # No warning filter here: batches are checked in threads, and warnings.catch_warnings
    # is process-wide, so a filter set in one thread could outlive the scan (left at "error"
    # for the rest of the process). Complex values show in the dtype.
    try:
        values = pd.to_numeric(series, errors="coerce")
        if pd.api.types.is_numeric_dtype(values.dtype) and values.dtype.kind != "c":
            return values.astype(float)
    except (ArithmeticError, TypeError, ValueError):
        pass  # a value pandas cannot convert in bulk (an integer beyond float range)
    return pd.Series([_one_float(v) for v in series.to_numpy(dtype=object)],
                     index=series.index, dtype=float)


def _numeric_problems(
    raw: pd.Series, column: str, role: str, kind: str, positions: np.ndarray
) -> tuple[list[Problem], pd.Series]:
    """Convert a column to numbers; report text, infinities and range breaches.

    Returns the problems and the converted column (float).
    """
    problems: list[Problem] = []
    missing = _blank(raw)
    values = _as_float(raw.where(~missing))
    text = ~missing & values.isna().to_numpy()
    if text.any():
        rows, n = _rows(text, positions)
        problems.append(Problem(column, role, "not numeric", "replace text by numbers "
                                "(or mark the value as missing)", rows, n, _values(raw, text)))
    arr = values.to_numpy()
    finite = np.isfinite(arr)
    present = ~missing & ~text
    large = np.abs(np.where(finite, arr, 0.0)) > MAX_ABS
    checks: list[tuple[np.ndarray, str, str]] = [
        (present & ~finite, "infinite value", _FIX.get(role, "use finite numbers")),
        (present & large, f"value larger than {MAX_ABS:g} in magnitude", _LARGE_FIX),
    ]
    ok = present & finite & ~large
    if kind == "flag":
        checks.append((ok & ~np.isin(arr, (0.0, 1.0)), "value not 0/1", _FLAG_FIX))
    elif kind == "unit_interval":
        checks.append((ok & ((arr < 0) | (arr > 1)), "value outside 0-1",
                       _FIX.get(role, "use values between 0 and 1")))
    elif kind == "year":
        checks.append((ok & (arr != np.round(arr)), "value not a whole number", _FIX["year"]))
    for mask, what, fix in checks:
        if mask.any():
            rows, n = _rows(mask, positions)
            problems.append(Problem(column, role, what, fix, rows, n, _values(raw, mask)))
    return problems, values


def _category_problems(
    raw: pd.Series, column: str, role: str, levels: Sequence[str], positions: np.ndarray
) -> tuple[list[Problem], pd.Series]:
    missing = _blank(raw)
    text = _text(raw).str.strip()
    unknown = ~missing & ~text.isin(list(levels)).fillna(False).to_numpy(dtype=bool)
    problems = []
    if unknown.any():
        rows, n = _rows(unknown, positions)
        problems.append(Problem(
            column, role, "unknown label", f"use one of {', '.join(levels)} (or map your labels "
            "onto these before fitting)", rows, n, _values(raw, unknown)))
    return problems, text.astype(object).where(~missing, None)


#: Rows per batch when a table held in memory is validated. A file too large to hold is
#: validated batch by batch with the same rules (:func:`scan`); tests set this small to check
#: that batching changes no message.
BATCH_ROWS = 1_000_000

#: Pupils per block of the collinearity rule's QR factorisation.
QR_BLOCK = 500_000

#: School-level columns that must take one value per school, in reporting order.
SCHOOL_LEVEL = ("federated", "founding_year", "federation", "federation_type")

#: The value rules of one column, in reporting order (what each reports).
_VALUE_RULES = ("not numeric", "infinite value", f"value larger than {MAX_ABS:g} in magnitude",
                "value not 0/1", "value outside 0-1", "value not a whole number",
                "unknown label")


@dataclass(frozen=True)
class Rules:
    """What every batch of one table is checked against, fixed before the first batch.

    Attributes
    ----------
    spec : ModelSpec
    years : tuple of int or None
        Years since founding fitted separately (None: the whole table).
    drop_incomplete : bool
    needed : tuple of str
        Roles and terms that must be present and complete, in reporting order.
    present : dict of str to str
        Canonical name -> the user's column, for every needed or optional role the table has.
    source : str
        Name of the table in messages.
    """

    spec: ModelSpec
    years: tuple[int, ...] | None
    drop_incomplete: bool
    needed: tuple[str, ...]
    present: dict[str, str]
    source: str


def rules_for(columns: Sequence[str], spec: ModelSpec, years: Iterable[int] | None = None,
              drop_incomplete: bool = False, source: str = "data"
              ) -> tuple[Rules, list[Problem]]:
    """The rules of a table with these column names, and the column problems found.

    Column problems (a needed column missing, a name held twice, one column mapped to two
    roles, an identifier used as a predictor) stop validation before any row is read; the
    caller raises them with the table's row count (:func:`column_error`).
    """
    years = None if years is None else tuple(sorted(set(int(y) for y in years)))
    columns = pd.Index(list(columns))
    needed = needed_roles(spec, years)
    if years is not None or spec.kind.joint:
        # years since founding are read, or derived from the calendar years
        needed += (["years_since"] if spec.column("years_since") in columns
                   else ["cohort", "founding_year"])
        needed = list(dict.fromkeys(needed))
    present = {name: spec.column(name) for name in [*needed, *OPTIONAL_ROLES]
               if spec.column(name) in columns}
    problems = _column_problems(columns, spec, needed, present)
    return Rules(spec, years, drop_incomplete, tuple(needed), present, source), problems


def column_error(rules: Rules, problems: list[Problem], n_rows: int) -> DataError:
    """The error of a table whose columns cannot be read (:func:`rules_for`)."""
    return DataError(_message(rules.source, problems, n_rows))


@dataclass(frozen=True)
class Batch:
    """One batch of rows after the row rules.

    Attributes
    ----------
    frame : DataFrame
        The batch with canonical names, rows with a missing value dropped when asked. Flags
        and years are integers and ``years_since`` is derived when the batch broke no rule
        (``clean``).
    positions : ndarray of int, shape (len(frame),)
        Each row's 0-based position in the whole input table.
    problems : list of (tuple, Problem)
        Rules broken by rows of this batch, each with its place in the message.
    n_rows, n_dropped : int
        Rows read, and rows dropped for a missing value.
    clean : bool
        No value rule was broken (the cross-row rules need clean values).
    """

    frame: pd.DataFrame
    positions: np.ndarray
    problems: list[tuple[tuple, Problem]]
    n_rows: int
    n_dropped: int
    clean: bool


def check_batch(raw: pd.DataFrame, rules: Rules, first_row: int = 0) -> Batch:
    """Apply the rules of single rows to one batch (rows ``first_row`` onwards, 0-based).

    The rules: text in a numeric column, values out of range, unknown labels, missing values,
    ``years_since`` against the calendar years and federation ids against the flag.
    """
    positions = np.arange(first_row, first_row + len(raw))
    coding = rules.spec.categorical_coding()
    out: dict[str, pd.Series] = {}
    ranked: list[tuple[tuple, Problem]] = []
    missing_rows = np.zeros(len(raw), dtype=bool)
    missing_cols: list[tuple[int, str, str, np.ndarray]] = []
    for i, (name, column) in enumerate(rules.present.items()):
        series = raw[column]
        role = ROLES.get(name)
        kind = role.kind if role else "numeric"
        if name in coding:
            kind = "category"
        probs: list[Problem] = []
        if kind in ("label", "id"):
            # kept as pandas text (Arrow-backed), not Python objects: at national size each
            # object column of ids is a few hundred megabytes
            text = _text(series).str.strip()
            missing = (text == "").fillna(True).to_numpy(dtype=bool)  # as _blank, once
            out[name] = text.where(~missing) if missing.any() else text
            if kind == "label":
                continue
        elif kind == "category":
            missing = _blank(series)
            levels = coding[name][0] if name in coding else role.levels
            probs, out[name] = _category_problems(series, column, name, levels, positions)
        else:
            missing = _blank(series)
            probs, out[name] = _numeric_problems(series, column, name, kind, positions)
        ranked += [((0, i, _VALUE_RULES.index(p.what)), p) for p in probs]
        if name in rules.needed and missing.any():
            missing_cols.append((i, column, name, missing))
            missing_rows |= missing
    if missing_cols and not rules.drop_incomplete:
        for i, column, name, missing in missing_cols:
            rows, n = _rows(missing, positions)
            ranked.append(((1, i, 0), Problem(
                column, name, "missing value",
                "fill in the values, or run with --drop-incomplete to drop incomplete rows "
                "(bayesfed reports how many)", rows, n)))
    keep = ~missing_rows if rules.drop_incomplete else np.ones(len(raw), dtype=bool)
    n_dropped = int((~keep).sum())
    frame = pd.DataFrame({k: v.reset_index(drop=True) for k, v in out.items()}, copy=False)
    del out
    if n_dropped:  # otherwise no copy: at national size each one is a gigabyte
        frame = frame.loc[keep].reset_index(drop=True)
        positions = positions[keep]
    clean = not ranked
    if clean:
        for name in frame.columns:  # whole numbers as integers; nullable where one is missing
            role = ROLES.get(name)
            if role is not None and role.kind in ("flag", "year"):
                has_na = bool(frame[name].isna().any())
                frame[name] = frame[name].astype("Int64" if has_na else np.int64)
        ranked += _row_structure_problems(frame, rules.present, positions)
        if "years_since" not in frame and {"cohort", "founding_year"} <= set(frame):
            frame["years_since"] = frame["cohort"] - frame["founding_year"]
    return Batch(frame, positions, ranked, len(raw), n_dropped, clean)


def _row_structure_problems(frame: pd.DataFrame, present: dict[str, str],
                            positions: np.ndarray) -> list[tuple[tuple, Problem]]:
    """Rules relating columns of one row: year arithmetic, federation ids against flags."""
    ranked: list[tuple[tuple, Problem]] = []
    if {"years_since", "cohort", "founding_year"} <= set(frame):
        diff = frame["cohort"] - frame["founding_year"]  # blank where a year is blank
        mask = (frame["years_since"] != diff).fillna(False).to_numpy(dtype=bool)
        if mask.any():
            rows, n = _rows(mask, positions)
            ranked.append(((3,), Problem(
                present["years_since"], "years_since",
                f"not equal to {present['cohort']} - {present['founding_year']}",
                "correct the values, or drop the column and bayesfed derives it", rows, n,
                _values(frame["years_since"], mask))))
    if {"federation", "federated"} <= set(frame):
        has_id = frame["federation"].notna().to_numpy()
        flag = frame["federated"].eq(1).fillna(False).to_numpy(dtype=bool)
        no_flag = frame["federated"].eq(0).fillna(False).to_numpy(dtype=bool)  # blank: neither
        for k, (mask, what) in enumerate((
                (has_id & no_flag, "federation id on a school whose federated flag is 0"),
                (~has_id & flag, "federated flag 1 with no federation id"))):
            if mask.any():
                rows, n = _rows(mask, positions)
                ranked.append(((4, k), Problem(
                    present["federation"], "federation", what,
                    "a federated school has a federation id and flag 1; a matched school has "
                    "a blank id and flag 0", rows, n)))
    return ranked


def _merge_problem(a: Problem, b: Problem) -> Problem:
    """One rule broken in two consecutive row ranges: counts added, first examples kept."""
    return replace(a, rows=(a.rows + b.rows)[:N_EXAMPLES], n_rows=a.n_rows + b.n_rows,
                   values=(a.values + b.values)[:N_EXAMPLES])


@dataclass
class Sample:
    """What the rules of one fit's pupils (a year since founding, or the table) need to know
    of them, mergeable over consecutive row ranges.

    Attributes
    ----------
    n : int
        Pupils.
    first_school : str or None
        The first pupil's school; ``two_schools`` whether another school has pupils.
    first : dict of str to object
        The first pupil's value of the outcome and of each numeric term.
    moments : dict of str to ndarray, shape (5,)
        Per numeric column: count, mean, sum of squared deviations from the mean (merged as
        in Chan, Golub and LeVeque), smallest and largest value.
    levels : dict of str to set
        Labels seen of each categorical term.
    R : ndarray, shape (k, n_coef + 1)
        Triangular factor of a QR factorisation of the design ``[1, X]`` of these pupils
        (:func:`bayesfed.design.columns.build_design`).
    scale : ndarray, shape (n_coef + 1,)
        Largest absolute value of each column of ``[1, X]``.
    """

    n: int = 0
    first_school: object = None
    two_schools: bool = False
    first: dict[str, object] = field(default_factory=dict)
    moments: dict[str, np.ndarray] = field(default_factory=dict)
    levels: dict[str, set] = field(default_factory=dict)
    R: np.ndarray | None = None
    scale: np.ndarray | None = None
    coef_names: tuple[str, ...] = ()

    def merge(self, other: Sample) -> Sample:
        """These pupils followed by ``other``'s."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        moments = {}
        for name, (na, ma, sa, lo_a, hi_a) in self.moments.items():
            nb, mb, sb, lo_b, hi_b = other.moments[name]
            n = na + nb
            delta = mb - ma
            moments[name] = np.array([n, ma + delta * nb / n, sa + sb + delta**2 * na * nb / n,
                                      min(lo_a, lo_b), max(hi_a, hi_b)])
        return Sample(
            n=self.n + other.n, first_school=self.first_school,
            two_schools=(self.two_schools or other.two_schools
                         or other.first_school != self.first_school),
            first=self.first, moments=moments,
            levels={k: v | other.levels[k] for k, v in self.levels.items()},
            R=np.linalg.qr(np.vstack([self.R, other.R]), mode="r"),
            scale=np.maximum(self.scale, other.scale), coef_names=self.coef_names)


def sample_of(frame: pd.DataFrame, spec: ModelSpec) -> Sample:
    """The :class:`Sample` of some clean pupils (canonical names)."""
    if len(frame) == 0:
        return Sample()
    coding = spec.categorical_coding()
    schools = frame["school"]
    first_school = schools.iloc[0]
    out = Sample(n=len(frame), first_school=first_school,
                 two_schools=bool((schools != first_school).any()))
    for name in ("outcome", *spec.terms):
        if name in coding:
            out.levels[name] = set(frame[name].dropna().unique())
            continue
        first = frame[name].iloc[0]
        out.first[name] = first.item() if isinstance(first, np.generic) else first
        values = frame[name].to_numpy(dtype=float)
        mean = values.mean()
        with np.errstate(under="ignore"):
            squares = float(((values - mean) ** 2).sum())
        out.moments[name] = np.array([len(values), mean, squares, values.min(), values.max()])
    # the design's columns (build_design's, without its school index)
    X, names = predictor_columns(frame, [*spec.predictors.pupil, *spec.predictors.school],
                                 coding)
    out.coef_names = tuple(names)
    out.scale = np.r_[1.0, np.abs(X).max(axis=0, initial=0.0)]
    # R is accumulated over blocks of pupils (the R of [R_so_far; block]), so memory holds one
    # block, not a copy of every pupil's row
    R = np.zeros((0, len(out.scale)))
    for start in range(0, len(X), QR_BLOCK):
        block = X[start: start + QR_BLOCK]
        R = np.linalg.qr(np.vstack([R, np.column_stack([np.ones(len(block)), block])]),
                         mode="r")
    out.R = R
    return out


@dataclass
class Scan:
    """What one pass over consecutive rows of a table found; scans of consecutive row ranges
    merge (:meth:`merge`), so batches can be read one after the other or by several workers.

    Attributes
    ----------
    n_rows, n_kept, n_dropped : int
        Rows read, kept, and dropped for a missing value.
    problems : dict
        ``(column, role, what) -> (rank, Problem)``: the rules single rows broke.
    clean : bool
        No value rule was broken; only then are the cross-row facts below gathered.
    pairs : dict of str to DataFrame
        Per school-level column, its distinct (school, value) pairs.
    hashes : list of ndarray of uint64
        A 64-bit hash of each (pupil id, cohort), for the duplicate rule (8 bytes a pupil).
    samples : dict
        Year since founding (None: the whole table) -> :class:`Sample`.
    years_seen : set of int
        Years since founding present (only with a year selection).
    reduced : object
        What the caller's ``reduce`` made of the clean rows (see :func:`scan`).
    """

    n_rows: int = 0
    n_kept: int = 0
    n_dropped: int = 0
    problems: dict = field(default_factory=dict)
    clean: bool = True
    pairs: dict[str, pd.DataFrame] = field(default_factory=dict)
    hashes: list[np.ndarray] = field(default_factory=list)
    samples: dict = field(default_factory=dict)
    years_seen: set = field(default_factory=set)
    reduced: object = None

    def merge(self, other: Scan, reduce: Reducer | None = None) -> Scan:
        """This scan's rows followed by ``other``'s."""
        problems = dict(self.problems)
        for key, (rank, problem) in other.problems.items():
            problems[key] = (rank, _merge_problem(problems[key][1], problem)
                             if key in problems else problem)
        pairs = {k: pd.concat([v, other.pairs[k]]).drop_duplicates(ignore_index=True)
                 if k in other.pairs else v for k, v in self.pairs.items()}
        pairs |= {k: v for k, v in other.pairs.items() if k not in pairs}
        samples = dict(self.samples)
        for key, sample in other.samples.items():
            samples[key] = samples[key].merge(sample) if key in samples else sample
        reduced = (other.reduced if self.reduced is None else self.reduced
                   if other.reduced is None else reduce.merge(self.reduced, other.reduced))
        return Scan(self.n_rows + other.n_rows, self.n_kept + other.n_kept,
                    self.n_dropped + other.n_dropped, problems, self.clean and other.clean,
                    pairs, self.hashes + other.hashes, samples,
                    self.years_seen | other.years_seen, reduced)


class Reducer(Protocol):
    """What a scan makes of the clean rows besides validating them: ``of(frame)`` one batch's
    part (the canonical frame of :class:`Batch`), ``merge(a, b)`` two consecutive parts."""

    def of(self, frame: pd.DataFrame) -> object: ...

    def merge(self, a: object, b: object) -> object: ...


def _key_hash(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose pupil id (and cohort) are known, and a 64-bit hash of each one's key.

    Equal keys have equal hashes; rows whose hashes repeat are compared by their values
    before any is reported (:func:`_cross_row_problems`).
    """
    keys = ["pupil_id", "cohort"] if "cohort" in frame else ["pupil_id"]
    known = frame[keys].notna().all(axis=1).to_numpy()
    h = text_hash(frame["pupil_id"][known])
    if "cohort" in frame:
        cohort = frame["cohort"].to_numpy(dtype=np.int64, na_value=0)[known]
        h = _mix(h ^ _mix(cohort.astype(np.uint64)))
    return known, h


def text_hash(values: pd.Series) -> np.ndarray:
    """A 64-bit hash of each (non-missing) text value, computed on its UTF-8 bytes in Arrow's
    buffers: a polynomial over the bytes, mixed with the length (no Python object a value:
    hashing 4.5 million pupil ids as objects took 1-2 s).

    Returns
    -------
    ndarray of uint64, shape (len(values),)
    """
    array = pa.array(values.array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = array.cast(pa.large_string())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[
        array.offset: array.offset + len(array) + 1]
    data = array.buffers()[2]
    start = int(offsets[0]) if len(offsets) else 0
    data = (np.frombuffer(data, dtype=np.uint8)[start: int(offsets[-1])] if data is not None
            else np.zeros(0, dtype=np.uint8))
    offsets = offsets - start
    lengths = np.diff(offsets)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, _PRIME, dtype=np.uint64))
    h = lengths.astype(np.uint64)
    for length in np.unique(lengths):  # identifiers come in a few lengths
        rows = np.flatnonzero(lengths == length)
        if length:
            chars = data[offsets[rows][:, None] + np.arange(length)[None, :]]
            h[rows] += chars.astype(np.uint64) @ powers[:length]  # wraps modulo 2**64
    return _mix(h)


_PRIME = np.uint64(1099511628211)  # FNV's 64-bit prime


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


#: Batches :func:`scan` checks and reduces at once, in threads: NumPy, pandas and Arrow release
#: the GIL for much of a batch's work (a national table, 4.5 million rows: 5.7-5.8 s with two
#: threads on two cores against 6.8-7.4 s with one, the same statistics).
SCAN_THREADS = min(2, os.cpu_count() or 1)


def scan(batches: Iterable[pd.DataFrame], rules: Rules, first_row: int = 0,
         reduce: Reducer | None = None) -> Scan:
    """One pass over consecutive batches of a table, from row ``first_row`` (0-based).

    Each batch is checked (:func:`check_batch`); while no value rule is broken its clean rows
    feed the cross-row facts (school-level values, pupil-id hashes, the samples of each fit)
    and ``reduce``. Up to :data:`SCAN_THREADS` batches are processed at once and their
    results merged in the table's order, so the result is that of one batch after another.
    Memory holds a few batches and those facts, not the rows.
    """
    def one(raw: pd.DataFrame, start: int) -> Scan:
        return _scan_one(check_batch(raw, rules, start), rules, reduce)

    out, start = Scan(), first_row
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        pending: deque[Future[Scan]] = deque()
        for raw in batches:
            pending.append(pool.submit(one, raw, start))
            start += len(raw)
            while len(pending) > SCAN_THREADS:
                out = out.merge(pending.popleft().result(), reduce)
        while pending:
            out = out.merge(pending.popleft().result(), reduce)
    return out


def _scan_one(batch: Batch, rules: Rules, reduce: Reducer | None) -> Scan:
    problems = {(p.column, p.role, p.what): (rank, p) for rank, p in batch.problems}
    out = Scan(batch.n_rows, len(batch.frame), batch.n_dropped, problems, batch.clean)
    if not batch.clean:
        return out
    frame = batch.frame
    school = pd.factorize(frame["school"])[0]
    for name in SCHOOL_LEVEL:
        if name in frame:
            # the first row of each distinct (school, value), found by integer codes
            value, uniques = pd.factorize(frame[name], use_na_sentinel=False)
            first = np.unique(school * (len(uniques) + 1) + value, return_index=True)[1]
            out.pairs[name] = pd.DataFrame({"school": frame["school"].iloc[first],
                                            "value": frame[name].iloc[first]}
                                           ).reset_index(drop=True)
    if "pupil_id" in frame:
        out.hashes.append(_key_hash(frame)[1])
    spec = rules.spec
    if rules.years is None:
        out.samples[None] = sample_of(frame, spec)
    elif "years_since" in frame:
        since = frame["years_since"]
        out.years_seen = {int(v) for v in since.dropna().unique()}
        for year in rules.years:
            mask = (since == year).fillna(False).to_numpy(dtype=bool)
            out.samples[year] = sample_of(frame.loc[mask].reset_index(drop=True), spec)
    if reduce is not None:
        out.reduced = reduce.of(frame)
    return out


def conclude(result: Scan, rules: Rules, batches: Callable[[], Iterable[pd.DataFrame]]) -> None:
    """Raise the table's :class:`DataError`, if any, once every row has been scanned.

    Parameters
    ----------
    result : Scan
        The merged scan of every row.
    rules : Rules
    batches : callable
        Returns the table's batches again: the cross-row rules (values not constant within a
        school, duplicated pupil ids) read the table a second time to name the rows, only
        when one is broken.
    """
    ranked = list(result.problems.values())
    if result.clean:
        if result.n_kept == 0:
            ranked.append(((2, -1), Problem("", "", "no rows",
                                            "check the export: bayesfed needs one row per pupil")))
        else:
            ranked += _cross_row_problems(result, rules, batches)
    else:  # the cross-row rules need clean values
        ranked = [(rank, p) for rank, p in ranked if rank[0] < 2]
    if ranked:
        ranked.sort(key=lambda item: item[0])
        raise DataError(_message(rules.source, [p for _, p in ranked], result.n_rows,
                                 result.n_dropped))
    problems: list[Problem] = []
    if rules.years is not None:
        for year in rules.years:
            problems += _sample_problems(result.samples.get(year, Sample()), rules, year,
                                         result.years_seen)
    else:
        problems += _sample_problems(result.samples[None], rules, None, set())
    if problems:
        raise DataError(_message(rules.source, problems, result.n_rows, result.n_dropped))


def _cross_row_problems(result: Scan, rules: Rules,
                        batches: Callable[[], Iterable[pd.DataFrame]]
                        ) -> list[tuple[tuple, Problem]]:
    """School-level values not constant within a school, and duplicated pupil ids."""
    varying = {}
    for name, pairs in result.pairs.items():
        counts = pairs.groupby("school", sort=False, dropna=False).size()
        if (counts > 1).any():
            varying[name] = counts.index[counts > 1]
    hashes = np.concatenate(result.hashes) if result.hashes else np.zeros(0, np.uint64)
    hashes.sort()
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    if not varying and repeated.size == 0:
        return []
    # a second pass names the rows
    school_rows = {name: ([], 0, []) for name in varying}
    candidates = []  # (positions, ids, cohorts) of rows whose key hash is repeated
    first_row = 0
    for raw in batches():
        batch = check_batch(raw, rules, first_row)
        first_row += batch.n_rows
        frame = batch.frame
        for name, schools in varying.items():
            mask = frame["school"].isin(schools).to_numpy(dtype=bool)
            rows, n, seen = school_rows[name]
            if mask.any():
                more, count = _rows(mask, batch.positions)
                seen += [s for s in pd.unique(frame.loc[mask, "school"]) if s not in seen]
                school_rows[name] = ((rows + list(more))[:N_EXAMPLES], n + count, seen)
        if repeated.size:
            known, h = _key_hash(frame)
            idx = np.flatnonzero(known)[np.isin(h, repeated)]
            cohort = (frame["cohort"].to_numpy(dtype=object)[idx] if "cohort" in frame
                      else np.zeros(idx.size, dtype=object))
            candidates.append(pd.DataFrame({"position": batch.positions[idx],
                                            "id": frame["pupil_id"].to_numpy(dtype=object)[idx],
                                            "cohort": cohort}))
    ranked = []
    for i, name in enumerate(SCHOOL_LEVEL):
        if name not in varying:
            continue
        rows, n, seen = school_rows[name]
        shown = ", ".join(repr(s) for s in seen[:N_EXAMPLES])
        more = ", ..." if len(varying[name]) > N_EXAMPLES else ""
        ranked.append(((2, i), Problem(
            rules.present[name], name,
            f"not constant within school ({_plural(len(varying[name]), 'school')}: "
            f"{shown}{more})",
            "a school-level value must be the same for every pupil of a school; correct the "
            "school's rows or split it into separate school ids", tuple(rows), n)))
    if candidates:
        rows = pd.concat(candidates, ignore_index=True)
        rows = rows[rows.duplicated(["id", "cohort"], keep=False)].sort_values("position")
        if len(rows):
            within = " within a cohort" if "cohort" in rules.present else ""
            first = rows.head(N_EXAMPLES)
            ranked.append(((5,), Problem(
                rules.present["pupil_id"], "pupil_id", f"duplicated pupil id{within}",
                "each pupil appears once per cohort; remove repeated rows",
                tuple(int(p) + 1 for p in first["position"]), len(rows),
                _shown(first["id"].to_numpy()))))
    return ranked


def validate_table(
    raw: pd.DataFrame,
    spec: ModelSpec,
    years: Iterable[int] | None = None,
    drop_incomplete: bool = False,
    source: str = "data",
) -> PupilTable:
    """Check a pupil table against a spec and return it with canonical column names.

    The table is checked in batches of :data:`BATCH_ROWS` rows, with the rules a file too
    large to hold is checked with (:func:`scan`), so both give the same messages.

    Parameters
    ----------
    raw : DataFrame
        The table as read (never modified).
    spec : ModelSpec
        Supplies the column mapping, predictors and categorical levels.
    years : iterable of int, optional
        Years since founding that will be fitted separately; each must have pupils in at least
        two schools. None fits the whole table and needs no year columns.
    drop_incomplete : bool
        Drop rows with a missing value in a needed column (reported in ``n_dropped``) instead
        of raising.
    source : str
        Name of the table in messages (usually its path).

    Returns
    -------
    PupilTable

    Raises
    ------
    DataError
        Listing every problem found.
    """
    rules, problems = rules_for(raw.columns, spec, years, drop_incomplete, source)
    if problems:  # nothing else can be checked reliably without the columns
        raise column_error(rules, problems, len(raw))

    def batches() -> Iterable[pd.DataFrame]:
        for start in range(0, max(len(raw), 1), BATCH_ROWS):
            yield raw.iloc[start: start + BATCH_ROWS]

    result = scan(batches(), rules, reduce=_Frames())
    conclude(result, rules, batches)
    frames = result.reduced
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return PupilTable(frame=frame, n_input_rows=result.n_rows, n_dropped=result.n_dropped,
                      columns=dict(rules.present))


class _Frames:
    """Keeps the clean batches (a table validated in memory keeps its rows)."""

    def of(self, frame: pd.DataFrame) -> list[pd.DataFrame]:
        return [frame]

    def merge(self, a: list[pd.DataFrame], b: list[pd.DataFrame]) -> list[pd.DataFrame]:
        return a + b


def _column_problems(
    columns: pd.Index, spec: ModelSpec, needed: Sequence[str], present: dict[str, str]
) -> list[Problem]:
    """Columns the model needs but cannot read unambiguously, and mappings that cannot work."""
    problems: list[Problem] = []
    if len(columns):
        found = (f"columns found: {', '.join(map(str, columns[:12]))}"
                 f"{', ...' if len(columns) > 12 else ''}")
    else:
        found = "the table has no columns"
    for name in needed:
        if name not in present:
            column = spec.column(name)
            problems.append(Problem(
                column, name, "missing column",
                f"add the column, or map role {name!r} to one of your columns in the spec's "
                f"[columns] table ({found})"))
    roles: dict[str, list[str]] = {}
    for name, column in present.items():
        roles.setdefault(column, []).append(name)
    for column, names in roles.items():
        n_copies = int((columns == column).sum())
        if n_copies > 1:
            problems.append(Problem(
                column, column, f"the table has {n_copies} columns of this name",
                "rename or remove the repeated columns: bayesfed cannot tell which one is meant"))
        if len(names) > 1:
            problems.append(Problem(
                column, column, f"mapped to several roles ({', '.join(names)})",
                "map each role and predictor to its own column in the spec's [columns] table"))
    coding = spec.categorical_coding()
    for term in spec.terms:
        role = ROLES.get(term)
        if term in present and term not in coding and role is not None \
                and role.kind in ("id", "label"):
            problems.append(Problem(
                present[term], term, "identifiers and labels cannot be a numeric predictor",
                f"remove {term!r} from [predictors] in the spec, or declare its labels in "
                f"[categorical.{term}] (levels and reference)"))
    return problems


def _spread(sample: Sample, name: str, column: str, role: str, where: str) -> list[Problem]:
    """A numeric column must vary, by enough to scale the default priors by (sd > 0)."""
    n, _, squares, low, high = sample.moments[name]
    if low == high:
        return [Problem(column, role, f"constant ({sample.first[name]!r}) in {where}",
                        "the outcome must vary between pupils" if role == "outcome" else
                        "drop the predictor from the spec for this selection")]
    with np.errstate(under="ignore"):
        sd = math.sqrt(squares / (n - 1))
    if not sd > 0:
        return [Problem(column, role, f"variation too small to compute with in {where} (values "
                        f"differ by at most {high - low:.3g})",
                        "rescale the column (e.g. to its usual units), or drop it if it is "
                        "constant in substance")]
    return []


def _variation_problems(sample: Sample, rules: Rules, where: str) -> list[Problem]:
    """An outcome or a predictor (or categorical level) that does not vary."""
    spec, present = rules.spec, rules.present
    problems = _spread(sample, "outcome", present["outcome"], "outcome", where)
    coding = spec.categorical_coding()
    for term in spec.terms:
        if term in coding:
            levels, reference = coding[term]
            seen = sample.levels[term]
            absent = [lev for lev in levels if lev not in seen]
            if len(seen) < 2:
                problems.append(Problem(
                    present[term], term, f"only one category ({', '.join(sorted(seen))}) "
                    f"in {where}", "drop the predictor from the spec for this selection"))
            elif reference in absent:
                problems.append(Problem(
                    present[term], term, f"reference level {reference!r} absent from {where}",
                    "choose a reference level that occurs in [categorical] of the spec"))
            elif absent:
                problems.append(Problem(
                    present[term], term, f"level(s) {', '.join(absent)} absent from {where}",
                    "remove the absent levels from [categorical] levels in the spec, or merge "
                    "them into a neighbouring level"))
        else:
            problems += _spread(sample, term, present[term], term, where)
    if not problems and spec.terms:
        problems += _collinearity_problems(sample, rules, where)
    return problems


def _collinearity_problems(sample: Sample, rules: Rules, where: str) -> list[Problem]:
    """Coefficients that are exact linear combinations of the intercept and earlier columns.

    Columns are added in reporting order; one that does not raise the rank of
    ``[1, X_so_far]`` is reported with the columns it is a combination of.
    """
    names = ("intercept", *sample.coef_names)
    scale = np.where(sample.scale > 0, sample.scale, 1.0)
    # R of [1, X] D^-1 is R D^-1 (each column divided by its largest absolute value), and its
    # |R_jj| is the norm of column j's residual on the columns before it, whose span is that
    # of the columns kept so far: no least-squares fit per column
    R = sample.R / scale
    residual_norm = np.zeros(R.shape[1])  # R has fewer rows than columns for few pupils
    residual_norm[: min(R.shape)] = np.abs(np.diag(R))
    problems = []
    kept: list[int] = [0]
    for j in range(1, len(names)):
        if residual_norm[j] > 1e-8 * np.sqrt(sample.n):
            kept.append(j)
            continue
        # the least-squares fit of column j on the kept ones, from R (X'X = R'R)
        coef, *_ = np.linalg.lstsq(R[:, kept], R[:, j], rcond=None)
        parts = [names[k] for k, c in zip(kept, coef, strict=True) if abs(c) > 1e-8]
        term = names[j].split("[")[0]
        problems.append(Problem(
            rules.present.get(term, term), term,
            f"coefficient {names[j]!r} is a linear combination of {', '.join(parts)} in {where}",
            "drop one of these predictors from the spec: their effects cannot be told apart"))
    return problems


def _sample_problems(sample: Sample, rules: Rules, year: int | None, years_seen: set
                     ) -> list[Problem]:
    """Rules for the pupils of one fit: a year since founding, or the whole table (None)."""
    present = rules.present
    if year is None:
        column, role, where = present["school"], "school", "the table"
        what = "the table has"
    else:
        column = present.get("years_since",
                             f"{present.get('cohort')} - {present.get('founding_year')}")
        role, where = "years_since", f"year {year}"
        what = f"year {year} since founding has"
    if sample.n == 0:
        available = sorted(years_seen)
        return [Problem(
            column, role, f"no pupils in year {year} since founding",
            f"choose years among those present ({', '.join(map(str, available))})")]
    if not sample.two_schools:
        return [Problem(
            column, role, f"{what} pupils in a single school ({sample.first_school!r}): "
            "school variance is not identified",
            "fit years with pupils in at least two schools" if year is not None else
            "a two-level model needs pupils in at least two schools")]
    return _variation_problems(sample, rules, where)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _message(source: str, problems: list[Problem], n_rows: int, n_dropped: int = 0) -> str:
    head = f"{source}: {_plural(len(problems), 'problem')} in {_plural(n_rows, 'row')}"
    if n_dropped:
        head += f" ({_plural(n_dropped, 'incomplete row')} dropped)"
    head += " (row numbers count data rows from 1, the header excluded):"
    return "\n".join([head, *(f"  - {p.line()}" for p in problems)])
