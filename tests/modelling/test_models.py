"""The PyMC two-level model: labelled dims, the documented densities, reproducible sampling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pymc as pm
import pytest
from scipy import stats

from bayesfed.design.columns import build_design
from bayesfed.inputs.spec import Priors
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import resolve_priors
from bayesfed.modelling.two_level import build_two_level, school_means, school_values
from bayesfed.sampling.nuts import sample

#: Non-default priors, so that the test sees them reach the model.
OVERRIDES = Priors.model_validate({
    "intercept": {"mu": 1.5, "sigma": 8.0},
    "slopes": {"sigma": 3.0},
    "slope": {"federated": {"mu": 0.25, "sigma": 2.0}},
    "sd_school": {"sigma": 2.5},
    "sigma": {"sigma": 5.0},
})


def design_of(frame, spec):
    frame = validate_table(frame, spec).frame
    return build_design(frame, spec.predictors.pupil, spec.predictors.school,
                        spec.categorical_coding())


@pytest.fixture
def design(table, m2):
    return design_of(table, m2)


@pytest.fixture
def priors(design, m2):
    return resolve_priors(design, m2.priors, OVERRIDES)


@pytest.fixture
def model(design, priors):
    return build_two_level(design, priors)


def test_dims_and_coords_are_labelled(model, design):
    assert model.named_vars_to_dims["beta"] == ("predictor",)
    assert tuple(model.coords["predictor"]) == design.coef_names
    assert {"sen[school_action]", "federated", "fsm"} <= set(model.coords["predictor"])
    assert model.named_vars_to_dims["u"] == ("school",)
    assert model.named_vars_to_dims["school_effect"] == ("school",)
    assert tuple(model.coords["school"]) == design.schools
    assert model.named_vars_to_dims["y"] == ("pupil",)
    assert len(model.coords["pupil"]) == design.n_pupils
    assert tuple(model.coords["school_predictor"]) == ("federated",)
    assert {v.name for v in model.free_RVs} == {"intercept", "beta", "sd_school", "sigma",
                                                "school_mean"}


def test_priors_in_model_are_the_resolved_ones(model, priors):
    def params(name):
        node = model[name].owner
        return [np.asarray(p.eval()) for p in node.op.dist_params(node)]

    assert [float(v) for v in params("intercept")] == [1.5, 8.0]
    mu, sigma = params("beta")
    np.testing.assert_array_equal(mu, priors.slope_mu)
    np.testing.assert_array_equal(sigma, priors.slope_sigma)
    assert sigma[list(priors.coef_names).index("federated")] == 2.0
    assert float(params("sd_school")[1]) == 2.5 and float(params("sigma")[1]) == 5.0


def test_mismatched_priors_are_refused(design, table, m0):
    other = resolve_priors(design_of(table, m0), Priors())
    with pytest.raises(ValueError, match="priors are for coefficients"):
        build_two_level(design, other)


def hand_logp(design, priors, point):
    """The docstring's model, density by density, with scipy."""
    school = np.array(design.school_level, dtype=bool)
    beta = point["beta"]
    z = school_values(design, np.flatnonzero(school))
    school_mean = point["intercept"] + z @ beta[school]
    pupil_mean = point["u"][design.school_idx] + design.X[:, ~school] @ beta[~school]
    return (
        stats.norm.logpdf(point["intercept"], priors.intercept.mu, priors.intercept.sigma)
        + stats.norm.logpdf(beta, priors.slope_mu, priors.slope_sigma).sum()
        + stats.halfnorm.logpdf(point["sd_school"], scale=priors.sd_school)
        + stats.halfnorm.logpdf(point["sigma"], scale=priors.sigma)
        + stats.norm.logpdf(point["u"], school_mean, point["sd_school"]).sum()
        + stats.norm.logpdf(design.y, pupil_mean, point["sigma"]).sum()
    )


@pytest.fixture
def point(design):
    rng = np.random.default_rng(7)
    return {
        "intercept": 2.0,
        "beta": rng.normal(0, 1, len(design.coef_names)),
        "sd_school": 1.3,
        "sigma": 3.7,
        "u": rng.normal(2, 1, design.n_schools),
    }


def value_point(point, design):
    """The point in PyMC's unconstrained (value-variable) space.

    The model samples ``school_mean`` = u + (school means of the pupil-level predictors)' beta
    instead of ``u``; the shift has unit Jacobian, so the log density at the shifted point is
    the documented model's log density at ``u``.
    """
    out = {k: v for k, v in point.items() if k not in ("sd_school", "sigma", "u")}
    pupil = np.flatnonzero(~np.array(design.school_level, dtype=bool))
    out["school_mean"] = point["u"] + school_means(design, pupil) @ point["beta"][pupil]
    out["sd_school_log__"] = np.log(point["sd_school"])
    out["sigma_log__"] = np.log(point["sigma"])
    return out


