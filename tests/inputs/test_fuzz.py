"""Bad input, fuzzed: valid tables and specs corrupted in every way a real export goes wrong.

Each case ends either in a valid result (validation passes, and the design, the priors and the
PyMC model of every selected year can be built, without sampling) or in bayesfed's own
``DataError`` / ``SpecError`` whose message names the problem (the corrupted column, key or
year), never in a pandas, NumPy, PyTensor or pydantic traceback. Where the outcome is certain
(a needed column dropped, text in a numeric column the model reads, a year without pupils)
the test says which: an error naming the column, or a valid result.

Tables are small (4 schools, cohorts of years 0 and 1 since founding): 64 pupils built like
``conftest.small_table``, and 78 cut from the shipped study. Corrupted tables go to validation
as DataFrames, through real CSV files (read as text, where strings in numeric columns come
from) and, for column types, through Parquet. The CLI (``bayesfed validate``) is run on a few
cases too. Cases per kind are printed at the end of the run (conftest's
``pytest_terminal_summary``). What the fuzzer found is kept as fixed cases at the end.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FUZZ_COUNTS, MODELS, ROOT, run_main, small_table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bayesfed.cli import app
from bayesfed.design.columns import design_for
from bayesfed.errors import DataError, SpecError
from bayesfed.inputs import validate
from bayesfed.inputs.read import read_table
from bayesfed.inputs.schema import ROLES
from bayesfed.inputs.spec import ModelSpec, load_spec, spec_from_dict
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import resolve_priors
from bayesfed.modelling.two_level import build_two_level

#: Examples per corruption kind (more for a deeper search: FUZZ_EXAMPLES=200 pytest ...), and
#: the fewest a kind must have run for the test to pass. The default run is derandomized (the
#: same cases every run, so CI is reproducible); a deeper search draws new ones.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "14"))
MIN_CASES = min(8, EXAMPLES)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                derandomize="FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPECS = {name: tomllib.loads((MODELS / f"{stem}.toml").read_text(encoding="utf-8"))
         for name, stem in (("M0", "m0_empty"), ("M1", "m1_pupil"), ("M2", "m2_federation"))}
YEARS = (None, [0], [1], [0, 1])
NUMERIC_KINDS = ("numeric", "flag", "unit_interval", "year")
#: Roles validation reads whenever their column is present (as in bayesfed.inputs.validate).
OPTIONAL = ("pupil_id", "federation", "federation_type", "federated", "cohort", "founding_year",
            "years_since")
#: Text pandas reads from a CSV as missing (its default ``na_values``).
NA_TEXT = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
           "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def study_subset() -> pd.DataFrame:
    """Pupils of the shipped study: 2 federated and 2 matched schools, years 0 and 1.

    In each school and year: two pupils of each SEN level, and two with and two without FSM
    and non-White British (so that every predictor varies in every year).
    """
    frame = pd.read_parquet(ROOT / "data" / "synthetic_study.parquet")
    frame = frame.loc[frame["school_id"].isin(["S0003", "S0004", "S0005", "S0006"])
                      & frame["years_since"].isin([0, 1])]
    keys = ["school_id", "years_since"]
    picks = [frame.groupby([*keys, by], sort=False).head(2).index
             for by in ("sen", "fsm", "non_white_british")]
    return frame.loc[sorted(set().union(*picks))].reset_index(drop=True)


BASES = {"small": small_table(seed=3, schools=4, pupils=8), "study": study_subset()}


# --- cases and what must come of them ------------------------------------------------------

@dataclass
class Case:
    """One corrupted input and the outcome it must have.

    ``must_fail``: an error is required; ``may_fail``: an error is allowed. Either way an error
    must contain every string of ``names`` and, when given, one of ``any_names``.
    """

    kind: str
    note: str
    base: str
    spec: dict
    years: list[int] | None
    drop: bool
    route: str  # "frame", "csv", "parquet", or "text" (csv_bytes written as they are)
    must_fail: bool = False
    may_fail: bool = False
    error: str = "DataError"
    names: tuple[str, ...] = ()
    any_names: tuple[str, ...] = ()
    table: pd.DataFrame | None = field(default=None, repr=False)
    csv_bytes: bytes | None = field(default=None, repr=False)


def model_of(doc: dict) -> ModelSpec:
    return spec_from_dict(doc)


def reads(doc: dict, years: list[int] | None, columns) -> tuple[dict, dict, set]:
    """What validation reads from a table with these columns.

    Returns role -> column for the needed roles, for every role read (needed and optional
    ones present), and the set of columns read as numbers.
    """
    spec = model_of(doc)
    columns = list(columns)
    roles = ["outcome", "school", *spec.terms]
    if years is not None:
        roles += (["years_since"] if spec.column("years_since") in columns
                  else ["cohort", "founding_year"])
    needed = {r: spec.column(r) for r in roles}
    read = {**{r: spec.column(r) for r in OPTIONAL if spec.column(r) in columns}, **needed}
    coding = spec.categorical_coding()
    numeric = {col for role, col in read.items() if role not in coding
               and (ROLES[role].kind in NUMERIC_KINDS if role in ROLES else True)}
    return needed, read, numeric


def ids_repeat(doc: dict, table: pd.DataFrame) -> tuple[str, ...]:
    """The error a table without a cohort column gets when a pupil id occurs twice.

    Without cohorts the table counts as one cohort, so a pupil followed up over two cohorts
    (as in the small base table) is a duplicated id.
    """
    spec = model_of(doc)
    pupil, cohort = spec.column("pupil_id"), spec.column("cohort")
    if cohort in table.columns or (table.columns == pupil).sum() != 1:
        return ()
    if table[pupil].dropna().duplicated().any():
        return (col(pupil), "duplicated pupil id")
    return ()


def col(name: str) -> str:
    """How an error line names a column."""
    return f"column {name!r}"


# --- strategies ----------------------------------------------------------------------------

ROUTES = ("frame", "csv")
#: Printable text without control characters or surrogates (they cannot go into a file).
TEXT = st.text(st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs")),
               min_size=1, max_size=10)
NAMES = TEXT.map(str.strip).filter(lambda s: s != "" and not s.startswith(("#", '"')))


def is_junk(text: str) -> bool:
    """Text that is neither a number nor read as missing."""
    stripped = text.strip()
    if stripped in NA_TEXT:
        return False
    try:
        float(stripped)
    except ValueError:
        return True
    return False


JUNK = st.one_of(
    st.sampled_from(["A*", "absent", "x", "-", "?", "1,5", "12abc", "#DIV/0!", "#VALUE!", "TRUE",
                     "yes", "0x1A", "1.2.3", "5 6", "U", "£3", "3%", "1e", "--1"]),
    TEXT).filter(is_junk)


@st.composite
def setting(draw, specs=("M0", "M1", "M2"), routes=ROUTES):
    """A base table (a copy), a spec document, a year selection, drop_incomplete, a route."""
    base = draw(st.sampled_from(sorted(BASES)))
    model = draw(st.sampled_from(specs))
    return (base, BASES[base].copy(), copy.deepcopy(SPECS[model]), draw(st.sampled_from(YEARS)),
            draw(st.booleans()), draw(st.sampled_from(routes)))


def some_rows(draw, table: pd.DataFrame, max_rows: int = 3) -> list[int]:
    n = draw(st.integers(1, max_rows))
    return sorted(draw(st.lists(st.integers(0, len(table) - 1), min_size=n, max_size=n,
                                unique=True)))


def put(table: pd.DataFrame, column: str, rows, value) -> None:
    """Set cells to a value of any type (the column becomes an object column)."""
    table[column] = table[column].astype(object)
    for r in rows:
        table.at[r, column] = value


def numeric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c in ROLES and ROLES[c].kind in NUMERIC_KINDS
            or c == "gcse_score"]


@st.composite
def dropped_column(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    name = draw(st.sampled_from(list(table.columns)))
    table = table.drop(columns=[name])
    needed, _, _ = reads(doc, years, table.columns)
    names = (col(name), "missing column") if name in needed.values() else ids_repeat(doc, table)
    return Case("dropped column", f"drop {name!r}", base, doc, years, drop, route, table=table,
                must_fail=bool(names), names=names)


@st.composite
def renamed_column(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    old = draw(st.sampled_from(list(table.columns)))
    mode = draw(st.sampled_from(["new name", "onto another column", "new name, spec remapped"]))
    if mode == "onto another column":
        new = draw(st.sampled_from([c for c in table.columns if c != old]))
    else:
        new = draw(NAMES.filter(lambda s: s not in table.columns and s not in ROLES))
    table = table.rename(columns={old: new})
    if mode == "new name, spec remapped":
        spec = model_of(doc)
        role = next(r for r in [*ROLES, *spec.terms] if spec.column(r) == old)
        doc.setdefault("columns", {})[role] = new
        return Case("renamed column", f"{old!r} -> {new!r}, columns.{role} = {new!r}", base,
                    doc, years, drop, route, table=table)
    needed, read, _ = reads(doc, years, table.columns)
    names = []
    if old in needed.values():
        names += [col(old), "missing column"]
    if mode == "onto another column" and new in read.values():
        names += [col(new), "columns of this name"]
    names = names or list(ids_repeat(doc, table))
    return Case("renamed column", f"{mode}: {old!r} -> {new!r}", base, doc, years, drop, route,
                table=table, must_fail=bool(names), names=tuple(names))


@st.composite
def text_in_numeric(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    name = draw(st.sampled_from(numeric_columns(table)))
    rows = some_rows(draw, table) if draw(st.booleans()) else list(range(len(table)))
    junk = draw(JUNK)
    put(table, name, rows, junk)
    _, _, numeric = reads(doc, years, table.columns)
    fails = name in numeric
    return Case("text in a numeric column", f"{name}[{rows[:5]}...] = {junk!r}", base, doc,
                years, drop, route, table=table, must_fail=fails,
                names=(col(name), "not numeric") if fails else ())


@st.composite
def missing_values(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    name = draw(st.sampled_from(list(table.columns)))
    rows = some_rows(draw, table, 6)
    markers = [np.nan, None, pd.NA, "", "   "] if route == "frame" else \
        [np.nan, "", "NA", "N/A", "NaN", "null", "#N/A", "  "]
    marker = draw(st.sampled_from(markers))
    put(table, name, rows, marker)
    needed, read, _ = reads(doc, years, table.columns)
    note = f"{name}{rows} = {marker!r}"
    if name in needed.values() and not drop:
        return Case("missing value", note, base, doc, years, drop, route, table=table,
                    must_fail=True, names=(col(name), "missing value"))
    if name in needed.values():  # dropped rows may leave a year without variation
        return Case("missing value", note, base, doc, years, drop, route, table=table,
                    may_fail=True)
    return Case("missing value", note, base, doc, years, drop, route, table=table,
                may_fail=name in read.values(), names=(col(name),))


@st.composite
def infinity(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    name = draw(st.sampled_from(numeric_columns(table)))
    rows = some_rows(draw, table)
    values = [math.inf, -math.inf] if route == "frame" else \
        ["inf", "-inf", "Infinity", "-Infinity", "1e999", "-1e400"]
    value = draw(st.sampled_from(values))
    put(table, name, rows, value)
    _, _, numeric = reads(doc, years, table.columns)
    fails = name in numeric
    return Case("infinity", f"{name}{rows} = {value!r}", base, doc, years, drop, route,
                table=table, must_fail=fails, names=(col(name), "infinite value") if fails else ())


@st.composite
def empty_table(draw):
    base, table, doc, years, drop, _ = draw(setting())
    variant = draw(st.sampled_from(["no rows", "no columns", "empty file", "all incomplete"]))
    if variant == "no rows":
        route = draw(st.sampled_from(["frame", "csv", "parquet"]))
        return Case("empty table", variant, base, doc, years, drop, route, table=table.iloc[:0],
                    must_fail=True, names=("table: no rows",))
    if variant == "no columns":
        return Case("empty table", variant, base, doc, years, drop, "frame",
                    table=pd.DataFrame(), must_fail=True,
                    names=("missing column", "the table has no columns"))
    if variant == "empty file":
        blank = draw(st.sampled_from([b"", b"\n", b"\n\n  \n"]))
        return Case("empty table", f"{variant} {blank!r}", base, doc, years, drop, "text",
                    csv_bytes=blank, must_fail=True, names=("cannot read CSV file",))
    route = draw(st.sampled_from(ROUTES))
    put(table, "gcse_score", range(len(table)), np.nan)
    return Case("empty table", f"{variant}, drop_incomplete={drop}", base, doc, years, drop,
                route, table=table, must_fail=True,
                names=("table: no rows",) if drop else (col("gcse_score"), "missing value"))


@st.composite
def one_school(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    school = draw(st.sampled_from(sorted(table["school_id"].unique())))
    if draw(st.booleans()):
        table = table.loc[table["school_id"] == school].reset_index(drop=True)
        note = f"only school {school!r}"
    else:
        table["school_id"] = school
        note = f"every pupil in school {school!r}"
    return Case("one school", note, base, doc, years, drop, route, table=table, must_fail=True,
                any_names=("single school", "not constant within school"))


@st.composite
def one_sen_category(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    levels = ["none", "school_action", "school_action_plus", "statemented"]
    level = draw(st.sampled_from(levels))
    variant = draw(st.sampled_from(["every pupil", "every pupil of a year", "level removed",
                                    "level relabelled"]))
    if variant == "every pupil of a year":
        year = draw(st.sampled_from(years or [0, 1]))
        rows = table["years_since"] == year if years else slice(None)
        table.loc[rows, "sen"] = level
        note = f"sen = {level!r} in year {year}" if years else f"sen = {level!r}"
    elif variant == "every pupil":
        table["sen"] = level
        note = f"sen = {level!r}"
    elif variant == "level removed":
        table = table.loc[table["sen"] != level].reset_index(drop=True)
        note = f"no pupil with sen {level!r}"
    else:
        other = draw(st.sampled_from([v for v in levels if v != level]))
        table.loc[table["sen"] == level, "sen"] = other
        note = f"sen {level!r} relabelled {other!r}"
    fails = "sen" in model_of(doc).terms
    return Case("all pupils in one SEN category", note, base, doc, years, drop, route,
                table=table, must_fail=fails, names=(col("sen"),) if fails else ())


@st.composite
def constant_predictor(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(specs=("M1", "M2"), routes=routes))
    terms = [t for t in model_of(doc).terms if t != "sen"]
    term = draw(st.sampled_from(terms))
    kind = ROLES[term].kind
    if kind == "flag":
        value = float(draw(st.sampled_from([0, 1])))
    elif kind == "unit_interval":
        value = draw(st.floats(0, 1))
    else:
        value = draw(st.floats(-1, 1))
    year = draw(st.sampled_from(years)) if years else None
    rows = (table["years_since"] == year).to_numpy() if year is not None else \
        np.ones(len(table), dtype=bool)
    near = kind != "flag" and draw(st.booleans())  # half the rows one float step away
    values = np.full(int(rows.sum()), value)
    if near:
        values[::2] = np.nextafter(value, math.inf)
    table[term] = table[term].astype(float)
    table.loc[rows, term] = values
    if term == "federated":  # keep the federation ids consistent with the flag
        table.loc[rows, "federation_id"] = ("F" + table.loc[rows, "school_id"]) if value else None
    where = f"in year {year}" if year is not None else "in the table"
    note = f"{term} = {value!r}{' and the next float' if near else ''} {where}"
    return Case("predictor constant within the selection", note, base, doc, years, drop, route,
                table=table, must_fail=True, names=(col(term),))


@st.composite
def duplicated_ids(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    variant = draw(st.sampled_from(["id copied within a cohort", "rows repeated",
                                    "two schools share an id"]))
    if variant == "id copied within a cohort":
        cohort = draw(st.sampled_from(sorted(table["cohort"].unique())))
        rows = np.flatnonzero(table["cohort"] == cohort)
        i, j = draw(st.lists(st.sampled_from(list(rows)), min_size=2, max_size=2, unique=True))
        table.loc[j, "pupil_id"] = table.loc[i, "pupil_id"]
        return Case("duplicated ids", f"{variant}: row {j + 1} = row {i + 1}", base, doc, years,
                    drop, route, table=table, must_fail=True,
                    names=(col("pupil_id"), "duplicated pupil id"))
    if variant == "rows repeated":
        rows = some_rows(draw, table)
        table = pd.concat([table, table.iloc[rows]], ignore_index=True)
        return Case("duplicated ids", f"{variant}: {rows}", base, doc, years, drop, route,
                    table=table, must_fail=True, names=(col("pupil_id"), "duplicated pupil id"))
    a, b = draw(st.lists(st.sampled_from(sorted(table["school_id"].unique())), min_size=2,
                         max_size=2, unique=True))
    table.loc[table["school_id"] == b, "school_id"] = a
    return Case("duplicated ids", f"{variant}: {b!r} -> {a!r}", base, doc, years, drop, route,
                table=table, may_fail=True)


@st.composite
def out_of_range(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    name = draw(st.sampled_from([*numeric_columns(table), "sen"]))
    kind = "numeric" if name == "gcse_score" else ROLES[name].kind
    rows = some_rows(draw, table)
    fails, what = True, ()
    if kind == "flag":
        value = draw(st.sampled_from([2, -1, 0.5, 10, 99, -999]) | st.integers(2, 10**9))
        what = ("value not 0/1",)
    elif kind == "unit_interval":
        value = draw(st.sampled_from([23.5, 100, -0.01]) | st.floats(1, 1e9, exclude_min=True)
                     | st.floats(-1e9, 0, exclude_max=True))
        what = ("value outside 0-1",)
    elif kind == "year":
        value = draw(st.sampled_from([2008.5, 0.5, -1.25, 1e20, -1e300])
                     | st.floats(-3000, 3000).filter(lambda v: v != round(v)))
        what = ("larger than",) if abs(value) > 1e15 else ("value not a whole number",)
    elif kind == "category":
        value = draw((st.sampled_from(["SA+", "School Action", "None", "NONE", "statement", "4",
                                       "sen", " none"]) | TEXT)
                     .filter(lambda v: v.strip() not in NA_TEXT))
        fails = value.strip() not in ROLES["sen"].levels
        what = ("unknown label",)
    else:  # the outcome and KS2: implausibly large values, or plausible sentinel codes
        value = draw(st.sampled_from([1e16, -1e300, 1.7e308, -999, 9999])
                     | st.floats(1e15, 1e300, exclude_min=True))
        fails = abs(value) > 1e15
        what = ("larger than",)
    put(table, name, rows, value)
    _, read, numeric = reads(doc, years, table.columns)
    fails = fails and (name in numeric or kind == "category" and name in read.values())
    return Case("out-of-range value", f"{name}{rows} = {value!r}", base, doc, years, drop, route,
                table=table, must_fail=fails, names=(col(name), *what) if fails else ())


class _Odd:
    def __repr__(self) -> str:
        return "<odd object>"


@st.composite
def wrong_column_type(draw):
    base, table, doc, years, drop, _ = draw(setting())
    name = draw(st.sampled_from(numeric_columns(table)))
    _, _, numeric = reads(doc, years, table.columns)
    if draw(st.booleans()):  # one cell of a foreign type (only a DataFrame can hold these)
        value = draw(st.sampled_from([[1, 2], {"a": 1}, _Odd(), pd.Timestamp("2020-01-01"),
                                      complex(1, 2), 10**400, -(10**400), b"\xff"]))
        rows = some_rows(draw, table)
        put(table, name, rows, value)
        fails = name in numeric
        return Case("wrong type in a cell", f"{name}{rows} = {value!r}", base, doc, years,
                    drop, "frame", table=table, must_fail=fails, names=(col(name),),
                    any_names=("not numeric", "infinite value") if fails else ())
    options = ["datetime", "category", "string", "float32"]
    if name in ROLES and ROLES[name].kind in ("flag", "year"):
        options += ["Int64", "bool"] if ROLES[name].kind == "flag" else ["Int64"]
    dtype = draw(st.sampled_from(options))
    if dtype == "datetime":
        table[name] = pd.to_datetime(table[name].astype(float), unit="D")
    else:
        table[name] = table[name].astype(dtype)
    if draw(st.booleans()):  # identifiers as categories or integers
        ids = table["school_id"]
        table["school_id"] = ids.astype("category") if draw(st.booleans()) else \
            pd.factorize(ids)[0] + 1
    route = draw(st.sampled_from(["frame", "parquet"]))
    fails = dtype == "datetime" and name in numeric
    return Case("wrong column type", f"{name} as {dtype}", base, doc, years, drop, route,
                table=table, must_fail=fails, names=(col(name), "not numeric") if fails else ())


@st.composite
def mapping_to_missing_column(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    spec = model_of(doc)
    roles = list(dict.fromkeys([*ROLES, *spec.terms]))
    role = draw(st.sampled_from(roles))
    columns = doc.setdefault("columns", {})
    if draw(st.booleans()):
        missing = draw(NAMES.filter(lambda s: s not in table.columns and s != role))
        columns[role] = missing
        needed, _, _ = reads(doc, years, table.columns)
        names = (f"{col(missing)} (role {role})", "missing column") if role in needed else \
            ids_repeat(doc, table)
        return Case("mapping to a missing column", f"columns.{role} = {missing!r}", base, doc,
                    years, drop, route, table=table, must_fail=bool(names), names=names)
    other = draw(st.sampled_from([r for r in roles if r != role and
                                  spec.column(r) in table.columns]))
    target = spec.column(other)
    columns[role] = target
    needed, read, _ = reads(doc, years, table.columns)
    both = role in read and other in read
    return Case("mapping to a missing column", f"columns.{role} = {target!r} (as {other})", base,
                doc, years, drop, route, table=table, must_fail=both, may_fail=True,
                names=(col(target), "mapped to several roles") if both else ())


@st.composite
def year_without_pupils(draw, routes=ROUTES):
    base, table, doc, years, drop, route = draw(setting(routes=routes))
    if draw(st.booleans()):
        absent = draw(st.integers(-40, 40).filter(lambda y: y not in (0, 1)))
        years = sorted({*(years or []), absent})
        return Case("year with no pupils", f"years {years}", base, doc, years, drop, route,
                    table=table, must_fail=True,
                    names=(f"no pupils in year {absent} since founding", "choose years among"))
    school = draw(st.sampled_from(sorted(table["school_id"].unique())))
    table = table.loc[(table["years_since"] == 0) | (table["school_id"] == school)]
    years = sorted({*(years or []), 1})
    return Case("year with no pupils", f"year 1 only in school {school!r}, years {years}", base,
                doc, years, drop, route, table=table.reset_index(drop=True), must_fail=True,
                names=("year 1 since founding has pupils in a single school",))


@st.composite
def mangled_csv(draw):
    base, table, doc, years, drop, _ = draw(setting())
    text = table.to_csv(index=False, lineterminator="\n")
    lines = text.rstrip("\n").split("\n")
    variant = draw(st.sampled_from(["semicolons", "tabs", "not UTF-8", "delimiter at row ends",
                                    "extra field", "short row", "BOM", "CRLF", "blank lines",
                                    "header only", "every field quoted", "space after comma"]))
    row = draw(st.integers(1, len(lines) - 1))
    encoding, must_fail, may_fail, names = "utf-8", False, False, ()
    if variant in ("semicolons", "tabs"):
        sep = ";" if variant == "semicolons" else "\t"
        text = table.to_csv(index=False, sep=sep, lineterminator="\n")
        must_fail, names = True, (f"separated by {variant}",)
    elif variant == "not UTF-8":
        text = text.replace(str(table["pupil_id"].iloc[row - 1]), "Zoë-Élodie", 1)
        encoding, must_fail, names = "cp1252", True, ("not UTF-8",)
    elif variant == "delimiter at row ends":
        text = "\n".join([lines[0], *(line + "," for line in lines[1:])]) + "\n"
    elif variant == "extra field":
        lines[row] += "," + draw(JUNK.filter(lambda s: "," not in s and '"' not in s))
        text = "\n".join(lines) + "\n"
        must_fail, names = True, ("more fields than the header", f"row(s) {row}")
    elif variant == "short row":
        lines[row] = lines[row].rsplit(",", draw(st.integers(1, 3)))[0]
        text = "\n".join(lines) + "\n"
        may_fail = True
    elif variant == "BOM":
        text = "\ufeff" + text
    elif variant == "CRLF":
        text = text.replace("\n", "\r\n")
    elif variant == "blank lines":
        text = "\n\n".join(lines) + "\n"
    elif variant == "header only":
        text = lines[0] + "\n"
        must_fail, names = True, ("table: no rows",)
    elif variant == "every field quoted":
        text = table.to_csv(index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")
    else:
        text = text.replace(",", ", ")
    return Case("mangled CSV file", f"{variant} (row {row})", base, doc, years, drop, "text",
                csv_bytes=text.encode(encoding), must_fail=must_fail, may_fail=may_fail,
                names=names)


# --- spec corruptions ----------------------------------------------------------------------

#: Spec keys with the type a value must have, and the models that have them.
SPEC_KEYS: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = [
    (("model", "name"), "str", ("M0", "M1", "M2")),
    (("model", "family"), "family", ("M0", "M1", "M2")),
    (("model", "description"), "str", ("M0", "M1", "M2")),
    (("model", "reference"), "str", ("M1", "M2")),
    (("columns", "outcome"), "str", ("M0", "M1", "M2")),
    (("columns", "school"), "str", ("M0", "M1", "M2")),
    (("predictors", "pupil"), "list", ("M1", "M2")),
    (("predictors", "school"), "list", ("M2",)),
    (("categorical", "sen", "levels"), "list", ("M1", "M2")),
    (("categorical", "sen", "reference"), "str", ("M1", "M2")),
    (("priors", "intercept", "mu"), "number", ("M0", "M1", "M2")),
    (("priors", "intercept", "sigma"), "positive", ("M0", "M1", "M2")),
    (("priors", "slopes", "sigma"), "positive", ("M1", "M2")),
    (("priors", "slope", "ks2", "mu"), "number", ("M1", "M2")),
    (("priors", "sd_school", "sigma"), "positive", ("M0", "M1", "M2")),
    (("priors", "sigma", "sigma"), "positive", ("M0", "M1", "M2")),
    (("model",), "table", ("M0", "M1", "M2")),
    (("columns",), "table", ("M0", "M1", "M2")),
    (("predictors",), "table", ("M1", "M2")),
    (("priors",), "table", ("M0", "M1", "M2")),
]

ANY_VALUE = st.one_of(
    st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    TEXT, st.dates(), st.lists(st.integers(0, 9), max_size=2), st.lists(TEXT, max_size=2),
    st.dictionaries(st.sampled_from(["a", "mu"]), st.integers(0, 9), max_size=1))


def wrong_for(kind: str, value: object) -> bool:
    """True when a TOML value does not fit a key of this kind."""
    if kind == "str":
        return not isinstance(value, str)
    if kind == "family":
        return value not in ("two_level", "event_time")
    if kind == "list":
        return not (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if kind == "table":
        return not isinstance(value, dict)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value):
        return True
    return kind == "positive" and not value > 0


def set_key(doc: dict, path: tuple[str, ...], value: object) -> None:
    node = doc
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


@st.composite
def spec_wrong_type(draw, routes=ROUTES):
    path, kind, models = draw(st.sampled_from(SPEC_KEYS))
    base, table, _, years, drop, route = draw(setting(routes=routes))
    doc = copy.deepcopy(SPECS[draw(st.sampled_from(models))])
    value = draw(st.one_of(ANY_VALUE, st.sampled_from([math.inf, -math.inf, math.nan, -1.0, 0])
                           ).filter(lambda v: wrong_for(kind, v)))
    set_key(doc, path, value)
    return Case("wrong type in the spec", f"{'.'.join(path)} = {value!r}", base, doc, years,
                drop, route, table=table, must_fail=True, error="SpecError",
                names=(".".join(path),))


#: Where an unknown key can go, the keys valid there, and the models that have the table.
KEY_PLACES: list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    ((), ("model", "columns", "predictors", "categorical", "priors", "event"),
     ("M0", "M1", "M2")),
    (("model",), ("name", "family", "description", "reference"), ("M0", "M1", "M2")),
    (("columns",), tuple(ROLES), ("M0", "M1", "M2")),
    (("predictors",), ("pupil", "school"), ("M1", "M2")),
    (("categorical",), tuple(ROLES), ("M1", "M2")),
    (("categorical", "sen"), ("levels", "reference"), ("M1", "M2")),
    (("priors",), ("intercept", "slopes", "slope", "sd_school", "sigma"), ("M0", "M1", "M2")),
    (("priors", "intercept"), ("mu", "sigma"), ("M0", "M1", "M2")),
    (("priors", "sigma"), ("sigma",), ("M0", "M1", "M2")),
    (("priors", "slope"), ("fsm", "idaci", "male", "sen", "non_white_british", "ks2"),
     ("M1",)),
    (("priors", "slope", "ks2"), ("mu", "sigma"), ("M1", "M2")),
]


def misspelt(draw, word: str) -> str:
    """The word with one character dropped, doubled or swapped with its neighbour."""
    i = draw(st.integers(0, len(word) - 1))
    edit = draw(st.sampled_from(["drop", "double", "swap"]))
    if edit == "drop":
        return word[:i] + word[i + 1:]
    if edit == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + word[i + 1:i + 2] + word[i] + word[i + 2:]


@st.composite
def spec_unknown_key(draw, routes=ROUTES):
    place, valid, models = draw(st.sampled_from(KEY_PLACES))
    base, table, _, years, drop, route = draw(setting(routes=routes))
    doc = copy.deepcopy(SPECS[draw(st.sampled_from(models))])
    how = draw(st.sampled_from(["misspelt", "made up", "reserved"]))
    if how == "misspelt":
        key = misspelt(draw, draw(st.sampled_from(valid)))
    elif how == "made up":
        key = draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_ -]{0,11}", fullmatch=True))
    else:
        key = draw(st.sampled_from(["source", "model_config", "fields", "terms", "name"]))
    if key in valid or key == "" or key.strip() != key:
        key = key.strip() + "_x"
    if place == ("categorical",):
        value = {"levels": ["a", "b"], "reference": "a"}
    elif place in (("priors",), ("priors", "slope")):
        value = {"mu": 0}
    else:
        value = draw(st.one_of(TEXT, st.integers(0, 9)))
    path = ".".join((*place, key))
    set_key(doc, (*place, key), value)
    return Case("unknown key in the spec", f"{path} = {value!r}", base, doc, years, drop, route,
                table=table, must_fail=True, error="SpecError", names=(path,))


TABLE_KINDS: dict[str, Callable[..., st.SearchStrategy[Case]]] = {
    "dropped column": dropped_column,
    "renamed column": renamed_column,
    "text in a numeric column": text_in_numeric,
    "missing value": missing_values,
    "infinity": infinity,
    "empty table": empty_table,
    "one school": one_school,
    "all pupils in one SEN category": one_sen_category,
    "predictor constant within the selection": constant_predictor,
    "duplicated ids": duplicated_ids,
    "out-of-range value": out_of_range,
    "wrong column type": wrong_column_type,
    "mapping to a missing column": mapping_to_missing_column,
    "year with no pupils": year_without_pupils,
    "mangled CSV file": mangled_csv,
}
SPEC_KINDS = {
    "wrong type in the spec": spec_wrong_type,
    "unknown key in the spec": spec_unknown_key,
}


# --- running a case ------------------------------------------------------------------------

TOML_BARE = re.compile(r"[A-Za-z0-9_-]+")


def toml_text(doc: dict) -> str:
    """A spec document as TOML (tables as [headers], values inline)."""

    def key(k: str) -> str:
        return k if TOML_BARE.fullmatch(k) else toml_value(k)

    def toml_value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
                else repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
        if isinstance(v, list):
            return "[" + ", ".join(toml_value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
        return v.isoformat()  # a date

    lines: list[str] = []

    def table(prefix: tuple[str, ...], node: dict) -> None:
        if prefix:
            lines.append("[" + ".".join(key(p) for p in prefix) + "]")
        lines.extend(f"{key(k)} = {toml_value(v)}" for k, v in node.items()
                     if not isinstance(v, dict))
        for k, v in node.items():
            if isinstance(v, dict):
                table((*prefix, k), v)

    table((), doc)
    return "\n".join(lines) + "\n"


def build(table, spec: ModelSpec, years: list[int] | None) -> None:
    """Design, priors and PyMC model of every selected year: what fitting does before sampling."""
    for year in years or [None]:
        design = design_for(table, spec, year)
        priors = resolve_priors(design, spec.priors)
        bad = {k: v for k, v in priors.as_dict().items() if not math.isfinite(v)}
        assert not bad, f"non-finite priors {bad} pass every check and would fail in sampling"
        build_two_level(design, priors)


def write_inputs(case: Case, folder: Path) -> tuple[Path, Path | None]:
    """The spec as a TOML file, and the table as a file (None for the DataFrame route)."""
    spec_path = folder / "spec.toml"
    spec_path.write_text(toml_text(case.spec), encoding="utf-8")
    if case.route == "frame":
        return spec_path, None
    data = folder / ("t.parquet" if case.route == "parquet" else "t.csv")
    if case.route == "text":
        data.write_bytes(case.csv_bytes)
    elif case.route == "csv":
        case.table.to_csv(data, index=False)
    else:
        case.table.to_parquet(data, index=False)
    return spec_path, data


def attempt(case: Case, folder: Path) -> tuple[str, str]:
    """("valid", "") or (error class name, message). Any other exception propagates.

    Every case is validated twice, as one batch and in batches of 25 rows (the rules a file
    too large for memory is checked with): both must give the same message or table.
    """
    spec_path, data = write_inputs(case, folder)
    outcomes = []
    for batch_rows in (validate.BATCH_ROWS, 25):
        try:
            spec = load_spec(spec_path)
            raw = case.table.copy() if data is None else read_table(data)
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(validate, "BATCH_ROWS", batch_rows)
                table = validate_table(raw, spec, years=case.years, drop_incomplete=case.drop,
                                       source="t" if data is None else str(data))
        except (DataError, SpecError) as exc:
            outcomes.append((type(exc).__name__, str(exc), None))
            continue
        outcomes.append(("valid", "", table))
    (outcome, message, table), batched = outcomes
    assert batched[:2] == (outcome, message), f"batches of 25 rows: {batched[1]}\n{message}"
    if table is None:
        return outcome, message
    pd.testing.assert_frame_equal(batched[2].frame, table.frame)
    assert (batched[2].n_input_rows, batched[2].n_dropped) == (table.n_input_rows,
                                                               table.n_dropped)
    build(table, spec, case.years)
    return "valid", ""


def judge(case: Case, outcome: str, message: str) -> None:
    """The outcome a case must have, and a message a person can act on."""
    if outcome == "valid":
        assert not case.must_fail, (
            f"{case.kind} ({case.note}) was accepted; expected a {case.error} naming "
            f"{case.names or case.any_names}")
        return
    assert case.must_fail or case.may_fail, \
        f"{case.kind} ({case.note}) should be valid, got {outcome}:\n{message}"
    if case.must_fail:
        assert outcome == case.error, f"expected a {case.error}, got {outcome}:\n{message}"
    assert "Traceback" not in message
    for name in case.names:
        assert name in message, f"{case.kind} ({case.note}): {name!r} not in:\n{message}"
    if case.any_names:
        assert any(n in message for n in case.any_names), \
            f"{case.kind} ({case.note}): none of {case.any_names} in:\n{message}"
    head, *lines = message.splitlines()
    if outcome == "SpecError":
        assert head.startswith(("model specification", "cannot read model specification"))
        for line in lines:
            assert line.startswith("  - "), message
            assert "(allowed: )" not in line, f"unknown key without a hint:\n{message}"
    elif lines:  # a validation error: one line per problem, each with its fix
        assert re.match(r".+: \d+ problems? in \d+ rows?", head), message
        for line in lines:
            assert line.startswith(("  - column ", "  - table: ")) and ". Fix: " in line, message
    else:  # a reading error
        assert head.startswith(("cannot read ", "data file ")), message


@pytest.fixture
def fuzz_counts(request) -> dict[str, Counter]:
    """Outcome counts per corruption kind for this session, printed by conftest."""
    counts = request.config.stash.setdefault(FUZZ_COUNTS, {})
    return counts


def run_kind(kind: str, strategy: st.SearchStrategy[Case], folder: Path, counts: dict) -> None:
    tally = counts.setdefault(kind, Counter())

    @FUZZ
    @given(case=strategy)
    def check(case: Case) -> None:
        outcome, message = attempt(case, folder)
        judge(case, outcome, message)
        tally[outcome] += 1

    check()
    assert sum(tally.values()) >= MIN_CASES, f"only {sum(tally.values())} cases of {kind}"


# --- the tests -----------------------------------------------------------------------------

@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("model", sorted(SPECS))
def test_uncorrupted_bases_are_valid(base, model, tmp_path):
    """The ground every "must be valid" expectation stands on."""
    for years in YEARS:
        for route in ("frame", "csv", "parquet"):
            case = Case("none", "", base, copy.deepcopy(SPECS[model]), years, False, route,
                        table=BASES[base].copy())
            outcome, message = attempt(case, tmp_path)
            assert outcome == "valid", f"{model}, years {years}, {route}: {message}"


@pytest.mark.parametrize("kind", list(TABLE_KINDS))
def test_corrupted_table(kind, tmp_path, fuzz_counts):
    run_kind(kind, TABLE_KINDS[kind](), tmp_path, fuzz_counts)


@pytest.mark.parametrize("kind", list(SPEC_KINDS))
def test_corrupted_spec(kind, tmp_path, fuzz_counts):
    run_kind(kind, SPEC_KINDS[kind](), tmp_path, fuzz_counts)


def words(text: str) -> str:
    return " ".join(text.split())


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``bayesfed ARGS`` as the console script runs it (``cli.main``; see
    ``conftest.run_main``): exit code, out, err.

    Out and err come with runs of white space (rich's line wrapping) as single spaces: words,
    not lines, are what a check can rely on.
    """
    code, out, err = run_main(args)
    return code, words(out), words(err)


