"""The stacked event-time model: its collapsed likelihood against the dense Gaussian density of
the pupils written directly from the model, its exact draws, its checks of the design."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pymc as pm
import pytensor
import pytest
import xarray as xr
from scipy.stats import multivariate_normal

from bayesfed.design.cells import build_event_design, cell_stats
from bayesfed.design.reduce import reduce_table
from bayesfed.design.stacked import stacked_data
from bayesfed.errors import DataError, SpecError
from bayesfed.inputs.simulate import SimConfig, simulate, write_study
from bayesfed.inputs.spec import load_spec, spec_from_dict
from bayesfed.inputs.validate import validate_table
from bayesfed.jobs.commands import fit_command
from bayesfed.modelling.event_stacked import (
    SIGNED,
    VARIANCE_FLOOR,
    block_prior,
    build_stacked,
    draw_function,
    reference_loglik,
)
from bayesfed.modelling.priors import resolve_stacked_priors
from bayesfed.posterior.effects import att_variables, att_weights, breakdown, sensitivity
from bayesfed.posterior.event_draws import cell_residuals, school_loglik

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "data" / "synthetic_study.parquet"
EVENT_SPEC = ROOT / "models" / "event_time.toml"
FOUNDINGS = (2010, 2011, 2012)


def small_frame(seed: int = 0, drop_cells: bool = True) -> pd.DataFrame:
    """Three founding cohorts; each with two federations (one of two schools) and two matched
    schools; years -3..2 since founding; 1-4 pupils a cell, some cells empty."""
    rng = np.random.default_rng(seed)
    rows = []
    school = 0
    for e in FOUNDINGS:
        for kind, n_schools in (("fed_a", 2), ("fed_b", 1), ("matched", 2)):
            for _ in range(n_schools):
                school += 1
                federated = int(kind != "matched")
                for k in range(-3, 3):
                    size = rng.integers(1, 5)
                    # an empty cell, but never the reference year's of a federated school
                    if drop_cells and k in (-3, 1) and school % 3 == 0:
                        continue
                    for _ in range(size):
                        rows.append({
                            "school": f"S{school:02d}", "cohort": e + k, "years_since": k,
                            "federated": federated,
                            "federation": f"F{e}{kind[-1]}" if federated else "",
                            "x": rng.normal(), "outcome": rng.normal(2.0, 1.5)})
    return pd.DataFrame(rows)


def stacked(frame: pd.DataFrame, **options):
    design = build_event_design(frame, ["x"], leads="all", effects=range(3))
    data = stacked_data(cell_stats(design))
    return design, data, build_stacked(data, **options)


POINT = {"beta": np.array([0.4]), "sigma": 1.3, "sd_cell": 0.6, "sd_school": 0.8,
         "shock_ar_01": 0.8, "sd_federation_effect": 0.5, "sd_cohort_effect": 0.3,
         "tau_step": 0.25}


def dense_loglik(frame: pd.DataFrame, data, priors, point: dict, shocks="ar1",
                 deviations=True, effect_prior="random_walk") -> float:
    """log N(y; mean, Sigma) of the pupils, everything Gaussian integrated, built from the
    model's description in the module docstring (not from its algebra)."""
    f = frame[(frame.years_since >= data.years[0]) & (frame.years_since <= data.years[-1])]
    y, x = f.outcome.to_numpy(), f.x.to_numpy()
    k = f.years_since.to_numpy()
    e = (f.cohort - f.years_since).to_numpy()
    F = f.federated.to_numpy()
    school, fed = f.school.to_numpy(), f.federation.to_numpy()
    rho = 2 * point["shock_ar_01"] - 1 if shocks == "ar1" else 0.0
    point = floored(point, priors, rho)
    mean = priors.level.mu + (x - data.x_mean[0]) * point["beta"][0]
    same_school = school[:, None] == school[None, :]
    cov = point["sigma"] ** 2 * np.eye(len(y))
    cov += same_school * (point["sd_school"] ** 2
                          + point["sd_cell"] ** 2 * rho ** np.abs(k[:, None] - k[None, :]))
    if deviations:
        post_fed = (F == 1) & (k >= 0)
        cov += (point["sd_federation_effect"] ** 2 * (fed[:, None] == fed[None, :])
                * post_fed[:, None] * post_fed[None, :])
    # the Gaussian block, from its independent components
    s_gamma, s_effect = priors.level.sigma, priors.effect
    loadings, variances = [], []
    for ee in FOUNDINGS:
        for kk in data.years:
            loadings.append((e == ee) & (k == kk))
            variances.append(s_gamma**2)
        loadings.append((e == ee) & (F == 1))
        variances.append(s_effect**2)
        for kk in data.years:
            if kk <= -2:
                loadings.append((e == ee) & (F == 1) & (k == kk))
                variances.append(s_effect**2)
            if kk >= 0:  # eta's k-th component: its value (independent) or step (random walk)
                since = k >= kk if effect_prior == "random_walk" else k == kk
                loadings.append((e == ee) & (F == 1) & since)
                variances.append(point["sd_cohort_effect"] ** 2)
    A = np.array(loadings, dtype=float).T
    cov += A @ np.diag(variances) @ A.T
    effects = np.arange(data.years[-1] + 1)
    if effect_prior == "random_walk":  # delta_k = delta_0 + k d + steps, d ~ N(0, s_effect^2)
        c_delta = (s_effect**2 * (1 + np.multiply.outer(effects, effects))
                   + point["tau_step"] ** 2 * np.minimum.outer(effects, effects))
    else:
        c_delta = s_effect**2 * np.eye(len(effects))
    D = ((F == 1)[:, None] & (k[:, None] == effects[None, :])).astype(float)
    cov += D @ c_delta @ D.T
    return float(multivariate_normal(mean, cov).logpdf(y))