def test_logp_is_the_documented_model(model, design, priors, point):
    logp = model.compile_logp(jacobian=False)(value_point(point, design))
    assert logp == pytest.approx(hand_logp(design, priors, point), rel=1e-12)


def test_school_effect_is_u_minus_school_mean(model, design, point):
    [graph] = model.replace_rvs_by_values([model["school_effect"]])
    effect = model.compile_fn(graph, inputs=model.value_vars, on_unused_input="ignore",
                              point_fn=True)(value_point(point, design))
    [u_graph] = model.replace_rvs_by_values([model["u"]])
    u = model.compile_fn(u_graph, inputs=model.value_vars, on_unused_input="ignore",
                         point_fn=True)(value_point(point, design))
    np.testing.assert_allclose(u, point["u"], rtol=1e-12)
    z = school_values(design, np.array([design.coef_names.index("federated")]))
    expected = point["u"] - point["intercept"] - z[:, 0] * point["beta"][-1]
    np.testing.assert_allclose(effect, expected, rtol=1e-12)
    # the first pupil's value is the school's: federated alternates with the school
    np.testing.assert_array_equal(z[:, 0], [0, 1, 0, 1, 0, 1])


def test_data_can_be_replaced(model, design, priors, point):
    y_new = design.y[::-1].copy()
    with model:
        pm.set_data({"y_obs": y_new})
    logp = model.compile_logp(jacobian=False)(value_point(point, design))
    expected = hand_logp(replace(design, y=y_new), priors, point)
    assert logp == pytest.approx(expected, rel=1e-12)
    assert logp != pytest.approx(hand_logp(design, priors, point), rel=1e-6)


def test_empty_model_has_no_beta(table, m0):
    design = design_of(table, m0)
    model = build_two_level(design, resolve_priors(design, m0.priors))
    assert {v.name for v in model.free_RVs} == {"intercept", "sd_school", "sigma", "school_mean"}
    point = {"intercept": 1.0, "u": np.linspace(0, 1, design.n_schools), "sd_school": 0.5,
             "sigma": 4.0, "beta": np.zeros(0)}
    vp = {k: v for k, v in value_point(point, design).items() if k != "beta"}
    assert model.compile_logp(jacobian=False)(vp) == pytest.approx(
        hand_logp(design, resolve_priors(design, m0.priors), point), rel=1e-12)


def test_nutpie_same_seed_same_draws(model):
    kw = {"draws": 50, "tune": 50, "chains": 2}
    a, b = sample(model, seed=11, **kw), sample(model, seed=11, **kw)
    c = sample(model, seed=12, **kw)
    assert set(a.children) == {"posterior", "sample_stats", "observed_data"}
    for name in ("intercept", "beta", "sd_school", "sigma", "u", "school_effect"):
        np.testing.assert_array_equal(a.posterior[name].to_numpy(),
                                      b.posterior[name].to_numpy())
    assert not np.array_equal(a.posterior["beta"].to_numpy(), c.posterior["beta"].to_numpy())
    assert a.posterior["beta"].dims == ("chain", "draw", "predictor")
    assert a.posterior["beta"].sizes == {"chain": 2, "draw": 50, "predictor": 9}
    assert float(a.posterior["beta"].sel(predictor="federated").mean()) != 0.0
    assert a.sample_stats["diverging"].dtype == bool
    np.testing.assert_array_equal(a.observed_data["y"].to_numpy(), model["y_obs"].eval())
    assert a.attrs["sampling_seconds"] > 0 and a.attrs["sampler"] == "nutpie"


def test_unknown_sampler_is_refused(model):
    with pytest.raises(ValueError, match=r"sampler must be one of \('nutpie', 'pymc'\)"):
        sample(model, sampler="stan")


@pytest.mark.slow
def test_pymc_sampler_same_seed_same_draws(model):
    kw = {"draws": 30, "tune": 30, "chains": 2, "sampler": "pymc"}
    a, b = sample(model, seed=5, **kw), sample(model, seed=5, **kw)
    assert {"posterior", "sample_stats", "observed_data"} <= set(a.children)
    np.testing.assert_array_equal(a.posterior["beta"].to_numpy(), b.posterior["beta"].to_numpy())
    assert a.sample_stats["diverging"].dtype == bool
