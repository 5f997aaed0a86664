"""The joint event-time model: design, exact marginal likelihood, recovery, placebo, agreement.

The rare miss, stated: the recovery test checks seven true values (six effects and the lead)
against their 94% HDIs; each misses with probability about 0.06, so about one fit in three
misses one somewhere. It allows at most one outside its 94% HDI and none outside its 99% HDI.
The fits use fixed seeds, so a pass or failure is reproducible up to the last bits of
compiled code (see :mod:`bayesfed.sampling.nuts`).
"""

from __future__ import annotations

import json
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from bayesfed.design.cells import build_event_design, cell_stats
from bayesfed.design.columns import build_design
from bayesfed.inputs.simulate import SimConfig, simulate, write_study
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.jobs.commands import fit_command, report_command
from bayesfed.modelling.event_pooled import (
    add_effect_draws,
    build_event_time,
    build_event_time_parts,
    build_event_time_reference,
)
from bayesfed.modelling.priors import resolve_event_priors
from bayesfed.posterior.partition import hdi_summary
from bayesfed.posterior.reml import fit_reml
from bayesfed.sampling.nuts import sample

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "data" / "synthetic_study.parquet"
M1 = ROOT / "models" / "m1_pupil.toml"
#: Two-sided 94% normal quantile: a 94% interval is estimate +- Z94 * SE.
Z94 = 1.8808
EFFECTS = [str(k) for k in range(6)]


def canonical(raw: pd.DataFrame):
    """The M1 spec's canonical table (outcome, school, predictors, year columns) and coding."""
    spec = load_spec(M1)
    table = validate_table(raw, spec)
    return table.frame, spec.predictors.pupil, spec.categorical_coding()


def event_design(raw: pd.DataFrame):
    frame, terms, coding = canonical(raw)
    return build_event_design(frame, terms, coding)


# -- design -----------------------------------------------------------------------------------

def tiny_frame() -> pd.DataFrame:
    """A federated and a matched school, founded 2010, cohorts 2007-2016 (years -3..6)."""
    rows = []
    for school, fed in (("A", 1), ("B", 0)):
        for cohort in range(2007, 2017):
            for p in range(2):
                rows.append({"outcome": float(cohort + p), "school": school, "federated": fed,
                             "cohort": cohort, "years_since": cohort - 2010, "x": float(p),
                             "g": "u" if p else "v"})
    return pd.DataFrame(rows)


def test_indicators_on_a_hand_made_frame():
    design = build_event_design(tiny_frame(), ["x", "g"], {"g": (["v", "u"], "v")})
    assert design.event_terms == ("-2", "0", "1", "2", "3", "4", "5")
    assert design.lead_terms == ("-2",) and design.effect_terms == tuple(EFFECTS)
    assert design.n_dropped == 8  # years -3 and 6, two pupils, two schools
    assert design.n_pupils == 2 * 8 * 2
    assert design.coef_names == ("x", "g[u]")
    assert design.cohorts == tuple(str(c) for c in range(2008, 2016))
    assert len(design.cells) == 16 and design.cells[0] == "A|2008"
    since = design.cohort_idx + 2008 - 2010
    is_a = design.school_idx == design.schools.index("A")
    for column, term in enumerate(design.event_terms):
        expected = is_a & (since == int(term))
        np.testing.assert_array_equal(design.E[:, column], expected.astype(float))
    assert not design.E[~is_a].any()  # the matched school has no indicator
    assert not design.E[since == -1].any()  # the reference year has no column
    assert design.E[is_a & (since != -1)].sum(axis=1).tolist() == [1.0] * 14


def test_design_rejects_an_unidentified_term_and_the_reference_year():
    with pytest.raises(ValueError, match="no federated pupil in event year"):
        build_event_design(tiny_frame(), ["x"], effects=range(8))
    with pytest.raises(ValueError, match="leads must be"):
        build_event_design(tiny_frame(), ["x"], leads=(-1,))


# -- the marginal likelihood equals the pupil-row model's -------------------------------------