def floored(point: dict, priors, rho: float) -> dict:
    """The point with the model's variance floor (VARIANCE_FLOOR) in the sds it applies to:
    the cohort deviations', the steps' and the shocks' (whose omega^2 (1 - rho^2) is floored)."""
    floor = (VARIANCE_FLOOR * priors.effect) ** 2
    return point | {"sd_cohort_effect": np.sqrt(point["sd_cohort_effect"] ** 2 + floor),
                    "tau_step": np.sqrt(point["tau_step"] ** 2 + floor),
                    "sd_cell": np.sqrt(point["sd_cell"] ** 2 + floor / (1 - rho**2))}


def potentials(parts, point: dict) -> tuple[float, float]:
    """The reference graph's log-likelihood and the fused kernel's (the model's potential)."""
    inputs = list(parts.model.free_RVs)
    fn = pytensor.function(inputs, [reference_loglik(parts), parts.model["marginal_loglik"]],
                           on_unused_input="ignore")
    graph, fused = fn(*(point[v.name.removesuffix(SIGNED)] for v in inputs))
    return float(graph), float(fused)


@pytest.mark.parametrize("options", [
    {},
    {"shocks": "iid"},
    {"federation_deviations": False},
    {"effect_prior": "independent"},
])
def test_marginal_equals_dense_gaussian(options):
    frame = small_frame()
    design, data, parts = stacked(frame, **options)
    assert (data.n == 0).any()  # empty cells on some schools' grids
    priors = resolve_stacked_priors(data)
    dense = dense_loglik(frame, data, priors, POINT, options.get("shocks", "ar1"),
                         options.get("federation_deviations", True),
                         options.get("effect_prior", "random_walk"))
    graph, fused = potentials(parts, POINT)
    assert graph == pytest.approx(dense, rel=1e-10, abs=1e-8)
    assert fused == pytest.approx(dense, rel=1e-10, abs=1e-8)


def test_scales_sampled_by_their_sign_have_the_half_normal_prior_and_a_symmetric_density():
    """The cohort, step and federation sds are |x| of a free Normal x: the model's log density
    is the same at x and -x, and its prior part at x is HalfNormal's at |x| less log 2."""
    _, data, parts = stacked(small_frame())
    model = parts.model
    logp = model.compile_logp()
    point = model.initial_point() | {f"sd_cohort_effect{SIGNED}": np.array(0.3),
                                     f"tau_step{SIGNED}": np.array(0.25),
                                     f"sd_federation_effect{SIGNED}": np.array(0.5)}
    for name in ("sd_cohort_effect", "tau_step", "sd_federation_effect"):
        flipped = point | {name + SIGNED: -point[name + SIGNED]}
        assert float(logp(flipped)) == pytest.approx(float(logp(point)), rel=1e-12)
        rv = model[name + SIGNED]
        prior = float(pm.logp(rv, point[name + SIGNED]).eval())
        scale = float(rv.owner.inputs[-1].eval())
        half = float(pm.logp(pm.HalfNormal.dist(sigma=scale), abs(point[name + SIGNED])).eval())
        assert prior == pytest.approx(half - np.log(2), rel=1e-12)


