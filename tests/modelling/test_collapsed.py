"""The collapsed two-level model: sufficient statistics, exact likelihood, recovered intercepts.

Two implementations agreeing: the collapsed log density must equal the pupil-row model's joint
density divided by the Gaussian conditional density of the school intercepts (computed here by
dense linear algebra over pupils), at random points, on unbalanced schools including a
single-pupil school; the recovered intercepts must follow that same dense conditional; and on
the shipped study both models must give the same posterior means within Monte Carlo error.
"""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from bayesfed.design.columns import build_design, design_for
from bayesfed.design.suffstats import school_stats
from bayesfed.inputs.read import read_table
from bayesfed.inputs.spec import Priors, load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import resolve_priors
from bayesfed.modelling.two_level import (
    add_school_draws,
    build_two_level,
    build_two_level_collapsed,
    collapsed_data,
    school_effect_conditional,
    school_means,
    school_values,
    unpack_collapsed,
)
from bayesfed.posterior.summarize import diagnostics, param_summaries
from bayesfed.sampling import nuts as sampling
from bayesfed.sampling.nuts import sample, sample_reusing

ROOT = Path(__file__).resolve().parents[2]
#: Pupils per school: unbalanced, one single-pupil school.
SIZES = (1, 2, 3, 5, 8, 13, 4, 7)
#: (pupil terms, school terms) of the paper's three models on the hand-made frame, and M2 with
#: a second, continuous school-level term.
MODELS = {
    "M0": ((), ()),
    "M1": (("x", "g"), ()),
    "M2": (("x", "g"), ("fed",)),
    "M2_size": (("x", "g"), ("fed", "size")),
}
CATEGORICAL = {"g": (["a", "b", "c"], "a")}


def unbalanced_frame(seed: int = 5) -> pd.DataFrame:
    """Canonical table: schools of SIZES pupils, a pupil predictor ``x`` whose school means
    vary, a three-level categorical ``g``, a school-level dummy ``fed`` and a school-level
    continuous ``size``."""
    rng = np.random.default_rng(seed)
    rows = []
    for s, n in enumerate(SIZES):
        x_mean, size = rng.normal(0, 1), round(rng.uniform(0.1, 3.0), 3)
        for p in range(n):
            rows.append({"outcome": rng.normal(5, 3), "school": f"S{s}", "fed": s % 2,
                         "size": size, "x": x_mean + rng.normal(0, 1),
                         "g": "abc"[(s + p) % 3]})
    return pd.DataFrame(rows)


def design_of(model: str):
    pupil, school = MODELS[model]
    return build_design(unbalanced_frame(), pupil, school, CATEGORICAL)


def random_theta(rng: np.random.Generator, design) -> dict:
    """Intercept, coefficients, sds (0.05-5 and 0.5-5) and school intercepts ``u``."""
    return {
        "intercept": rng.normal(5, 2),
        "beta": rng.normal(0, 1, len(design.coef_names)),
        "sd_school": np.exp(rng.uniform(np.log(0.05), np.log(5))),
        "sigma": np.exp(rng.uniform(np.log(0.5), np.log(5))),
        "u": rng.normal(5, 2, design.n_schools),
    }


