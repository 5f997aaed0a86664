"""The location-scale model end to end: ``models/m1_scale.toml`` (``[residual] by_school``) and
M1 fitted to a study simulated with a pupil sd by school, through the job, the fit file,
``summary.json`` and the report; the within-school sd check and leave-one-school-out tell the
two models apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bayesfed
from bayesfed.inputs.shipped import folder
from bayesfed.inputs.simulate import DEFAULT_SEED, SimConfig, simulate
from bayesfed.jobs.commands import report_command
from bayesfed.store import load_fit

TRUE_SD, TRUE_COR = 0.3, -0.4
SCALE_SPEC = folder("models") / "m1_scale.toml"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    frame, truth = simulate(SimConfig(sd_log_sigma=TRUE_SD, cor_log_sigma=TRUE_COR),
                            seed=DEFAULT_SEED)
    out = tmp_path_factory.mktemp("scale") / "fits"
    slopes = bayesfed.model_spec("gcse_score ~ fsm + idaci + male + C(sen) + non_white_british "
                                 "+ ks2 + (1 + ks2 | school_id)", name="M1KS2")
    bayesfed.fit(frame, ["m0", "m1", SCALE_SPEC, slopes], years=[0], out=out, seed=3)
    summary = json.loads((out / "summary.json").read_text())
    return out, truth, {f["model"]: f for f in summary["fits"]}, summary


def test_the_spec_asks_for_a_residual_sd_by_school():
    spec = bayesfed.model_spec(SCALE_SPEC)
    assert spec.residual.by_school and spec.name == "M1S"
    # the same model as a brms-style formula, named M1S: the same specification
    formula = bayesfed.model_spec(
        "gcse_score ~ fsm + idaci + male + C(sen) + non_white_british + ks2 + (1 | school_id);"
        " sigma ~ 1 + (1 | school_id)", name="M1S", columns={"federation": "federation_id"})
    assert formula.residual == spec.residual and formula.pupil_terms == spec.pupil_terms
    assert formula.categorical_coding() == spec.categorical_coding()


def test_summary_recovers_the_sd_of_the_log_sds(fitted):
    _, _, fits, _ = fitted
    fit = fits["M1S"]
    assert fit["diagnostics"]["ok"], fit["diagnostics"]
    sd = fit["params"]["sd_log_sigma"]
    assert sd["hdi_low"] < TRUE_SD < sd["hdi_high"]
    # the intercept of a per-year fit also holds the school-by-cohort shock, so its
    # correlation with the log sd is TRUE_COR * 1.45 / sqrt(1.45^2 + 0.7^2) = -0.36
    cor = fit["params"]["cor_log_sigma"]
    assert cor["hdi_low"] < TRUE_COR * 1.45 / np.hypot(1.45, 0.7) < cor["hdi_high"]
    assert fit["terms"][0] == "intercept" and "sd_log_sigma" not in fit["terms"]
    assert fit["reml"] == {"unavailable": "the REML cross-check fits one residual variance (the "
                           "location-scale model is compared with brms in "
                           "bench/location_scale_agreement.py)"}
    # the pupil variance of the partition is the schools' mean, E[sigma_j^2] > sigma^2
    partition = fit["variance_partition"]
    assert partition["pupil"]["mean"] + partition["school"]["mean"] == pytest.approx(1.0)
    shares = fit["decomposition"]
    assert sum(shares[k]["mean"] for k in ("fixed", "school", "pupil")) == pytest.approx(1.0)


def test_checks_tell_the_location_scale_model_from_one_pupil_sd(fitted):
    """M1 cannot reproduce how much the schools' within-school sds differ, nor can a random
    KS2 slope; M1S can, and leave-one-school-out prefers it."""
    _, _, fits, summary = fitted
    one = fits["M1"]["predictive"]["posterior"]["within_sd_sd"]
    slope = fits["M1KS2"]["predictive"]["posterior"]["within_sd_sd"]
    by_school = fits["M1S"]["predictive"]["posterior"]["within_sd_sd"]
    assert one["p_value"] < 0.01 and slope["p_value"] < 0.01
    assert 0.05 < by_school["p_value"] < 0.95
    (year,) = summary["loo_comparison"]
    ranked = [m["model"] for m in year["models"]]
    assert ranked[0] == "M1S" and "M1" in ranked
    assert fits["M1S"]["loo"]["n_high_pareto_k"] == 0
    assert set(fits["M1S"]["prior_sensitivity"]) == {"vpc_school"}


def test_school_sigmas_follow_the_truth_and_shrink(fitted):
    out, truth, fits, _ = fitted
    sigmas = fits["M1S"]["school_sigmas"]
    true = np.array([truth["sigma"] * np.exp(truth["log_sigma_deviations"][s])
                     for s in sigmas["school"]])
    mean, own = np.array(sigmas["mean"]), np.array(sigmas["own"], dtype=float)
    assert np.corrcoef(mean, true)[0, 1] > 0.8
    assert np.std(mean) < np.std(own)  # pulled towards the median school's sd
    assert np.all(np.array(sigmas["hdi_low"]) < mean)
    post = load_fit(out / "M1S_k0.nc").posterior
    assert post["school_sigma"].dims == ("chain", "draw", "school")
    np.testing.assert_allclose(post["school_sigma"], post["sigma"]
                               * np.exp(post["log_sigma_school"]), rtol=1e-12)


def test_the_report_shows_the_location_scale_model(fitted, tmp_path):
    out, _, _, _ = fitted
    report = report_command(out, tmp_path / "report.md").read_text()
    assert "| **sd_log_sigma** |" in report and "| **cor_log_sigma** |" in report
    assert "![Each school's pupil sd, M1S" in report
    assert (tmp_path / "figures" / "school_sigma_M1S.png").exists()
    assert "(pupil: the schools' mean E[sigma_j²])" in report
