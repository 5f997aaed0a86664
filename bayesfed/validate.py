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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bayesfed.design import build_design
from bayesfed.errors import DataError
from bayesfed.schema import ROLES
from bayesfed.spec import ModelSpec

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

    ``positions`` gives each row's 0-based position in the input table when rows were dropped.
    """
    idx = np.flatnonzero(mask)
    if positions is not None:
        idx = positions[idx]
    return tuple(int(i) + 1 for i in idx[:N_EXAMPLES]), int(idx.size)


def _values(series: pd.Series, mask: np.ndarray) -> tuple[str, ...]:
    """Example values, as Python writes them, each cut to ``MAX_SHOWN`` characters."""
    shown = series.to_numpy()[np.flatnonzero(mask)[:N_EXAMPLES]]
    out = []
    for v in shown:
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
    if spec.model.family == "event_time":
        event = spec.event_options
        needed += ["federated", "cohort"]
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
    """Numbers as float, NaN where a value is not a number (text, dates, complex numbers)."""
    if (pd.api.types.is_datetime64_any_dtype(series.dtype)
            or pd.api.types.is_timedelta64_dtype(series.dtype)
            or isinstance(series.dtype, pd.PeriodDtype)):
        return pd.Series(np.nan, index=series.index)  # dates are not numbers
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. complex values cast to real
            values = pd.to_numeric(series, errors="coerce")
            if pd.api.types.is_numeric_dtype(values.dtype) and values.dtype.kind != "c":
                return values.astype(float)
    except (ArithmeticError, TypeError, ValueError, Warning):
        pass  # a value pandas cannot convert in bulk (an integer beyond float range)
    return pd.Series([_one_float(v) for v in series.to_numpy(dtype=object)],
                     index=series.index, dtype=float)


def _numeric_problems(
    raw: pd.Series, column: str, role: str, kind: str
) -> tuple[list[Problem], pd.Series]:
    """Convert a column to numbers; report text, infinities and range breaches.

    Returns the problems and the converted column (float).
    """
    problems: list[Problem] = []
    missing = _blank(raw)
    values = _as_float(raw.where(~missing))
    text = ~missing & values.isna().to_numpy()
    if text.any():
        rows, n = _rows(text)
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
            rows, n = _rows(mask)
            problems.append(Problem(column, role, what, fix, rows, n, _values(raw, mask)))
    return problems, values


def _category_problems(
    raw: pd.Series, column: str, role: str, levels: Sequence[str]
) -> tuple[list[Problem], pd.Series]:
    missing = _blank(raw)
    text = _text(raw).str.strip()
    unknown = ~missing & ~text.isin(list(levels)).fillna(False).to_numpy(dtype=bool)
    problems = []
    if unknown.any():
        rows, n = _rows(unknown)
        problems.append(Problem(
            column, role, "unknown label", f"use one of {', '.join(levels)} (or map your labels "
            "onto these before fitting)", rows, n, _values(raw, unknown)))
    return problems, text.astype(object).where(~missing, None)


def _constant_within_school(
    frame: pd.DataFrame, name: str, column: str, positions: np.ndarray, school: np.ndarray
) -> list[Problem]:
    """A school-level column must take one value per school (blank counts as a value);
    ``school`` holds each row's school as an integer code."""
    # integer codes (blank its own value): a school with two (school, value) pairs varies
    value = pd.factorize(frame[name], use_na_sentinel=False)[0].astype(np.int64)
    n_codes = int(value.max(initial=0)) + 1
    pairs = np.unique(school * n_codes + value)
    n_values = np.bincount(pairs // n_codes, minlength=school.max() + 1)
    mask = n_values[school] > 1
    if not mask.any():
        return []
    rows, n = _rows(mask, positions)
    schools = pd.unique(frame.loc[mask, "school"])
    shown = ", ".join(repr(s) for s in schools[:N_EXAMPLES])
    more = ", ..." if len(schools) > N_EXAMPLES else ""
    return [Problem(
        column, name,
        f"not constant within school ({_plural(len(schools), 'school')}: {shown}{more})",
        "a school-level value must be the same for every pupil of a school; correct the "
        "school's rows or split it into separate school ids", rows, n)]


def validate_table(
    raw: pd.DataFrame,
    spec: ModelSpec,
    years: Iterable[int] | None = None,
    drop_incomplete: bool = False,
    source: str = "data",
) -> PupilTable:
    """Check a pupil table against a spec and return it with canonical column names.

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
    years = None if years is None else sorted(set(int(y) for y in years))
    needed = needed_roles(spec, years)
    if years is not None or spec.model.family == "event_time":
        # years since founding are read, or derived from the calendar years
        needed += (["years_since"] if spec.column("years_since") in raw.columns
                   else ["cohort", "founding_year"])
        needed = list(dict.fromkeys(needed))
    coding = spec.categorical_coding()
    present = {name: spec.column(name) for name in [*needed, *OPTIONAL_ROLES]
               if spec.column(name) in raw.columns}
    problems = _column_problems(raw, spec, needed, present)
    if problems:  # nothing else can be checked reliably without the columns
        raise DataError(_message(source, problems, len(raw)))

    out: dict[str, pd.Series] = {}
    missing_rows = np.zeros(len(raw), dtype=bool)
    missing_cols: list[tuple[str, str, np.ndarray]] = []
    for name, column in present.items():
        series = raw[column]
        role = ROLES.get(name)
        kind = role.kind if role else "numeric"
        if name in coding:
            kind = "category"
        missing = _blank(series)
        if kind in ("label", "id"):
            # kept as pandas text (Arrow-backed), not Python objects: at national size each
            # object column of ids is a few hundred megabytes
            out[name] = _text(series).str.strip().where(~missing)
            if kind == "label":
                continue
        elif kind == "category":
            levels = coding[name][0] if name in coding else role.levels
            probs, out[name] = _category_problems(series, column, name, levels)
            problems += probs
        else:
            probs, out[name] = _numeric_problems(series, column, name, kind)
            problems += probs
        if name in needed and missing.any():
            missing_cols.append((column, name, missing))
            missing_rows |= missing

    n_dropped = 0
    if missing_cols and not drop_incomplete:
        for column, name, missing in missing_cols:
            rows, n = _rows(missing)
            problems.append(Problem(
                column, name, "missing value",
                "fill in the values, or run with --drop-incomplete to drop incomplete rows "
                "(bayesfed reports how many)", rows, n))
    keep = ~missing_rows if drop_incomplete else np.ones(len(raw), dtype=bool)
    n_dropped = int((~keep).sum())

    # Keep each row's position in the input so that later rules report input row numbers.
    frame = pd.DataFrame({k: v.reset_index(drop=True) for k, v in out.items()}, copy=False)
    del out
    positions = np.flatnonzero(keep)
    if n_dropped:  # otherwise no copy: at national size each one is a gigabyte
        frame = frame.loc[keep].reset_index(drop=True)

    if not problems:
        for name in frame.columns:  # whole numbers as integers; nullable where one is missing
            role = ROLES.get(name)
            if role is not None and role.kind in ("flag", "year"):
                has_na = bool(frame[name].isna().any())
                frame[name] = frame[name].astype("Int64" if has_na else np.int64)
        problems += _structure_problems(frame, present, positions)
    if problems:
        raise DataError(_message(source, problems, len(raw), n_dropped))

    if "years_since" not in frame and {"cohort", "founding_year"} <= set(frame):
        frame["years_since"] = frame["cohort"] - frame["founding_year"]
    if years is not None:
        problems += _selection_problems(frame, spec, years, present)
        if problems:
            raise DataError(_message(source, problems, len(raw), n_dropped))
    else:
        problems += _sample_problems(frame, spec, present, None)
        if problems:
            raise DataError(_message(source, problems, len(raw), n_dropped))
    return PupilTable(frame=frame, n_input_rows=len(raw), n_dropped=n_dropped,
                      columns=dict(present))


def _column_problems(
    raw: pd.DataFrame, spec: ModelSpec, needed: Sequence[str], present: dict[str, str]
) -> list[Problem]:
    """Columns the model needs but cannot read unambiguously, and mappings that cannot work."""
    problems: list[Problem] = []
    if len(raw.columns):
        found = (f"columns found: {', '.join(map(str, raw.columns[:12]))}"
                 f"{', ...' if len(raw.columns) > 12 else ''}")
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
        n_copies = int((raw.columns == column).sum())
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


def _structure_problems(
    frame: pd.DataFrame, present: dict[str, str], positions: np.ndarray
) -> list[Problem]:
    """Rules across rows: school-level constancy, year arithmetic, flags vs ids, duplicates."""
    problems: list[Problem] = []
    if len(frame) == 0:
        return [Problem("", "", "no rows",
                        "check the export: bayesfed needs one row per pupil")]
    school = pd.factorize(frame["school"], use_na_sentinel=False)[0].astype(np.int64)
    for name in ("federated", "founding_year", "federation", "federation_type"):
        if name in frame:
            problems += _constant_within_school(frame, name, present[name], positions, school)
    if {"years_since", "cohort", "founding_year"} <= set(frame):
        diff = frame["cohort"] - frame["founding_year"]  # blank where a year is blank
        mask = (frame["years_since"] != diff).fillna(False).to_numpy(dtype=bool)
        if mask.any():
            rows, n = _rows(mask, positions)
            problems.append(Problem(
                present["years_since"], "years_since",
                f"not equal to {present['cohort']} - {present['founding_year']}",
                "correct the values, or drop the column and bayesfed derives it", rows, n,
                _values(frame["years_since"], mask)))
    if {"federation", "federated"} <= set(frame):
        has_id = frame["federation"].notna().to_numpy()
        flag = frame["federated"].eq(1).fillna(False).to_numpy(dtype=bool)
        no_flag = frame["federated"].eq(0).fillna(False).to_numpy(dtype=bool)  # blank: neither
        for mask, what in ((has_id & no_flag, "federation id on a school whose federated flag "
                            "is 0"), (~has_id & flag, "federated flag 1 with no federation id")):
            if mask.any():
                rows, n = _rows(mask, positions)
                problems.append(Problem(
                    present["federation"], "federation", what,
                    "a federated school has a federation id and flag 1; a matched school has "
                    "a blank id and flag 0", rows, n))
    if "pupil_id" in frame:
        keys = ["pupil_id", "cohort"] if "cohort" in frame else ["pupil_id"]
        known = frame[keys].notna().all(axis=1).to_numpy()  # a blank cohort could be any
        key = np.zeros(len(frame), dtype=np.int64)  # one integer per (pupil id, cohort)
        for name in keys:
            codes, uniques = pd.factorize(frame[name])
            key = key * (len(uniques) + 1) + codes
        mask = pd.Series(key).duplicated(keep=False).to_numpy() & known
        if mask.any():
            rows, n = _rows(mask, positions)
            within = " within a cohort" if "cohort" in frame else ""
            problems.append(Problem(
                present["pupil_id"], "pupil_id", f"duplicated pupil id{within}",
                "each pupil appears once per cohort; remove repeated rows", rows, n,
                _values(frame["pupil_id"], mask)))
    return problems


def _spread(frame: pd.DataFrame, name: str, column: str, role: str, where: str
            ) -> list[Problem]:
    """A numeric column must vary, by enough to scale the default priors by (sd > 0)."""
    values = frame[name].to_numpy(dtype=float)
    if frame[name].nunique() < 2:
        first = frame[name].iloc[0]
        first = first.item() if isinstance(first, np.generic) else first
        return [Problem(column, role, f"constant ({first!r}) in {where}",
                        "the outcome must vary between pupils" if role == "outcome" else
                        "drop the predictor from the spec for this selection")]
    with np.errstate(under="ignore"):
        sd = float(np.std(values, ddof=1))
    if not sd > 0:
        return [Problem(column, role, f"variation too small to compute with in {where} (values "
                        f"differ by at most {np.ptp(values):.3g})",
                        "rescale the column (e.g. to its usual units), or drop it if it is "
                        "constant in substance")]
    return []


def _variation_problems(
    frame: pd.DataFrame, spec: ModelSpec, present: dict[str, str], where: str
) -> list[Problem]:
    """An outcome or a predictor (or categorical level) that does not vary."""
    problems = _spread(frame, "outcome", present["outcome"], "outcome", where)
    coding = spec.categorical_coding()
    for term in spec.terms:
        if term in coding:
            levels, reference = coding[term]
            seen = set(frame[term].dropna().unique())
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
            problems += _spread(frame, term, present[term], term, where)
    if not problems and spec.terms:
        problems += _collinearity_problems(frame, spec, present, where)
    return problems


#: Pupils per block of the collinearity rule's QR factorisation.
QR_BLOCK = 500_000


def _collinearity_problems(
    frame: pd.DataFrame, spec: ModelSpec, present: dict[str, str], where: str
) -> list[Problem]:
    """Coefficients that are exact linear combinations of the intercept and earlier columns.

    Columns are added in reporting order; one that does not raise the rank of
    ``[1, X_so_far]`` is reported with the columns it is a combination of.
    """
    design = build_design(frame, spec.predictors.pupil, spec.predictors.school,
                          spec.categorical_coding())
    names = ("intercept", *design.coef_names)
    scale = np.r_[1.0, np.abs(design.X).max(axis=0, initial=0.0)]
    scale = np.where(scale > 0, scale, 1.0)

    def scaled(rows: slice) -> np.ndarray:
        """[1, X] of some pupils, each column divided by its largest absolute value."""
        block = design.X[rows]
        return np.column_stack([np.ones(len(block)), block]) / scale

    # |R_jj| of a QR factorisation is the norm of column j's residual on the columns before it
    # (whose span is that of the columns kept so far): one pass over the pupils, not one
    # least-squares fit per column. R is accumulated over blocks of pupils (the R of
    # [R_so_far; block]), so memory holds one block, not a copy of every pupil's row.
    R = np.zeros((0, len(names)))
    for start in range(0, design.n_pupils, QR_BLOCK):
        R = np.linalg.qr(np.vstack([R, scaled(slice(start, start + QR_BLOCK))]), mode="r")
    residual_norm = np.abs(np.diag(R))
    problems = []
    kept: list[int] = [0]
    for j in range(1, len(names)):
        if residual_norm[j] > 1e-8 * np.sqrt(design.n_pupils):
            kept.append(j)
            continue
        full = scaled(slice(None))  # only when a problem is reported
        coef, *_ = np.linalg.lstsq(full[:, kept], full[:, j], rcond=None)
        parts = [names[k] for k, c in zip(kept, coef, strict=True) if abs(c) > 1e-8]
        term = names[j].split("[")[0]
        problems.append(Problem(
            present.get(term, term), term,
            f"coefficient {names[j]!r} is a linear combination of {', '.join(parts)} in {where}",
            "drop one of these predictors from the spec: their effects cannot be told apart"))
    return problems


def _selection_problems(
    frame: pd.DataFrame, spec: ModelSpec, years: Sequence[int], present: dict[str, str]
) -> list[Problem]:
    problems = []
    for year in years:
        sel = frame.loc[(frame["years_since"] == year).to_numpy(dtype=bool)]
        problems += _sample_problems(sel, spec, present, year, frame)
    return problems


def _sample_problems(
    sel: pd.DataFrame, spec: ModelSpec, present: dict[str, str], year: int | None,
    frame: pd.DataFrame | None = None,
) -> list[Problem]:
    """Rules for the pupils of one fit: a year since founding, or the whole table (None)."""
    if year is None:
        column, role, where = present["school"], "school", "the table"
        what = "the table has"
    else:
        column = present.get("years_since",
                             f"{present.get('cohort')} - {present.get('founding_year')}")
        role, where = "years_since", f"year {year}"
        what = f"year {year} since founding has"
    if len(sel) == 0 and frame is not None:
        available = sorted(int(v) for v in frame["years_since"].unique())
        return [Problem(
            column, role, f"no pupils in year {year} since founding",
            f"choose years among those present ({', '.join(map(str, available))})")]
    if sel["school"].nunique() < 2:
        return [Problem(
            column, role, f"{what} pupils in a single school ({sel['school'].iloc[0]!r}): "
            "school variance is not identified",
            "fit years with pupils in at least two schools" if year is not None else
            "a two-level model needs pupils in at least two schools")]
    return _variation_problems(sel, spec, present, where)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _message(source: str, problems: list[Problem], n_rows: int, n_dropped: int = 0) -> str:
    head = f"{source}: {_plural(len(problems), 'problem')} in {_plural(n_rows, 'row')}"
    if n_dropped:
        head += f" ({_plural(n_dropped, 'incomplete row')} dropped)"
    head += " (row numbers count data rows from 1, the header excluded):"
    return "\n".join([head, *(f"  - {p.line()}" for p in problems)])


def describe(table: PupilTable) -> dict[str, object]:
    """Counts for a one-screen summary: pupils, schools, federations, cohorts, years.

    Returns
    -------
    dict
        ``pupils``, ``schools``, ``federated_schools``, ``federations``, ``cohorts`` (list),
        ``years_since`` (year -> pupils), ``dropped`` and ``input_rows``.
    """
    f = table.frame
    out: dict[str, object] = {
        "input_rows": table.n_input_rows,
        "dropped": table.n_dropped,
        "pupils": len(f),
        "schools": int(f["school"].nunique()),
    }
    if "federated" in f:
        federated = f["federated"].eq(1).fillna(False).to_numpy(dtype=bool)
        out["federated_schools"] = int(f.loc[federated, "school"].nunique())
    if "federation" in f:
        out["federations"] = int(f["federation"].nunique())
    if "cohort" in f:
        out["cohorts"] = sorted(int(c) for c in f["cohort"].dropna().unique())
    if "years_since" in f:
        counts = f.groupby("years_since").agg(pupils=("school", "size"),
                                              schools=("school", "nunique"))
        out["years_since"] = {int(k): {"pupils": int(r.pupils), "schools": int(r.schools)}
                              for k, r in counts.iterrows()}
    return out