CLI_KINDS = {
    "text in a numeric column": text_in_numeric,
    "dropped column": dropped_column,
    "year with no pupils": year_without_pupils,
    "out-of-range value": out_of_range,
    "unknown key in the spec": spec_unknown_key,
}


def test_cli_validate_exits_3_with_the_message(tmp_path, fuzz_counts):
    """``bayesfed validate FILE --spec SPEC``: exit code 3 and the message, no traceback."""
    tally = fuzz_counts.setdefault("CLI: bayesfed validate", Counter())

    @settings(FUZZ, max_examples=10)
    @given(data=st.data())
    def check(data) -> None:
        kind = data.draw(st.sampled_from(sorted(CLI_KINDS)))
        case = data.draw(CLI_KINDS[kind](routes=("csv",)))
        spec_path, csv_path = write_inputs(case, tmp_path)
        args = ["validate", str(csv_path), "--spec", str(spec_path)]
        if case.years is not None:
            args.append("--years=" + ",".join(map(str, case.years)))
        if case.drop:
            args.append("--drop-incomplete")
        code, out, err = run_cli(args)
        assert "Traceback" not in out + err
        if case.must_fail:
            assert code == 3, f"{case.note}: exit code {code}\n{out}{err}"
            assert err.startswith("bayesfed: error: "), err
            for name in case.names:
                assert words(name) in err, f"{case.note}: {name!r} not in:\n{err}"
        elif not case.may_fail:
            assert code == 0, f"{case.note}: exit code {code}\n{out}{err}"
            assert "is valid for" in out
        else:
            assert code in (0, 3), f"{case.note}: exit code {code}\n{out}{err}"
        # the typer app itself (without main's error handling) raises bayesfed's own error
        result = CliRunner().invoke(app, args)
        if code == 0:
            assert result.exit_code == 0, result.output
        else:
            assert isinstance(result.exception, DataError | SpecError), repr(result.exception)
            assert words(str(result.exception)) in err
        tally["exit 0" if code == 0 else "exit 3"] += 1

    check()
    assert sum(tally.values()) >= MIN_CASES