def test_block_conditional_equals_dense_gaussian_conditioning():
    """The block's conditional mean and covariance equal Gaussian conditioning of the block
    on the pupils, computed densely."""
    frame = small_frame(1)
    design, data, parts = stacked(frame)
    inputs = list(parts.model.free_RVs)
    out = draw_function(parts)(*(POINT[v.name.removesuffix(SIGNED)] for v in inputs))
    mean, chol = out.block_mean, out.block_chol
    # dense: the block x and the pupils y are jointly Gaussian; E[x | y] = C_xy C_yy^-1 (y - m)
    priors = resolve_stacked_priors(data)
    f = frame
    y, x = f.outcome.to_numpy(), f.x.to_numpy()
    k = f.years_since.to_numpy()
    e = (f.cohort - f.years_since).to_numpy()
    F = f.federated.to_numpy()
    E = len(data.foundings)
    prior = block_prior(E, data.years, "random_walk")
    where = prior.layout
    K = where.size
    # prior covariance of x from the precision of the block prior (independently checked by
    # the marginal test above) and the loading of each pupil on x
    Z = np.zeros((len(y), K))
    for i in range(len(y)):
        ei = list(FOUNDINGS).index(e[i])
        ti = data.years.index(k[i])
        Z[i, (where.mu if F[i] else where.gamma)[ei, ti]] = 1.0
    point = floored(POINT, priors, 2 * POINT["shock_ar_01"] - 1)
    rest = dense_cov_without_block(f, point)
    Q = (prior.gram["gamma"] / priors.level.sigma**2 + prior.gram["effect"] / priors.effect**2
         + prior.gram["eta"] / point["sd_cohort_effect"] ** 2
         + prior.gram["step"] / point["tau_step"] ** 2)
    C = np.linalg.inv(Q)
    resid = y - priors.level.mu - (x - data.x_mean[0]) * POINT["beta"][0]
    Cyy = Z @ C @ Z.T + rest
    expected_mean = C @ Z.T @ np.linalg.solve(Cyy, resid)
    expected_cov = C - C @ Z.T @ np.linalg.solve(Cyy, Z @ C)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-8, atol=1e-10)
    cov = np.linalg.inv(chol @ chol.T)
    np.testing.assert_allclose(cov, expected_cov, rtol=1e-7, atol=1e-10)


def dense_cov_without_block(f: pd.DataFrame, point: dict) -> np.ndarray:
    """The pupils' covariance given the block: pupil, school, AR(1) cell and federation
    terms."""
    k = f.years_since.to_numpy()
    F = f.federated.to_numpy()
    school, fed = f.school.to_numpy(), f.federation.to_numpy()
    rho = 2 * point["shock_ar_01"] - 1
    same = school[:, None] == school[None, :]
    post_fed = (F == 1) & (k >= 0)
    return (point["sigma"] ** 2 * np.eye(len(f))
            + same * (point["sd_school"] ** 2
                      + point["sd_cell"] ** 2 * rho ** np.abs(k[:, None] - k[None, :]))
            + point["sd_federation_effect"] ** 2 * (fed[:, None] == fed[None, :])
            * post_fed[:, None] * post_fed[None, :])


def test_missing_matched_comparison_is_refused():
    frame = small_frame(drop_cells=False)
    # the 2011 cohort's matched schools lose year 2
    gone = (frame.federated == 0) & (frame.cohort - frame.years_since == 2011) & (
        frame.years_since == 2)
    design = build_event_design(frame[~gone], ["x"], leads="all", effects=range(3))
    with pytest.raises(ValueError, match=r"founding cohort 2011: federated pupils but no "
                                         r"matched \(non-federated\) pupil in year\(s\) since "
                                         r"founding \[2\]"):
        stacked_data(cell_stats(design))


def test_grid_and_labels():
    frame = small_frame()
    design, data, parts = stacked(frame)
    assert data.years == (-3, -2, -1, 0, 1, 2)
    assert data.lead_years == (-3, -2) and data.effect_years == (0, 1, 2)
    assert data.foundings == ("2010", "2011", "2012")
    assert data.federations == ("F2010a", "F2010b", "F2011a", "F2011b", "F2012a", "F2012b")
    assert data.n.sum() == len(frame)
    coords = parts.model.coords
    assert list(coords["event_year"]) == ["0", "1", "2"]
    assert list(coords["lead_year"]) == ["-3", "-2"]


