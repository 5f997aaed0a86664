"""The vectorised diagnostics equal ArviZ's, element for element, and give the same verdicts."""

import arviz as az
import numpy as np
import pytest
import xarray as xr

from bayesfed.posterior.convergence import (
    BLOCK,
    TAIL_PROB,
    dataset_diagnostics,
    element_diagnostics,
)
from bayesfed.posterior.summarize import CHECKED, diagnostics


def ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """AR(1) chains (chain, draw, *rest) with autocorrelation rho."""
    out = rng.normal(size=shape)
    for t in range(1, shape[1]):
        out[:, t] = rho * out[:, t - 1] + np.sqrt(1 - rho**2) * out[:, t]
    return out


def arviz_values(draws: np.ndarray) -> dict[str, np.ndarray]:
    """ArviZ's values, one element at a time (its own loop), for (chain, draw, m) draws."""
    da = xr.DataArray(draws, dims=("chain", "draw", "e"))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "r_hat": az.rhat(da).to_numpy(),
            "ess_bulk": az.ess(da, method="bulk").to_numpy(),
            "ess_tail": az.ess(da, method="tail", prob=TAIL_PROB).to_numpy(),
            "mcse_mean": az.mcse(da, method="mean").to_numpy(),
        }


def awkward_draws() -> np.ndarray:
    """Elements of every kind the gates meet: iid, strongly autocorrelated, antithetic, a
    stuck chain, shifted chains (R-hat far above 1), heavy tails, ties, all constant, a
    NaN draw; more elements than one block."""
    rng = np.random.default_rng(3)
    chains, draws = 4, 301  # odd: the split drops the middle draw
    cols = [
        rng.normal(size=(chains, draws, 40)),
        ar1(rng, (chains, draws, 40), 0.95),
        ar1(rng, (chains, draws, 20), -0.7),
        rng.standard_t(1.5, size=(chains, draws, 20)),
        np.round(rng.normal(size=(chains, draws, 20))),  # many ties
        rng.normal(size=(chains, draws, 20)) + np.arange(chains)[:, None, None],
    ]
    stuck = rng.normal(size=(chains, draws, 3))
    stuck[1] = 0.7
    const = np.full((chains, draws, 2), 1.5)
    nan = rng.normal(size=(chains, draws, 1))
    nan[2, 10] = np.nan
    out = np.concatenate([*cols, stuck, const, nan, ar1(rng, (chains, draws, BLOCK), 0.5)],
                         axis=2)
    return out


@pytest.mark.parametrize("key", ["r_hat", "ess_bulk", "ess_tail", "mcse_mean"])
def test_equals_arviz_element_for_element(key):
    draws = awkward_draws()
    ours = element_diagnostics(draws)[key]
    theirs = arviz_values(draws)[key]
    assert ours.shape == theirs.shape == (draws.shape[2],)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, equal_nan=True)


def test_equals_arviz_for_two_chains_and_a_grid_of_variables():
    rng = np.random.default_rng(5)
    draws = ar1(rng, (2, 40, 3, 2), 0.8)  # few draws: the Geyer loop's bound matters
    ours = element_diagnostics(draws)
    da = xr.DataArray(draws, dims=("chain", "draw", "a", "b"))
    np.testing.assert_allclose(ours["r_hat"], az.rhat(da).to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(ours["ess_bulk"], az.ess(da).to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(ours["ess_tail"],
                               az.ess(da, method="tail", prob=TAIL_PROB).to_numpy(), rtol=1e-9)


def test_one_chain_has_no_r_hat_but_an_ess():
    draws = np.random.default_rng(0).normal(size=(1, 200, 2))
    out = element_diagnostics(draws)
    assert np.isnan(out["r_hat"]).all()
    np.testing.assert_allclose(out["ess_bulk"],
                               az.ess(xr.DataArray(draws, dims=("chain", "draw", "e")))
                               .to_numpy(), rtol=1e-9)


def test_a_dataset_in_one_pass_equals_each_variable_alone():
    rng = np.random.default_rng(8)
    post = xr.Dataset({"a": (("chain", "draw"), ar1(rng, (4, 100), 0.3)),
                       "b": (("chain", "draw", "i"), ar1(rng, (4, 100, 3), 0.6)),
                       "c": (("i", "chain", "draw", "j"), rng.normal(size=(3, 4, 100, 2)))})
    out = dataset_diagnostics(post, ["a", "b", "c"])
    for name in ("a", "b", "c"):
        alone = element_diagnostics(post[name].transpose("chain", "draw", ...).to_numpy())
        assert out[name].keys() == alone.keys()
        for key, value in alone.items():
            assert out[name][key].shape == value.shape
            np.testing.assert_allclose(out[name][key], value, rtol=1e-12)
    assert out["c"]["r_hat"].shape == (3, 2)


def test_the_gates_verdict_is_arvizs_over_the_checked_variables():
    """diagnostics() gives the extremes ArviZ gives over CHECKED (school_mean is not checked)
    and fails a fit whose school intercepts have not mixed."""
    rng = np.random.default_rng(11)
    chains, draws, schools = 4, 500, 30
    u = rng.normal(size=(chains, draws, schools))
    u[:, :, 7] += np.arange(chains)[:, None] * 0.4  # one school's chains disagree
    post = xr.Dataset({
        "intercept": (("chain", "draw"), rng.normal(size=(chains, draws))),
        "beta": (("chain", "draw", "predictor"), ar1(rng, (chains, draws, 2), 0.5)),
        "sd_school": (("chain", "draw"), np.abs(rng.normal(size=(chains, draws)))),
        "sigma": (("chain", "draw"), np.abs(rng.normal(size=(chains, draws)))),
        "u": (("chain", "draw", "school"), u),
        # far from converged, but a sum of checked variables: not gated
        "school_mean": (("chain", "draw", "school"), ar1(rng, (chains, draws, schools), 0.999)),
    }, coords={"predictor": ["x", "z"]})
    stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((chains, draws), bool))})
    tree = xr.DataTree.from_dict({"/posterior": post, "/sample_stats": stats})
    tree.attrs["bayesfed_family"] = "two_level"
    out = diagnostics(tree)
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = az.rhat(tree, var_names=list(CHECKED))
        bulk = az.ess(tree, var_names=list(CHECKED), method="bulk")
        tail = az.ess(tree, var_names=list(CHECKED), method="tail", prob=TAIL_PROB)
    assert "school_mean" not in CHECKED
    for key, ds, fn in (("max_r_hat", rhat, max), ("min_ess_bulk", bulk, min),
                        ("min_ess_tail", tail, min)):
        expected = fn(float(fn(np.ravel(ds[v].to_numpy()))) for v in CHECKED)
        assert out[key] == pytest.approx(expected, rel=1e-9)
    assert out["max_r_hat"] > 1.01 and not out["ok"]
    assert out["problems"][0] == f"R-hat {out['max_r_hat']:.3f} > 1.01"