def dense_conditional(design, theta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mean (n_schools,) and precision (n_schools, n_schools) of u | y, theta over pupil rows.

    u ~ N(intercept + z' beta_school, sd_school^2 I), y ~ N(Z u + X_pupil beta_pupil, sigma^2 I)
    with Z the pupils' school indicators: precision Z'Z / sigma^2 + I / sd_school^2.
    """
    school = np.array(design.school_level, dtype=bool)
    beta = theta["beta"]
    Z = np.eye(design.n_schools)[design.school_idx]
    prior_mean = theta["intercept"] + school_values(design, np.flatnonzero(school)) @ beta[school]
    precision = Z.T @ Z / theta["sigma"] ** 2 + np.eye(design.n_schools) / theta["sd_school"] ** 2
    rhs = (Z.T @ (design.y - design.X[:, ~school] @ beta[~school]) / theta["sigma"] ** 2
           + prior_mean / theta["sd_school"] ** 2)
    return np.linalg.solve(precision, rhs), precision


def row_point(design, theta: dict) -> dict:
    """The pupil-row model's value variables; it samples school_mean = u + xbar_j' beta_pupil
    (a shift of unit Jacobian)."""
    pupil = np.flatnonzero(~np.array(design.school_level, dtype=bool))
    point = {"intercept": theta["intercept"], "sd_school_log__": np.log(theta["sd_school"]),
             "sigma_log__": np.log(theta["sigma"]),
             "school_mean": theta["u"] + school_means(design, pupil) @ theta["beta"][pupil]}
    return point | ({"beta": theta["beta"]} if design.coef_names else {})


def collapsed_point(design, theta: dict) -> dict:
    """The collapsed model's value variables: level = intercept + (pupils' mean of X)' beta."""
    point = {"level": theta["intercept"] + design.X.mean(axis=0) @ theta["beta"],
             "sd_school_log__": np.log(theta["sd_school"]), "sigma_log__": np.log(theta["sigma"])}
    return point | ({"beta": theta["beta"]} if design.coef_names else {})


# -- sufficient statistics --------------------------------------------------------------------

def test_school_stats_are_the_pupil_sums():
    design = design_of("M2_size")
    stats = school_stats(design)
    np.testing.assert_array_equal(stats.n, SIZES)
    assert stats.n_pupils == design.n_pupils and stats.n_schools == len(SIZES)
    for j in range(design.n_schools):
        rows = design.school_idx == j
        np.testing.assert_allclose(stats.y_mean[j], design.y[rows].mean(), rtol=1e-14)
        np.testing.assert_allclose(stats.X_mean[j], design.X[rows].mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(stats.X_centre, design.X.mean(axis=0), rtol=1e-13)
    y_t = design.y - stats.y_mean[design.school_idx]
    X_t = design.X - stats.X_mean[design.school_idx]
    np.testing.assert_allclose(stats.XX, X_t.T @ X_t, atol=1e-12)
    np.testing.assert_allclose(stats.Xy, X_t.T @ y_t, atol=1e-12)
    assert stats.yy == pytest.approx(y_t @ y_t, rel=1e-13)
    school = np.array(design.school_level)
    assert school.sum() == 2
    assert not stats.XX[school].any() and not stats.XX[:, school].any()
    assert not stats.Xy[school].any()


def test_school_stats_refuse_a_varying_school_column():
    frame = unbalanced_frame()
    frame.loc[frame.index[-1], "size"] += 0.5
    with pytest.raises(ValueError, match="varies within a school"):
        school_stats(build_design(frame, ("x",), ("size",)))


# -- the collapsed likelihood equals the pupil-row model's ------------------------------------

@pytest.mark.parametrize("model", list(MODELS))
def test_collapsed_equals_pupil_rows_over_intercepts(model):
    """log p_collapsed(theta) = log p_rows(theta, u) - log p(u | y, theta), to 1e-8 relative.

    Twelve random points (every parameter and intercept), priors included: both models have the
    same priors. Schools of 1 to 13 pupils.
    """
    design = design_of(model)
    priors = resolve_priors(design, Priors())
    logp_rows = build_two_level(design, priors).compile_logp()
    logp_collapsed = build_two_level_collapsed(design, priors).compile_logp()
    rng = np.random.default_rng(17)
    for _ in range(12):
        theta = random_theta(rng, design)
        mean, precision = dense_conditional(design, theta)
        d = theta["u"] - mean
        log_conditional = (-0.5 * d.size * np.log(2 * np.pi)
                           + 0.5 * np.linalg.slogdet(precision)[1] - 0.5 * d @ precision @ d)
        expected = logp_rows(row_point(design, theta)) - log_conditional
        got = logp_collapsed(collapsed_point(design, theta))
        assert got == pytest.approx(expected, rel=1e-8, abs=0)


def test_collapsed_model_has_the_named_parts():
    design = design_of("M2")
    priors = resolve_priors(design, Priors())
    model = build_two_level_collapsed(design, priors)
    assert {v.name for v in model.free_RVs} == {"level", "beta", "sd_school", "sigma"}
    assert {v.name for v in model.deterministics} == {"intercept"}
    assert [v.name for v in model.potentials] == ["marginal_loglik"]
    assert not model.observed_RVs
    assert model.named_vars_to_dims["beta"] == ("predictor",)
    assert tuple(model.coords["predictor"]) == design.coef_names == ("x", "g[b]", "g[c]", "fed")
    assert [v.name for v in model.data_vars] == ["collapsed_data"]
    empty = build_two_level_collapsed(design_of("M0"), resolve_priors(design_of("M0"), Priors()))
    assert {v.name for v in empty.free_RVs} == {"level", "sd_school", "sigma"}
    with pytest.raises(ValueError, match="priors are for coefficients"):
        build_two_level_collapsed(design, resolve_priors(design_of("M1"), Priors()))


@pytest.mark.parametrize("model", ["M0", "M2_size"])
def test_the_data_container_holds_the_statistics_and_priors(model):
    """What the compiled model reads from its one data container is the design's sufficient
    statistics and the resolved priors, exactly."""
    design = design_of(model)
    priors = resolve_priors(design, Priors(sd_school={"sigma": 3.5}))
    stats = school_stats(design)
    got = unpack_collapsed(collapsed_data(design, priors), len(design.coef_names))
    expected = {
        "n_pupils": design.n_pupils, "n": stats.n, "y_mean": stats.y_mean,
        "X_mean": stats.X_mean, "XX": stats.XX,
        "Xy": stats.Xy, "yy": stats.yy, "X_centre": stats.X_centre,
        "prior_intercept_mu": priors.intercept.mu,
        "prior_intercept_sigma": priors.intercept.sigma, "prior_slope_mu": priors.slope_mu,
        "prior_slope_sigma": priors.slope_sigma, "prior_sd_school": 3.5,
        "prior_sigma": priors.sigma,
    }
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


# -- the recovered school intercepts ----------------------------------------------------------

def fixed_mean(design, theta: dict) -> np.ndarray:
    """mu_j = intercept + (school mean of every column of X)' beta, shape (n_schools,)."""
    return theta["intercept"] + school_means(design, np.arange(design.X.shape[1])) @ theta["beta"]


@pytest.mark.parametrize("model", ["M0", "M2_size"])
def test_school_effect_conditional_is_the_dense_gaussian(model):
    """Mean and sd of a_j = u_j - intercept - z_j' beta_school given y and theta, against the
    dense conditional of u over pupil rows (whose precision is diagonal: the u_j are
    conditionally independent)."""
    design = design_of(model)
    stats = school_stats(design)
    school = np.array(design.school_level, dtype=bool)
    rng = np.random.default_rng(23)
    for _ in range(5):
        theta = random_theta(rng, design)
        mean_u, precision = dense_conditional(design, theta)
        cov = np.linalg.inv(precision)
        np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-15)
        offset = theta["intercept"] + school_values(
            design, np.flatnonzero(school)) @ theta["beta"][school]
        mean, sd = school_effect_conditional(stats, fixed_mean(design, theta), theta["sigma"],
                                             theta["sd_school"])
        np.testing.assert_allclose(mean, mean_u - offset, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(sd, np.sqrt(np.diag(cov)), rtol=1e-10)
    # no school variance: every effect is exactly zero
    mean, sd = school_effect_conditional(stats, fixed_mean(design, theta), 2.0, 0.0)
    assert not mean.any() and not sd.any()


def constant_posterior(design, thetas: list[dict], draws: int) -> xr.DataTree:
    """A fake fit: chain c repeats thetas[c] for every draw."""
    def field(name):
        return np.stack([np.broadcast_to(t[name], (draws, *np.shape(t[name]))) for t in thetas])

    post = xr.Dataset(
        {"intercept": (("chain", "draw"), field("intercept")),
         "beta": (("chain", "draw", "predictor"), field("beta")),
         "sd_school": (("chain", "draw"), field("sd_school")),
         "sigma": (("chain", "draw"), field("sigma"))},
        coords={"chain": np.arange(len(thetas)), "draw": np.arange(draws),
                "predictor": list(design.coef_names)})
    stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((len(thetas), draws), bool))})
    return xr.DataTree.from_dict({"/posterior": post, "/sample_stats": stats})


