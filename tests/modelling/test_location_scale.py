"""The collapsed location-scale model (bayesfed.modelling.location_scale) against the pupils'
dense multivariate normal density, its exact intercept draws, and its recovery of a known sd of
the schools' log pupil sds and its correlation with the intercept."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats
from test_random_slopes import predictors

from bayesfed.design.columns import Design
from bayesfed.design.suffstats import summary_of
from bayesfed.modelling.location_scale import (
    add_scale_draws,
    build_location_scale,
    draw_log_sd,
    draw_parameters,
    intercept_conditional,
    log_integrand,
    loglik_and_grad,
    school_loglik,
)
from bayesfed.modelling.priors import default_priors


def simulate(seed: int, n_schools: int, sizes=(1, 40), sd_school=0.6, sd_log_sigma=0.3,
             cor=-0.5, beta=(1.0, -0.5, 0.3), sigma=1.0):
    """Pupils of a location-scale model: x0 continuous, x1 0/1, x2 school-level; school sizes
    drawn in ``sizes`` (a one-pupil school included). Returns the design and each school's
    log pupil-sd deviation."""
    rng = np.random.default_rng(seed)
    school, X = predictors(rng, n_schools, sizes)
    N = school.size
    cov = np.array([[sd_school**2, cor * sd_school * sd_log_sigma],
                    [cor * sd_school * sd_log_sigma, sd_log_sigma**2]])
    a, omega = rng.multivariate_normal(np.zeros(2), cov, size=n_schools).T
    y = (3.0 + X @ np.array(beta) + a[school]
         + sigma * np.exp(omega[school]) * rng.standard_normal(N))
    design = Design(y=y, X=X, coef_names=("x0", "x1", "x2"), school_idx=school,
                    schools=tuple(f"s{j:03d}" for j in range(n_schools)),
                    school_level=(False, False, True))
    return design, omega


def params(rng, cor=None):
    """One random point of the model's parameters where a posterior of :func:`simulate`'s
    data puts its mass (its defaults, perturbed): far from it the integrand over a school's
    log sd can have a second mode, which the quadrature does not claim to integrate."""
    return {"intercept": 3.0 + rng.normal(0, 0.2), "beta": np.array([1.0, -0.5, 0.3])
            + rng.normal(0, 0.05, 3),
            "sd_school": rng.uniform(0.4, 0.9), "sigma": rng.uniform(0.8, 1.2),
            "sd_log_sigma": rng.uniform(0.1, 0.6),
            "cor_log_sigma": rng.uniform(-0.9, 0.9) if cor is None else cor}


def as_posterior(points):
    """Parameter points as a one-chain posterior."""
    def stack(name):
        return np.array([p[name] for p in points])[None]

    post = xr.Dataset({name: (("chain", "draw"), stack(name))
                       for name in ("intercept", "sd_school", "sigma", "sd_log_sigma",
                                    "cor_log_sigma")})
    return post.assign(beta=(("chain", "draw", "predictor"), stack("beta")),
                       ).assign_coords(predictor=["x0", "x1", "x2"])


def dense_school(design, p, j, omega):
    """School j's pupils' log density given its log sd deviation ``omega``, intercept
    integrated out: their dense multivariate normal."""
    rows = design.school_idx == j
    tau, s, rho = p["sd_school"], p["sd_log_sigma"], p["cor_log_sigma"]
    mean = p["intercept"] + design.X[rows] @ p["beta"] + rho * tau * omega / s
    cov = ((p["sigma"] * np.exp(omega)) ** 2 * np.eye(rows.sum())
           + tau**2 * (1 - rho**2) * np.ones((rows.sum(),) * 2))
    return stats.multivariate_normal(mean, cov).logpdf(design.y[rows])


def dense_marginal(design, p, j):
    """School j's log density with its log sd integrated out too: scipy's adaptive quadrature
    of the dense density times the log sd's normal prior."""
    from scipy import integrate

    def log_f(omega):
        return dense_school(design, p, j, omega) + stats.norm.logpdf(omega, 0,
                                                                     p["sd_log_sigma"])

    grid = np.linspace(-3, 3, 601)
    values = [log_f(w) for w in grid]
    peak, at = max(values), grid[int(np.argmax(values))]
    value, _ = integrate.quad(lambda w: np.exp(log_f(w) - peak), -4, 4, points=[at],
                              limit=400, epsabs=0, epsrel=1e-12)
    return peak + np.log(value)


