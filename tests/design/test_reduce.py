"""Reading in batches and reducing to the event-time statistics (per cell) or the per-year
statistics (per year and school): the same statistics and the same error messages as
validating the whole table in memory, with memory bounded by the statistics, locally and on a
Dask cluster."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import MODELS, ROOT

from bayesfed.design.cells import cell_stats, event_design_for
from bayesfed.design.columns import design_for
from bayesfed.design.describe import describe, describe_file
from bayesfed.design.reduce import reduce_file, reduce_table
from bayesfed.design.suffstats import summary_of
from bayesfed.errors import DataError
from bayesfed.inputs import read
from bayesfed.inputs.read import read_table
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.jobs.fit_one import FitOptions, fit_one
from bayesfed.modelling.event_pooled import event_constants
from bayesfed.modelling.priors import resolve_event_priors, resolve_priors
from bayesfed.modelling.two_level import collapsed_data
from bayesfed.posterior.reml import fit_reml

STUDY = ROOT / "data" / "synthetic_study.parquet"
ARRAYS = ("n", "y_mean", "X_mean", "E", "cohort_idx", "school_idx", "federated", "post",
          "federation_idx", "type_idx", "XX", "Xy", "yy")
LABELS = ("coef_names", "schools", "cohorts", "cells", "event_terms", "n_leads",
          "federations", "types", "n_dropped")


@pytest.fixture(scope="module")
def spec():
    return load_spec(MODELS / "event_time.toml")


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    """Every 8th pupil of the shipped study (all cohorts and event years)."""
    return pd.read_parquet(STUDY).iloc[::8].reset_index(drop=True)


def write(frame: pd.DataFrame, route: str, folder) -> object:
    """The table as a Parquet file (row groups of 500), a folder partitioned by cohort, or
    a CSV file."""
    if route == "parquet":
        path = folder / "t.parquet"
        frame.to_parquet(path, index=False, row_group_size=500)
    elif route == "folder":
        path = folder / "t"
        frame.to_parquet(path, index=False, partition_cols=["cohort"])
    else:
        path = folder / "t.csv"
        frame.to_csv(path, index=False)
    return path


def assert_same_stats(a, b) -> None:
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-10,
                                   atol=1e-9, err_msg=name)
    for name in LABELS:
        assert getattr(a, name) == getattr(b, name), name


@pytest.mark.parametrize("route", ["parquet", "folder", "csv"])
def test_batches_give_the_statistics_of_the_whole_table(route, spec, study, tmp_path,
                                                        monkeypatch):
    path = write(study, route, tmp_path)
    expected = cell_stats(event_design_for(validate_table(study, spec), spec))
    monkeypatch.setattr(read, "BATCH_ROWS", 1000)
    reduced = reduce_file(path, spec)
    assert reduced.n_input_rows == len(study) and reduced.n_dropped == 0
    assert reduced.columns["outcome"] == "gcse_score"
    assert_same_stats(reduced.stats, expected)
    # the in-memory route of fit_event_time reduces with the same code
    assert_same_stats(reduce_table(validate_table(read_table(path), spec), spec).stats,
                      expected)


def corrupt(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """One broken rule, with rows far apart (in different batches)."""
    frame = frame.copy()
    last = len(frame) - 1
    if kind == "duplicated id":
        frame.loc[[last, last - 1], "pupil_id"] = frame.loc[3, "pupil_id"]
        frame.loc[[last, last - 1], "cohort"] = frame.loc[3, "cohort"]
    elif kind == "school-level value varies":
        school = frame.loc[last, "school_id"]
        frame.loc[frame.index[frame["school_id"] == school][:2], "founding_year"] += 1
    elif kind == "text and missing values":
        frame["gcse_score"] = frame["gcse_score"].astype(str).astype(object)
        frame.loc[[2, last], "gcse_score"] = ["absent", None]
        frame.loc[last - 3, "ks2"] = None
    elif kind == "years since founding":
        frame.loc[[5, last - 7], "years_since"] += 1
    elif kind == "no federated pupil in year 5":
        frame = frame.loc[~((frame["federated"] == 1) & (frame["years_since"] == 5))]
    return frame.reset_index(drop=True)


KINDS = ["duplicated id", "school-level value varies", "text and missing values",
         "years since founding", "no federated pupil in year 5"]


@pytest.mark.parametrize("route", ["parquet", "folder", "csv"])
@pytest.mark.parametrize("kind", KINDS)
def test_batches_give_the_message_of_the_whole_table(kind, route, spec, study, tmp_path,
                                                     monkeypatch):
    path = write(corrupt(study.iloc[::4].reset_index(drop=True), kind), route, tmp_path)
    with pytest.raises(DataError) as whole:
        reduce_table(validate_table(read_table(path), spec, source=str(path)), spec)
    monkeypatch.setattr(read, "BATCH_ROWS", 97)
    with pytest.raises(DataError) as batched:
        reduce_file(path, spec)
    assert str(batched.value) == str(whole.value)
    assert kind.split()[0] in str(batched.value) or kind == "school-level value varies"


def test_a_missing_column_is_reported_with_the_row_count(spec, study, tmp_path):
    path = write(study.drop(columns=["ks2"]), "parquet", tmp_path)
    with pytest.raises(DataError) as info:
        reduce_file(path, spec)
    assert info.value.args[0].startswith(f"{path}: 1 problem in {len(study)} rows")
    assert "column 'ks2': missing column" in str(info.value)


MEMORY = """
import json, resource, sys
from bayesfed.design.describe import describe_file
from bayesfed.design.reduce import reduce_file
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs import read
read.BATCH_ROWS = 20_000
spec = load_spec(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[3] == "describe":
    rows = describe_file(sys.argv[1], spec, range(6))["input_rows"]
else:  # an event-time spec ignores the years
    rows = reduce_file(sys.argv[1], spec, range(6)).n_input_rows
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": rows, "grew_mb": (after - before) / 1024}))
"""


@pytest.mark.parametrize("model,what", [("event_time", "reduce"), ("m2_federation", "reduce"),
                                        ("m2_federation", "describe")])
def test_memory_is_bounded_by_the_statistics_not_the_rows(model, what, tmp_path):
    """Peak memory of the reduction grows by little more than one batch: reducing eight
    copies of the study (under new school and pupil ids) costs about what one copy does,
    and far less than the table held in memory; for the event-time statistics, for the
    per-year ones, and for ``bayesfed validate``'s description of the table."""
    study = pd.read_parquet(STUDY)
    grew = {}
    for copies in (1, 8):
        frames = []
        for k in range(copies):
            copy = study.copy()
            for column in ("school_id", "pupil_id", "federation_id"):
                copy[column] = copy[column] + f"-{k}"
            frames.append(copy)
        table = pd.concat(frames, ignore_index=True)
        path = tmp_path / f"x{copies}.parquet"
        table.to_parquet(path, index=False, row_group_size=20_000)
        in_memory = table.memory_usage(deep=True).sum() / 2**20
        run = subprocess.run([sys.executable, "-c", MEMORY, str(path),
                              str(MODELS / f"{model}.toml"), what],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        grew[copies] = json.loads(run.stdout)
        assert grew[copies]["rows"] == len(table)
    # eight times the rows: the statistics grow (cells, 8 bytes a pupil), not the batches
    assert grew[8]["grew_mb"] < grew[1]["grew_mb"] + 40, grew
    assert grew[8]["grew_mb"] < 0.5 * in_memory, (grew, in_memory)


@pytest.fixture(scope="module")
def m2():
    return load_spec(MODELS / "m2_federation.toml")


def assert_same_summary(a, b, rtol=1e-10) -> None:
    assert (a.schools, a.coef_names, a.school_level) == (b.schools, b.coef_names,
                                                          b.school_level)
    for name in ("n", "y_mean", "X_mean", "within"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-9,
                                   err_msg=name)


@pytest.mark.parametrize("route", ["parquet", "folder", "csv"])
@pytest.mark.parametrize("years", [range(6), [2, 5], None])
def test_batches_give_each_years_summary_of_the_whole_table(route, years, m2, study, tmp_path,
                                                            monkeypatch):
    """Per year (or for the whole table) the per-school counts, means and cross products of
    the reduction in batches of 1,000 rows equal those of the design built in memory."""
    path = write(study, route, tmp_path)
    table = validate_table(study, m2, years=years)
    monkeypatch.setattr(read, "BATCH_ROWS", 1000)
    reduced = reduce_file(path, m2, years)
    assert reduced.n_input_rows == len(study) and reduced.n_dropped == 0
    assert sorted(reduced.summaries, key=str) == sorted(
        [None] if years is None else list(years), key=str)
    for year, summary in reduced.summaries.items():
        assert_same_summary(summary, summary_of(design_for(table, m2, year)))
    # the federation dummy is school-level: no within-school spread at all
    level = 1 + np.flatnonzero(summary.school_level)
    assert level.size and not summary.within[:, level].any()


@pytest.mark.parametrize("kind", ["duplicated id", "school-level value varies",
                                  "text and missing values", "years since founding",
                                  "a year without pupils"])
def test_per_year_batches_give_the_message_of_the_whole_table(kind, m2, study, tmp_path,
                                                             monkeypatch):
    years = [0, 5]
    if kind == "a year without pupils":
        frame, years = study, [0, 9]
    else:
        frame = corrupt(study.iloc[::4].reset_index(drop=True), kind)
    path = write(frame, "parquet", tmp_path)
    with pytest.raises(DataError) as whole:
        validate_table(read_table(path), m2, years=years, source=str(path))
    monkeypatch.setattr(read, "BATCH_ROWS", 97)
    with pytest.raises(DataError) as batched:
        reduce_file(path, m2, years)
    assert str(batched.value) == str(whole.value)


def test_a_fit_from_the_statistics_equals_the_fit_from_the_rows(m2, tmp_path):
    """Reduced in one batch, a year's statistics are the in-memory ones bit for bit, so the
    fit's draws are too, also from a pickled copy (a worker process's: once, views of the
    means arrived there as contiguous arrays and NumPy's products summed them in another
    order); the REML cross-check, from the statistics whichever the table, agrees with
    statsmodels' on the rows."""
    frame = pd.read_parquet(STUDY)
    path = tmp_path / "study.parquet"
    frame.to_parquet(path, index=False)  # one row group: one batch
    options = FitOptions(draws=200, tune=200, chains=2, seed=3)
    rows = fit_one(validate_table(frame, m2, years=[4]), m2, 4, options, "x")
    reduced = reduce_file(path, m2, [4])
    stats = fit_one(reduced, m2, 4, options, "x")
    # what a worker process is sent: the same statistics, pickled
    sent = fit_one(pickle.loads(pickle.dumps(reduced)), m2, 4, options, "x")
    for name in ("beta", "sd_school", "sigma", "u"):
        np.testing.assert_array_equal(stats.posterior[name], rows.posterior[name], name)
        np.testing.assert_array_equal(sent.posterior[name], rows.posterior[name], name)
    xr_equal = stats["constant_data"].to_dataset().equals(rows["constant_data"].to_dataset())
    assert xr_equal
    a, b = (json.loads(t.attrs["bayesfed_reml"]) for t in (stats, rows))
    assert a == b and a["method"] == "exact"  # from the statistics, whichever the table
    # statsmodels on the rows stops within its tolerance of the maximum (here 3e-5 relative in
    # the school variance); the exact maximum of the statistics is at least as high
    sm = fit_reml(design_for(validate_table(frame, m2, years=[4]), m2, 4))
    assert a["loglik"] >= sm.loglik - 1e-9 * abs(sm.loglik)
    assert a["var_school"] == pytest.approx(sm.var_school, rel=1e-3)
    assert a["var_pupil"] == pytest.approx(sm.var_pupil, rel=1e-3)
    for name, (estimate, se) in sm.coef.items():
        assert a["coef"][name][0] == pytest.approx(estimate, abs=1e-3 * se)
        assert a["coef"][name][1] == pytest.approx(se, rel=1e-3)


def test_event_statistics_give_the_same_constants_in_a_worker(spec):
    """A pickled CellStats (what a worker process is sent) gives the model's constants and
    priors bit for bit, so an event-time fit in a worker draws what it draws here."""
    stats = reduce_file(STUDY, spec).stats
    sent = pickle.loads(pickle.dumps(stats))
    priors, sent_priors = resolve_event_priors(stats), resolve_event_priors(sent)
    assert priors == sent_priors
    np.testing.assert_array_equal(event_constants(sent, sent_priors),
                                  event_constants(stats, priors))


@pytest.mark.parametrize("model", ["m1_pupil", "m2_federation"])
def test_year_statistics_give_the_same_priors_and_data_in_a_worker(model):
    """A pickled SchoolSummary (what a worker process is sent) gives the default priors and
    the collapsed model's data container bit for bit (before the means were stored
    contiguously, years 1 and 2 of both models gave other bits)."""
    spec = load_spec(MODELS / f"{model}.toml")
    for summary in reduce_file(STUDY, spec, [0, 1, 2]).summaries.values():
        sent = pickle.loads(pickle.dumps(summary))
        priors, sent_priors = resolve_priors(summary, spec.priors), resolve_priors(
            sent, spec.priors)
        assert sent_priors == priors
        np.testing.assert_array_equal(collapsed_data(sent, sent_priors),
                                      collapsed_data(summary, priors))


@pytest.mark.parametrize("route", ["parquet", "folder", "csv"])
@pytest.mark.parametrize("model,years", [("m2_federation", range(6)), ("m2_federation", None),
                                         ("event_time", None)])
def test_a_file_described_in_batches_is_described_as_the_whole_table(route, model, years,
                                                                     study, tmp_path,
                                                                     monkeypatch):
    """``bayesfed validate``'s counts (pupils, schools, federations, cohorts, pupils and
    schools per year since founding, dropped rows) from batches of 1,000 rows equal those of
    the table validated in memory; with incomplete rows dropped too."""
    spec = load_spec(MODELS / f"{model}.toml")
    frame = study.copy()
    frame.loc[[3, len(frame) - 2], "gcse_score"] = np.nan
    path = write(frame, route, tmp_path)
    whole = describe(validate_table(read_table(path), spec, years=years, drop_incomplete=True))
    assert whole["dropped"] == 2 and whole["pupils"] == len(frame) - 2
    monkeypatch.setattr(read, "BATCH_ROWS", 1000)
    batched = describe_file(path, spec, years, drop_incomplete=True)
    assert batched == whole
    assert set(batched) >= {"federated_schools", "federations", "cohorts", "years_since"}
    assert batched["schools"] == frame["school_id"].nunique()
    assert sum(y["pupils"] for y in batched["years_since"].values()) == len(frame) - 2


def test_a_file_described_in_batches_gives_the_message_of_the_whole_table(m2, study,
                                                                          tmp_path,
                                                                          monkeypatch):
    path = write(corrupt(study.iloc[::4].reset_index(drop=True), "duplicated id"), "csv",
                 tmp_path)
    with pytest.raises(DataError) as whole:
        validate_table(read_table(path), m2, years=range(6), source=str(path))
    monkeypatch.setattr(read, "BATCH_ROWS", 97)
    with pytest.raises(DataError) as batched:
        describe_file(path, m2, range(6))
    assert str(batched.value) == str(whole.value)


def test_batches_leave_the_warning_filters_as_they_were(spec, study, tmp_path, monkeypatch):
    """Batches are checked in threads, and warning filters are process-wide: a filter set
    while one thread parsed text as numbers outlived the scan, left at "error" (a later
    library's deprecation warning then raised). Text in a numeric column of every batch takes
    that path; a slow parse makes the threads overlap in it."""
    frame = corrupt(study, "text and missing values")
    frame.loc[frame.index[::500], "gcse_score"] = "absent"
    path = write(frame, "csv", tmp_path)
    monkeypatch.setattr(read, "BATCH_ROWS", 2000)
    to_numeric = pd.to_numeric

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return to_numeric(*args, **kwargs)

    monkeypatch.setattr(pd, "to_numeric", slow)
    with warnings.catch_warnings():  # first a filter other than pytest's "error"
        warnings.simplefilter("ignore", UserWarning)
        before = list(warnings.filters)
        with pytest.raises(DataError):
            reduce_file(path, spec)
        assert warnings.filters == before
