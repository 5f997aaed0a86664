"""The rules of single rows (2-4, 6 and 7 of :mod:`bayesfed.inputs.validate`), applied to one
batch of rows at a time: text in numeric columns, missing values, values out of range,
inconsistent years since founding, a federation id without its flag."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from bayesfed.inputs.problems import Problem, example_rows, example_values
from bayesfed.inputs.rules import MAX_ABS, VALUE_RULES, Rules
from bayesfed.inputs.schema import ROLES


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
    would give (both round correctly; ``tests/inputs/test_validate.py`` compares them), at a
    fraction of the cost (``docs/benchmarks.md``). Anything else, a single value Arrow cannot
    parse included, goes through pandas.
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


def _clean_numbers(raw: pd.Series, kind: str) -> pd.Series | None:
    """A column of NumPy numbers that breaks no rule of its kind, as a new float column; None
    when it is of another dtype or some value may break a rule (:func:`_numeric_problems`
    then finds which). Decided by the extremes, two passes, where the rules' masks take a
    dozen (a national table's numeric columns: most of their checking time)."""
    if not isinstance(raw.dtype, np.dtype) or raw.dtype.kind not in "iuf":
        return None
    values = raw.to_numpy(dtype=float, copy=True)
    if not len(values):
        return None
    low, high = values.min(), values.max()  # NaN (missing) propagates: not clean
    whole = raw.dtype.kind in "iu"
    if not (-MAX_ABS <= low and high <= MAX_ABS):
        return None
    if kind in ("flag", "unit_interval") and not (low >= 0 and high <= 1):
        return None
    if kind in ("flag", "year") and not whole:
        return None
    return pd.Series(values, index=raw.index)


def _numeric_problems(
    raw: pd.Series, column: str, role: str, kind: str, positions: np.ndarray
) -> tuple[list[Problem], pd.Series]:
    """Convert a column to numbers; report text, infinities and range breaches.

    Returns the problems and the converted column (float).
    """
    clean = _clean_numbers(raw, kind)
    if clean is not None:
        return [], clean
    problems: list[Problem] = []
    missing = _blank(raw)
    values = _as_float(raw.where(~missing))
    text = ~missing & values.isna().to_numpy()
    if text.any():
        rows, n = example_rows(text, positions)
        problems.append(Problem(column, role, "not numeric", "replace text by numbers "
                                "(or mark the value as missing)", rows, n,
                                example_values(raw, text)))
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
            rows, n = example_rows(mask, positions)
            problems.append(Problem(column, role, what, fix, rows, n, example_values(raw, mask)))
    return problems, values


def _category_problems(
    raw: pd.Series, column: str, role: str, levels: Sequence[str], positions: np.ndarray
) -> tuple[list[Problem], pd.Series]:
    missing = _blank(raw)
    text = _text(raw).str.strip()
    unknown = ~missing & ~text.isin(list(levels)).fillna(False).to_numpy(dtype=bool)
    problems = []
    if unknown.any():
        rows, n = example_rows(unknown, positions)
        problems.append(Problem(
            column, role, "unknown label", f"use one of {', '.join(levels)} (or map your labels "
            "onto these before fitting)", rows, n, example_values(raw, unknown)))
    return problems, text.astype(object).where(~missing, None)


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
        ranked += [((0, i, VALUE_RULES.index(p.what)), p) for p in probs]
        if name in rules.needed and missing.any():
            missing_cols.append((i, column, name, missing))
            missing_rows |= missing
    for column in rules.complete:  # another model's column: a blank drops the row too
        missing_rows |= _blank(raw[column])
    if missing_cols and not rules.drop_incomplete:
        for i, column, name, missing in missing_cols:
            rows, n = example_rows(missing, positions)
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
            rows, n = example_rows(mask, positions)
            ranked.append(((3,), Problem(
                present["years_since"], "years_since",
                f"not equal to {present['cohort']} - {present['founding_year']}",
                "correct the values, or drop the column and bayesfed derives it", rows, n,
                example_values(frame["years_since"], mask))))
    if {"federation", "federated"} <= set(frame):
        has_id = frame["federation"].notna().to_numpy()
        flag = frame["federated"].eq(1).fillna(False).to_numpy(dtype=bool)
        no_flag = frame["federated"].eq(0).fillna(False).to_numpy(dtype=bool)  # blank: neither
        for k, (mask, what) in enumerate((
                (has_id & no_flag, "federation id on a school whose federated flag is 0"),
                (~has_id & flag, "federated flag 1 with no federation id"))):
            if mask.any():
                rows, n = example_rows(mask, positions)
                ranked.append(((4, k), Problem(
                    present["federation"], "federation", what,
                    "a federated school has a federation id and flag 1; a matched school has "
                    "a blank id and flag 0", rows, n)))
    return ranked