def test_add_school_draws_follow_the_conditional():
    design = design_of("M2_size")
    stats = school_stats(design)
    school = np.array(design.school_level, dtype=bool)
    rng = np.random.default_rng(29)
    thetas = [random_theta(rng, design) for _ in range(2)]
    draws = 20_000
    tree = constant_posterior(design, thetas, draws)
    out = add_school_draws(tree, design, seed=3)
    post = out.posterior
    for name in ("u", "school_effect", "school_mean"):
        assert post[name].dims == ("chain", "draw", "school")
    assert tuple(post["school"].to_numpy()) == design.schools
    assert "u" not in tree.posterior  # the input is left as it was
    for c, theta in enumerate(thetas):
        mean, sd = school_effect_conditional(stats, fixed_mean(design, theta), theta["sigma"],
                                             theta["sd_school"])
        effect = post["school_effect"].isel(chain=c).to_numpy()
        np.testing.assert_array_less(np.abs(effect.mean(axis=0) - mean),
                                     5 * sd / np.sqrt(draws))
        np.testing.assert_allclose(effect.std(axis=0, ddof=1), sd, rtol=5 * np.sqrt(2 / draws))
        z = school_values(design, np.flatnonzero(school))
        u = post["u"].isel(chain=c).to_numpy()
        offset = theta["intercept"] + z @ theta["beta"][school]
        np.testing.assert_allclose(u - effect, np.broadcast_to(offset, u.shape), rtol=1e-12)
        xbar = school_means(design, np.flatnonzero(~school))
        np.testing.assert_allclose(post["school_mean"].isel(chain=c).to_numpy(),
                                   u + xbar @ theta["beta"][~school], rtol=1e-12)
    again = add_school_draws(tree, design, seed=3).posterior["u"].to_numpy()
    np.testing.assert_array_equal(again, post["u"].to_numpy())
    other = add_school_draws(tree, design, seed=4).posterior["u"].to_numpy()
    assert not np.array_equal(other, post["u"].to_numpy())
    with pytest.raises(ValueError, match="already holds"):
        add_school_draws(out, design, seed=3)
    with pytest.raises(ValueError, match="coefficients"):
        add_school_draws(constant_posterior(design_of("M2_size"), thetas, 2),
                         design_of("M2"), seed=3)


