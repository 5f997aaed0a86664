"""Model specifications: every shipped spec loads; bad specs fail with exact messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bayesfed.errors import SpecError
from bayesfed.inputs.spec import load_spec, spec_from_dict

MODELS = Path(__file__).resolve().parents[2] / "models"
BASE = {"model": {"name": "X"}}


def error(data: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec_from_dict(data, source="s.toml")
    head, *lines = str(info.value).splitlines()
    assert head == "model specification s.toml is invalid:"
    return [line.removeprefix("  - ") for line in lines]


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path):
    spec = load_spec(path)
    assert spec.column("outcome") == "gcse_score"
    assert spec.column("school") == "school_id"


def test_paper_models_are_nested():
    m0, m1, m2 = (load_spec(MODELS / f) for f in
                  ("m0_empty.toml", "m1_pupil.toml", "m2_federation.toml"))
    assert (m0.name, m1.name, m2.name) == ("M0", "M1", "M2")
    assert m1.model.reference == "M0" and m2.model.reference == "M1"
    assert m0.terms == []
    assert m1.terms == ["fsm", "idaci", "male", "sen", "non_white_british", "ks2"]
    assert m2.terms == [*m1.terms, "federated"] and m2.predictors.school == ["federated"]
    assert m2.categorical_coding()["sen"] == (
        ("none", "school_action", "school_action_plus", "statemented"), "none")


def test_unknown_keys_suggest_the_closest():
    assert error({"model": {"name": "X", "famly": "two_level"}}) == [
        "unknown key 'model.famly' (did you mean 'family'?)"]
    assert error({**BASE, "predictor": {}}) == ["unknown key 'predictor' (did you mean "
                                                "'predictors'?)"]
    assert error({**BASE, "columns": {"outcom": "y"}}) == [
        "columns.outcom: not a role or predictor (did you mean 'outcome'?)"]


def test_wrong_types_and_values():
    assert error({"model": {"name": "X", "family": "three_level"}}) == [
        "model.family: Input should be 'two_level' or 'event_time' (got 'three_level')"]
    assert error({**BASE, "predictors": {"pupil": "fsm"}}) == [
        "predictors.pupil: Input should be a valid list (got 'fsm')"]
    assert error({**BASE, "priors": {"sigma": {"sigma": -1.0}}}) == [
        "priors.sigma.sigma: Input should be greater than 0 (got -1.0)"]
    assert error({**BASE, "priors": {"sd_school": {"sigma": "2"}}}) == [
        "priors.sd_school.sigma: Input should be a valid number (got '2')"]
    assert error({"model": {}}) == ["model.name: Field required"]


def test_inconsistent_choices():
    assert error({**BASE, "predictors": {"pupil": ["sen"]},
                  "categorical": {"sen": {"levels": ["a", "b"], "reference": "c"}}}) == [
        "categorical.sen: reference 'c' is not one of levels ['a', 'b']"]
    assert error({**BASE, "priors": {"slope": {"fsm": {"sigma": 1.0}}}}) == [
        "(top level): priors.slope.fsm names no predictor (predictors: [])"]
    assert error({**BASE, "predictors": {"pupil": ["fsm"], "school": ["fsm"]}}) == [
        "(top level): predictors listed twice: ['fsm']"]


def test_schema_category_gets_default_coding():
    spec = spec_from_dict({**BASE, "predictors": {"pupil": ["sen"]}})
    assert spec.categorical_coding() == {
        "sen": (("none", "school_action", "school_action_plus", "statemented"), "none")}


def test_file_errors(tmp_path):
    with pytest.raises(SpecError, match=r"^cannot read model specification .*nope.toml: "):
        load_spec(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1\n")
    with pytest.raises(SpecError, match=r"^model specification .*bad.toml is not valid TOML: "):
        load_spec(bad)


def test_event_section_only_for_event_time_models():
    base = {"model": {"name": "E", "family": "event_time"},
            "predictors": {"pupil": ["fsm"]}}
    spec = spec_from_dict(base)
    assert spec.event_options.leads == "all" and spec.event_options.years_after == 5
    assert spec.event_options.effect_prior == "random_walk"
    assert spec.event_options.design == "stacked" and spec.event_options.shocks == "ar1"
    assert spec.event_options.deviations and spec.event_options.weights == "pupils"
    with pytest.raises(SpecError) as err:
        spec_from_dict({**base, "event": {"leads": [-1]}})
    assert ('leads must be "all" or distinct years <= -2 (year -1 is the reference), got [-1]'
            in str(err.value))
    with pytest.raises(SpecError) as err:
        spec_from_dict({**base, "event": {"sensitivity": [-1.0]}})
    assert "sensitivity must list values of M >= 0, got [-1.0]" in str(err.value)
    with pytest.raises(SpecError) as err:
        spec_from_dict({**base, "event": {"effect_prior": "spline"}})
    assert "event.effect_prior" in str(err.value)
    with pytest.raises(SpecError) as err:
        spec_from_dict({**base, "predictors": {"school": ["federated"]}})
    assert "an event_time model takes no school-level predictors" in str(err.value)
    with pytest.raises(SpecError) as err:
        spec_from_dict({"model": {"name": "M"}, "event": {"years_after": 3}})
    assert '[event] applies to family = "event_time" only' in str(err.value)
    with pytest.raises(SpecError) as err:
        spec_from_dict({**base, "event": {"type_effect": True}})
    assert "did you mean 'type_effects'" in str(err.value)


def test_random_slopes_of_pupil_level_numeric_predictors():
    spec = spec_from_dict({**BASE, "predictors": {"pupil": ["fsm", "ks2"]},
                           "random": {"slopes": ["ks2"]}})
    assert spec.random.slopes == ["ks2"]
    assert spec_from_dict(BASE).random.slopes == []
    pupil = {"pupil": ["fsm", "ks2", "sen"], "school": ["federated"]}
    assert error({**BASE, "predictors": pupil, "random": {"slopes": ["federated"]}}) == [
        "(top level): random.slopes: 'federated' is not a pupil-level predictor (pupil: "
        "['fsm', 'ks2', 'sen']); a school-level one cannot vary within a school"]
    assert error({**BASE, "predictors": pupil, "random": {"slopes": ["sen"]}}) == [
        "(top level): random.slopes: 'sen' is categorical; random slopes of numeric "
        "predictors only"]
    assert error({**BASE, "predictors": pupil, "random": {"slopes": ["ks2", "ks2"]}}) == [
        "(top level): random.slopes lists a predictor twice: ['ks2', 'ks2']"]
    assert error({"model": {"name": "X", "likelihood": "pupil_rows"}, "predictors": pupil,
                  "random": {"slopes": ["ks2"]}}) == [
        "(top level): random.slopes needs likelihood = \"collapsed\" (the school effects are "
        "integrated out from the per-school statistics)"]
    assert error({"model": {"name": "X", "family": "event_time"},
                  "predictors": {"pupil": ["ks2"]}, "random": {"slopes": ["ks2"]}}) == [
        "(top level): random.slopes applies to family = \"two_level\" only"]


def test_a_residual_sd_by_school():
    spec = spec_from_dict({**BASE, "residual": {"by_school": True}})
    assert spec.residual.by_school and not spec_from_dict(BASE).residual.by_school
    assert error({**BASE, "residual": {"by_schools": True}}) == [
        "unknown key 'residual.by_schools' (did you mean 'by_school'?)"]
    assert error({"model": {"name": "X", "likelihood": "pupil_rows"},
                  "residual": {"by_school": True}}) == [
        "(top level): residual.by_school needs likelihood = \"collapsed\" (the school "
        "intercepts are integrated out from the per-school statistics)"]
    assert error({"model": {"name": "X", "family": "event_time"},
                  "residual": {"by_school": True}}) == [
        "(top level): residual.by_school applies to family = \"two_level\" only"]
    assert error({**BASE, "predictors": {"pupil": ["ks2"]}, "random": {"slopes": ["ks2"]},
                  "residual": {"by_school": True}}) == [
        "(top level): residual.by_school cannot be combined with random.slopes: fit them as "
        "two models and compare them (leave-one-school-out, the within-school sd checks)"]


def test_interactions_of_two_predictors():
    pred = {"pupil": ["fsm", "sen"], "school": ["federated"]}
    spec = spec_from_dict({**BASE, "predictors": {**pred, "interactions": [
        "fsm:federated", "sen:federated"]}})
    assert spec.pupil_terms == ["fsm", "sen", "fsm:federated", "sen:federated"]
    assert spec.school_terms == ["federated"] and spec.terms == ["fsm", "sen", "federated"]
    assert error({**BASE, "predictors": {**pred, "interactions": ["fsm:ks2"]}}) == [
        "(top level): predictors.interactions: 'fsm:ks2' is not the product of two "
        "predictors, \"a:b\" (predictors: ['fsm', 'sen', 'federated'])"]
    assert error({**BASE, "predictors": {**pred, "interactions": [
        "fsm:federated", "federated:fsm"]}}) == [
        "(top level): predictors.interactions lists 'federated:fsm' twice"]
    assert error({"model": {"name": "X", "family": "event_time"},
                  "predictors": {"pupil": ["fsm", "ks2"], "interactions": ["fsm:ks2"]}}) == [
        "(top level): predictors.interactions applies to family = \"two_level\" only"]


def test_an_interaction_is_the_product_of_its_parts_columns():
    """``sen:federated`` is each non-reference SEN dummy times the federated dummy."""
    import pandas as pd

    from bayesfed.inputs.coding import term_columns, term_of

    frame = pd.DataFrame({"sen": ["none", "statemented", "school_action", "statemented"],
                          "federated": [1, 1, 0, 0]})
    coding = {"sen": (("none", "school_action", "statemented"), "none")}
    values, names = term_columns(frame, "sen:federated", coding)
    assert names == ["sen[school_action]:federated", "sen[statemented]:federated"]
    np.testing.assert_array_equal(values, [[0, 0], [0, 1], [0, 0], [0, 0]])
    assert term_of("sen[statemented]:federated") == "sen:federated"
    empty, _ = term_columns(frame.iloc[:0], "sen:federated", coding)
    assert empty.shape == (0, 2)
