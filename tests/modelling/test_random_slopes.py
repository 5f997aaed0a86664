"""The collapsed random-slope model (bayesfed.modelling.random_slopes) against the pupils' dense
multivariate normal density, and its recovery of known slope sds and correlations."""

from __future__ import annotations

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats

from bayesfed.design.columns import Design
from bayesfed.design.suffstats import summary_of
from bayesfed.modelling.priors import default_priors
from bayesfed.modelling.random_slopes import (
    build_random_slopes,
    effect_conditional,
    effect_draws,
    marginal_loglik,
    school_loglik,
    slope_columns,
    slope_data,
)


def predictors(rng, n_schools: int, sizes) -> tuple[np.ndarray, np.ndarray]:
    """Each pupil's school and predictors: x0 continuous, x1 0/1, x2 school-level; school
    sizes drawn in ``sizes``, the first school with one pupil."""
    n = rng.integers(*sizes, size=n_schools)
    n[0] = 1
    school = np.repeat(np.arange(n_schools), n)
    N = school.size
    x0 = rng.normal(2.0, 1.5, N) + rng.normal(0, 0.5, n_schools)[school]
    x1 = (rng.uniform(size=N) < 0.3).astype(float)
    x2 = rng.normal(size=n_schools)[school]
    return school, np.column_stack([x0, x1, x2])


def simulate(seed: int, n_schools: int, sizes=(1, 40), sd=(0.6, 0.3, 0.2), cor=0.5,
             beta=(1.0, -0.5, 0.3), sigma=1.0):
    """Pupils of a random-slope model: x0 continuous with a random slope, x1 0/1 with one,
    x2 school-level; school sizes drawn in ``sizes`` (a one-pupil school included)."""
    rng = np.random.default_rng(seed)
    school, X = predictors(rng, n_schools, sizes)
    N = school.size
    x0 = X[:, 0]
    r = len(sd)
    Omega = np.full((r, r), cor)
    np.fill_diagonal(Omega, 1.0)
    Sigma = np.outer(sd, sd) * Omega
    b = rng.multivariate_normal(np.zeros(r), Sigma, size=n_schools)
    Z = np.column_stack([np.ones(N), x0, X[:, 1]])[:, :r]
    y = 3.0 + X @ np.array(beta) + (Z * b[school]).sum(axis=1) + rng.normal(0, sigma, N)
    design = Design(y=y, X=X, coef_names=("x0", "x1", "x2"), school_idx=school,
                    schools=tuple(f"s{j:03d}" for j in range(n_schools)),
                    school_level=(False, False, True))
    return design, Sigma


def dense_loglik(design, alpha, beta, sigma, Sigma, slopes):
    cols = [design.coef_names.index(s) for s in slopes]
    total = 0.0
    for j in range(design.n_schools):
        rows = design.school_idx == j
        Z = np.column_stack([np.ones(rows.sum()), design.X[rows][:, cols]])
        V = Z @ Sigma @ Z.T + sigma**2 * np.eye(rows.sum())
        total += stats.multivariate_normal(alpha + design.X[rows] @ beta, V).logpdf(
            design.y[rows])
    return total


@pytest.mark.parametrize("slopes", [("x0",), ("x0", "x1")])
def test_collapsed_density_equals_the_pupils_dense_density(slopes):
    design, _ = simulate(seed=len(slopes), n_schools=12)
    data = slope_data(summary_of(design), slopes)
    r = 1 + len(slopes)
    g_, sigma_, chol_ = pt.dvector(), pt.dscalar(), pt.dmatrix()
    f = pytensor.function([g_, sigma_, chol_], marginal_loglik(
        data.gram, data.cross, data.total, data.pupil_count, g_, sigma_, chol_, r))
    rng = np.random.default_rng(7)
    for trial in range(4):
        alpha, beta = rng.normal(), rng.normal(size=3)
        sigma = rng.uniform(0.3, 2.0)
        A = rng.normal(size=(r, r))
        Sigma = A @ A.T + 0.1 * np.eye(r)
        if trial == 3:  # a singular covariance (a slope sd of 0): still exact
            Sigma[-1, :] = Sigma[:, -1] = 0.0
            L = np.zeros((r, r))
            L[:-1, :-1] = np.linalg.cholesky(Sigma[:-1, :-1])
        else:
            L = np.linalg.cholesky(Sigma)
        level = alpha + data.x_centre @ beta
        g = np.concatenate([[data.y_centre - level], -beta, [1.0]])
        expected = dense_loglik(design, alpha, beta, sigma, Sigma, slopes)
        assert f(g, sigma, L) == pytest.approx(expected, rel=1e-10, abs=1e-8)


def dense_conditional(design, alpha, beta, sigma, Sigma, slopes, j):
    """A school's effects given the rest, from its pupils: mean and covariance by Gaussian
    conditioning (valid for a singular Sigma)."""
    cols = [design.coef_names.index(s) for s in slopes]
    rows = design.school_idx == j
    Z = np.column_stack([np.ones(rows.sum()), design.X[rows][:, cols]])
    V = Z @ Sigma @ Z.T + sigma**2 * np.eye(rows.sum())
    gain = Sigma @ Z.T @ np.linalg.inv(V)
    return gain @ (design.y[rows] - alpha - design.X[rows] @ beta), Sigma - gain @ Z @ Sigma