# -- the shipped study ------------------------------------------------------------------------

def test_collapsed_and_pupil_rows_agree_on_the_shipped_study():
    """Year 5 of the shipped study, M2, 4 chains x 500 draws each: every posterior mean
    (intercept, coefficients, sds, each school's ``u``) agrees within four Monte Carlo SEs of
    the difference, posterior sds within 15%, and the collapsed fit passes bayesfed's gates."""
    spec = load_spec(ROOT / "models" / "m2_federation.toml")
    table = validate_table(read_table(ROOT / "data" / "synthetic_study.parquet"), spec,
                           years=[5])
    design = design_for(table, spec, 5)
    priors = resolve_priors(design, spec.priors)
    kw = {"draws": 500, "tune": 500, "chains": 4, "seed": 3}
    rows = sample(build_two_level(design, priors), **kw)
    collapsed = add_school_draws(sample(build_two_level_collapsed(design, priors), **kw),
                                 design, seed=3)
    names = ["intercept", "beta", "sd_school", "sigma", "u"]
    means = [tree.posterior.to_dataset()[names].mean(("chain", "draw"))
             for tree in (rows, collapsed)]
    sds = [tree.posterior.to_dataset()[names].std(("chain", "draw"))
           for tree in (rows, collapsed)]
    mcse = [az.mcse(tree, var_names=names) for tree in (rows, collapsed)]
    for name in names:
        diff = np.abs(means[0][name] - means[1][name]).to_numpy()
        bound = 4 * np.hypot(mcse[0][name], mcse[1][name]).to_numpy()
        assert (diff <= bound).all(), (name, diff, bound)
        np.testing.assert_allclose(sds[1][name], sds[0][name], rtol=0.15, err_msg=name)
    checks = diagnostics(collapsed)
    assert checks["ok"], checks
    assert param_summaries(collapsed).keys() == param_summaries(rows).keys()


