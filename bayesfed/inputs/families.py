"""The kinds of model bayesfed fits, and what the stages need to know of each: the one table
every stage dispatches through (:data:`KINDS`), instead of comparing family names.

A specification's kind is its family and, for ``event_time``, its design
(:attr:`bayesfed.inputs.spec.ModelSpec.kind`); a fit file or a ``summary.json`` entry records
both (``bayesfed_family``/``bayesfed_design``; ``family``/``design``), so :func:`kind_of`
finds the kind of any of them. The behaviour of each kind (its fitter, its summary, its
report section) is looked up by :attr:`Kind.name` in the stage that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """What the stages need to know of one kind of model.

    Attributes
    ----------
    name : str
        ``two_level``, ``event_stacked`` or ``event_pooled``.
    family : str
        The specification's ``[model] family``.
    design : str or None
        The event-time design (``[event] design``); None for the two-level family.
    per_year : bool
        One fit per selected year since founding (the paper's models), or one joint fit of
        every founding cohort (year None).
    roles : tuple of str
        Roles the kind needs besides the outcome, the school and the predictors.
    estimand : str or None
        What its year-by-year federation effect is: ``ATT(k)`` (pupil- or federation-weighted
        average of the founding cohorts' effects), ``delta(k)`` (one pooled effect a year), or
        None (the per-year models' federation coefficient).
    by_cohort : bool
        Effects by founding cohort, ATT(e,k), with their weights and the sensitivity analysis.
    """

    name: str
    family: str
    design: str | None
    per_year: bool
    roles: tuple[str, ...] = ()
    estimand: str | None = None
    by_cohort: bool = False

    @property
    def joint(self) -> bool:
        """One fit of every cohort (the event-time family)."""
        return not self.per_year


#: Every kind, by name.
KINDS: Mapping[str, Kind] = {
    "two_level": Kind("two_level", "two_level", None, per_year=True),
    "event_stacked": Kind("event_stacked", "event_time", "stacked", per_year=False,
                          roles=("federated", "cohort"), estimand="ATT(k)", by_cohort=True),
    "event_pooled": Kind("event_pooled", "event_time", "pooled", per_year=False,
                         roles=("federated", "cohort"), estimand="delta(k)"),
}

#: The kind of each (family, design) pair.
_BY_FAMILY = {(k.family, k.design): k for k in KINDS.values()}


def kind_of(family: str | None, design: str | None = None) -> Kind:
    """The kind of a family and design as a fit file or ``summary.json`` records them (family
    absent: ``two_level``; an event-time fit without a design: ``pooled``, the only design of
    files written before the stacked one)."""
    family = family or "two_level"
    if family == KINDS["two_level"].family:
        return KINDS["two_level"]
    return _BY_FAMILY[(family, design or "pooled")]


def fit_kind(fit: Mapping[str, object]) -> Kind:
    """The kind of one fit's entry of ``summary.json``."""
    return kind_of(fit.get("family"), fit.get("design"))  # type: ignore[arg-type]


def tree_kind(attrs: Mapping[str, object]) -> Kind:
    """The kind of a fit from its DataTree's root attributes."""
    return kind_of(attrs.get("bayesfed_family"), attrs.get("bayesfed_design"))  # type: ignore[arg-type]
