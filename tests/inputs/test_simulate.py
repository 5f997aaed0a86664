"""The synthetic study generator: determinism, structure, the shipped file, national scale."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesfed.errors import BayesfedError
from bayesfed.inputs.schema import SEN_LEVELS
from bayesfed.inputs.simulate import (
    DEFAULT_SEED,
    SimConfig,
    ar1_shocks,
    simulate,
    truth_path,
    type_counts,
    write_study,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "synthetic_study.parquet"
COLUMNS = ["pupil_id", "school_id", "federation_id", "federation_type", "federated", "cohort",
           "founding_year", "years_since", "gcse_score", "fsm", "idaci", "male", "sen",
           "non_white_british", "ks2"]
KNOBS = ("cohort_slope", "calendar_trend", "shock_ar", "sd_federation_effect", "sd_ks2_slope",
         "sd_log_sigma")
EFFECT = SimConfig().effect
E_MID = (SimConfig().first_founding + SimConfig().last_founding) / 2
T_FIRST = SimConfig().first_founding - SimConfig().years_before


@pytest.fixture(scope="module")
def study():
    return simulate(SimConfig(), seed=DEFAULT_SEED)


def test_same_seed_gives_identical_files(tmp_path, study):
    for name in ("a", "b"):
        frame, truth = simulate(SimConfig(), seed=DEFAULT_SEED)
        write_study(frame, truth, tmp_path / name / "X.parquet")
    for file in ("X.parquet", "X.truth.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["X.parquet", "X.truth.json"]


def test_different_seed_gives_different_study(study):
    other, truth = simulate(SimConfig(), seed=DEFAULT_SEED + 1)
    assert truth["seed"] == DEFAULT_SEED + 1
    assert len(other) != len(study[0]) or not np.array_equal(
        other["gcse_score"].to_numpy(), study[0]["gcse_score"].to_numpy())


def test_columns_and_types(study):
    frame, _ = study
    assert list(frame.columns) == COLUMNS
    for flag in ("federated", "fsm", "male", "non_white_british"):
        assert set(frame[flag].unique()) == {0, 1}, flag
    assert frame["idaci"].between(0, 1).all()
    assert frame["ks2"].between(-0.62, 0.38).all()
    assert set(frame["sen"].unique()) == set(SEN_LEVELS)
    assert frame["school_id"].str.fullmatch(r"S\d{4}").all()
    assert frame.groupby("cohort")["pupil_id"].apply(lambda s: s.is_unique).all()
    assert np.isfinite(frame["gcse_score"]).all()


def test_federation_structure(study):
    frame, truth = study
    schools = frame.drop_duplicates("school_id")
    federated = schools[schools["federated"] == 1]
    matched = schools[schools["federated"] == 0]
    assert federated["federation_id"].nunique() == 31
    assert federated["federation_id"].str.fullmatch(r"F\d{2}").all()
    per_type = federated.drop_duplicates("federation_id")["federation_type"].value_counts()
    assert per_type.to_dict() == {"cross_phase": 12, "size": 10, "faith": 5, "performance": 4}
    assert matched["federation_id"].isna().all() and matched["federation_type"].isna().all()
    assert len(matched) == 31 and 31 <= len(federated) <= 62
    assert federated["founding_year"].between(2004, 2008).all()
    # every matched school shares the founding year of some federation
    assert set(matched["founding_year"]) <= set(federated["founding_year"])
    assert truth["config"]["n_federations"] == 31


def test_school_level_columns_are_constant_within_school(study):
    frame, _ = study
    levels = frame.groupby("school_id")[["federated", "founding_year", "federation_type",
                                         "federation_id"]].nunique(dropna=False)
    assert (levels == 1).all().all()


def test_cohorts_span_founding_minus_two_to_plus_five(study):
    frame, _ = study
    assert (frame["years_since"] == frame["cohort"] - frame["founding_year"]).all()
    spans = frame.groupby("school_id")["years_since"].agg(["min", "max", "nunique"])
    assert (spans["min"] == -2).all() and (spans["max"] == 5).all()
    assert (spans["nunique"] == 8).all()


def test_prevalences_are_those_of_rural_england(study):
    frame, _ = study
    assert frame["fsm"].mean() == pytest.approx(0.10, abs=0.03)
    assert frame["non_white_british"].mean() == pytest.approx(0.05, abs=0.025)
    assert frame["idaci"].mean() == pytest.approx(0.16, abs=0.03)
    assert frame["idaci"].std() == pytest.approx(0.10, abs=0.03)
    assert frame["ks2"].std() == pytest.approx(0.15, abs=0.03)
    shares = frame["sen"].value_counts(normalize=True)
    for level, share in zip(SEN_LEVELS[1:], (0.10, 0.05, 0.02), strict=True):
        assert shares[level] == pytest.approx(share, rel=0.35), level
    size = frame.groupby(["school_id", "cohort"]).size().groupby(level=0).mean()
    assert size.mean() == pytest.approx(200, rel=0.15)


def test_truth_json_beside_the_study(tmp_path, study):
    frame, truth = study
    target = write_study(frame, truth, tmp_path / "study.parquet")
    assert target == tmp_path / "study.truth.json" == truth_path(tmp_path / "study.parquet")
    stored = json.loads(target.read_text())
    assert stored["delta"] == {"-2": 0.0, "-1": 0.0, "0": 0.32, "1": 0.41, "2": 0.49,
                               "3": 0.65, "4": 0.81, "5": 0.82}
    assert stored["seed"] == DEFAULT_SEED
    assert set(stored["coefficients"]) == {
        "fsm", "idaci", "male", "sen[school_action]", "sen[school_action_plus]",
        "sen[statemented]", "non_white_british", "ks2"}
    assert stored["var_school"] == pytest.approx(
        stored["sd_school"] ** 2 + stored["sd_school_cohort"] ** 2)
    assert set(stored["implied"]) == {str(k) for k in range(-2, 6)}
    assert set(stored["cohort_effects"]) == {str(y) for y in range(2002, 2014)}


def test_pre_trend_sets_the_leads():
    config = SimConfig(pre_trend=0.1)
    assert config.delta() == {-2: 0.2, -1: 0.1, 0: 0.32, 1: 0.41, 2: 0.49, 3: 0.65, 4: 0.81,
                              5: 0.82}


def test_pre_trend_shows_in_the_data():
    """With a large lead, federated pupils two years before founding score higher."""
    frame, _ = simulate(SimConfig(pre_trend=3.0, n_federations=60), seed=1)
    before = frame[frame["years_since"] == -2]
    gap = before.groupby("federated")["gcse_score"].mean()
    assert gap[1] - gap[0] > 3.0


def test_invalid_config_is_a_bayesfed_error():
    with pytest.raises(BayesfedError, match="effect has 2 values"):
        SimConfig(effect=(0.1, 0.2))
    with pytest.raises(BayesfedError, match="first_founding"):
        SimConfig(first_founding=2010, last_founding=2008)


def test_type_counts_follow_table_2():
    assert type_counts(31, SimConfig().typology) == [12, 4, 10, 5]
    assert sum(type_counts(1266, SimConfig().typology)) == 1266


def test_shipped_study_matches_the_generator(tmp_path):
    frame, truth = simulate(SimConfig(), seed=DEFAULT_SEED)
    write_study(frame, truth, tmp_path / "fresh.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(SHIPPED),
                                  pd.read_parquet(tmp_path / "fresh.parquet"))
    shipped = json.loads(truth_path(SHIPPED).read_text())
    fresh = json.loads((tmp_path / "fresh.truth.json").read_text())
    shipped.pop("bayesfed_version")
    fresh.pop("bayesfed_version")
    assert shipped == fresh
    assert SHIPPED.stat().st_size < 3_000_000


@pytest.mark.slow
def test_national_scale_is_fast_and_large():
    start = time.perf_counter()
    frame, truth = simulate(SimConfig.national(), seed=1)
    seconds = time.perf_counter() - start
    assert frame["school_id"].nunique() == pytest.approx(3000, rel=0.05)
    assert len(frame) == pytest.approx(4_500_000, rel=0.05)
    assert frame["cohort"].groupby(frame["school_id"]).nunique().eq(8).all()
    assert seconds < 60
    assert set(truth["implied"]) == {str(k) for k in range(-2, 6)}


def treated_pupils(frame: pd.DataFrame) -> pd.DataFrame:
    """The federated pupils from founding on, as the ATT averages over them."""
    return frame[(frame["federated"] == 1) & (frame["years_since"] >= 0)]


@pytest.mark.parametrize("knob", KNOBS)
def test_each_knob_at_zero_gives_the_default_study(study, knob):
    frame, truth = simulate(SimConfig(**{knob: 0.0}), seed=DEFAULT_SEED)
    pd.testing.assert_frame_equal(frame, study[0])
    assert truth == study[1]
    assert truth["federation_deviations"] == {}


@pytest.mark.parametrize(("knob", "value"), [("cohort_slope", 0.12), ("calendar_trend", 0.05),
                                             ("shock_ar", 0.6), ("sd_federation_effect", 0.3),
                                             ("sd_ks2_slope", 0.8), ("sd_log_sigma", 0.3)])
def test_a_knob_changes_only_the_outcome(study, knob, value):
    """Same pupils and predictors: each knob's draws (if any) come after the default ones."""
    frame, truth = simulate(SimConfig(**{knob: value}), seed=DEFAULT_SEED)
    other = [c for c in COLUMNS if c != "gcse_score"]
    pd.testing.assert_frame_equal(frame[other], study[0][other])
    change = frame["gcse_score"] - study[0]["gcse_score"]
    treated = (frame["federated"] == 1) & (frame["years_since"] >= 0)
    k, e = frame["years_since"], frame["founding_year"]
    expected = {
        "cohort_slope": treated * value * (e - E_MID) * k,
        "calendar_trend": value * (frame["cohort"] - T_FIRST),
        "sd_federation_effect": treated * frame["federation_id"].map(
            truth["federation_deviations"]).fillna(0.0),
        "sd_ks2_slope": frame["ks2"] * frame["school_id"].map(truth["ks2_slopes"]),
    }.get(knob)
    if knob == "sd_log_sigma":  # each school's pupil residuals scaled by exp(omega_j)
        omega = pd.Series(truth["log_sigma_deviations"])
        assert omega.std() == pytest.approx(value, rel=0.25)
        # the change in a school's within-school sd follows its omega_j
        sd = {name: f.groupby("school_id")["gcse_score"].std()
              for name, f in (("new", frame), ("old", study[0]))}
        ratio = np.log(sd["new"] / sd["old"])
        assert np.corrcoef(ratio[omega.index], omega)[0, 1] > 0.9
    elif expected is None:  # shock_ar: every school's shocks change, pupil residuals do not
        assert change.abs().max() > 0.1
    else:
        assert (change - expected).abs().max() <= 0.01 + 1e-9
        assert change.abs().max() > 0.1