def unbalanced_frame(seed: int = 3) -> pd.DataFrame:
    """Six schools (four federated in three federations of two types, two matched), cells of 1
    to 6 pupils, years -2..5, one 1-pupil cell."""
    rng = np.random.default_rng(seed)
    schools = [(1, 2010, "F1", "faith"), (0, 2010, None, None), (1, 2011, "F2", "size"),
               (0, 2011, None, None), (1, 2011, "F2", "size"), (1, 2009, "F3", "faith")]
    rows = []
    for s, (fed, founding, federation, kind) in enumerate(schools):
        for cohort in range(founding - 2, founding + 6):
            n = 1 if (s, cohort) == (0, 2009) else int(rng.integers(2, 7))
            for _ in range(n):
                rows.append({"outcome": rng.normal(5, 4), "school": f"S{s}", "federated": fed,
                             "federation": federation, "federation_type": kind,
                             "cohort": cohort, "years_since": cohort - founding,
                             "x": rng.normal(0, 1), "g": rng.choice(["a", "b", "c"])})
    return pd.DataFrame(rows)


def conditional_logdensity(model, point: dict, design, priors) -> float:
    """log p(b | y, theta) at the point's b, by dense linear algebra (reference model).

    b = (u, v, lead, delta) or, for the random walk, (u, v, lead, delta_first, step), then the
    federation and type deviations when modelled: the intercepts, leads, effects and
    deviations, Gaussian given everything else, with precision
    P = Z'Z / sigma^2 + diag(1 / prior variances) and mean P^-1 Z'(y - fixed part) / sigma^2.
    """
    walk = "step" in point
    het = [k for k in ("federation_deviation", "type_deviation") if k in point]
    names = ["u", "v", "lead", *(("delta_first", "step") if walk else ("delta",)), *het]
    zero = point | {k: np.zeros_like(point[k]) for k in names}
    sds = [model[k] for k in ("sd_federation_effect", "sd_type") if k in model.named_vars]
    extra = [model["tau_step"]] if walk else []
    outs = model.replace_rvs_by_values(
        [model["y"].owner.inputs[2], model["sd_school"], model["sd_cell"], model["sigma"],
         *extra, *sds])
    mu_fixed, sd_school, sd_cell, sigma, *rest = model.compile_fn(
        outs, inputs=model.value_vars, on_unused_input="ignore")(zero)
    tau, het_sds = rest[:len(extra)], rest[len(extra):]
    n_schools, n_cells, n_leads = len(design.schools), len(design.cells), design.n_leads
    effects = design.E[:, n_leads:]
    n_effects = effects.shape[1]
    if walk:  # delta = T (delta_first, step), T lower-triangular ones
        effects = effects @ np.tril(np.ones((n_effects, n_effects)))
        effect_var = np.r_[priors.effect**2, np.full(n_effects - 1, tau[0] ** 2)]
    else:
        effect_var = np.full(n_effects, priors.effect**2)
    present = [(idx, labels) for name, idx, labels in (
        ("federation_deviation", design.federation_idx, design.federations),
        ("type_deviation", design.type_idx, design.types)) if name in het]
    het_columns, het_var = [], []
    for (idx, labels), sd in zip(present, het_sds, strict=True):
        het_columns.append(design.post[:, None] * (idx[:, None] == np.arange(len(labels))))
        het_var.append(np.full(len(labels), sd**2))
    Z = np.hstack([np.eye(n_schools)[design.school_idx], np.eye(n_cells)[design.cell_idx],
                   design.E[:, :n_leads], effects, *het_columns])
    prior_var = np.r_[np.full(n_schools, sd_school**2), np.full(n_cells, sd_cell**2),
                      np.full(n_leads, priors.lead**2), effect_var, *het_var]
    precision = Z.T @ Z / sigma**2 + np.diag(1 / prior_var)
    mean = np.linalg.solve(precision, Z.T @ (design.y - mu_fixed) / sigma**2)
    d = np.concatenate([np.atleast_1d(point[k]) for k in names]) - mean
    return float(-0.5 * d.size * np.log(2 * np.pi) + 0.5 * np.linalg.slogdet(precision)[1]
                 - 0.5 * d @ precision @ d)


@pytest.mark.parametrize(("effect_prior", "heterogeneity"), [
    ("random_walk", False), ("independent", False), ("random_walk", True)])
