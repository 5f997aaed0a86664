"""The vectorised PSIS-LOO equals arviz_stats.loo, unit for unit."""

import warnings

import arviz_stats as azs
import numpy as np
import pytest
import xarray as xr

from bayesfed.posterior import psis
from bayesfed.posterior.convergence import relative_ess


def tree(log_lik: np.ndarray, rng) -> xr.DataTree:
    chains, draws, units = log_lik.shape
    post = xr.Dataset({"a": (("chain", "draw"), rng.normal(size=(chains, draws))),
                       "b": (("chain", "draw", "k"), np.cumsum(
                           rng.normal(size=(chains, draws, 3)), axis=1) * 0.1
                           + rng.normal(size=(chains, draws, 3)))})
    ll = xr.Dataset({"y": (("chain", "draw", "school"), log_lik)},
                    coords={"school": [f"S{i}" for i in range(units)]})
    return xr.DataTree.from_dict({"/posterior": post, "/log_likelihood": ll})


@pytest.mark.parametrize("draws", [1000, 40])  # 40 x 4 draws: the short tail of S r_eff < 225
def test_equals_arviz_unit_for_unit(draws):
    rng = np.random.default_rng(2)
    chains, units = 4, psis.BLOCK + 30  # more units than one block
    # units of every kind: well-behaved, heavy-tailed (high Pareto k), a grouped outlier
    scale = rng.uniform(0.1, 3.0, size=units)
    log_lik = -0.5 * (rng.normal(size=(chains, draws, units)) * scale) ** 2
    log_lik[..., :20] = -np.abs(rng.standard_cauchy(size=(chains, draws, 20))) * 5
    log_lik[..., 20] = -rng.exponential(size=(chains, draws)) ** 3
    dt = tree(log_lik, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = azs.loo(dt, pointwise=True, var_name="y")
    reff = relative_ess(dt.posterior.to_dataset())
    ours = psis.psis_loo(dt.log_likelihood["y"], reff)
    assert (ours.n_samples, ours.n_data_points) == (expected.n_samples, expected.n_data_points)
    assert ours.good_k == expected.good_k and ours.warning == expected.warning
    for field in ("elpd", "se", "p"):
        assert getattr(ours, field) == pytest.approx(getattr(expected, field), rel=1e-9)
    for field in ("elpd_i", "pareto_k"):
        np.testing.assert_allclose(getattr(ours, field).to_numpy(),
                                   getattr(expected, field).to_numpy(), rtol=1e-8,
                                   equal_nan=True)
        assert list(getattr(ours, field)["school"].to_numpy()) == \
            list(getattr(expected, field)["school"].to_numpy())
    assert (ours.pareto_k > ours.good_k).sum() > 0  # the heavy tails were exercised


def test_relative_ess_is_arvizs():
    from arviz_stats.loo.loo_helper import _get_r_eff

    rng = np.random.default_rng(4)
    dt = tree(rng.normal(size=(4, 300, 5)), rng)
    assert relative_ess(dt.posterior.to_dataset()) == pytest.approx(
        _get_r_eff(dt, 1200), rel=1e-10)
