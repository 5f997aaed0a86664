"""Model checks (bayesfed.posterior.checks): per-school statistics, leave-one-school-out, predictive
checks.

No sampling: the "posteriors" are draws placed around known parameter values, so each test
runs in well under a second. Two implementations must agree (the per-school log-likelihoods
sum to the collapsed model's likelihood), and each predictive check has a negative control:
data that break the model's assumption must be flagged, data from the model must not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from bayesfed.design.columns import Design
from bayesfed.design.suffstats import school_stats
from bayesfed.modelling.priors import default_priors
from bayesfed.modelling.two_level import marginal_loglik
from bayesfed.posterior.checks import (
    compare_loo,
    has_school_data,
    loo_school,
    loo_summary,
    predictive_checks,
    school_data,
    school_loglik,
)


def make_design(seed: int = 0, schools: int = 30, pupils: int = 40, tau: float = 1.5,
                sigma: float | np.ndarray = 3.0, beta: tuple[float, float] = (2.0, 0.5),
                shift: dict[int, float] | None = None) -> Design:
    """Two-level data from the model: one pupil predictor, one school-level dummy.

    ``sigma`` may be one value per school (a heteroscedastic negative control); ``shift``
    adds to the outcome of some schools (an outlier school).
    """
    rng = np.random.default_rng(seed)
    n = np.full(schools, pupils)
    n[0] = 1  # a one-pupil school: it has no within-school sd
    idx = np.repeat(np.arange(schools), n)
    x = rng.normal(0.0, 1.0, idx.size) + 0.3 * rng.normal(0.0, 1.0, schools)[idx]
    fed = (np.arange(schools) % 2).astype(float)[idx]
    u = 4.0 + tau * rng.normal(0.0, 1.0, schools)
    for j, value in (shift or {}).items():
        u[j] += value
    sd = np.broadcast_to(np.asarray(sigma, dtype=float), (schools,))
    y = u[idx] + beta[0] * x + beta[1] * fed + sd[idx] * rng.normal(0.0, 1.0, idx.size)
    return Design(y=y, X=np.column_stack([x, fed]), coef_names=("x", "federated"),
                  school_idx=idx, schools=tuple(f"S{j:03d}" for j in range(schools)),
                  school_level=(False, True))


def fake_fit(design: Design, intercept: float = 4.0, beta: tuple[float, float] = (2.0, 0.5),
             tau: float = 1.5, sigma: float = 3.0, spread: float = 0.02, chains: int = 2,
             draws: int = 500, seed: int = 1) -> xr.DataTree:
    """A two-level fit whose draws lie around the given values (relative spread)."""
    rng = np.random.default_rng(seed)

    def around(value: float, *shape: int) -> np.ndarray:
        return value + spread * max(abs(value), 0.1) * rng.normal(size=(chains, draws, *shape))

    post = xr.Dataset(
        {"intercept": (("chain", "draw"), around(intercept)),
         "beta": (("chain", "draw", "predictor"),
                  np.stack([around(b) for b in beta], axis=-1)),
         "sd_school": (("chain", "draw"), np.abs(around(tau))),
         "sigma": (("chain", "draw"), np.abs(around(sigma)))},
        coords={"chain": np.arange(chains), "draw": np.arange(draws),
                "predictor": list(design.coef_names)})
    tree = xr.DataTree.from_dict({"posterior": post, "constant_data": school_data(design)})
    tree.attrs.update(bayesfed_family="two_level", bayesfed_priors=json.dumps(
        default_priors(design).as_dict()))
    return tree


def test_school_data_sums_to_the_pooled_statistics():
    design = make_design()
    data, pooled = school_data(design), school_stats(design)
    assert data["school_n"].to_numpy().tolist() == pooled.n.tolist()
    np.testing.assert_allclose(data["school_y_mean"], pooled.y_mean)
    np.testing.assert_allclose(data["school_x_mean"], pooled.X_mean)
    np.testing.assert_allclose(data["school_yy"].sum("school"), pooled.yy, rtol=1e-12)
    np.testing.assert_allclose(data["school_xy"].sum("school"), pooled.Xy, rtol=1e-12,
                               atol=1e-9)
    np.testing.assert_allclose(data["school_xx"].sum("school"), pooled.XX, rtol=1e-12,
                               atol=1e-9)
    assert float(abs(data["school_xx"].sel(predictor="federated")).max()) == 0.0
    assert has_school_data(fake_fit(design))
    assert not has_school_data(xr.DataTree.from_dict({"posterior": xr.Dataset()}))


def test_school_loglik_sums_to_the_collapsed_likelihood():
    """Two implementations: bayesfed.posterior.checks (NumPy, per school) and
    bayesfed.modelling.two_level (PyTensor, summed), at the same parameter values."""
    design = make_design()
    tree = fake_fit(design, spread=0.2, draws=3)
    ll = school_loglik(tree)
    assert ll.dims == ("chain", "draw", "school") and ll.sizes["school"] == design.n_schools
    stats = school_stats(design)
    post = tree.posterior
    for c in range(2):
        for d in range(3):
            at = {k: post[k].isel(chain=c, draw=d).to_numpy() for k in post.data_vars}
            fixed = at["intercept"] + stats.X_mean @ at["beta"]
            expected = marginal_loglik(stats, fixed, at["beta"], at["sigma"],
                                       at["sd_school"]).eval()
            assert float(ll.isel(chain=c, draw=d).sum()) == pytest.approx(float(expected),
                                                                          rel=1e-10)


def test_predictive_checks_pass_data_from_the_model():
    design = make_design(seed=3)
    checks = predictive_checks(fake_fit(design), seed=5)
    assert checks["draws"] == 1000
    for name, stats in checks["posterior"].items():
        assert 0.03 <= stats["p_value"] <= 0.97, (name, stats)
        assert stats["low"] <= stats["mean"] <= stats["high"]
    assert len(checks["school_means"]["observed"]) == design.n_schools
    assert len(checks["within_sds"]["observed"]) == design.n_schools - 1  # one-pupil school
    # the weakly informative prior predicts far more spread than the data show, and covers them
    prior = checks["prior"]["school_mean_sd"]
    assert prior["high"] - prior["low"] > 5 * (checks["posterior"]["school_mean_sd"]["high"]
                                               - checks["posterior"]["school_mean_sd"]["low"])


def test_predictive_checks_flag_unequal_pupil_variances():
    """Negative control: sigma 1.5 in a third of the schools and 4.5 in the others; the
    model's one (pooled) sigma reproduces their average but not their spread."""
    sigma = np.where(np.arange(30) % 3 == 0, 1.5, 4.5)
    design = make_design(seed=3, sigma=sigma)
    stats, beta = school_stats(design), np.array([2.0, 0.5])
    residual = stats.yy - 2 * beta @ stats.Xy + beta @ stats.XX @ beta
    pooled = float(np.sqrt(residual / (design.n_pupils - design.n_schools)))
    checks = predictive_checks(fake_fit(design, sigma=pooled), seed=5)
    assert checks["posterior"]["within_sd_sd"]["p_value"] < 0.01
    assert 0.03 <= checks["posterior"]["within_sd_pooled"]["p_value"] <= 0.97