def test_att_without_knobs_is_the_effect(study):
    frame, truth = study
    att = truth["att"]
    cohorts = sorted(str(e) for e in frame["founding_year"].unique())
    assert sorted(att["by_cohort"]) == cohorts
    for e in cohorts:
        assert att["by_cohort"][e] == {str(k): v for k, v in enumerate(EFFECT)}
    for name in ("pupils", "federations"):
        assert att[name] == {str(k): v for k, v in enumerate(EFFECT)}
        assert att["average"][name] == pytest.approx(np.mean(EFFECT), abs=1e-12)
        for k, weights in att["weights"][name].items():
            assert sorted(weights) == cohorts
            assert sum(weights.values()) == pytest.approx(1.0, abs=1e-12), (name, k)
    assert att["leads"] == {"-2": 0.0}
    counts = treated_pupils(frame).groupby(["years_since", "founding_year"]).size()
    for (k, e), n in counts.items():
        assert att["weights"]["pupils"][str(k)][str(e)] == pytest.approx(
            n / counts[k].sum(), abs=1e-12)


def test_att_with_a_cohort_slope():
    slope = 0.12
    frame, truth = simulate(SimConfig(cohort_slope=slope), seed=DEFAULT_SEED)
    att = truth["att"]
    for e, by_year in att["by_cohort"].items():
        assert set(by_year) == {str(k) for k in range(6)}
        for k, value in by_year.items():
            assert value - EFFECT[int(k)] == pytest.approx(
                slope * (int(e) - E_MID) * int(k), abs=1e-12), (e, k)
    counts = treated_pupils(frame).groupby(["years_since", "founding_year"]).size()
    for k in range(6):
        n = counts[k]
        by_hand = (n * (EFFECT[k] + slope * (n.index - E_MID) * k)).sum() / n.sum()
        assert att["pupils"][str(k)] == pytest.approx(by_hand, abs=1e-12), k
    assert att["pupils"]["0"] == pytest.approx(EFFECT[0], abs=1e-12)
    assert att["pupils"]["5"] != pytest.approx(att["federations"]["5"], abs=1e-4)