def kernel_args(d, draw, j):
    """One school's and draw's arguments of the kernels, from draw_parameters' result."""
    return (d["n"][j], d["within_ss"][draw, j], d["resid"][draw, j],
            *(d[k][draw, 0] for k in ("log_sigma", "t2", "rho_tau", "s")))


def test_integrand_is_the_dense_density_given_the_log_sd():
    design, _ = simulate(seed=1, n_schools=8)
    summary = summary_of(design)
    rng = np.random.default_rng(3)
    for cor in (None, 0.0, -0.95):
        p = params(rng, cor)
        d = draw_parameters(as_posterior([p]), summary)
        omega = rng.normal(0, 0.4, design.n_schools)
        for j in range(design.n_schools):
            got = (log_integrand(omega[j], *kernel_args(d, 0, j))
                   - stats.norm.logpdf(omega[j], 0, p["sd_log_sigma"]))
            assert got == pytest.approx(dense_school(design, p, j, omega[j]), rel=1e-10,
                                        abs=1e-8)


def test_kernel_gradient_equals_finite_differences():
    design, _ = simulate(seed=5, n_schools=7, sizes=(1, 80))
    summary = summary_of(design)
    d = draw_parameters(as_posterior([params(np.random.default_rng(8))]), summary)
    args = [d["n"], d["within_ss"][0], d["resid"][0],
            *(d[k][0, 0] for k in ("log_sigma", "t2", "rho_tau", "s"))]
    _, grad_ss, grad_r, grad = loglik_and_grad(*args)
    analytic = [*grad_ss, *grad_r, *grad]
    numeric = []
    for i in range(1, 7):
        size = np.size(args[i])
        for k in range(size):
            h = 1e-6 * max(1.0, abs(np.ravel(args[i])[k]))
            up, down = [list(args) for _ in range(2)]
            if size > 1:
                up[i], down[i] = args[i].copy(), args[i].copy()
                up[i][k] += h
                down[i][k] -= h
            else:
                up[i], down[i] = args[i] + h, args[i] - h
            numeric.append((loglik_and_grad(*up)[0] - loglik_and_grad(*down)[0]) / (2 * h))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_collapsed_density_equals_the_pupils_dense_density_integrated():
    """The model's likelihood (its potential) at random points equals the sum over schools of
    the pupils' dense density integrated over the school's log sd by scipy's quad, to 1e-8 (a
    one-pupil school, a tiny sd_log_sigma and a correlation near -1 included); the per-school
    log-likelihoods of leave-one-school-out are those terms."""
    design, _ = simulate(seed=8, n_schools=6, sizes=(1, 120))
    summary = summary_of(design)
    model = build_location_scale(summary, default_priors(summary))
    (potential,) = model.replace_rvs_by_values(model.potentials)
    loglik = model.compile_fn(potential, point_fn=True)
    rng = np.random.default_rng(2)
    points = [params(rng), params(rng, -0.95), params(rng)]
    points[2]["sd_log_sigma"] = 0.01
    per_school = school_loglik(as_posterior(points), summary)
    x_centre = summary.n @ summary.X_mean / summary.n_pupils
    for s, p in enumerate(points):
        free = {"beta": p["beta"], "level": p["intercept"] + x_centre @ p["beta"],
                "sd_school_log__": np.log(p["sd_school"]), "sigma_log__": np.log(p["sigma"]),
                "sd_log_sigma_log__": np.log(p["sd_log_sigma"]),
                "cor_log_sigma_unit_logodds__": np.log((1 + p["cor_log_sigma"])
                                                       / (1 - p["cor_log_sigma"]))}
        dense = [dense_marginal(design, p, j) for j in range(design.n_schools)]
        assert loglik(free) == pytest.approx(sum(dense), rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(per_school[s], dense, rtol=1e-10, atol=1e-8)


def test_log_sd_draws_follow_their_conditional():
    """Draws of a school's log sd have the mean and sd of its conditional density (computed by
    scipy's quad), for a large school, a small one and a one-pupil one."""
    from scipy import integrate

    design, _ = simulate(seed=4, n_schools=3, sizes=(3, 200))
    summary = summary_of(design)
    p = params(np.random.default_rng(6))
    n = 40_000
    d = draw_parameters(as_posterior([p] * n), summary)
    omega = draw_log_sd(d, np.random.default_rng(1))
    for j in range(3):
        args = kernel_args(d, 0, j)
        peak = log_integrand(np.linspace(-3, 3, 601), *args).max()
        moments = [integrate.quad(lambda w, k=k: w**k * np.exp(log_integrand(w, *args) - peak),
                                  -4, 4, limit=400)[0] for k in range(3)]
        mean = moments[1] / moments[0]
        sd = np.sqrt(moments[2] / moments[0] - mean**2)
        assert abs(omega[:, j].mean() - mean) < 4 * sd / np.sqrt(n)
        assert omega[:, j].std() == pytest.approx(sd, rel=0.02)


def test_scale_draws_add_intercepts_given_the_log_sds():
    design, _ = simulate(seed=4, n_schools=5)
    summary = summary_of(design)
    point = params(np.random.default_rng(6))
    n = 20_000
    post = as_posterior([point] * n)
    out = add_scale_draws(xr.DataTree.from_dict({"posterior": post}), summary,
                          seed=1)["posterior"]
    omega = out["log_sigma_school"].to_numpy()[0]
    np.testing.assert_allclose(out["school_sigma"].to_numpy()[0],
                               point["sigma"] * np.exp(omega), rtol=1e-12)
    mean, sd = intercept_conditional(draw_parameters(post, summary), omega)
    effect = out["school_effect"].to_numpy()[0]
    standardised = (effect - mean) / sd  # standard normal given the log sds
    assert abs(standardised.mean()) < 4 / np.sqrt(standardised.size)
    assert standardised.std() == pytest.approx(1.0, rel=0.02)
    # u adds the intercept and the school-level predictor's part
    np.testing.assert_allclose(
        out["u"].to_numpy()[0, 0],
        point["intercept"] + point["beta"][2] * summary.X_mean[:, 2] + effect[0], rtol=1e-12)


@pytest.mark.slow
def test_recovers_the_sd_of_log_sigma_and_its_correlation():
    from bayesfed.sampling.nuts import sample

    truth = {"sd_school": 0.6, "sd_log_sigma": 0.3, "cor_log_sigma": -0.5, "sigma": 1.0}
    design, omega = simulate(seed=11, n_schools=300, sizes=(20, 60),
                             **{k: v for k, v in truth.items() if k != "cor_log_sigma"},
                             cor=truth["cor_log_sigma"])
    summary = summary_of(design)
    model = build_location_scale(summary, default_priors(summary))
    tree = sample(model, draws=500, tune=500, chains=4, seed=3)
    post = add_scale_draws(tree, summary, seed=1)["posterior"]
    for name, value in truth.items():
        draws = post[name].to_numpy().ravel()
        assert np.quantile(draws, 0.03) < value < np.quantile(draws, 0.97), name
    # each school's log sd deviation is recovered: its 94 % intervals cover about 94 %
    draws = post["log_sigma_school"].stack(s=("chain", "draw")).to_numpy()
    low, high = np.quantile(draws, [0.03, 0.97], axis=1)
    assert 0.88 < np.mean((low < omega) & (omega < high)) < 0.99
