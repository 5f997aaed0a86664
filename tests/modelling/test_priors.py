"""Priors: data-scaled defaults are the documented formulas; override > spec > default."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_random_slopes import simulate

from bayesfed.design.columns import build_design
from bayesfed.errors import SpecError
from bayesfed.inputs.spec import Priors
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import (
    Normal,
    default_priors,
    default_slope_sd,
    resolve_priors,
    scales_of,
)


@pytest.fixture
def design(table, m2):
    frame = validate_table(table, m2).frame
    return build_design(frame, m2.predictors.pupil, m2.predictors.school,
                        m2.categorical_coding())


def test_defaults_are_the_documented_formulas(design):
    p = default_priors(design)
    sd_y = np.std(design.y, ddof=1)
    assert p.intercept == Normal(pytest.approx(design.y.mean()), pytest.approx(2.5 * sd_y))
    assert p.coef_names == design.coef_names
    k = design.coef_names.index("federated")
    flag = design.X[:, k]
    assert set(flag) == {0.0, 1.0}
    assert p.slopes[k].mu == 0.0
    # the federation effect in units of the outcome's sd (EFFECT_SD = 1), not of the flag's
    assert p.slopes[k].sigma == pytest.approx(1.0 * sd_y)
    others = [i for i, name in enumerate(design.coef_names) if name != "federated"]
    # jointly scaled: the linear predictor's expected variance is the outcome's
    np.testing.assert_allclose(p.slope_sigma[others], sd_y / (
        design.X[:, others].std(axis=0, ddof=1) * np.sqrt(len(others))))
    cov = np.cov(design.X[:, others], rowvar=False)
    assert np.sum(p.slope_sigma[others] ** 2 * np.diag(cov)) == pytest.approx(sd_y**2)
    assert p.sd_school == pytest.approx(sd_y) and p.sigma == pytest.approx(sd_y)
    assert default_priors(design, effect_sd=0.5).slopes[k].sigma == pytest.approx(0.5 * sd_y)


def test_effect_sd_precedence(design):
    """``effect_sd`` scales the federation effect's default; an explicit ``slope.federated``
    beats it; the override's ``effect_sd`` beats the spec's."""
    sd_y = np.std(design.y, ddof=1)
    k = design.coef_names.index("federated")
    spec = Priors.model_validate({"effect_sd": 0.5})
    assert resolve_priors(design, spec).slopes[k] == Normal(0.0, pytest.approx(0.5 * sd_y))
    override = Priors.model_validate({"effect_sd": 2.0})
    assert resolve_priors(design, spec, override).slopes[k].sigma == pytest.approx(2.0 * sd_y)
    explicit = Priors.model_validate({"effect_sd": 0.5, "slope": {"federated": {"sigma": 3.0}}})
    assert resolve_priors(design, explicit).slopes[k] == Normal(0.0, 3.0)


def test_precedence_override_then_spec_then_default(design):
    default = default_priors(design)
    spec = Priors.model_validate({
        "intercept": {"mu": 1.0},
        "slopes": {"sigma": 7.0},
        "slope": {"sen": {"mu": 0.5}, "fsm": {"mu": -1.0, "sigma": 2.0}},
        "sd_school": {"sigma": 3.0},
    })
    override = Priors.model_validate({
        "intercept": {"sigma": 9.0},
        "slope": {"sen[statemented]": {"mu": 4.0}, "fsm": {"sigma": 0.5}},
        "sigma": {"sigma": 6.0},
    })
    p = resolve_priors(design, spec, override)
    i = {name: k for k, name in enumerate(design.coef_names)}
    # intercept: mu from the spec, sigma from the override
    assert p.intercept == Normal(1.0, 9.0)
    # fsm: mu from the spec's own entry, sigma from the override's own entry
    assert p.slopes[i["fsm"]] == Normal(-1.0, 0.5)
    # a coefficient name beats its term; the term covers the other levels
    assert p.slopes[i["sen[statemented]"]] == Normal(4.0, 7.0)
    assert p.slopes[i["sen[school_action]"]] == Normal(0.5, 7.0)
    # only the spec's `slopes` applies: default mu, spec sigma
    assert p.slopes[i["ks2"]] == Normal(0.0, 7.0)
    assert (p.sd_school, p.sigma) == (3.0, 6.0)
    # without overrides the spec applies; without either, the defaults
    q = resolve_priors(design, spec)
    assert q.intercept == Normal(1.0, default.intercept.sigma)
    assert q.slopes[i["fsm"]] == Normal(-1.0, 2.0) and q.sigma == default.sigma
    assert resolve_priors(design, Priors()) == default


def test_override_slopes_beats_spec_slope(design):
    spec = Priors.model_validate({"slope": {"fsm": {"sigma": 2.0}}})
    override = Priors.model_validate({"slopes": {"sigma": 5.0}})
    p = resolve_priors(design, spec, override)
    assert p.slopes[design.coef_names.index("fsm")].sigma == 5.0


def test_unknown_slope_name_is_reported(design):
    bad = Priors.model_validate({"slope": {"fms": {"sigma": 1.0}}})
    with pytest.raises(SpecError, match=r"override priors.slope names no coefficient.*'fms'"):
        resolve_priors(design, Priors(), bad)


def test_constant_column_is_reported(design):
    X = design.X.copy()
    X[:, 0] = 1.0
    with pytest.raises(SpecError, match=r"predictor column\(s\) \['fsm'\] constant"):
        default_priors(replace(design, X=X))


def test_as_dict_is_flat_numbers(design):
    d = resolve_priors(design, Priors()).as_dict()
    assert all(isinstance(v, float) for v in d.values())
    assert len(d) == 2 + 2 * len(design.coef_names) + 2
    assert d["prior.beta[sen[school_action]].mu"] == 0.0
    assert d["prior.sigma.sigma"] == pytest.approx(np.std(design.y, ddof=1))


def test_default_slope_sd_is_the_outcome_sd_over_the_columns():
    design, _ = simulate(seed=2, n_schools=20)
    expected = [np.std(design.y, ddof=1) / np.std(design.X[:, k], ddof=1) for k in (1, 0)]
    np.testing.assert_allclose(default_slope_sd(design, ("x1", "x0")), expected, rtol=1e-10)
    np.testing.assert_allclose(default_slope_sd(scales_of(design), ("x1", "x0")), expected,
                               rtol=1e-10)