#: Spec corruptions the fuzzer found to pass unreported or with an unclear message
#: (bayesfed/inputs/spec.py): the key, the value, and what the message must name. Each must be
#: a SpecError.
SPEC_CASES = [
    (("categorical", "sen", "refrence"), "none", "categorical.sen.refrence"),
    (("priors", "slope", "ks2", "mean"), 0.0, "priors.slope.ks2.mean"),
    (("source",), "elsewhere.toml", "source"),
    (("priors", "intercept", "mu"), math.inf, "priors.intercept.mu"),
    (("priors", "intercept", "mu"), math.nan, "priors.intercept.mu"),
    (("priors", "slopes", "sigma"), math.inf, "priors.slopes.sigma"),
    (("priors", "sd_school", "sigma"), math.inf, "priors.sd_school.sigma"),
    (("priors", "sigma", "sigma"), math.inf, "priors.sigma.sigma"),
]


@pytest.mark.parametrize(("path", "value", "name"), SPEC_CASES,
                         ids=[f"{'.'.join(p)}={v!r}" for p, v, _ in SPEC_CASES])
def test_spec_cases_found_by_the_fuzzer(path, value, name, tmp_path):
    doc = copy.deepcopy(SPECS["M1"])
    set_key(doc, path, value)
    case = Case("spec", f"{name} = {value!r}", "small", doc, [0, 1], False, "frame",
                table=BASES["small"].copy(), must_fail=True, error="SpecError", names=(name,))
    judge(case, *attempt(case, tmp_path))