def test_marginal_equals_pupil_rows_over_intercepts(effect_prior, heterogeneity):
    """log p(theta | y) of the marginal model = joint density / conditional of the intercepts,
    leads and effects, exactly.

    Ten random points (every free parameter and intercept perturbed), cells of 1 to 6 pupils;
    with heterogeneity, federation and federation-type deviations of the effect.
    """
    design = build_event_design(unbalanced_frame(), ["x", "g"], {"g": (["a", "b", "c"], "a")})
    assert (cell_stats(design).n == 1).any()  # the frame has a single-pupil cell
    assert design.federations == ("F1", "F2", "F3") and design.types == ("faith", "size")
    options = {"effect_prior": effect_prior, "federation_deviations": heterogeneity,
               "type_effects": heterogeneity}
    marginal = build_event_time(cell_stats(design), **options)
    reference = build_event_time_reference(design, **options)
    logp_marginal, logp_reference = marginal.compile_logp(), reference.compile_logp()
    marginal_vars = {v.name for v in marginal.value_vars}
    rng = np.random.default_rng(11)
    start = reference.initial_point()
    for _ in range(10):
        point = {k: v + rng.normal(0, 0.7, np.shape(v)) for k, v in start.items()}
        expected = logp_reference(point) - conditional_logdensity(reference, point, design,
                                                                  resolve_event_priors(cell_stats(design)))
        got = logp_marginal({k: v for k, v in point.items() if k in marginal_vars})
        assert got == pytest.approx(expected, rel=1e-8, abs=0)


def test_marginal_model_has_the_named_parts():
    design = build_event_design(unbalanced_frame(), ["x"])
    model = build_event_time(cell_stats(design))
    assert {"intercept", "beta", "gamma", "tau_step", "sd_school", "sd_cell", "sigma",
            "federated_gap"} <= set(model.named_vars)
    assert not {"delta", "lead", "type_deviation"} & set(model.named_vars)  # integrated out
    full = build_event_time(cell_stats(design), federation_deviations=True, type_effects=True)
    assert {"sd_type", "sd_federation_effect"} <= set(full.named_vars)
    assert not {"type_deviation", "federation_deviation"} & set(full.named_vars)
    assert list(model.coords["event_year"]) == EFFECTS
    assert list(model.coords["lead_year"]) == ["-2"]
    assert len(model.coords["cohort"]) == len(design.cohorts) - 1
    independent = build_event_time(cell_stats(design), effect_prior="independent")
    assert "tau_step" not in independent.named_vars
    with pytest.raises(ValueError, match="effect_prior"):
        build_event_time(cell_stats(design), effect_prior="spline")


# -- the shipped study ------------------------------------------------------------------------

def shipped():
    raw = pd.read_parquet(STUDY)
    truth = json.loads(STUDY.with_suffix(".truth.json").read_text())
    return raw, truth


@pytest.fixture(scope="module")
def study():
    """The shipped study, its truth, its event design and the default model's posterior."""
    raw, truth = shipped()
    frame, terms, coding = canonical(raw)
    design = build_event_design(frame, terms, coding)
    return frame, terms, coding, design, fit_event(design, seed=1), truth


def fit_event(design, seed: int, **options):
    """Sample the event-time model (4 x 1,000 draws) and add the effects' draws."""
    parts = build_event_time_parts(cell_stats(design), **options)
    fit = sample(parts.model, draws=1000, tune=1000, chains=4, seed=seed)
    return add_effect_draws(parts, fit, seed=seed)


def event_estimates(fit, prob: float = 0.94) -> dict[str, dict[str, float]]:
    """HDI summaries of ``lead`` and each ``delta`` by event year ("-2", "0".."5")."""
    post = fit.posterior
    out = {k: hdi_summary(post["lead"].sel(lead_year=k), prob)
           for k in post["lead"].coords["lead_year"].values}
    return out | {k: hdi_summary(post["delta"].sel(event_year=k), prob) for k in EFFECTS}


def relative_truth(truth: dict) -> dict[str, float]:
    """True effects relative to the reference year -1, what the model's terms estimate."""
    return {k: v - truth["delta"]["-1"] for k, v in truth["delta"].items() if k != "-1"}


def test_study_design_keeps_every_pupil(study):
    frame, _, _, design, _, _ = study
    assert design.n_dropped == 0 and design.n_pupils == len(frame)
    assert len(design.cells) == 616 and len(design.schools) == 77


