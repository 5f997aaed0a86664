"""The transcription of the paper's Tables 2-5 against values typed from the paper by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bayesfed.errors import BayesfedError
from bayesfed.inputs.published import PublishedValueError, load_published, published_value

# (table, year, term, estimate, se), each typed from the printed paper.
HAND_TYPED = [
    (3, 0, "intercept", 3.84, 0.21),  # Table 3, Constant, Year of foundation
    (3, 1, "intercept", 4.85, 0.40),  # Table 3, Constant, Year 1
    (3, 4, "vpc_school", 19.7, None),  # Table 3, Percentage variance level 2, Year 4
    (4, 0, "fsm", -0.82, 0.08),  # Table 4, Eligible for FSM, Year of foundation
    (4, 5, "idaci", -4.10, 0.24),  # Table 4, IDACI score, Year 5
    (4, 1, "male", -0.41, 0.20),  # Table 4, Male, Year 1
    (4, 4, "sen[statemented]", -4.36, 0.29),  # Table 4, Statemented, Year 4
    (4, 2, "ks2", 4.82, 0.95),  # Table 4, Prior attainment at KS2, Year 2
    (4, 2, "prv_school", 37.7, None),  # Table 4, Variance explained Level 2, Year 2
    (5, 3, "sen[school_action_plus]", -3.24, 0.18),  # Table 5, School Action Plus, Year 3
    (5, 2, "federated", 0.49, 0.240),  # Table 5, Federation, Year 2
    (5, 5, "federated", 0.816, 0.334),  # Table 5, Federation, Year 5
    (5, 0, "non_white_british", -0.10, 0.55),  # Table 5, Non-White British, Year of foundation
    (5, 5, "prv_school", 22.3, None),  # Table 5, Variance explained Level 2, Year 5
]


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return load_published()


@pytest.mark.parametrize(("table", "year", "term", "estimate", "se"), HAND_TYPED)
def test_hand_typed_values(table, year, term, estimate, se):
    got_estimate, got_se = published_value(table, year, term)
    assert got_estimate == pytest.approx(estimate)
    if se is None:
        assert got_se is None
    else:
        assert got_se == pytest.approx(se)


def test_table2_values_need_model():
    # Table 2, Size: Sample total 18.8, Rural sample 32.2.
    assert published_value(2, None, "size", model="typology_all") == (18.8, None)
    assert published_value(2, None, "size", model="typology_rural") == (32.2, None)
    with pytest.raises(PublishedValueError, match="pass model="):
        published_value(2, None, "size")


def test_bold_marks_match_paper(published):
    def bold(table, year, term):
        row = published[
            (published["table"] == table) & (published["year"] == year)
            & (published["term"] == term)
        ]
        return bool(row["bold"].item())

    assert bold(4, 1, "male")  # Table 4, Male, Year 1: bold
    assert not bold(4, 2, "male")  # Table 4, Male, Year 2: not bold
    assert bold(5, 0, "male")  # Table 5, Male, Year of foundation: bold (sic)
    assert not bold(5, 1, "federated")  # Table 5, Federation, Year 1: not bold
    assert bold(5, 2, "federated")  # Table 5, Federation, Year 2: bold


def test_row_counts(published):
    counts = published.groupby("table").size().to_dict()
    assert counts == {2: 12, 3: 18, 4: 66, 5: 72}
    models = published.groupby("table")["model"].unique().map(sorted).to_dict()
    assert models == {
        2: ["typology_all", "typology_rural"], 3: ["M0"], 4: ["M1"], 5: ["M2"],
    }
    for table in (3, 4, 5):
        years = published.loc[published["table"] == table, "year"]
        assert sorted(years.unique()) == list(range(6))
    assert published.loc[published["table"] == 2, "year"].isna().all()


def test_each_year_has_the_papers_terms(published):
    coefs = ["intercept", "fsm", "idaci", "male", "sen[school_action]",
             "sen[school_action_plus]", "sen[statemented]", "non_white_british", "ks2"]
    expected = {
        3: {"intercept", "vpc_school", "vpc_pupil"},
        4: {*coefs, "prv_school", "prv_pupil"},
        5: {*coefs, "federated", "prv_school", "prv_pupil"},
    }
    for (table, _year), terms in published[published["table"] > 2].groupby(["table", "year"]):
        assert set(terms["term"]) == expected[table]
        assert terms["term"].is_unique


def test_variance_partition_sums_to_100(published):
    t3 = published[published["table"] == 3].pivot(index="year", columns="term", values="estimate")
    assert len(t3) == 6
    for total in t3["vpc_school"] + t3["vpc_pupil"]:
        assert total == pytest.approx(100.0, abs=0.1)


def test_coefficient_rows_have_se_and_bold(published):
    coef = published[published["unit"] == "coefficient"]
    assert len(coef) == 6 * (1 + 9 + 10)
    assert coef["se"].notna().all() and (coef["se"] > 0).all()
    assert coef["bold"].notna().all()
    pct = published[published["unit"] == "percent"]
    assert set(coef.index) | set(pct.index) == set(published.index)
    assert pct["se"].isna().all() and pct["bold"].isna().all()


def test_table2_rural_shares_sum_to_100(published):
    rural = published[published["model"] == "typology_rural"]
    assert set(rural["term"]) == {
        "cross_phase", "performance", "size", "mainstreaming", "faith", "academy_chain",
    }
    assert math.isclose(rural["estimate"].sum(), 100.0, abs_tol=0.2)


def test_missing_value_is_a_clear_key_error():
    with pytest.raises(KeyError, match="no published value for table 3, year 0, term 'fsm'"):
        published_value(3, 0, "fsm")


def test_missing_file_is_a_bayesfed_error(tmp_path):
    with pytest.raises(BayesfedError, match="published tables not found"):
        load_published(tmp_path / "absent.csv")
