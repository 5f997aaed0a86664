"""The synthetic study generator: determinism, structure, the shipped file, national scale."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesfed.errors import BayesfedError
from bayesfed.schema import SEN_LEVELS
from bayesfed.simulate import (
    DEFAULT_SEED,
    SimConfig,
    simulate,
    truth_path,
    type_counts,
    write_study,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "data" / "synthetic_study.parquet"
COLUMNS = ["pupil_id", "school_id", "federation_id", "federation_type", "federated", "cohort",
           "founding_year", "years_since", "gcse_score", "fsm", "idaci", "male", "sen",
           "non_white_british", "ks2"]


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
