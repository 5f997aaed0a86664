"""Model specifications: one TOML file a model in ``models/`` -> a validated ``ModelSpec``.

A spec is data, never code: it names the model, its family, the column mapping, the
predictors, categorical coding and prior overrides. Unknown keys, wrong types and
inconsistent choices are reported as one :class:`~bayesfed.errors.SpecError` naming the file,
the key and (for a misspelt key) the closest valid one.

Example (``models/m1_pupil.toml``)::

    [model]
    name = "M1"
    family = "two_level"
    reference = "M0"

    [columns]
    outcome = "gcse_score"
    school = "school_id"

    [predictors]
    pupil = ["fsm", "idaci", "male", "sen", "non_white_british", "ks2"]

    [categorical.sen]
    levels = ["none", "school_action", "school_action_plus", "statemented"]
    reference = "none"
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bayesfed.errors import SpecError
from bayesfed.inputs.families import Kind, kind_of
from bayesfed.inputs.schema import ROLES

#: ``two_level``: one fit per year since founding (the paper's models,
#: :mod:`bayesfed.modelling.two_level`); ``event_time``: one fit of every cohort at once
#: (:mod:`bayesfed.modelling.event_pooled`).
Family = Literal["two_level", "event_time"]


class _Strict(BaseModel):
    # allow_inf_nan: an infinite or NaN prior would only fail inside the sampler
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelSection(_Strict):
    """``[model]``: what the model is called and what it is compared with."""

    name: str = Field(min_length=1)
    family: Family = "two_level"
    #: ``collapsed``: school intercepts integrated out, likelihood from per-school statistics
    #: (:func:`bayesfed.modelling.two_level.build_two_level_collapsed`); ``pupil_rows``: the
    #: readable reference with one likelihood term per pupil
    #: (:func:`bayesfed.modelling.two_level.build_two_level`). Both are the same model;
    #: ``event_time`` models are always collapsed.
    likelihood: Literal["collapsed", "pupil_rows"] = "collapsed"
    description: str = ""
    reference: str | None = None


class Predictors(_Strict):
    """``[predictors]``: pupil-level and school-level terms, in reporting order."""

    pupil: list[str] = Field(default_factory=list)
    school: list[str] = Field(default_factory=list)
    #: ``"none"`` (default): pupil-level terms as they are, the paper's models; ``"within"``:
    #: each pupil-level column centred at its school mean (its within-school slope), as
    #: :mod:`bayesfed.design.centring` does.
    centre: Literal["none", "within"] = "none"
    #: Pupil-level terms whose school means enter too, as school-level terms named
    #: ``school_mean(<column>)`` (their contextual, between-school, effects).
    contextual: list[str] = Field(default_factory=list)
    #: Products of two predictors, ``"fsm:federated"``: a cross-level interaction when one is
    #: pupil-level and the other school-level (does federation narrow the FSM gap?). Each
    #: part must be a predictor; a categorical part gives one column per level. Coded after
    #: the pupil-level terms (after the school-level ones when both parts are school-level).
    interactions: list[str] = Field(default_factory=list)


class Categorical(_Strict):
    """``[categorical.TERM]``: the allowed levels of a categorical term and its reference."""

    levels: list[str] = Field(min_length=2)
    reference: str

    @model_validator(mode="after")
    def _reference_is_a_level(self) -> Categorical:
        if self.reference not in self.levels:
            raise ValueError(
                f"reference {self.reference!r} is not one of levels {list(self.levels)}")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError("levels must be distinct")
        return self


class RandomSection(_Strict):
    """``[random]``: what varies by school besides the intercept.

    Attributes
    ----------
    slopes : list of str
        Pupil-level numeric predictors whose coefficient varies by school, correlated with the
        school intercept (lme4's ``(1 + ks2 | school)``;
        :mod:`bayesfed.modelling.random_slopes`). Empty (random intercepts only) by default.
    """

    slopes: list[str] = Field(default_factory=list)


class ResidualSection(_Strict):
    """``[residual]``: the pupil-level residual.

    Attributes
    ----------
    by_school : bool
        Each school its own residual sd, log-normal around the median school's and correlated
        with the school intercept (a mixed-effects location-scale model; brms's
        ``sigma ~ 1 + (1 | p | school)``; :mod:`bayesfed.modelling.location_scale`). False (one
        residual sd) by default.
    """

    by_school: bool = False


class NormalPrior(_Strict):
    """Normal(mu, sigma) prior; either value may be left to the data-scaled default."""

    mu: float | None = None
    sigma: float | None = Field(default=None, gt=0)


class HalfNormalPrior(_Strict):
    """HalfNormal(sigma) prior for a standard deviation, in outcome units."""

    sigma: float = Field(gt=0)


class Priors(_Strict):
    """``[priors]``: overrides of the data-scaled default priors (see
    ``bayesfed.modelling.priors``)."""

    intercept: NormalPrior | None = None
    slopes: NormalPrior | None = None
    slope: dict[str, NormalPrior] = Field(default_factory=dict)
    sd_school: HalfNormalPrior | None = None
    sd_cell: HalfNormalPrior | None = None
    sigma: HalfNormalPrior | None = None
    #: Sd of the Normal(0, .) prior of the federation effect, in units of the outcome's sd:
    #: per-year ``federated`` coefficients and the event-time effects, leads and gaps
    #: (default :data:`bayesfed.modelling.priors.EFFECT_SD`).
    effect_sd: float | None = Field(default=None, gt=0)


class EventSection(_Strict):
    """``[event]``: the design, years, effect prior and heterogeneity of an ``event_time``
    model (:mod:`bayesfed.modelling.event_stacked`, or :mod:`bayesfed.modelling.event_pooled` for
    ``"pooled"``).

    Attributes
    ----------
    design : {"stacked", "pooled"}
        ``"stacked"`` (default): federated schools are compared with the schools of their own
        founding cohort in the same calendar year (founding-cohort x year effects), with
        effects by founding cohort partially pooled, so the year-by-year effects stay right
        when effects differ by cohort. ``"pooled"``: the earlier model, one effect per year
        since founding pooled over cohorts with calendar-year effects shared by all schools;
        kept for comparison.
    leads : "all" or list of int
        Years before founding with a placebo ("lead") term, each <= -2; year -1 is the
        reference. ``"all"`` (default): every such year the data have.
    years_after : int
        Effects are estimated for years since founding 0..``years_after``. Default 5.
    effect_prior : {"random_walk", "independent"}
        Prior of the effects: a random walk with a learned step sd (neighbouring years borrow
        strength), or independent Normals.
    shocks : {"ar1", "iid"}
        School-by-cohort shocks: AR(1)-correlated over a school's calendar years (default), or
        independent. ``"stacked"`` only.
    federation_deviations : bool, optional
        Federation-level random deviations of the effect (federation is the unit that is
        treated; needs the ``federation`` role). Default: on for ``"stacked"``, off for
        ``"pooled"``.
    type_effects : bool
        Add partially pooled effects of the federation type (needs ``federation_type``).
        ``"pooled"`` only.
    weights : {"pupils", "federations"}
        How the effects of founding cohorts are averaged into the effect by year since
        founding: by federated pupils (default) or by federations. ``"stacked"`` only.
    sensitivity : list of float
        The grid of M of the sensitivity analysis (post-founding trend violations bounded by
        M times the largest pre-founding one). ``"stacked"`` only.
    """

    design: Literal["stacked", "pooled"] = "stacked"
    leads: Literal["all"] | list[int] = "all"
    years_after: int = Field(default=5, ge=0)
    effect_prior: Literal["random_walk", "independent"] = "random_walk"
    shocks: Literal["ar1", "iid"] = "ar1"
    federation_deviations: bool | None = None
    type_effects: bool = False
    weights: Literal["pupils", "federations"] = "pupils"
    sensitivity: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.5,
                                                              2.0])

    @model_validator(mode="after")
    def _consistent(self) -> EventSection:
        if self.leads != "all" and (any(k > -2 for k in self.leads)
                                    or len(set(self.leads)) != len(self.leads)):
            raise ValueError(f"leads must be \"all\" or distinct years <= -2 (year -1 is the "
                             f"reference), got {list(self.leads)}")
        if any(m < 0 for m in self.sensitivity) or not self.sensitivity:
            raise ValueError(f"sensitivity must list values of M >= 0, got {self.sensitivity}")
        if self.design == "stacked" and self.type_effects:
            raise ValueError("type_effects applies to design = \"pooled\" only")
        if self.design == "pooled" and self.shocks == "ar1" and "shocks" in self.model_fields_set:
            raise ValueError("shocks = \"ar1\" applies to design = \"stacked\" only")
        return self

    @property
    def deviations(self) -> bool:
        """Whether federation-level deviations are modelled (the design's default if unset)."""
        if self.federation_deviations is None:
            return self.design == "stacked"
        return self.federation_deviations


class ModelSpec(_Strict):
    """A validated model specification.

    Attributes
    ----------
    model : ModelSection
    columns : dict of str to str
        Role or term name -> column name in the user's table.
    predictors : Predictors
    categorical : dict of str to Categorical
    priors : Priors
    event : EventSection or None
        Only for ``family = "event_time"`` (defaults apply when the section is absent).
    source : str
        Where the spec was read from (a path, or ``<dict>``).
    """

    model: ModelSection
    columns: dict[str, str] = Field(default_factory=dict)
    predictors: Predictors = Predictors()
    categorical: dict[str, Categorical] = Field(default_factory=dict)
    priors: Priors = Priors()
    event: EventSection | None = None
    random: RandomSection = RandomSection()
    residual: ResidualSection = ResidualSection()
    source: str = "<dict>"

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        terms = self.terms
        dup = sorted({t for t in terms if terms.count(t) > 1})
        if dup:
            raise ValueError(f"predictors listed twice: {dup}")
        for name in self.categorical:
            if name not in terms:
                raise ValueError(f"categorical.{name} is declared but {name!r} is not a predictor")
        for name in self.priors.slope:
            if name not in terms + self.predictors.interactions:
                raise ValueError(f"priors.slope.{name} names no predictor (predictors: {terms})")
        for role in ("outcome", "school"):
            if role in terms:
                raise ValueError(f"{role!r} cannot be a predictor")
        for name in self.predictors.contextual:
            if name not in self.predictors.pupil:
                raise ValueError(f"predictors.contextual: {name!r} is not a pupil-level "
                                 f"predictor (pupil: {self.predictors.pupil})")
        seen = set()
        for inter in self.predictors.interactions:
            parts = inter.split(":")
            if len(parts) != 2 or any(p not in terms for p in parts) or parts[0] == parts[1]:
                raise ValueError(f"predictors.interactions: {inter!r} is not the product of two "
                                 f"predictors, \"a:b\" (predictors: {terms})")
            if frozenset(parts) in seen:
                raise ValueError(f"predictors.interactions lists {inter!r} twice")
            seen.add(frozenset(parts))
        if self.predictors.interactions and self.model.family != "two_level":
            raise ValueError("predictors.interactions applies to family = \"two_level\" only")
        if self.model.family == "event_time":
            if self.predictors.contextual or self.predictors.centre != "none":
                raise ValueError("predictors.centre and predictors.contextual apply to family "
                                 "= \"two_level\" only")
            if self.predictors.school:
                raise ValueError("an event_time model takes no school-level predictors: the "
                                 "federated gap and the effects by year since founding are "
                                 "built in (remove predictors.school)")
        elif self.event is not None or self.priors.sd_cell is not None:
            what = "[event]" if self.event is not None else "priors.sd_cell"
            raise ValueError(f"{what} applies to family = \"event_time\" only")
        slopes = self.random.slopes
        if slopes:
            if self.model.family != "two_level":
                raise ValueError("random.slopes applies to family = \"two_level\" only")
            if self.model.likelihood != "collapsed":
                raise ValueError("random.slopes needs likelihood = \"collapsed\" (the school "
                                 "effects are integrated out from the per-school statistics)")
            if len(set(slopes)) != len(slopes):
                raise ValueError(f"random.slopes lists a predictor twice: {slopes}")
            for name in slopes:
                if name not in self.predictors.pupil:
                    raise ValueError(f"random.slopes: {name!r} is not a pupil-level predictor "
                                     f"(pupil: {self.predictors.pupil}); a school-level one "
                                     "cannot vary within a school")
                role = ROLES.get(name)
                if name in self.categorical or (role is not None and role.kind == "category"):
                    raise ValueError(f"random.slopes: {name!r} is categorical; random slopes "
                                     "of numeric predictors only")
        if self.residual.by_school:
            if self.model.family != "two_level":
                raise ValueError("residual.by_school applies to family = \"two_level\" only")
            if self.model.likelihood != "collapsed":
                raise ValueError("residual.by_school needs likelihood = \"collapsed\" (the school "
                                 "intercepts are integrated out from the per-school statistics)")
            if slopes:
                raise ValueError("residual.by_school cannot be combined with random.slopes: fit "
                                 "them as two models and compare them (leave-one-school-out, "
                                 "the within-school sd checks)")
        return self

    @property
    def event_options(self) -> EventSection:
        """The ``[event]`` section, with its defaults when the spec has none."""
        return self.event or EventSection()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def kind(self) -> Kind:
        """The kind of model (:data:`bayesfed.inputs.families.KINDS`): the family and, for
        ``event_time``, the design."""
        event = self.event_options.design if self.model.family == "event_time" else None
        return kind_of(self.model.family, event)

    @property
    def terms(self) -> list[str]:
        """All predictor terms (columns of the table), pupil-level first."""
        return [*self.predictors.pupil, *self.predictors.school]

    @property
    def pupil_terms(self) -> list[str]:
        """The terms coded as pupil-level columns: the pupil predictors, then the interactions
        with a pupil-level part (:func:`bayesfed.inputs.coding.term_columns`)."""
        school = set(self.predictors.school)
        return [*self.predictors.pupil, *(t for t in self.predictors.interactions
                                          if not set(t.split(":")) <= school)]

    @property
    def school_terms(self) -> list[str]:
        """The terms coded as school-level columns: the school predictors, then the
        interactions of two school-level predictors."""
        school = set(self.predictors.school)
        return [*self.predictors.school, *(t for t in self.predictors.interactions
                                           if set(t.split(":")) <= school)]

    def column(self, name: str) -> str:
        """The user's column for a role or term (itself when unmapped)."""
        return self.columns.get(name, name)

    def categorical_coding(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """``term -> (levels, reference)`` for :func:`bayesfed.design.columns.build_design`.

        A term declared in ``[categorical]`` uses its declared levels; a predictor whose role is
        categorical in the schema (``sen``) and is not declared uses the schema's levels with
        the first (``none``) as reference.
        """
        coding = {k: (tuple(v.levels), v.reference) for k, v in self.categorical.items()}
        for term in self.terms:
            role = ROLES.get(term)
            if term not in coding and role is not None and role.kind == "category":
                coding[term] = (role.levels, role.levels[0])
        return coding


def _closest(key: str, allowed: list[str]) -> str:
    match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else f" (allowed: {', '.join(allowed)})"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at a location in the spec, for 'did you mean'.

    A ``dict[str, Section]`` field (``categorical``, ``priors.slope``) takes any key, then the
    section's keys: the user's key in ``loc`` is skipped.
    """
    model: type[BaseModel] = ModelSpec
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", (ann,))
        if getattr(ann, "__origin__", None) is dict:
            args, parts = args[1:], parts[1:]  # the dict's own key, e.g. "sen"
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return [k for k in model.model_fields if k != "source"]


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"model specification {source} is invalid:"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key {where!r}{_closest(str(loc[-1]), _allowed_keys(loc))}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - {where}: {msg} (got {err['input']!r})" if "input" in err
                         and not isinstance(err["input"], dict) else f"  - {where}: {msg}")
    return "\n".join(lines)


def spec_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> ModelSpec:
    """Validate a parsed spec.

    Parameters
    ----------
    data : mapping
        The parsed TOML document.
    source : str
        Shown in error messages.

    Raises
    ------
    SpecError
        Listing every problem found.
    """
    if "source" in data:  # reserved: where the spec was read from, set by bayesfed
        raise SpecError(f"model specification {source} is invalid:\n  - unknown key 'source' "
                        f"(allowed: {', '.join(_allowed_keys(('source',)))})")
    try:
        spec = ModelSpec.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from None
    unknown_roles = sorted(
        r for r in spec.columns if r not in ROLES and r not in spec.terms
    )
    if unknown_roles:
        allowed = sorted({*ROLES, *spec.terms})
        lines = [f"model specification {source} is invalid:"]
        for r in unknown_roles:
            lines.append(f"  - columns.{r}: not a role or predictor{_closest(r, allowed)}")
        raise SpecError("\n".join(lines))
    return spec


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a TOML model specification.

    Raises
    ------
    SpecError
        The file is missing, is not valid TOML, or breaks the spec schema.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read model specification {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"model specification {path} is not valid TOML: {exc}") from None
    return spec_from_dict(data, source=str(path))