def test_att_with_federation_deviations():
    frame, truth = simulate(SimConfig(sd_federation_effect=0.3), seed=DEFAULT_SEED)
    deviations, att = truth["federation_deviations"], truth["att"]
    treated = treated_pupils(frame)
    assert set(deviations) == set(treated["federation_id"])
    assert np.std(list(deviations.values())) == pytest.approx(0.3, rel=0.5)
    effect = (treated["years_since"].map(dict(enumerate(EFFECT)))
              + treated["federation_id"].map(deviations))
    by_cohort = effect.groupby([treated["founding_year"], treated["years_since"]]).mean()
    for (e, k), value in by_cohort.items():
        assert att["by_cohort"][str(e)][str(k)] == pytest.approx(value, abs=1e-12), (e, k)
    per_federation = effect.groupby([treated["years_since"], treated["federation_id"]]).mean()
    for k in range(6):
        assert att["pupils"][str(k)] == pytest.approx(
            effect[treated["years_since"] == k].mean(), abs=1e-12)
        assert att["federations"][str(k)] == pytest.approx(per_federation[k].mean(), abs=1e-12)
    differences = [att["pupils"][str(k)] - att["federations"][str(k)] for k in range(6)]
    assert max(map(abs, differences)) > 1e-3


def test_ar1_shocks_of_standard_normals():
    rng = np.random.default_rng(0)
    school = np.repeat(np.arange(30_000), rng.integers(1, 9, size=30_000))
    z = rng.standard_normal(school.size)
    np.testing.assert_array_equal(ar1_shocks(z, school, 0.0, 0.7), 0.7 * z)
    shock = ar1_shocks(z, school, 0.6, 0.7)
    first = np.r_[True, school[1:] != school[:-1]]
    np.testing.assert_array_equal(shock[first], 0.7 * z[first])  # each school starts afresh
    later = np.flatnonzero(~first)
    assert np.corrcoef(shock[later], shock[later - 1])[0, 1] == pytest.approx(0.6, abs=0.03)
    assert shock.std() == pytest.approx(0.7, rel=0.03)
    assert shock[later].std() == pytest.approx(0.7, rel=0.03)