# -- per-school log-likelihoods, weights, aggregates, sensitivity ------------------------------

def test_school_loglik_equals_dense_conditional_density():
    """Each school's log-likelihood given the block and the deviations equals the dense
    Gaussian density of its pupils given them (intercept and AR(1) shocks integrated)."""
    frame = small_frame(2)
    design, data, parts = stacked(frame)
    out = draw_function(parts)(*(POINT[v.name.removesuffix(SIGNED)] for v in parts.model.free_RVs))
    rng = np.random.default_rng(5)
    x = rng.normal(size=out.block_mean.shape)
    b = rng.normal(size=len(data.federations))
    got = school_loglik(out, cell_residuals(out, x, b, data, parts.prior.layout), POINT["beta"],
                        POINT["sigma"], data)
    priors = resolve_stacked_priors(data)
    where = parts.prior.layout
    rho = 2 * POINT["shock_ar_01"] - 1
    point = floored(POINT, priors, rho)
    for j, school in enumerate(data.schools):
        f = frame[frame.school == school]
        k = f.years_since.to_numpy()
        e = list(FOUNDINGS).index(int((f.cohort - f.years_since).iloc[0]))
        fed = int(f.federated.iloc[0])
        position = [data.years.index(v) for v in k]
        block = x[(where.mu if fed else where.gamma)[e, position]]
        if fed:
            block = block + b[data.federations.index(f.federation.iloc[0])] * (k >= 0)
        mean = (priors.level.mu + (f.x.to_numpy() - data.x_mean[0]) * POINT["beta"][0]
                + block)
        cov = (POINT["sigma"] ** 2 * np.eye(len(f)) + POINT["sd_school"] ** 2
               + point["sd_cell"] ** 2 * rho ** np.abs(k[:, None] - k[None, :]))
        dense = multivariate_normal(mean, cov).logpdf(f.outcome.to_numpy())
        assert got[j] == pytest.approx(dense, rel=1e-10, abs=1e-8), school


def test_weights_equal_the_simulators_realised_shares():
    """w(e, k) from the fitted statistics equal the simulator's own shares of federated
    pupils (and of federations) by founding cohort: two independent computations."""
    frame, truth = simulate(SimConfig(n_federations=12, pupils_per_school=20), seed=3)
    spec = load_spec(EVENT_SPEC)
    data = stacked_data(reduce_table(validate_table(frame, spec), spec).stats)
    for kind in ("pupils", "federations"):
        weights = att_weights(data, kind)
        expected = truth["att"]["weights"][kind]
        for k, shares in expected.items():
            column = weights.cohort[:, data.years.index(int(k))]
            got = {e: float(w) for e, w in zip(data.foundings, column, strict=True) if w > 0}
            assert got == pytest.approx(shares, abs=1e-12), (kind, k)


def test_att_aggregates_by_hand():
    """ATT(e,k) adds the weighted deviations of the cohort's federations; ATT(k) weights
    the cohorts; leads are weighted without deviations."""
    frame = small_frame(3)
    _, data, _ = stacked(frame)
    rng = np.random.default_rng(0)
    E, F = len(data.foundings), len(data.federations)
    K1, L = len(data.effect_years), len(data.lead_years)
    post = xr.Dataset({
        "cohort_effect": (("chain", "draw", "founding", "event_year"), rng.normal(
            size=(2, 3, E, K1))),
        "lead": (("chain", "draw", "founding", "lead_year"), rng.normal(size=(2, 3, E, L))),
        "federation_deviation": (("chain", "draw", "federation"), rng.normal(size=(2, 3, F))),
    }, coords={"founding": list(data.foundings),
               "event_year": [str(k) for k in data.effect_years],
               "lead_year": [str(k) for k in data.lead_years]})
    weights = att_weights(data, "pupils")
    got = att_variables(post, data, weights)
    fed = frame[frame.federated == 1].assign(e=lambda f: (f.cohort - f.years_since).astype(str))
    b = post["federation_deviation"].to_numpy()
    for k in data.effect_years:
        rows = fed[fed.years_since == k]
        total = np.zeros((2, 3))
        for e, group in rows.groupby("e"):
            ie = data.foundings.index(e)
            n_f = group.groupby("federation").size()
            dev = sum(n * b[:, :, data.federations.index(f)] for f, n in n_f.items()) / n_f.sum()
            att_e = post["cohort_effect"].to_numpy()[:, :, ie, data.effect_years.index(k)] + dev
            np.testing.assert_allclose(got["att_cohort"].sel(founding=e, event_year=str(k)),
                                       att_e, rtol=1e-12)
            total += len(group) / len(rows) * att_e
        np.testing.assert_allclose(got["att"].sel(event_year=str(k)), total, rtol=1e-12)
    np.testing.assert_allclose(got["att_average"], got["att"].mean("event_year"))
    rows = fed[fed.years_since == -2]
    lead = sum(len(g) / len(rows) * post["lead"].sel(founding=e, lead_year="-2").to_numpy()
               for e, g in rows.groupby("e"))
    np.testing.assert_allclose(got["lead_att"].sel(lead_year="-2"), lead, rtol=1e-12)


