"""Models compared with each other are fitted to the same pupils, or the comparison is refused.

The shipped study with KS2 prior attainment blanked for 8% of its rows: M1 needs KS2, M0 does
not. Before this was fixed, one job with ``--drop-incomplete`` fitted M0 to every pupil and M1
to those with KS2, and reported the variance M1 explains of M0's all the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayesfed
from bayesfed.inputs.shipped import spec_path

SETTINGS = dict(years=[0], draws=500, tune=500, chains=4, seed=3, drop_incomplete=True)


@pytest.fixture(scope="module")
def missing_ks2() -> pd.DataFrame:
    table = bayesfed.load_example()
    blank = np.random.default_rng(8).random(len(table)) < 0.08
    return table.assign(ks2=table["ks2"].mask(blank))


def fit_by_model(results) -> dict[str, dict]:
    return {f["model"]: f for f in results.fits}


def test_one_job_drops_the_rows_any_of_its_models_needs(missing_ks2):
    results = bayesfed.fit(missing_ks2, [spec_path("m0"), spec_path("m1")], **SETTINGS)
    fits = fit_by_model(results)
    year0 = missing_ks2[missing_ks2["cohort"] - missing_ks2["founding_year"] == 0]
    assert fits["M0"]["n_pupils"] == fits["M1"]["n_pupils"] == int(year0["ks2"].notna().sum())
    assert len(year0) > fits["M1"]["n_pupils"]  # some rows of year 0 were dropped
    assert "comparison_refused" not in fits["M1"]
    assert set(fits["M1"]["variance_explained"]) == {"school", "pupil"}
    report = results.report()
    assert "| not compared |" not in report and "not compared across groups" not in report
    assert "loo_refused" not in results.summary_json


def test_models_fitted_to_different_pupils_are_not_compared(missing_ks2, tmp_path):
    """Two jobs into one folder: M0 keeps every pupil (it needs no KS2), M1 drops those
    without; the folder's summary refuses M1's variance explained instead of reporting it."""
    bayesfed.fit(missing_ks2, "m0", out=tmp_path, **SETTINGS)
    results = bayesfed.fit(missing_ks2, "m1", out=tmp_path, **SETTINGS)
    fits = fit_by_model(results)
    n0, n1 = fits["M0"]["n_pupils"], fits["M1"]["n_pupils"]
    assert n0 > n1
    assert "variance_explained" not in fits["M1"]
    assert fits["M1"]["comparison_refused"] == (
        f"not compared with M0: M1 and M0 were fitted to different pupils ({n1:,} and "
        f"{n0:,}), so the variance one explains of the other's is not defined; fit both in "
        "one job (with --drop-incomplete, rows missing a value any of its models needs are "
        "dropped for all of them)")
    assert "variance_explained" not in fits["M1"]["reml"]
    report = results.report()
    assert "| **% variance explained, school (vs M0: two fits)** | not compared |" in report
    assert f"**Year of foundation: variance explained {fits['M1']['comparison_refused']}.**" \
        in report
    assert results.summary_json["loo_refused"] == [{"year": 0, "groups": [
        {"models": ["M0"], "n_pupils": n0, "n_schools": fits["M0"]["n_schools"]},
        {"models": ["M1"], "n_pupils": n1, "n_schools": fits["M1"]["n_schools"]}]}]
    assert not results.summary_json["loo_comparison"]
    assert "**Year of foundation: not compared across groups fitted to different pupils or " \
        "data: M0 (" in report