def test_sampler_converged(study):
    fit = study[4]
    summary = az.summary(fit, ci_prob=0.94)
    assert summary["r_hat"].max() <= 1.01, summary["r_hat"].idxmax()
    assert summary["ess_bulk"].min() >= 400, summary["ess_bulk"].idxmin()
    assert summary["ess_tail"].min() >= 400, summary["ess_tail"].idxmin()
    assert int(fit.sample_stats["diverging"].sum()) == 0


def test_true_effects_inside_hdis_and_lead_covers_zero(study):
    fit, truth = study[4], relative_truth(study[5])

    def misses(prob):
        return {k: (truth[k], est) for k, est in event_estimates(fit, prob).items()
                if not est["hdi_low"] <= truth[k] <= est["hdi_high"]}

    assert len(misses(0.94)) <= 1, misses(0.94)
    assert not misses(0.99), misses(0.99)
    lead = event_estimates(fit)["-2"]
    assert lead["hdi_low"] <= 0.0 <= lead["hdi_high"], lead


def per_year_widths(frame, terms, coding) -> dict[str, float]:
    """94% interval widths of the federation dummy in per-year M2 REML fits (2 * Z94 * SE)."""
    widths = {}
    for k in EFFECTS:
        year = frame.loc[frame["years_since"] == int(k)].reset_index(drop=True)
        reml = fit_reml(build_design(year, terms, ["federated"], coding))
        widths[k] = 2 * Z94 * reml.coef["federated"][1]
    return widths


def test_joint_intervals_narrower_than_per_year_fits(study):
    frame, terms, coding, _, fit, _ = study
    joint = {k: est["hdi_high"] - est["hdi_low"] for k, est in event_estimates(fit).items()}
    ratio = {k: joint[k] / w for k, w in per_year_widths(frame, terms, coding).items()}
    print("94% width ratio joint / per-year M2 REML:", {k: round(r, 2) for k, r in ratio.items()})
    assert max(ratio.values()) < 0.8, ratio


def twfe_event_study(design) -> tuple[np.ndarray, np.ndarray]:
    """OLS with school and cohort fixed effects, pupil predictors and the event indicators.

    The standard two-way fixed-effects event study; standard errors clustered by school (which
    also covers the school-by-cohort shocks). Returns the estimates and standard errors of the
    event terms, in ``design.event_terms`` order.
    """
    schools = np.eye(len(design.schools))[design.school_idx]
    cohorts = np.eye(len(design.cohorts))[design.cohort_idx][:, 1:]
    W = np.hstack([schools, cohorts, design.X, design.E])
    fit = sm.OLS(design.y, W).fit(cov_type="cluster", cov_kwds={"groups": design.school_idx})
    n = design.E.shape[1]
    return fit.params[-n:], fit.bse[-n:]


def test_agrees_with_a_frequentist_event_study(study):
    design, fit = study[3], study[4]
    estimate, se = twfe_event_study(design)
    est = event_estimates(fit)
    for k, b, s in zip(design.event_terms, estimate, se, strict=True):
        combined = np.hypot(s, est[k]["sd"])
        assert abs(est[k]["mean"] - b) <= 2 * combined, (k, est[k], b, s)


# -- the job: spec, fit, summary.json, report -------------------------------------------------

EVENT_SPEC = ROOT / "models" / "event_time.toml"
M2 = ROOT / "models" / "m2_federation.toml"
FIELDS = {"mean", "sd", "hdi_low", "hdi_high", "ess_bulk", "ess_tail", "r_hat", "mcse_mean",
          "p_positive"}