@pytest.mark.parametrize("slopes", [("x0",), ("x0", "x1")])
def test_school_effects_conditional_equals_the_pupils_dense_conditional(slopes):
    design, _ = simulate(seed=3 + len(slopes), n_schools=8)
    data = slope_data(summary_of(design), slopes)
    r = 1 + len(slopes)
    rng = np.random.default_rng(9)
    draws = []
    for trial in range(3):
        A = rng.normal(size=(r, r))
        Sigma = A @ A.T + 0.1 * np.eye(r)
        L = np.linalg.cholesky(Sigma)
        if trial == 2:  # a slope sd of 0: Sigma singular, the conditional still exact
            L[-1, :] = 0.0
            Sigma = L @ L.T
        draws.append((rng.normal(), rng.normal(size=3), rng.uniform(0.3, 2.0), Sigma, L))
    g = np.array([np.concatenate([[data.y_centre - (a + data.x_centre @ b)], -b, [1.0]])
                  for a, b, _, _, _ in draws])
    mean, root = effect_conditional(data, g, np.array([d[2] for d in draws]),
                                    np.array([d[4] for d in draws]))
    assert mean.shape == (3, design.n_schools, r) and root.shape == (3, design.n_schools, r, r)
    for s, (alpha, beta, sigma, Sigma, _) in enumerate(draws):
        for j in range(design.n_schools):
            m, cov = dense_conditional(design, alpha, beta, sigma, Sigma, slopes, j)
            np.testing.assert_allclose(mean[s, j], m, rtol=1e-9, atol=1e-10)
            np.testing.assert_allclose(root[s, j] @ root[s, j].T, cov, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("slopes", [("x0",), ("x0", "x1")])
def test_school_logliks_are_each_schools_dense_density(slopes):
    """Per school and draw (leave-one-school-out's input): each equals the school's pupils'
    dense multivariate normal density, a singular covariance included."""
    design, _ = simulate(seed=5 + len(slopes), n_schools=6)
    data = slope_data(summary_of(design), slopes)
    r = 1 + len(slopes)
    rng = np.random.default_rng(4)
    A = rng.normal(size=(2, r, r))
    L = np.linalg.cholesky(A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(r))
    L[1, -1, :] = 0.0  # the second draw's last sd is 0
    alpha, beta, sigma = rng.normal(size=2), rng.normal(size=(2, 3)), rng.uniform(0.5, 2, 2)
    g = np.column_stack([data.y_centre - (alpha + beta @ data.x_centre), -beta, np.ones(2)])
    ll = school_loglik(data, g, sigma, L)
    assert ll.shape == (2, design.n_schools)
    cols = [design.coef_names.index(s) for s in slopes]
    for s in range(2):
        Sigma = L[s] @ L[s].T
        for j in range(design.n_schools):
            rows = design.school_idx == j
            Z = np.column_stack([np.ones(rows.sum()), design.X[rows][:, cols]])
            V = Z @ Sigma @ Z.T + sigma[s] ** 2 * np.eye(rows.sum())
            expected = stats.multivariate_normal(alpha[s] + design.X[rows] @ beta[s], V).logpdf(
                design.y[rows])
            assert ll[s, j] == pytest.approx(expected, rel=1e-10, abs=1e-8)


def test_school_effect_draws_have_the_conditional_mean_and_covariance():
    design, _ = simulate(seed=11, n_schools=3)
    data = slope_data(summary_of(design), ("x0",))
    Sigma = np.array([[0.5, 0.1], [0.1, 0.2]])
    beta = np.array([1.0, -0.5, 0.3])
    n = 20_000
    g = np.tile(np.concatenate([[data.y_centre - (3.0 + data.x_centre @ beta)], -beta, [1.0]]),
                (n, 1))
    sigma, chol = np.full(n, 1.0), np.tile(np.linalg.cholesky(Sigma), (n, 1, 1))
    b = effect_draws(data, g, sigma, chol, np.random.default_rng(1), block=7_000)
    mean, root = effect_conditional(data, g[:1], sigma[:1], chol[:1])
    for j in range(3):
        cov = root[0, j] @ root[0, j].T
        # Monte Carlo: the mean within 4 standard errors, the covariance within 5 %
        se = np.sqrt(np.diag(cov) / n)
        assert np.all(np.abs(b[:, j].mean(axis=0) - mean[0, j]) < 4 * se)
        np.testing.assert_allclose(np.cov(b[:, j].T), cov, rtol=0.05, atol=1e-4)


def test_slopes_must_be_pupil_level_coefficients():
    design, _ = simulate(seed=0, n_schools=5)
    summary = summary_of(design)
    with pytest.raises(ValueError, match="random slope 'x2' is school-level"):
        slope_columns(summary, ("x2",))
    with pytest.raises(ValueError, match="random slope 'ks2' is not a coefficient"):
        slope_columns(summary, ("ks2",))


@pytest.mark.slow
def test_recovers_the_slope_sd_and_correlation():
    from bayesfed.sampling.nuts import sample

    sd, cor = (0.6, 0.3), 0.5
    design, _ = simulate(seed=11, n_schools=300, sizes=(20, 60), sd=sd, cor=cor)
    summary = summary_of(design)
    priors = default_priors(summary)
    model = build_random_slopes(summary, priors, ("x0",), slope_sd=np.array([1.0]))
    post = sample(model, draws=500, tune=500, chains=4, seed=3)["posterior"]
    for name, truth in (("sd_school", sd[0]), ("sigma", 1.0)):
        draws = post[name].to_numpy().ravel()
        assert np.quantile(draws, 0.03) < truth < np.quantile(draws, 0.97), name
    slope = post["sd_slope"].sel(slope="x0").to_numpy().ravel()
    assert np.quantile(slope, 0.03) < sd[1] < np.quantile(slope, 0.97)
    rho = post["cor_school"].sel(re_term="intercept", re_term_b="x0").to_numpy().ravel()
    assert np.quantile(rho, 0.03) < cor < np.quantile(rho, 0.97)
