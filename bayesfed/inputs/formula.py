"""A two-level model written as a formula, lme4/bambi style, turned into a specification.

``"gcse_score ~ fsm + idaci + male + C(sen) + non_white_british + ks2 + federated +
(1 | school_id)"`` is M2 of the paper: the outcome column on the left, predictor columns on
the right, a categorical one in ``C()``, and one school random intercept ``(1 | school)``, or
with random slopes of pupil-level predictors, ``(1 + ks2 | school)`` (``[random] slopes``).
The formula is parsed by `formulae <https://bambinos.github.io/formulae/>`_ (bambi's parser),
and the terms become a :class:`~bayesfed.inputs.spec.ModelSpec` of family ``two_level``: the same
model, validation and numbers as the TOML specification with the same terms and name
(``tests/test_api.py``). A predictor is school-level when its column's role is (``federated``);
a categorical role in ``C()`` gets the schema's levels, the first the reference, as a TOML
``[categorical]`` table would declare them. A product of two columns, ``fsm:federated`` (or
``fsm * federated``, which adds both main effects), is ``[predictors] interactions``; each part
must also be a main effect. A pupil sd by school (``[residual] by_school``) follows a
semicolon, as brms's distributional formula: ``"gcse_score ~ fsm + ks2 + (1 | school_id);
sigma ~ 1 + (1 | school_id)"``. What the two-level family cannot fit (products of three columns,
transformations, other groupings, a model without intercept) is refused with a
:class:`~bayesfed.errors.SpecError` saying so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from bayesfed.errors import SpecError
from bayesfed.inputs.schema import ROLES
from bayesfed.inputs.spec import ModelSpec, spec_from_dict

_CATEGORICAL = re.compile(r"^C\(\s*(\w+)\s*\)$")
#: A pupil sd by school after the formula (brms's distributional part, ``[residual]``).
_SCALE = re.compile(r"\s*sigma\s*~\s*1\s*\+\s*\(\s*1\s*\|\s*(\w+)\s*\)\s*")


def is_formula(text: object) -> bool:
    """Whether a model argument is a formula (a string with ``~``)."""
    return isinstance(text, str) and "~" in text


def spec_from_formula(formula: str, name: str = "formula",
                      columns: Mapping[str, str] | None = None) -> ModelSpec:
    """The ``two_level`` specification of a formula (module docstring).

    Parameters
    ----------
    formula : str
    name : str
        The model's name (fit files ``<name>_k<year>.nc``; each fit's seed derives from it).
    columns : mapping of str to str, optional
        Further roles -> columns (e.g. ``{"federation": "federation_id"}``); the formula's own
        outcome and school columns come first.

    Raises
    ------
    SpecError
        The formula cannot be parsed, or asks for what the two-level family does not fit.
    """
    import formulae
    from formulae.terms.terms import GroupSpecificTerm, Intercept, Term

    where = f"formula {formula!r}"
    formula, _, scale = formula.partition(";")
    by_school = bool(scale.strip())
    if by_school and not _SCALE.fullmatch(scale):
        raise SpecError(f"{where}: after ';' the two-level family takes a pupil sd by school, "
                        "sigma ~ 1 + (1 | school), and nothing else")
    try:
        model = formulae.model_description(formula)
    except Exception as exc:  # formulae's parse errors have several types
        raise SpecError(f"{where} cannot be parsed: {exc}") from None
    if model.response is None:
        raise SpecError(f"{where} has no outcome: write it left of ~")
    outcome = _variable(model.response.term, where, "the outcome")
    if not any(isinstance(t, Intercept) for t in model.common_terms):
        raise SpecError(f"{where} has no intercept: the two-level family always has one")
    groups = [t for t in model.group_terms if isinstance(t, GroupSpecificTerm)]
    factors = {_variable(g.factor, where, "the grouping factor") for g in groups}
    if (len(factors) != 1 or len(groups) != len(model.group_terms)
            or sum(isinstance(g.expr, Intercept) for g in groups) != 1):
        raise SpecError(f"{where}: the two-level family has one grouping, the school, with a "
                        "random intercept and optionally random slopes: (1 | school) or "
                        "(1 + ks2 | school)")
    school = factors.pop()
    if by_school and _SCALE.fullmatch(scale).group(1) != school:
        raise SpecError(f"{where}: sigma ~ 1 + (1 | {_SCALE.fullmatch(scale).group(1)}) must "
                        f"vary by the school, {school}")
    slopes = [_variable(g.expr, where, "a random slope") for g in groups
              if not isinstance(g.expr, Intercept)]
    pupil, school_level, interactions, categorical = [], [], [], {}
    for term in model.common_terms:
        if isinstance(term, Intercept):
            continue
        components = getattr(term, "components", [])
        if not isinstance(term, Term) or len(components) not in (1, 2):
            names = ":".join(str(c.name) for c in components)
            raise SpecError(f"{where}: term {names or term} is an interaction of more than two "
                            "columns; the two-level family takes main effects and products of "
                            "two")
        parts = [_column(str(c.name), where, categorical) for c in components]
        if len(parts) == 2:
            interactions.append(":".join(parts))
            continue
        role = ROLES.get(parts[0])
        (school_level if role is not None and role.level == "school" else pupil).append(parts[0])
    data = {"model": {"name": name, "family": "two_level",
                      "description": f"From the formula {formula}"},
            "columns": {**dict(columns or {}), "outcome": outcome, "school": school},
            "predictors": {"pupil": pupil, "school": school_level,
                           "interactions": interactions},
            "categorical": categorical,
            "random": {"slopes": slopes}, "residual": {"by_school": by_school}}
    return spec_from_dict(data, source=where)


def _column(text: str, where: str, categorical: dict) -> str:
    """The column of one formula component: ``ks2``, or ``C(sen)`` (its schema levels added
    to ``categorical``)."""
    match = _CATEGORICAL.match(text)
    if match:
        column = match.group(1)
        role = ROLES.get(column)
        if role is None or role.kind != "category":
            raise SpecError(f"{where}: C({column}): {column} is not a categorical column "
                            "of the schema; declare its levels in a TOML specification "
                            f"([categorical.{column}])")
        categorical[column] = {"levels": list(role.levels), "reference": role.levels[0]}
        return column
    if re.fullmatch(r"\w+", text):
        return text
    raise SpecError(f"{where}: term {text} transforms a column; add the transformed "
                    "column to the table instead")


def _variable(term, where: str, what: str) -> str:
    components = getattr(term, "components", [])
    if len(components) != 1 or not re.fullmatch(r"\w+", str(components[0].name)):
        raise SpecError(f"{where}: {what} must be one column, not {term}")
    return str(components[0].name)
