"""Random slopes end to end: a formula with ``(1 + ks2 | school_id)`` fitted to a study simulated
with random KS2 slopes, through the job, the fit file, ``summary.json`` and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bayesfed
from bayesfed.inputs.simulate import DEFAULT_SEED, SimConfig, simulate
from bayesfed.jobs.commands import report_command
from bayesfed.store import load_fit

FORMULA = "gcse_score ~ fsm + idaci + ks2 + (1 + ks2 | school_id)"
TRUE_SD, TRUE_COR = 1.5, 0.3


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    frame, truth = simulate(SimConfig(sd_ks2_slope=TRUE_SD, cor_ks2_slope=TRUE_COR),
                            seed=DEFAULT_SEED)
    out = tmp_path_factory.mktemp("slopes") / "fits"
    # 2,000 draws a chain: at 1,000 the slope sd's tail ESS was 370 (its posterior reaches
    # towards 0, where the sampler moves slowly), short of the gate's 400
    bayesfed.fit(frame, FORMULA, years=[0], out=out, seed=3, draws=2000)
    return out, truth


def test_the_formula_is_a_random_slope_spec():
    spec = bayesfed.model_spec(FORMULA)
    assert spec.random.slopes == ["ks2"] and spec.predictors.pupil == ["fsm", "idaci", "ks2"]


def test_summary_reports_the_slopes_and_recovers_their_sd(fitted):
    out, truth = fitted
    fit = json.loads((out / "summary.json").read_text())["fits"][0]
    assert fit["diagnostics"]["ok"], fit["diagnostics"]
    sd, cor = fit["params"]["sd_slope[ks2]"], fit["params"]["cor_school[intercept,ks2]"]
    assert sd["hdi_low"] < TRUE_SD < sd["hdi_high"]
    assert cor["hdi_low"] < TRUE_COR < cor["hdi_high"]
    assert fit["terms"] == ["intercept", "fsm", "idaci", "ks2"]
    assert fit["reml"] == {"unavailable": "the REML cross-check fits random intercepts only "
                           "(random slopes are compared with lme4 in "
                           "bench/random_slopes_agreement.py)"}
    # the VPC at the pupils' mean of ks2 is the middle point of its curve
    curve = fit["vpc_by_slope"]["ks2"]
    assert curve["school"][1] == fit["variance_partition"]["school"]
    assert curve["x"][0] < curve["x"][1] < curve["x"][2]
    shares = fit["decomposition"]
    total = sum(shares[k]["mean"] for k in ("fixed", "school", "pupil"))
    assert total == pytest.approx(1.0, abs=1e-9)
    assert fit["loo"]["n_units"] == fit["n_schools"] == 77
    assert "variance_explained" not in fit and "r2_within" not in fit
    # new schools' slopes replicate the spread of the within-school sds (slope sd 1.5 over
    # a KS2 sd of about 0.9: ignoring it would put the observed spread far outside)
    for name in ("within_sd_sd", "school_mean_sd", "within_sd_pooled"):
        assert 0.01 < fit["predictive"]["posterior"][name]["p_value"] < 0.99, name
    # the prior sensitivity of the VPC at the pupils' mean KS2, the slope priors included
    assert set(fit["prior_sensitivity"]) == {"vpc_school"}


def test_the_fit_file_holds_each_schools_slopes(fitted):
    out, truth = fitted
    post = load_fit(out / "formula_k0.nc").posterior
    slopes = post["school_slope"].sel(slope="ks2")
    assert slopes.dims == ("chain", "draw", "school")
    true = np.array([truth["ks2_slopes"][s] for s in post["school"].to_numpy()])
    # each school's posterior mean slope follows its true one (shrunk to the fixed slope)
    fixed = float(post["beta"].sel(predictor="ks2").mean())
    estimated = slopes.mean(("chain", "draw")).to_numpy() - fixed
    assert np.corrcoef(estimated, true)[0, 1] > 0.5


def test_the_report_shows_the_slopes(fitted, tmp_path):
    out, _ = fitted
    report = report_command(out, tmp_path / "report.md").read_text()
    assert "| **sd_slope[ks2]** |" in report and "| **cor_school[intercept,ks2]** |" in report
    assert "(at the slope predictors' means)" in report
    assert "|   REML | n/a |" in report and "REML | failed" not in report
    assert "![Each school's slope of ks2, formula, one panel per year" in report
    assert (tmp_path / "figures" / "school_slope_ks2_formula.png").exists()


def test_summary_holds_each_schools_slope_and_own_estimate(fitted):
    out, truth = fitted
    fit = json.loads((out / "summary.json").read_text())["fits"][0]
    block = fit["school_slopes"]["ks2"]
    assert len(block["school"]) == len(block["own"]) == fit["n_schools"]
    true = np.array([truth["ks2_slopes"][s] for s in block["school"]])
    own = np.array([np.nan if v is None else v for v in block["own"]])
    mean = np.array(block["mean"])
    assert np.isfinite(own).all()  # every school of the study has pupils enough
    # the own estimates follow the truth and scatter more than the shrunken posterior means
    assert np.corrcoef(own, true)[0, 1] > 0.5 and np.std(mean) < np.std(own)
