"""Centring within schools and contextual terms (``[predictors] centre``, ``contextual``):
the statistics from pupil rows and from a table reduced in batches are the same, and a fit
separates a within-school slope from a between-school one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayesfed
from bayesfed.design.centring import centre_design, centre_summary
from bayesfed.design.columns import build_design, design_for
from bayesfed.design.reduce import reduce_frame
from bayesfed.design.suffstats import summary_of
from bayesfed.errors import SpecError
from bayesfed.inputs.shipped import spec_path
from bayesfed.inputs.spec import load_spec, spec_from_dict
from bayesfed.inputs.validate import validate_table


def spec_with(centre: str, contextual: list[str], short: str = "m1"):
    spec = load_spec(spec_path(short))
    predictors = spec.predictors.model_copy(update={"centre": centre, "contextual": contextual})
    return spec.model_copy(update={"predictors": predictors})


def test_pupil_rows_and_batches_give_the_same_statistics():
    """Centred and contextual columns computed on pupil rows, then summarised, equal the
    summary of the raw columns transformed; and equal a table reduced in batches."""
    spec = spec_with("within", ["ks2", "sen"])
    raw = bayesfed.load_example()
    table = validate_table(raw, spec, years=[2])
    rows = summary_of(design_for(table, spec, 2))
    plain = build_design(table.select_year(2), spec.predictors.pupil, spec.predictors.school,
                         spec.categorical_coding())
    assert centre_design(plain, spec).coef_names == rows.coef_names
    from_summary = centre_summary(summary_of(plain), spec)
    reduced = reduce_frame(raw, spec, [2]).summaries[2]
    for other in (from_summary, reduced):
        assert other.coef_names == rows.coef_names
        assert other.school_level == rows.school_level
        np.testing.assert_allclose(other.X_mean, rows.X_mean, atol=1e-9)
        np.testing.assert_allclose(other.within, rows.within, rtol=1e-9, atol=1e-6)
    assert rows.coef_names[-4:] == ("school_mean(sen[school_action])",
                                    "school_mean(sen[school_action_plus])",
                                    "school_mean(sen[statemented])", "school_mean(ks2)")
    assert np.abs(rows.X_mean[:, :len(spec.predictors.pupil) + 2]).max() < 1e-12  # centred


def test_contextual_terms_must_be_pupil_predictors():
    data = {"model": {"name": "X"},
            "predictors": {"pupil": ["ks2"], "school": ["federated"],
                           "contextual": ["federated"]}}
    with pytest.raises(SpecError) as error:
        spec_from_dict(data, "x.toml")
    assert "predictors.contextual: 'federated' is not a pupil-level predictor (pupil: " \
           "['ks2'])" in str(error.value)


def test_within_and_contextual_slopes_are_recovered():
    """Pupils whose outcome rises 2 per unit of x within a school and 5 per unit of the
    school's mean x: the centred model with x's contextual term finds 2 within and 5 between,
    and tells them apart."""
    rng = np.random.default_rng(11)
    schools = np.repeat(np.arange(60), 40)
    school_x = rng.normal(0, 1, 60)
    x = school_x[schools] + rng.normal(0, 1, schools.size)
    xbar = pd.Series(x).groupby(schools).transform("mean").to_numpy()
    y = 2 * (x - xbar) + 5 * xbar + rng.normal(0, 0.5, 60)[schools] + rng.normal(0, 1, x.size)
    frame = pd.DataFrame({"y": y, "school": schools.astype(str), "x": x})
    base = {"model": {"name": "X"}, "predictors": {"pupil": ["x"]},
            "columns": {"outcome": "y", "school": "school"}}
    centred = {**base, "predictors": {"pupil": ["x"], "centre": "within", "contextual": ["x"]}}
    settings = dict(draws=500, tune=500, chains=4, seed=1)
    fit = bayesfed.fit(frame, spec_from_dict(centred, "centred"), **settings).fits[0]
    within, between = fit["params"]["x"], fit["params"]["school_mean(x)"]
    # within 4 posterior sds of the truth (one study: a 94% HDI misses 6% of the time)
    assert abs(within["mean"] - 2) < 4 * within["sd"], within
    assert abs(between["mean"] - 5) < 4 * between["sd"], between
    assert between["mean"] - within["mean"] > 4 * np.hypot(within["sd"], between["sd"])
    assert fit["diagnostics"]["ok"]