def test_a_reused_compiled_model_gives_the_draws_of_a_fresh_one(monkeypatch):
    """Year 1 of the shipped study, and year 4 without its first ten schools (other pupils,
    fewer schools): year 4 sampled with the model compiled for year 1 (its data container
    refilled) gives exactly the draws of a model built and compiled for year 4 alone; the
    reuse compiles once."""
    spec = load_spec(ROOT / "models" / "m2_federation.toml")
    table = validate_table(read_table(ROOT / "data" / "synthetic_study.parquet"), spec,
                           years=[1, 4])
    year4 = table.select_year(4)
    year4 = year4[~year4["school"].isin(sorted(year4["school"].unique())[:10])]
    designs = {1: design_for(table, spec, 1),
               4: build_design(year4, spec.predictors.pupil, spec.predictors.school,
                               spec.categorical_coding())}
    assert designs[1].n_schools == designs[4].n_schools + 10
    kw = {"draws": 200, "tune": 200, "chains": 2, "seed": 11}

    def fit(year, key):
        design = designs[year]
        priors = resolve_priors(design, spec.priors)
        return sample_reusing(key, lambda: build_two_level_collapsed(design, priors),
                              {"collapsed_data": collapsed_data(design, priors)}, **kw)

    compiles = []
    compile_model = sampling.compile_model
    monkeypatch.setattr(sampling, "compile_model",
                        lambda model: compiles.append(1) or compile_model(model))
    fit(1, "reused")
    reused = fit(4, "reused")
    assert len(compiles) == 1
    fresh = fit(4, "fresh")
    assert len(compiles) == 2
    for name in ("level", "intercept", "beta", "sd_school", "sigma"):
        np.testing.assert_array_equal(reused.posterior[name].to_numpy(),
                                      fresh.posterior[name].to_numpy(), err_msg=name)
    with pytest.raises(ValueError, match="every data container"):
        sample_reusing("reused", lambda: None, {"other": np.zeros(3)}, **kw)


def test_specifications_with_the_same_coefficients_share_one_compiled_model(monkeypatch,
                                                                            tmp_path):
    """M1 and M1 with another prior on sd_school, years 0 and 1 in one job: one compilation
    for the four fits (the graph depends on the coefficients; statistics and priors are
    data), and the second spec's draws equal those of a job that fits it alone."""
    import tomllib

    import bayesfed
    from bayesfed.inputs.spec import spec_from_dict

    doc = tomllib.loads((ROOT / "models" / "m1_pupil.toml").read_text())
    other = spec_from_dict({**doc, "model": {**doc["model"], "name": "M1b"},
                            "priors": {"sd_school": {"sigma": 2.0}}})
    compiles = []
    compile_model = sampling.compile_model
    monkeypatch.setattr(sampling, "compile_model",
                        lambda model: compiles.append(1) or compile_model(model))
    monkeypatch.setattr(sampling, "_COMPILED", type(sampling._COMPILED)())
    data = ROOT / "data" / "synthetic_study.parquet"
    kw = {"years": [0, 1], "seed": 5, "draws": 200, "tune": 200, "chains": 2}
    bayesfed.fit(data, ["m1", other], out=tmp_path / "both", **kw)
    assert len(compiles) == 1
    monkeypatch.setattr(sampling, "_COMPILED", type(sampling._COMPILED)())
    bayesfed.fit(data, [other], out=tmp_path / "alone", **kw)
    a = xr.open_datatree(tmp_path / "both" / "M1b_k1.nc")["posterior"]
    b = xr.open_datatree(tmp_path / "alone" / "M1b_k1.nc")["posterior"]
    for name in ("beta", "sd_school", "sigma"):
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy(), err_msg=name)