def _table(**changes) -> pd.DataFrame:
    """The small base table with whole columns replaced (a value, or a function of the column)."""
    table = BASES["small"].copy()
    for name, change in changes.items():
        table[name] = change(table[name]) if callable(change) else change
    return table


def _cells(name: str, rows, value) -> pd.DataFrame:
    table = BASES["small"].copy()
    put(table, name, rows, value)
    return table


def _csv(edit: Callable[[list[str]], list[str]], encoding: str = "utf-8") -> bytes:
    lines = BASES["small"].to_csv(index=False, lineterminator="\n").rstrip("\n").split("\n")
    return ("\n".join(edit(lines)) + "\n").encode(encoding)


#: Table corruptions the fuzzer found escaping (a foreign exception, a warning turned error, a
#: silently wrong table, or an error only after validation had passed), as fixed regressions:
#: id -> (model, years, route, table or CSV bytes, what the DataError must name).
FOUND = {
    "repeated column name (AttributeError)": (
        "M0", None, "frame", BASES["small"].rename(columns={"pupil_id": "school_id"}),
        (col("school_id"), "the table has 2 columns of this name")),
    "extra field in the first data row (values silently shifted one column)": (
        "M0", None, "text", _csv(lambda ls: [ls[0], ls[1] + ",x", *ls[2:]]),
        ("1 data row(s) have more fields than the header", "row(s) 1")),
    "extra field in a later row (pandas tokenizer message)": (
        "M0", None, "text", _csv(lambda ls: [*ls[:5], ls[5] + ",x", *ls[6:]]),
        ("more fields than the header", "row(s) 5")),
    "Windows-1252 CSV (codec message)": (
        "M0", None, "text", _csv(lambda ls: [ls[0], ls[1].replace("P00000", "Zoë"), *ls[2:]],
                                 "cp1252"), ("not UTF-8", "CSV UTF-8")),
    "semicolon-separated CSV (a missing 'gcse_score')": (
        "M0", None, "text", BASES["small"].to_csv(index=False, sep=";").encode(),
        ("separated by semicolons",)),
    "blank founding year beside years_since (TypeError)": (
        "M0", [0], "frame", _cells("founding_year", [0], None),
        (col("founding_year"), "not constant within school")),
    "bytes that are not UTF-8 in a numeric column (UnicodeDecodeError)": (
        "M1", None, "frame", _cells("ks2", [3], b"\xff"), (col("ks2"), "not numeric")),
    "integer beyond float range (OverflowError)": (
        "M1", None, "frame", _cells("ks2", [3], 10**400), (col("ks2"), "infinite value")),
    "complex number (ComplexWarning)": (
        "M1", None, "frame", _cells("ks2", [3], complex(1, 1)), (col("ks2"), "not numeric")),
    "dates in a numeric column (read as nanoseconds)": (
        "M1", None, "parquet", _table(ks2=lambda c: pd.to_datetime(c * 1e3, unit="D")),
        (col("ks2"), "not numeric", "1970-")),
    "constant outcome (SpecError from the priors after validation)": (
        "M0", None, "frame", _table(gcse_score=4.0),
        ("column 'gcse_score' (role outcome): constant (4.0) in the table",)),
    "predictor varying by 1e-300 (SpecError from the priors after validation)": (
        "M1", [0, 1], "frame", _table(ks2=lambda c: c * 1e-300),
        (col("ks2"), "variation too small to compute with in year 0")),
    "outcome near the float maximum (RuntimeWarning: overflow)": (
        "M0", None, "frame", _table(gcse_score=lambda c: c * 1e307),
        ("(role outcome): value larger than 1e+15 in magnitude",)),
    "calendar year 2e23 (int64 cast garbage)": (
        "M0", [0], "frame", _table(cohort=lambda c: c * 1e20),
        (col("cohort"), "value larger than 1e+15")),
    "one school, no school-level columns (accepted)": (
        "M0", None, "frame", BASES["small"].loc[lambda t: t["school_id"] == "S00",
                                                ["gcse_score", "school_id"]],
        ("column 'school_id' (role school): the table has pupils in a single school ('S00')",)),
}