def test_predictive_checks_flag_an_outlier_school():
    """Negative control: one school 12 points (8 school sds) above the others."""
    design = make_design(seed=3, shift={7: 12.0})
    checks = predictive_checks(fake_fit(design), seed=5)
    assert checks["posterior"]["school_mean_max"]["p_value"] < 0.01


def test_leave_one_school_out_prefers_the_right_model():
    design = make_design(seed=4)
    right = loo_school(fake_fit(design, spread=0.05))
    wrong = loo_school(fake_fit(design, sigma=2.2, spread=0.05, seed=2))  # sigma too small
    summary = loo_summary(right)
    assert summary["unit"] == "school" and summary["n_units"] == design.n_schools
    assert summary["n_high_pareto_k"] == 0
    ranked = compare_loo({"right": right, "wrong": wrong})
    assert [m["model"] for m in ranked] == ["right", "wrong"]
    assert ranked[1]["elpd_diff"] < -2 * ranked[1]["dse"]
    # stacking weights from the shifted elpds (without the shift every weight was 1/2)
    assert ranked[0]["weight"] > 0.9


def test_log_prior_is_the_models_prior_density():
    """checks.log_prior (what the per-year prior sensitivity power-scales) equals PyMC's log
    density of the collapsed model's free variables, its likelihood left out, at random
    points."""
    from bayesfed.design.suffstats import summary_of
    from bayesfed.modelling.two_level import build_two_level_collapsed
    from bayesfed.posterior.checks import log_prior

    rng = np.random.default_rng(5)
    n, schools = 300, 12
    idx = np.sort(rng.integers(0, schools, n))
    X = np.column_stack([rng.normal(size=n), rng.integers(0, 2, n)])
    design = Design(y=rng.normal(3, 2, n), X=X, coef_names=("x", "flag"), school_idx=idx,
                    schools=tuple(f"s{j:02d}" for j in range(schools)),
                    school_level=(False, False))
    priors = default_priors(design)
    model = build_two_level_collapsed(design, priors)
    prior_rvs = [model[v] for v in ("beta", "level", "sd_school", "sigma")]
    logp = model.compile_logp(vars=prior_rvs, jacobian=False)
    centre = summary_of(design).pooled().X_centre
    for _ in range(3):
        beta, level = rng.normal(size=2), rng.normal(3, 1)
        tau, sigma = rng.uniform(0.2, 3, 2)
        expected = logp({"beta": beta, "level": level, "sd_school_log__": np.log(tau),
                         "sigma_log__": np.log(sigma)})
        tree = xr.DataTree.from_dict({"posterior": xr.Dataset(
            {"intercept": (("chain", "draw"), [[level - centre @ beta]]),
             "beta": (("chain", "draw", "predictor"), [[beta]]),
             "sd_school": (("chain", "draw"), [[tau]]), "sigma": (("chain", "draw"), [[sigma]])},
            coords={"predictor": ["x", "flag"]})})
        tree.attrs["bayesfed_priors"] = json.dumps(priors.as_dict())
        np.testing.assert_allclose(float(log_prior(tree).squeeze()), float(expected),
                                   rtol=1e-12)


@pytest.mark.parametrize(("r", "eta"), [(2, 2.0), (3, 2.0), (4, 1.0)])
def test_lkj_cholesky_draws_have_lkj_marginals(r, eta):
    """Each correlation of an LKJ(eta) matrix of size r is 2 Beta(b, b) - 1 with b = eta - 1 +
    r/2: mean 0, variance 1 / (2b + 1); every row of the factor has unit length."""
    from bayesfed.posterior.checks import lkj_cholesky

    n = 40_000
    L = lkj_cholesky(r, eta, n, np.random.default_rng(1))
    corr = L @ np.swapaxes(L, 1, 2)
    np.testing.assert_allclose(np.diagonal(corr, axis1=1, axis2=2), 1.0, atol=1e-12)
    b = eta - 1 + r / 2
    for i, j in zip(*np.tril_indices(r, -1)):
        rho = corr[:, i, j]
        assert abs(rho.mean()) < 4 * np.sqrt(1 / (2 * b + 1) / n)
        assert rho.var() == pytest.approx(1 / (2 * b + 1), rel=0.03)