def test_shock_ar_study_keeps_the_implied_variances(study):
    _, truth = simulate(SimConfig(shock_ar=0.6), seed=DEFAULT_SEED)
    assert truth["implied"] == study[1]["implied"]
    assert truth["att"] == study[1]["att"]


def test_calendar_trend_adds_to_the_cohort_effects(study):
    trend = 0.05
    _, truth = simulate(SimConfig(calendar_trend=trend), seed=DEFAULT_SEED)
    base = study[1]["cohort_effects"]
    assert min(map(int, base)) == T_FIRST and set(truth["cohort_effects"]) == set(base)
    for t, value in truth["cohort_effects"].items():
        assert value == base[t] + trend * (int(t) - T_FIRST), t
    assert truth["att"] == study[1]["att"]


def test_scenario_truth_is_json_ready(tmp_path):
    config = SimConfig(cohort_slope=0.1, calendar_trend=0.05, shock_ar=0.5,
                       sd_federation_effect=0.2, pre_trend=0.1)
    frame, truth = simulate(config, seed=3)
    stored = json.loads(write_study(frame, truth, tmp_path / "s.parquet").read_text())
    for knob in KNOBS:
        assert stored["config"][knob] == getattr(config, knob)
    assert set(stored["att"]) == {"by_cohort", "pupils", "federations", "weights", "average",
                                  "leads"}
    assert stored["att"]["leads"] == {"-2": pytest.approx(0.1)}
    assert len(stored["federation_deviations"]) == 31


@pytest.mark.parametrize("value", [1.0, -1.0, float("nan")])
def test_invalid_shock_ar_is_a_bayesfed_error(value):
    with pytest.raises(BayesfedError, match="shock_ar"):
        SimConfig(shock_ar=value)


def test_negative_sd_federation_effect_is_a_bayesfed_error():
    with pytest.raises(BayesfedError, match="sd_federation_effect"):
        SimConfig(sd_federation_effect=-0.1)


def test_ks2_slopes_have_their_sd_and_correlation_and_show_in_the_data():
    """Schools' KS2 slopes: sd and correlation with the intercept as configured (62 schools:
    loose bounds), and each school's own least-squares KS2 slope follows its true one."""
    config = SimConfig(sd_ks2_slope=1.5, cor_ks2_slope=0.6)
    frame, truth = simulate(config, seed=DEFAULT_SEED)
    slopes = pd.Series(truth["ks2_slopes"])
    assert slopes.std() == pytest.approx(1.5, rel=0.25)
    assert truth["config"]["sd_ks2_slope"] == 1.5 and truth["config"]["cor_ks2_slope"] == 0.6
    # the school means of the outcome rise with the intercept, and so with the slope
    means = frame.groupby("school_id")["gcse_score"].mean()
    assert np.corrcoef(means[slopes.index], slopes)[0, 1] > 0.2
    within = frame.groupby("school_id")[["gcse_score", "ks2"]].apply(
        lambda d: np.polyfit(d["ks2"], d["gcse_score"], 1)[0])
    assert np.corrcoef(within[slopes.index], slopes)[0, 1] > 0.6  # 0.79 with this seed


@pytest.mark.parametrize(("key", "value"), [("sd_ks2_slope", -0.1), ("cor_ks2_slope", 1.0),
                                            ("sd_log_sigma", -0.1), ("cor_log_sigma", -1.0)])
def test_invalid_ks2_slope_knobs_are_bayesfed_errors(key, value):
    with pytest.raises(BayesfedError, match=key):
        SimConfig(**{key: value})