def test_sensitivity_bounds_and_breakdown():
    """Constant draws: ATT(k) = 1, one lead -0.1, so the largest pre-founding change is
    0.1 and the average's bound is M * mean(k + 1) * 0.1: it reaches 1 at M = 1 / 0.35."""
    att = np.ones((400, 6))
    lead = np.full((400, 1), -0.1)
    out = sensitivity(att, lead, list(range(6)), [0.0, 1.0, 2.0], 0.94)
    assert out["max_pre_change"] == pytest.approx(0.1)
    assert out["average"][0] == pytest.approx([1.0, 1.0])
    assert out["average"][1] == pytest.approx([1 - 0.35, 1 + 0.35])
    assert out["att"]["5"][2] == pytest.approx([1 - 2 * 6 * 0.1, 1 + 2 * 6 * 0.1])
    assert out["breakdown_m"] == pytest.approx(1 / 0.35, abs=1e-3)
    assert sensitivity(att, np.zeros((400, 0)), list(range(6)), [1.0], 0.94) is None
    assert breakdown(lambda m: (1.0, 2.0)) is None  # nothing covers 0
    assert breakdown(lambda m: (-1.0, 2.0)) == 0.0


def test_missing_comparison_is_a_data_error_before_sampling(tmp_path):
    """A founding cohort whose matched schools lack a year is refused by the reduction with
    the cohort, the years and the fix."""
    frame, _ = simulate(SimConfig(n_federations=10, pupils_per_school=20), seed=4)
    e = int(frame.loc[frame.federated == 1, "founding_year"].iloc[0])
    gone = (frame.federated == 0) & (frame.founding_year == e) & (frame.years_since == 5)
    spec = load_spec(EVENT_SPEC)
    with pytest.raises(DataError, match=rf"founding cohort {e}: federated pupils but no matched "
                                        r"\(non-federated\) pupil in year\(s\) since founding "
                                        r"\[5\]\. Add matched schools"):
        reduce_table(validate_table(frame[~gone].reset_index(drop=True), spec), spec)


def test_spec_options_of_the_designs():
    base = json.loads(load_spec(EVENT_SPEC).model_dump_json())
    base.pop("source")
    with pytest.raises(SpecError, match='type_effects applies to design = "pooled" only'):
        spec_from_dict({**base, "event": {**base["event"], "type_effects": True}})
    with pytest.raises(SpecError, match='shocks = "ar1" applies to design = "stacked" only'):
        spec_from_dict({**base, "event": {"design": "pooled", "shocks": "ar1"}})
    pooled = spec_from_dict({**base, "event": {"design": "pooled"}}).event_options
    assert not pooled.deviations and pooled.leads == "all"
    assert spec_from_dict(base).event_options.deviations


# -- the job on the shipped study --------------------------------------------------------------

FIELDS = {"mean", "sd", "hdi_low", "hdi_high", "ess_bulk", "ess_tail", "r_hat", "mcse_mean",
          "p_positive"}


@pytest.fixture(scope="module")
def shipped_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacked") / "fits"
    path = fit_command([EVENT_SPEC], STUDY, out, None, seed=3)
    truth = json.loads(STUDY.with_suffix(".truth.json").read_text())
    return json.loads(path.read_text())["fits"][0], truth, out