def event_spec(tmp_path: Path, **event: object) -> Path:
    """The shipped event-time spec in the pooled design (this file's model: ``design =
    "pooled"``, iid shocks, no federation deviations), with further ``[event]`` keys replaced
    (TOML booleans/lists) and the federation type mapped."""
    event = {"design": '"pooled"', "shocks": '"iid"', "federation_deviations": False} | event
    text = EVENT_SPEC.read_text()
    for key, value in event.items():
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        if f"\n{key} =" not in text:  # [event] is the file's last section
            text = text.rstrip("\n") + f"\n{key} = {shown}\n"
        text = "\n".join(f"{key} = {shown}" if line.startswith(f"{key} =") else line
                         for line in text.splitlines())
    text = text.replace('federation = "federation_id"',
                        'federation = "federation_id"\nfederation_type = "federation_type"')
    path = tmp_path / "event_time.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """``fit_command`` on the shipped study: M2 for years 0-5 and the pooled event-time model."""
    folder = tmp_path_factory.mktemp("job")
    out = folder / "fits"
    path = fit_command([M2, event_spec(folder)], STUDY, out, list(range(6)), seed=3)
    report = report_command(out)
    return json.loads(path.read_text()), report


def test_summary_holds_the_trajectory_and_leads(job):
    summary, _ = job
    fit = next(f for f in summary["fits"] if f["family"] == "event_time")
    assert fit["model"] == "event_time" and fit["year"] is None and fit["file"] == "event_time.nc"
    assert list(fit["federation_effect"]) == ["-2", *EFFECTS]
    for key, entry in fit["federation_effect"].items():
        assert set(entry) == FIELDS, key
        assert entry["hdi_low"] < entry["mean"] < entry["hdi_high"]
    assert fit["reference_year"] == -1 and fit["pre_trend"] == {"leads": ["-2"],
                                                                "flagged": False}
    assert 0.5 < fit["trajectory"]["p_last_gt_first"] <= 1.0
    shares = fit["variance_partition"]
    assert set(shares) == {"school", "cell", "pupil"}
    assert sum(v["mean"] for v in shares.values()) == pytest.approx(1.0)
    assert fit["diagnostics"]["ok"], fit["diagnostics"]
    assert fit["n_cells"] == 616 and fit["n_cohorts"] == 12 and fit["n_federations"] == 31


def test_joint_intervals_narrower_than_the_per_year_posteriors(job):
    """The must-show: the joint model's 94% HDIs are narrower than the per-year M2 fits'."""
    summary, report = job
    fit = next(f for f in summary["fits"] if f["family"] == "event_time")
    ratios = fit["per_year_comparison"]["width_ratio"]
    assert fit["per_year_comparison"]["model"] == "M2" and list(ratios) == EFFECTS
    assert max(ratios.values()) < 0.8, ratios
    text = report.read_text()
    assert (f"the joint model's 94% intervals are {min(ratios.values()):.2f}-"
            f"{max(ratios.values()):.2f} times as wide as those of the separate M2 fits") in text


def test_report_shows_the_summary_numbers_and_the_figure(job):
    summary, report = job
    fit = next(f for f in summary["fits"] if f["family"] == "event_time")
    text = report.read_text()
    assert "## Joint event-time model (event_time)" in text
    for key in EFFECTS:
        e = fit["federation_effect"][key]
        assert (f"| {key} | {e['mean']:.2f} ({e['sd']:.2f}) | [{e['hdi_low']:.2f}, "
                f"{e['hdi_high']:.2f}] | {e['p_positive']:.3f} |") in text
    assert "No sign of a pre-federation trend" in text
    figure = report.parent / "figures" / "federation_trajectory.png"
    assert "](figures/federation_trajectory.png)" in text
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_type_effects_recovered(tmp_path):
    """Federations of type ``performance`` gain 1.0 more, ``size`` 0.4 less, in every year
    after founding: each type's average effect is inside its 94% HDI (at most one miss) and the
    heterogeneity model samples cleanly (integrated deviations: no funnel)."""
    bonus = {"performance": 1.0, "size": -0.4}
    frame, truth = simulate(SimConfig(type_effect=tuple(bonus.items())), seed=5)
    data = tmp_path / "types.parquet"
    write_study(frame, truth, data)
    spec = event_spec(tmp_path, type_effects=True, federation_deviations=True)
    fit = json.loads(fit_command([spec], data, tmp_path / "fits", None, seed=4)
                     .read_text())["fits"][0]
    average = np.mean([truth["delta"][k] for k in EFFECTS]) - truth["delta"]["-1"]
    misses = {k: (average + bonus.get(k, 0.0), v) for k, v in fit["type_effect"].items()
              if not v["hdi_low"] <= average + bonus.get(k, 0.0) <= v["hdi_high"]}
    assert set(fit["type_effect"]) == {"cross_phase", "faith", "performance", "size"}
    assert len(misses) <= 1, misses
    performance, size = fit["type_effect"]["performance"], fit["type_effect"]["size"]
    assert performance["mean"] > size["mean"]
    assert {"sd_type", "sd_federation_effect"} <= set(fit["params"])
    assert fit["diagnostics"]["ok"], fit["diagnostics"]
