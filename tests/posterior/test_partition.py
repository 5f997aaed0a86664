"""Variance partitions on synthetic posteriors with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayesfed.design.columns import Design
from bayesfed.posterior.partition import (
    decomposition,
    decomposition_from_cov,
    hdi_summary,
    school_covariance,
    variance_explained,
    vpc,
    vpc_at,
)


def posterior(sd_school, sigma, beta=None, names=()):
    """A posterior Dataset with dims (chain, draw) from arrays of shape (chain, draw)."""
    data = {"sd_school": (("chain", "draw"), np.asarray(sd_school, dtype=float)),
            "sigma": (("chain", "draw"), np.asarray(sigma, dtype=float))}
    if beta is not None:
        data["beta"] = (("chain", "draw", "predictor"), np.asarray(beta, dtype=float))
    coords = {"predictor": list(names)} if names else {}
    return xr.Dataset(data, coords=coords)


def design(X, names):
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    return Design(y=np.zeros(n), X=X, coef_names=tuple(names),
                  school_idx=np.zeros(n, dtype=np.int64), schools=("a",),
                  school_level=(False,) * len(names))


def test_vpc_known_values():
    out = vpc(posterior([[1.0, 3.0, 0.0]], [[1.0, 4.0, 5.0]]))
    np.testing.assert_allclose(out["school"], [[0.5, 0.36, 0.0]], rtol=1e-15)
    np.testing.assert_allclose(out["pupil"], [[0.5, 0.64, 1.0]], rtol=1e-15)
    assert out["school"].dims == ("chain", "draw")


def test_variance_explained_pairs_draws_by_position():
    ref = posterior([[2.0, 2.0], [4.0, 4.0]], [[4.0, 2.0], [1.0, 1.0]])
    mod = posterior([[1.0, 2.0], [2.0, 0.0]], [[2.0, 2.0], [1.0, 0.5]])
    out = variance_explained(ref, mod)
    assert out["school"].dims == ("sample",)
    # flattened chain by chain: (0,0), (0,1), (1,0), (1,1)
    np.testing.assert_array_equal(out["school"], [0.75, 0.0, 0.75, 1.0])
    np.testing.assert_array_equal(out["pupil"], [0.75, 0.0, 0.0, 0.75])


def test_variance_explained_negative_when_model_variance_is_larger():
    out = variance_explained(posterior([[2.0]], [[4.0]]), posterior([[4.0]], [[4.0]]))
    np.testing.assert_array_equal(out["school"], [-3.0])
    np.testing.assert_array_equal(out["pupil"], [0.0])


def test_variance_explained_uses_the_smaller_count():
    ref = posterior([[2.0, 2.0, 2.0]], [[1.0, 1.0, 1.0]])
    mod = posterior([[1.0], [2.0]], [[1.0], [1.0]])  # 2 chains x 1 draw
    out = variance_explained(ref, mod)
    assert out.sizes["sample"] == 2
    np.testing.assert_array_equal(out["school"], [0.75, 0.0])


def test_decomposition_known_values():
    # var(x) = 2 (denominator n - 1), beta = 2: fixed = 8; school = 4; pupil = 4
    out = decomposition(posterior([[2.0]], [[2.0]], [[[2.0]]], ["x"]), design([[0], [2]], ["x"]))
    assert out["fixed"].item() == 0.5
    assert out["school"].item() == 0.25 and out["pupil"].item() == 0.25
    assert out["r2_marginal"].item() == 0.5 and out["r2_conditional"].item() == 0.75


def test_decomposition_fixed_part_is_variance_of_linear_predictor():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
    beta = rng.normal(size=(2, 4, 3))
    sd, sig = rng.uniform(0.5, 2, (2, 4)), rng.uniform(0.5, 2, (2, 4))
    out = decomposition(posterior(sd, sig, beta, "abc"), design(X, "abc"))
    fixed = np.var(X @ beta[..., None], axis=-2, ddof=1)[..., 0]
    np.testing.assert_allclose(out["fixed"], fixed / (fixed + sd**2 + sig**2), rtol=1e-12)
    total = out["fixed"] + out["school"] + out["pupil"]
    np.testing.assert_allclose(total, 1.0, rtol=1e-15)
    assert out["fixed"].dims == ("chain", "draw")


def test_decomposition_without_predictors():
    out = decomposition(posterior([[1.0]], [[1.0]]), design(np.zeros((3, 0)), []))
    assert out["fixed"].item() == 0.0 and out["school"].item() == 0.5


def test_decomposition_refuses_other_coefficients():
    with pytest.raises(ValueError, match="differ from the design"):
        decomposition(posterior([[1.0]], [[1.0]], [[[1.0]]], ["x"]), design([[0], [1]], ["z"]))


def test_hdi_summary_known_interval():
    # 100 draws: 95 in [0, 1] and 5 outliers; ArviZ's 94% HDI spans floor(0.94 * 100) + 1 = 95
    # sorted draws, and the narrowest such window is [0, 1].
    values = np.concatenate([np.linspace(0, 1, 95), [-10, -9, 9, 10, 11]])
    da = xr.DataArray(np.random.default_rng(0).permutation(values).reshape(2, 50),
                      dims=("chain", "draw"))
    out = hdi_summary(da)
    assert (out["hdi_low"], out["hdi_high"]) == (0.0, 1.0)
    assert out["mean"] == pytest.approx(values.mean(), rel=1e-14)
    assert out["sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-14)
    flat = hdi_summary(xr.DataArray(values, dims="sample"))
    assert (flat["hdi_low"], flat["hdi_high"]) == (0.0, 1.0)


def test_hdi_summary_refuses_bad_prob():
    with pytest.raises(ValueError, match="prob must lie in"):
        hdi_summary(xr.DataArray(np.zeros(3), dims="sample"), prob=94)


def test_decomposition_levels_by_hand():
    """Two schools, one pupil-level predictor x and one school-level z: the within and between
    covariances by hand, and every share and R-squared of one draw from them."""
    from bayesfed.design.columns import build_design
    from bayesfed.posterior.checks import school_data
    from bayesfed.posterior.partition import (
        decomposition_from_cov,
        decomposition_levels,
        predictor_cov,
        predictor_cov_levels,
    )

    frame = pd.DataFrame({"outcome": np.zeros(5), "school": ["a", "a", "a", "b", "b"],
                          "x": [1.0, 2.0, 6.0, 0.0, 4.0], "z": [1.0, 1.0, 1.0, 0.0, 0.0]})
    d = build_design(frame, ["x"], ["z"])
    within, between = predictor_cov_levels(school_data(d))
    # within: x deviations from school means 3 and 2: (-2, -1, 3) and (-2, 2) -> 22; z none
    np.testing.assert_allclose(within, [[22 / 4, 0], [0, 0]], rtol=1e-14)
    # between: means (3, 1) and (2, 0) around (2.6, 0.6), weights 3 and 2
    dev = np.array([[0.4, 0.4], [-0.6, -0.6]])
    np.testing.assert_allclose(between, (dev.T * [3, 2]) @ dev / 4, rtol=1e-14)
    np.testing.assert_allclose(within + between, predictor_cov(d), rtol=1e-14)

    post = posterior([[2.0]], [[3.0]], beta=[[[0.5, 2.0]]], names=["x", "z"])
    out = decomposition_levels(post, within, between)
    b = np.array([0.5, 2.0])
    f1, f2, m, s2 = b @ within @ b, b @ between @ b, 4.0, 9.0
    total = f1 + f2 + m + s2
    for name, value in {"f1": f1 / total, "f2": f2 / total, "m": m / total,
                        "pupil": s2 / total, "r2_within": f1 / (f1 + s2),
                        "r2_between": f2 / (f2 + m)}.items():
        np.testing.assert_allclose(out[name], [[value]], rtol=1e-13, err_msg=name)
    # z's share of the between-school variance: f2 less f2 without z's coefficient
    from bayesfed.posterior.partition import term_share_between

    share = term_share_between(post, between, "z")
    np.testing.assert_allclose(share, [[(f2 - 0.25 * between[0, 0]) / (f2 + m)]], rtol=1e-13)
    # the levels split the total decomposition's fixed part exactly
    whole = decomposition_from_cov(post, predictor_cov(d))
    np.testing.assert_allclose(out["f1"] + out["f2"], whole["fixed"], rtol=1e-13)


def test_snijders_bosker_known_values():
    """tau0^2 = 4, sigma0^2 = 16 against tau^2 = 1, sigma^2 = 9, schools of 5 pupils:
    pupil 1 - 10/20 = 0.5, school 1 - (9/5 + 1)/(16/5 + 4) = 1 - 2.8/7.2."""
    from bayesfed.posterior.partition import snijders_bosker

    out = snijders_bosker(posterior([[2.0]], [[4.0]]), posterior([[1.0]], [[3.0]]), 5.0)
    np.testing.assert_allclose(out["pupil"], [0.5], rtol=1e-15)
    np.testing.assert_allclose(out["school"], [1 - 2.8 / 7.2], rtol=1e-15)


def random_slope_posterior(rng: np.random.Generator, draws: int = 5
                           ) -> tuple[xr.Dataset, np.ndarray]:
    """Draws of a two-slope model's school covariance parts and sigma, the correlations valid
    (from random Cholesky factors)."""
    factors = np.tril(rng.normal(size=(2, draws, 3, 3)))
    cov = factors @ np.swapaxes(factors, -1, -2) + 0.1 * np.eye(3)
    sds = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
    cor = cov / (sds[..., :, None] * sds[..., None, :])
    terms = ["intercept", "ks2", "fsm"]
    return xr.Dataset({
        "sd_school": (("chain", "draw"), sds[..., 0]),
        "sd_slope": (("chain", "draw", "slope"), sds[..., 1:]),
        "cor_school": (("chain", "draw", "re_term", "re_term_b"), cor),
        "sigma": (("chain", "draw"), rng.uniform(1, 3, size=(2, draws))),
        "beta": (("chain", "draw", "predictor"), rng.normal(size=(2, draws, 2))),
    }, coords={"slope": terms[1:], "re_term": terms, "re_term_b": terms,
               "predictor": ["ks2", "fsm"]}), cov


def test_random_slope_variance_is_the_pupils_mean_of_z_sigma_z():
    """The school part with random slopes: tr(Sigma M) equals the mean over pupils of
    z_i' Sigma z_i (Johnson 2014), dense; the VPC at given z likewise."""
    rng = np.random.default_rng(12)
    post, cov = random_slope_posterior(rng)
    np.testing.assert_allclose(school_covariance(post).to_numpy(), cov, rtol=1e-12)
    x = rng.normal(loc=[0.3, 0.1], scale=[0.5, 0.3], size=(400, 2))
    z = np.column_stack([np.ones(len(x)), x])
    x_cov = np.cov(x.T, ddof=1)
    shares = decomposition_from_cov(post, x_cov, z_moment=z.T @ z / len(z))
    dense = np.einsum("ni,cdij,nj->cdn", z, cov, z).mean(axis=-1)
    b = post["beta"].to_numpy()
    fixed = np.einsum("cdi,ij,cdj->cd", b, x_cov, b)
    total = fixed + dense + post["sigma"].to_numpy() ** 2
    np.testing.assert_allclose(shares["school"].to_numpy(), dense / total, rtol=1e-12)
    np.testing.assert_allclose(shares["r2_marginal"].to_numpy(), fixed / total, rtol=1e-12)
    points = z[:3]
    at = vpc_at(post, points).to_numpy()
    v = np.einsum("ni,cdij,nj->cdn", points, cov, points)
    np.testing.assert_allclose(at, v / (v + post["sigma"].to_numpy()[..., None] ** 2),
                               rtol=1e-12)


def test_without_slope_variance_the_random_slope_parts_are_the_intercept_models():
    """Slope sds of 0: the school part is sd_school^2 whatever the pupils' z (M's intercept
    entry is 1), and the VPC at any z is the random-intercept VPC."""
    rng = np.random.default_rng(13)
    post, _ = random_slope_posterior(rng)
    post["sd_slope"] = post["sd_slope"] * 0
    z = np.column_stack([np.ones(50), rng.normal(size=(50, 2))])
    with_slopes = decomposition_from_cov(post, np.eye(2), z_moment=z.T @ z / 50)
    plain = decomposition_from_cov(post, np.eye(2))
    for key in ("school", "pupil", "fixed"):
        np.testing.assert_allclose(with_slopes[key], plain[key], rtol=1e-12)
    np.testing.assert_allclose(vpc_at(post, z[:4]).to_numpy(),
                               np.repeat(vpc(post)["school"].to_numpy()[..., None], 4, -1),
                               rtol=1e-12)
