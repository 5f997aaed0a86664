"""Every validation rule, with the exact message a user sees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayesfed.design.describe import describe
from bayesfed.errors import DataError
from bayesfed.inputs import rows, sample, validate
from bayesfed.inputs.spec import spec_from_dict
from bayesfed.inputs.validate import validate_table


@pytest.fixture(autouse=True, params=["one batch", "batches of 5 rows"])
def batch_rows(request, monkeypatch):
    """Every rule gives the same message when the table is checked in batches."""
    if request.param != "one batch":
        monkeypatch.setattr(validate, "BATCH_ROWS", 5)


HEAD = "t.csv: {n} in {rows} rows (row numbers count data rows from 1, the header excluded):"


def problems(raw, spec, **kw) -> list[str]:
    """The problem lines of the DataError raised by validate_table."""
    with pytest.raises(DataError) as info:
        validate_table(raw, spec, source="t.csv", **kw)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("t.csv: ")
    return [line.removeprefix("  - ") for line in lines[1:]]


def test_valid_table_gets_canonical_names_and_input_is_untouched(table, m2):
    before = table.copy(deep=True)
    out = validate_table(table, m2, years=[0, 1])
    pd.testing.assert_frame_equal(table, before)
    assert {"outcome", "school", "federated", "sen", "years_since"} <= set(out.frame.columns)
    assert out.frame["federated"].dtype == np.int64
    assert out.n_dropped == 0
    summary = describe(out)
    assert summary["pupils"] == 144 and summary["schools"] == 6
    assert summary["federations"] == 3 and summary["federated_schools"] == 3
    assert summary["years_since"] == {0: {"pupils": 72, "schools": 6},
                                      1: {"pupils": 72, "schools": 6}}


def test_missing_column_names_the_mapping(table, m2):
    lines = problems(table.drop(columns=["ks2"]), m2)
    assert lines == [
        "column 'ks2': missing column. Fix: add the column, or map role 'ks2' to one of your "
        "columns in the spec's [columns] table (columns found: pupil_id, school_id, "
        "federation_id, federated, cohort, founding_year, years_since, gcse_score, fsm, idaci, "
        "male, sen, ...)"
    ]


def test_mapped_column_missing_names_user_column_and_role(table, m0):
    spec = spec_from_dict({"model": {"name": "M0"}, "columns": {"outcome": "score",
                                                               "school": "school_id"}})
    lines = problems(table, spec)
    assert lines[0].startswith("column 'score' (role outcome): missing column.")


def test_non_numeric_values(table, m2):
    raw = table.astype({"gcse_score": object})
    raw.loc[[4, 9], "gcse_score"] = ["A*", "absent"]
    assert problems(raw, m2) == [
        "column 'gcse_score' (role outcome): not numeric in 2 rows (e.g. rows 5, 10), values "
        "'A*', 'absent'. Fix: replace text by numbers (or mark the value as missing)"
    ]


def test_missing_values_error_by_default_and_drop_on_request(table, m2):
    raw = table.copy()
    raw.loc[[0, 2, 7], "ks2"] = np.nan
    raw.loc[3, "sen"] = None
    assert problems(raw, m2) == [
        "column 'sen': missing value in 1 row (e.g. row 4). Fix: fill in the values, or run "
        "with --drop-incomplete to drop incomplete rows (bayesfed reports how many)",
        "column 'ks2': missing value in 3 rows (e.g. rows 1, 3, 8). Fix: fill in the values, "
        "or run with --drop-incomplete to drop incomplete rows (bayesfed reports how many)",
    ]
    out = validate_table(raw, m2, drop_incomplete=True)
    assert out.n_dropped == 4 and len(out.frame) == len(raw) - 4


def test_blank_text_counts_as_missing(table, m2):
    raw = table.astype({"fsm": object})
    raw.loc[5, "fsm"] = "  "
    assert problems(raw, m2)[0].startswith("column 'fsm': missing value in 1 row (e.g. row 6)")


def test_out_of_range_values(table, m2):
    raw = table.copy()
    raw.loc[1, "idaci"] = 23.5
    raw.loc[[2, 3], "fsm"] = [2, -1]
    raw.loc[4, "sen"] = "SA+"
    raw.loc[5, "gcse_score"] = np.inf
    assert problems(raw, m2) == [
        "column 'gcse_score' (role outcome): infinite value in 1 row (e.g. row 6), values inf. "
        "Fix: the outcome must be a finite number for every pupil",
        "column 'fsm': value not 0/1 in 2 rows (e.g. rows 3, 4), values 2, -1. Fix: code it 1 "
        "for yes and 0 for no",
        "column 'idaci': value outside 0-1 in 1 row (e.g. row 2), values 23.5. Fix: IDACI is a "
        "share between 0 and 1; divide percentages by 100",
        "column 'sen': unknown label in 1 row (e.g. row 5), values 'SA+'. Fix: use one of none, "
        "school_action, school_action_plus, statemented (or map your labels onto these before "
        "fitting)",
    ]


def test_years_must_be_whole(table, m2):
    raw = table.copy()
    raw["cohort"] = raw["cohort"].astype(float)
    raw.loc[0, "cohort"] = 2008.5
    assert problems(raw, m2)[0] == (
        "column 'cohort': value not a whole number in 1 row (e.g. row 1), values 2008.5. Fix: "
        "years are whole calendar years (cohort, founding_year) or whole year offsets")


def test_school_level_columns_constant_within_school(table, m2):
    raw = table.copy()
    school0 = raw.index[raw["school_id"] == "S00"]
    raw.loc[school0[3], "federated"] = 1
    raw.loc[school0[3], "federation_id"] = "F0"
    raw.loc[raw["school_id"] == "S01", "founding_year"] = [2007] * 10 + [2008] * 14
    lines = problems(raw, m2)
    assert lines[0] == (
        "column 'federated': not constant within school (1 school: 'S00') in 24 rows (e.g. rows "
        "1, 2, 3, 4, 5, ...). Fix: a school-level value must be the same for every pupil of a "
        "school; correct the school's rows or split it into separate school ids")
    assert lines[1].startswith("column 'founding_year': not constant within school (1 school: "
                               "'S01') in 24 rows (e.g. rows 25, 26, 27, 28, 29, ...)")


def test_years_since_must_equal_cohort_minus_founding(table, m2):
    raw = table.copy()
    raw.loc[[10, 11], "years_since"] = 3
    assert problems(raw, m2) == [
        "column 'years_since': not equal to cohort - founding_year in 2 rows (e.g. rows 11, "
        "12), values 3, 3. Fix: correct the values, or drop the column and bayesfed derives it"
    ]


def test_years_since_derived_when_absent(table, m2):
    out = validate_table(table.drop(columns=["years_since"]), m2, years=[0, 1])
    assert (out.frame["years_since"] == out.frame["cohort"] - out.frame["founding_year"]).all()


def test_federation_id_and_flag_agree(table, m2):
    raw = table.copy()
    raw.loc[raw["school_id"] == "S00", "federation_id"] = "F9"
    lines = problems(raw, m2)
    assert lines == [
        "column 'federation_id' (role federation): federation id on a school whose federated "
        "flag is 0 in 24 rows (e.g. rows 1, 2, 3, 4, 5, ...). Fix: a federated school has a "
        "federation id and flag 1; a matched school has a blank id and flag 0"
    ]


def test_duplicated_pupil_ids_within_cohort(table, m2):
    raw = table.copy()
    raw.loc[1, "pupil_id"] = raw.loc[0, "pupil_id"]
    assert problems(raw, m2) == [
        "column 'pupil_id': duplicated pupil id within a cohort in 2 rows (e.g. rows 1, 2), "
        "values 'P00000', 'P00000'. Fix: each pupil appears once per cohort; remove repeated rows"
    ]
    # the same id in two cohorts is the same pupil followed up, which is fine
    validate_table(table, m2)


def test_year_selection_without_pupils_or_with_one_school(table, m2):
    raw = table.loc[(table["years_since"] == 0) | (table["school_id"] == "S02")]
    assert problems(raw, m2, years=[0, 1, 4]) == [
        "column 'years_since': year 1 since founding has pupils in a single school ('S02'): "
        "school variance is not identified. Fix: fit years with pupils in at least two schools",
        "column 'years_since': no pupils in year 4 since founding. Fix: choose years among those "
        "present (0, 1)",
    ]


def test_predictor_without_variation_in_selected_year(table, m2):
    raw = table.copy()
    raw.loc[raw["years_since"] == 1, "sen"] = "none"
    raw.loc[raw["years_since"] == 1, "male"] = 0
    assert problems(raw, m2, years=[0, 1]) == [
        "column 'male': constant (0) in year 1. Fix: drop the predictor from the spec for this "
        "selection",
        "column 'sen': only one category (none) in year 1. Fix: drop the predictor from the "
        "spec for this selection",
    ]


def test_absent_categorical_level_is_reported(table, m2):
    raw = table.loc[table["sen"] != "statemented"]
    assert problems(raw, m2) == [
        "column 'sen': level(s) statemented absent from the table. Fix: remove the absent levels "
        "from [categorical] levels in the spec, or merge them into a neighbouring level"
    ]


def test_every_problem_in_one_error(table, m2):
    raw = table.astype({"gcse_score": object})
    raw.loc[0, "gcse_score"] = "x"
    raw.loc[1, "idaci"] = -0.5
    raw.loc[2, "male"] = np.nan
    head, *rest = str(pytest.raises(DataError, validate_table, raw, m2, source="t.csv").value
                      ).splitlines()
    assert head == HEAD.format(n="3 problems", rows=len(raw))
    assert len(rest) == 3


def test_empty_table(table, m2):
    assert problems(table.iloc[:0], m2) == [
        "table: no rows. Fix: check the export: bayesfed needs one row per pupil"
    ]


def test_generic_table_without_federation_columns(m0):
    raw = pd.DataFrame({"gcse_score": [1.0, 2.0, 3.0, 4.0], "school_id": ["a", "a", "b", "b"]})
    out = validate_table(raw, m0)
    assert list(out.frame.columns) == ["outcome", "school"]


@pytest.mark.parametrize("block", [sample.QR_BLOCK, 7])
def test_collinear_predictors_are_reported(table, m2, block, monkeypatch):
    """Also with the QR factorisation accumulated over blocks of 7 pupils."""
    monkeypatch.setattr(sample, "QR_BLOCK", block)
    raw = table.copy()
    raw["male"] = raw["sen"].isin(["school_action", "statemented"]).astype(int)
    assert problems(raw, m2) == [
        "column 'sen': coefficient 'sen[statemented]' is a linear combination of male, "
        "sen[school_action] in the table. Fix: drop one of these predictors from the spec: "
        "their effects cannot be told apart"
    ]


def test_arrow_text_parses_to_the_numbers_pandas_gives():
    """CSV columns are Arrow-backed text; Arrow's bulk parse must give pandas' numbers, bit for
    bit, and a column with a value Arrow cannot parse must come out as pandas gives it."""
    rng = np.random.default_rng(0)
    values = ([repr(float(v)) for v in rng.normal(0, 1, 2000)]
              + ["%.17g" % v for v in rng.normal(0, 1e300, 300)]
              + ["%.25e" % v for v in rng.normal(0, 1e-300, 300)]
              + ["%.3f" % v for v in rng.uniform(0, 1, 300)]
              + ["1e5", "1E5", "+5", "-0", "0.", ".5", "5.", "inf", "-inf", "nan", "Infinity",
                 "1e400", "-1e400", "4.9e-324", "2.5e-324", None])
    for extra in ([], [" 7", "7 ", "1_000", "0x10", "1,5", "text"]):
        arrow = pd.Series(values + extra, dtype=pd.StringDtype("pyarrow", na_value=np.nan))
        objects = pd.Series(values + extra, dtype=object)
        got, expected = rows._as_float(arrow).to_numpy(), rows._as_float(objects).to_numpy()
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


@pytest.mark.parametrize("kind", ["numeric", "flag", "unit_interval", "year"])
@pytest.mark.parametrize("values", [
    np.array([0, 1, 1], dtype=np.int8), np.array([0, 2], dtype=np.int64),
    np.array([0.0, 1.0]), np.array([0.25, 0.5]), np.array([2001, 2005], dtype=np.int64),
    np.array([2001.0, 2003.5]), np.array([np.nan, 1.0]), np.array([np.inf, 0.0]),
    np.array([-3, 5], dtype=np.int16), np.array([1e12, 0.0]), np.array([7], dtype=np.uint8),
    np.array([-0.5, 0.5])])
def test_the_clean_column_shortcut_agrees_with_the_rules(monkeypatch, kind, values):
    """A numeric column the shortcut passes breaks no rule of its kind and becomes the same
    floats as through the rules; anything else is left to the rules."""
    raw = pd.Series(values)
    fast = rows._clean_numbers(raw, kind)
    monkeypatch.setattr(rows, "_clean_numbers", lambda raw, kind: None)
    problems, slow = rows._numeric_problems(raw, "col", "x", kind, np.arange(len(raw)))
    if fast is None:  # declined: a rule is broken, a value is missing, or whole floats
        declined = np.isnan(values).any() or (kind in ("flag", "year")
                                              and values.dtype.kind == "f")
        assert problems or declined, "a clean column the shortcut missed"
    else:
        assert problems == []
        np.testing.assert_array_equal(fast.to_numpy(), slow.to_numpy())
        assert not np.shares_memory(fast.to_numpy(), values)  # the input is not shared