@pytest.mark.parametrize("found", list(FOUND))
def test_table_cases_found_by_the_fuzzer(found, tmp_path):
    model, years, route, data, names = FOUND[found]
    case = Case("found", found, "small", copy.deepcopy(SPECS[model]), years, False, route,
                must_fail=True, names=names,
                **({"csv_bytes": data} if route == "text" else {"table": data}))
    judge(case, *attempt(case, tmp_path))


def test_label_role_as_a_predictor_is_reported(tmp_path):
    """``predictors.school = ["federation"]`` reached the design as text (ValueError)."""
    doc = copy.deepcopy(SPECS["M0"])
    doc["predictors"] = {"school": ["federation"]}
    case = Case("found", "federation as a predictor", "small", doc, None, False, "frame",
                table=BASES["small"].copy(), must_fail=True,
                names=("column 'federation_id' (role federation): identifiers and labels "
                       "cannot be a numeric predictor", "[categorical.federation]"))
    judge(case, *attempt(case, tmp_path))


def test_cli_summary_with_a_blank_cohort(tmp_path):
    """``describe`` turned a blank optional cohort into int(NA) (TypeError) after validation."""
    table = BASES["small"].copy()
    put(table, "cohort", [0, 1], None)
    table.to_csv(tmp_path / "t.csv", index=False)
    code, out, err = run_cli(["validate", str(tmp_path / "t.csv"), "--spec",
                              str(MODELS / "m0_empty.toml")])
    assert (code, err) == (0, ""), out + err
    assert "is valid for M0" in out and "cohorts: 2008-2009 (2)" in out