def test_shipped_study_recovers_the_realised_att(shipped_fit):
    """Every realised ATT(k) (the effect path of Table 5 here) inside its 94% HDI, at most
    one miss; the lead covers 0; the sampler passed every gate."""
    fit, truth, _ = shipped_fit
    assert fit["design"] == "stacked" and fit["diagnostics"]["ok"], fit["diagnostics"]
    effects = fit["federation_effect"]
    assert list(effects) == ["-2", "0", "1", "2", "3", "4", "5"]
    assert all(set(v) == FIELDS for v in effects.values())
    misses = {k: (v, effects[k]) for k, v in truth["att"]["pupils"].items()
              if not effects[k]["hdi_low"] <= v <= effects[k]["hdi_high"]}
    assert len(misses) <= 1, misses
    assert effects["-2"]["hdi_low"] <= 0.0 <= effects["-2"]["hdi_high"]
    assert not fit["pre_trend"]["flagged"]
    average = fit["att_average"]
    assert average["hdi_low"] <= truth["att"]["average"]["pupils"] <= average["hdi_high"]


def test_shipped_summary_holds_the_cohorts_weights_and_checks(shipped_fit):
    fit, truth, _ = shipped_fit
    by_cohort = fit["federation_effect_by_cohort"]
    assert set(by_cohort) == set(truth["att"]["by_cohort"])
    for k in ("0", "5"):
        shares = fit["weights"]["by_year"][k]
        assert sum(shares.values()) == pytest.approx(1.0)
        assert shares == pytest.approx(truth["att"]["weights"]["pupils"][k], abs=1e-12)
    assert fit["weights"]["kind"] == "pupils" and fit["deviation_unit"] == "federation"
    assert set(fit["prior_sensitivity"]) == {f"att[{k}]" for k in range(6)} | {"att_average"}
    assert set(fit["predictive"]["posterior"]) == {"sd_cell_mean", "sd_school_mean",
                                                   "sd_within_school", "lag1_correlation"}
    assert all(0.01 < v["p_value"] < 0.99 for v in fit["predictive"]["posterior"].values())
    assert fit["loo"]["n_units"] == 77 and fit["loo"]["unit"] == "school"
    assert {"shock_ar", "sd_federation_effect", "sd_cohort_effect", "tau_step"} <= set(
        fit["params"])
    sens = fit["sensitivity"]
    widths = [high - low for low, high in sens["average"]]
    assert widths == sorted(widths) and sens["grid"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]


def test_pre_trend_is_flagged_and_widens_the_sensitivity_intervals(shipped_fit, tmp_path):
    """delta_{-m} = m * 0.5: the lead estimates delta_{-2} - delta_{-1} = 0.5, far from 0:
    flagged, and the largest pre-founding change, hence every interval at M > 0, is larger
    than on the shipped study without a pre-trend."""
    frame, truth = simulate(SimConfig(pre_trend=0.5), seed=11)
    data = tmp_path / "pre.parquet"
    write_study(frame, truth, data)
    fit = json.loads(fit_command([EVENT_SPEC], data, tmp_path / "fits", None, seed=2)
                     .read_text())["fits"][0]
    lead = fit["federation_effect"]["-2"]
    assert fit["pre_trend"]["flagged"] and lead["hdi_low"] > 0.0, lead
    assert lead["hdi_low"] <= truth["att"]["leads"]["-2"] <= lead["hdi_high"], lead
    clean = shipped_fit[0]["sensitivity"]
    sens = fit["sensitivity"]
    assert sens["max_pre_change"] > 2 * clean["max_pre_change"]
    for (low, high), (c_low, c_high) in zip(sens["average"][1:], clean["average"][1:],
                                            strict=True):
        assert high - low > c_high - c_low
    assert sens["breakdown_m"] is not None and sens["breakdown_m"] < 0.5


def test_without_a_federation_column_each_federated_school_is_its_own_unit():
    frame = small_frame().drop(columns="federation")
    _, data, parts = stacked(frame)
    federated = sorted(frame.loc[frame.federated == 1, "school"].unique())
    assert data.federation_unit == "school" and list(data.federations) == federated
    assert list(parts.model.coords["federation"]) == federated


def test_every_lead_the_data_have():
    """With cohorts from three years before founding, leads = "all" gives the leads -3 and
    -2 and a grid from -3 to 5."""
    frame, _ = simulate(SimConfig(n_federations=10, pupils_per_school=10, years_before=3),
                        seed=2)
    spec = load_spec(EVENT_SPEC)
    data = stacked_data(reduce_table(validate_table(frame, spec), spec).stats)
    assert data.lead_years == (-3, -2) and data.years == tuple(range(-3, 6))
    assert data.n_dropped == 0
