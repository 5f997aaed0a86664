"""The pupil-table schema: the roles a column can play, their types and allowed values.

One row is one pupil in one GCSE cohort. A model specification's ``[columns]`` table maps each
role (or any predictor name) to a column of the user's table; unmapped names are looked up as
columns of the same name. ``data/README.md`` is the human-readable version of this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["id", "numeric", "flag", "unit_interval", "year", "category", "label"]


@dataclass(frozen=True)
class Role:
    """One role a column can play.

    Attributes
    ----------
    name : str
        The role's name, as used in specs and in ``summary.json``.
    kind : Kind
        ``id`` (any hashable label), ``numeric`` (finite real), ``flag`` (0/1), ``unit_interval``
        (real in [0, 1]), ``year`` (integer calendar year or year offset), ``category`` (one of
        ``levels``), ``label`` (free text, blank allowed).
    level : {"pupil", "school"}
        ``school`` roles must be constant within a school.
    description : str
        Meaning and units.
    levels : tuple of str
        Allowed values of a ``category`` role.
    """

    name: str
    kind: Kind
    level: Literal["pupil", "school"]
    description: str
    levels: tuple[str, ...] = ()


SEN_LEVELS = ("none", "school_action", "school_action_plus", "statemented")

ROLES: dict[str, Role] = {
    r.name: r
    for r in (
        Role("pupil_id", "id", "pupil", "Pupil identifier, unique within a cohort."),
        Role("outcome", "numeric", "pupil", "GCSE attainment score (the paper's scale)."),
        Role("school", "id", "school", "School identifier (e.g. URN)."),
        Role("federation", "label", "school",
             "Federation identifier; blank when the school is not federated."),
        Role("federation_type", "label", "school",
             "Federation typology (cross_phase, performance, size, faith, ...); for a matched "
             "school, blank."),
        Role("federated", "flag", "school", "1 if the school belongs to a federation, else 0."),
        Role("cohort", "year", "pupil", "Calendar year of the pupil's GCSE exams."),
        Role("founding_year", "year", "school",
             "Founding year of the school's federation; for a matched non-federated school, the "
             "founding year of the federation it was matched to."),
        Role("years_since", "year", "pupil",
             "Years since founding = cohort - founding_year (derived when absent)."),
        Role("fsm", "flag", "pupil", "Eligible for free school meals (0/1)."),
        Role("idaci", "unit_interval", "pupil",
             "IDACI score of the pupil's home area: share of children in income-deprived "
             "households (0-1)."),
        Role("male", "flag", "pupil", "1 for boys, 0 for girls."),
        Role("sen", "category", "pupil",
             "Special educational needs provision (none < school_action < school_action_plus "
             "< statemented).", SEN_LEVELS),
        Role("non_white_british", "flag", "pupil", "1 if the pupil is not White British."),
        Role("ks2", "numeric", "pupil",
             "KS2 prior attainment: English and maths test marks as a share of the maximum, "
             "centred on the national mean (about -0.6 to 0.4)."),
    )
}

#: The paper's pupil predictors, in the order of its Table 4.
PAPER_PREDICTORS = ("fsm", "idaci", "male", "sen", "non_white_british", "ks2")

#: Roles whose columns are needed by any model that selects years since founding.
YEAR_ROLES = ("cohort", "founding_year")
