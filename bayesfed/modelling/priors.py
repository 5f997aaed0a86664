r"""Priors of the two-level model: data-scaled defaults and the precedence of overrides.

Every prior is resolved to numbers before a model is built, so that the numbers can be
recorded with the fit (:meth:`PriorSet.as_dict`) and a report can show exactly what was
assumed.

Defaults
--------
With :math:`s_y` the sample standard deviation of the outcome (denominator ``n - 1``, outcome
units) and :math:`s_k` that of the ``k``-th column of ``X`` over pupils:

=====================  ==================================================  ====================
parameter              default prior                                       units
=====================  ==================================================  ====================
``intercept``          :math:`\mathrm{Normal}(\bar y,\; 2.5\, s_y)`        outcome
``beta[k]``            :math:`\mathrm{Normal}(0,\; s_y/(s_k\sqrt{p}))`       outcome per unit x_k
``beta[federated]``    :math:`\mathrm{Normal}(0,\; e\, s_y)`, e = 1        outcome
``sd_school``          :math:`\mathrm{HalfNormal}(s_y)`                    outcome
``sigma``              :math:`\mathrm{HalfNormal}(s_y)`                    outcome
``sd_slope[k]``        :math:`\mathrm{HalfNormal}(s_y/s_k)`                outcome per unit x_k
=====================  ==================================================  ====================

Why these:

* The slopes are scaled jointly (:data:`FIXED_SD`, :math:`p` the number of coefficients
  other than the federation effect's): whatever the predictors' correlations,
  :math:`E[\beta^\top \Sigma_X \beta] = \sum_k \mathrm{Var}(\beta_k)\, s_k^2 = s_y^2`, so the
  predictors are expected to account for about as much variance as the outcome has, not
  :math:`2.5^2 p` times it. rstanarm's and bambi's per-slope default, 2.5 :math:`s_y/s_k` each,
  is weakly informative one slope at a time but implies for M1's eight coefficients a prior
  predictive within-school sd about seven times the observed one (28 against 4 in the demo);
  with the joint scale the prior predictive spread of pupils within schools and of school means
  is of the data's order, and a one-sd change of one predictor is still allowed to move the
  outcome by more than half an outcome sd (:math:`2/\sqrt{p}` at two prior sds). Rescaling the
  outcome or a predictor rescales the prior with it, so results do not depend on units; with
  about ten thousand pupils a year the data dominate (``docs/models/two-level.md`` gives the
  demo's posterior before and after).
* A 0/1 dummy (a flag, or one level of a treatment-coded categorical term) is scaled by its
  sample standard deviation :math:`\sqrt{p(1-p)}` (times ``n/(n-1)``), like any other column:
  a rare level gets a wider prior on its coefficient, matching the fact that its effect is
  allowed to be larger per unit of ``x``. School-level columns are scaled by their standard
  deviation over pupils, the same quantity REML's design uses.
* The federation effect (the ``federated`` coefficient) is stated in units of the outcome's
  standard deviation, :math:`\mathrm{Normal}(0, e\, s_y)` with :math:`e` =
  :data:`EFFECT_SD` (``[priors] effect_sd``): an effect of a school-level change beyond two
  pupil standard deviations is implausible. The event-time models' effects, leads and gaps
  take the same prior (:mod:`bayesfed.modelling.event_stacked`), so the per-year and joint effects
  are judged against the same prior.
* Both standard deviations get :math:`\mathrm{HalfNormal}(s_y)`: each level's variance can at
  most be of the order of the total variance, and the prior still puts appreciable mass near
  zero, so a school variance close to zero is not ruled out.

Precedence
----------
Each number (a Normal's ``mu`` and ``sigma`` separately, a HalfNormal's ``sigma``) is taken from
the first source that sets it:

1. the ``overrides`` argument of :func:`resolve_priors` (a :class:`~bayesfed.inputs.spec.Priors`,
   e.g. built by the command line);
2. the spec's ``[priors]`` section;
3. the data-scaled default above.

Within one source, a coefficient's own entry ``slope.<name>`` comes before ``slopes`` (the
entry for every slope). ``<name>`` is a coefficient name (``sen[statemented]``) or a term
name (``sen``, which covers each of its levels); a coefficient name comes before its term.
Sources come before specificity: an override's ``slopes`` beats the spec's ``slope.fsm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bayesfed.design.cells import CellStats
from bayesfed.design.columns import Design
from bayesfed.design.stacked import StackedData
from bayesfed.design.suffstats import SchoolSummary, summary_of
from bayesfed.errors import SpecError
from bayesfed.inputs.coding import term_of
from bayesfed.inputs.spec import NormalPrior, Priors

#: Multiplier of the outcome's standard deviation in the intercept prior's scale.
SCALE = 2.5

#: Prior sd of the linear predictor's spread over pupils, in units of the outcome's sd: the
#: slopes (all but the federation effect's) are scaled jointly so that the expected variance
#: of :math:`x^\top\beta` is ``FIXED_SD**2`` times the outcome's variance.
FIXED_SD = 1.0

#: Sd of the federation effect's Normal(0, .) prior, in units of the outcome's sd.
EFFECT_SD = 1.0

#: The coefficient whose prior is the federation effect's.
FEDERATION_TERM = "federated"

#: The LKJ prior's shape on the correlation of a school's random effects (intercept and
#: slopes, :mod:`bayesfed.modelling.random_slopes`; intercept and log pupil sd,
#: :mod:`bayesfed.modelling.location_scale`): 2 puts little mass on correlations near +-1
#: (brms's default is 1, flat; lme4 has none).
LKJ_ETA = 2.0

#: Scale of the HalfNormal prior of the sd of the schools' log pupil sds (log units;
#: :mod:`bayesfed.modelling.location_scale`): 0.5 puts 95 % of the schools' pupil sds within a
#: factor :math:`e^{\pm 1}` of the median school's.
SD_LOG_SIGMA_PRIOR = 0.5


@dataclass(frozen=True)
class Normal:
    """Parameters of a Normal prior.

    Attributes
    ----------
    mu : float
        Mean, in the parameter's units.
    sigma : float
        Standard deviation (> 0), in the parameter's units.
    """

    mu: float
    sigma: float


@dataclass(frozen=True)
class PriorSet:
    """Resolved priors of one two-level model on one design.

    Attributes
    ----------
    intercept : Normal
        Prior of the intercept (outcome units).
    coef_names : tuple of str, length n_coef
        Coefficient names, in the design's order.
    slopes : tuple of Normal, length n_coef
        Prior of each coefficient (outcome units per unit of the predictor).
    sd_school : float
        Scale of the HalfNormal prior of the school standard deviation (outcome units).
    sigma : float
        Scale of the HalfNormal prior of the pupil standard deviation (outcome units).
    """

    intercept: Normal
    coef_names: tuple[str, ...]
    slopes: tuple[Normal, ...]
    sd_school: float
    sigma: float

    @property
    def slope_mu(self) -> np.ndarray:
        """Prior means of the coefficients, shape (n_coef,)."""
        return np.array([s.mu for s in self.slopes], dtype=float)

    @property
    def slope_sigma(self) -> np.ndarray:
        """Prior standard deviations of the coefficients, shape (n_coef,)."""
        return np.array([s.sigma for s in self.slopes], dtype=float)

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> number`` mapping, suitable for NetCDF attributes and JSON.

        Keys are ``prior.intercept.mu``, ``prior.intercept.sigma``, ``prior.beta[NAME].mu``,
        ``prior.beta[NAME].sigma`` for each coefficient, ``prior.sd_school.sigma`` and
        ``prior.sigma.sigma``.
        """
        out = {"prior.intercept.mu": self.intercept.mu,
               "prior.intercept.sigma": self.intercept.sigma}
        for name, s in zip(self.coef_names, self.slopes, strict=True):
            out[f"prior.beta[{name}].mu"] = s.mu
            out[f"prior.beta[{name}].sigma"] = s.sigma
        out["prior.sd_school.sigma"] = self.sd_school
        out["prior.sigma.sigma"] = self.sigma
        return out


@dataclass(frozen=True)
class Scales:
    """What the data-scaled default priors need of the pupils.

    Attributes
    ----------
    pupils : int
        How many pupils.
    y_mean, sd_y : float
        Mean and standard deviation (ddof 1) of the outcome over the pupils (outcome units).
    sd_x : ndarray, shape (n_coef,)
        Standard deviation (ddof 1) of each predictor column.
    coef_names : tuple of str
    """

    pupils: int
    y_mean: float
    sd_y: float
    sd_x: np.ndarray
    coef_names: tuple[str, ...]


def scales_of(data: Design | SchoolSummary) -> Scales:
    """The :class:`Scales` of a design's pupils, or of a summary of them (the same numbers up
    to rounding: :meth:`bayesfed.design.suffstats.SchoolSummary.total_cov`)."""
    summary = summary_of(data)
    names = summary.coef_names
    if summary.n_pupils < 2:
        return Scales(summary.n_pupils, math.nan, math.nan, np.full(len(names), math.nan), names)
    sd = np.sqrt(np.diagonal(summary.total_cov()))
    return Scales(summary.n_pupils, float(summary.n @ summary.y_mean / summary.n_pupils),
                  float(sd[0]), sd[1:], names)


def default_priors(data: Design | SchoolSummary | Scales, effect_sd: float = EFFECT_SD
                   ) -> PriorSet:
    """The data-scaled default priors (see the module docstring).

    Parameters
    ----------
    data : Design, SchoolSummary or Scales
        A design (``y`` (n_pupils,) and ``X`` (n_pupils, n_coef)), its summary or the scales
        of its pupils.
    effect_sd : float
        Sd of the ``federated`` coefficient's prior, in units of the outcome's sd.

    Returns
    -------
    PriorSet

    Raises
    ------
    SpecError
        The outcome or a predictor column is constant (its scale would be zero).
    """
    scales = data if isinstance(data, Scales) else scales_of(data)
    if scales.pupils < 2:
        raise SpecError("default priors need at least two pupils")
    sd_y, sd_x = scales.sd_y, scales.sd_x
    constant = [n for n, s in zip(scales.coef_names, sd_x, strict=True) if not s > 0]
    if not sd_y > 0 or constant:
        what = "the outcome" if not sd_y > 0 else f"predictor column(s) {constant}"
        raise SpecError(f"{what} constant: the data-scaled default priors are undefined")
    joint = max(1, sum(name != FEDERATION_TERM for name in scales.coef_names))
    return PriorSet(
        intercept=Normal(scales.y_mean, SCALE * sd_y),
        coef_names=scales.coef_names,
        slopes=tuple(Normal(0.0, float(effect_sd * sd_y if name == FEDERATION_TERM
                                       else FIXED_SD * sd_y / (s * math.sqrt(joint))))
                     for name, s in zip(scales.coef_names, sd_x, strict=True)),
        sd_school=sd_y,
        sigma=sd_y,
    )


def default_slope_sd(data: Design | SchoolSummary | Scales, slopes: tuple[str, ...]
                     ) -> np.ndarray:
    """The scales of the random slopes' sds' HalfNormal priors, :math:`s_y/s_k` (module
    docstring's table; :mod:`bayesfed.modelling.random_slopes`).

    Returns
    -------
    ndarray, shape (n_slopes,)
        Outcome units per unit of each slope's column.
    """
    scales = data if isinstance(data, Scales) else scales_of(data)
    return np.array([scales.sd_y / scales.sd_x[scales.coef_names.index(name)]
                     for name in slopes], dtype=float)


def effect_sd(sources: list[Priors]) -> float:
    """The effect prior's sd in outcome-sd units: the first source's ``effect_sd`` that is set,
    else :data:`EFFECT_SD`."""
    return _pick([s.effect_sd for s in sources], EFFECT_SD)


def _slope_entries(priors: Priors, coef: str) -> list[NormalPrior]:
    """One source's entries for a coefficient, most specific first."""
    entries = [priors.slope[k] for k in (coef, term_of(coef)) if k in priors.slope]
    return entries + ([priors.slopes] if priors.slopes is not None else [])


def _pick(values: list[float | None], default: float) -> float:
    """The first value that is set, else the default."""
    return float(next((v for v in values if v is not None), default))


def _check_slope_names(priors: Priors, design: Design | SchoolSummary | Scales,
                       source: str) -> None:
    known = {*design.coef_names, *map(term_of, design.coef_names)}
    unknown = sorted(set(priors.slope) - known)
    if unknown:
        raise SpecError(f"{source} priors.slope names no coefficient of this model: {unknown} "
                        f"(coefficients: {list(design.coef_names)})")


def resolve_priors(
    design: Design | SchoolSummary | Scales, spec_priors: Priors,
    overrides: Priors | None = None
) -> PriorSet:
    """Resolve every prior: ``overrides`` > ``spec_priors`` > data-scaled default.

    Parameters
    ----------
    design : Design, SchoolSummary or Scales
        The model's arrays, their per-school summary or their scales (:class:`Scales`); set
        the defaults' scales and the coefficient names.
    spec_priors : Priors
        The spec's ``[priors]`` section.
    overrides : Priors, optional
        Call-time overrides, e.g. from the command line.

    Returns
    -------
    PriorSet

    Raises
    ------
    SpecError
        A ``slope`` entry names no coefficient or term of ``design``, or the outcome or a
        column of ``X`` is constant (see :func:`default_priors`).
    """
    named = [("spec", spec_priors)] if overrides is None else [("override", overrides),
                                                              ("spec", spec_priors)]
    for name, source in named:
        _check_slope_names(source, design, name)
    sources = [source for _, source in named]
    default = default_priors(design, effect_sd(sources))

    def normal(entries: list[NormalPrior], fallback: Normal) -> Normal:
        return Normal(_pick([e.mu for e in entries], fallback.mu),
                      _pick([e.sigma for e in entries], fallback.sigma))

    intercept = normal([s.intercept for s in sources if s.intercept is not None],
                       default.intercept)
    slopes = tuple(
        normal([e for s in sources for e in _slope_entries(s, coef)], fallback)
        for coef, fallback in zip(design.coef_names, default.slopes, strict=True)
    )
    return PriorSet(
        intercept=intercept,
        coef_names=design.coef_names,
        slopes=slopes,
        sd_school=_pick([s.sd_school.sigma for s in sources if s.sd_school], default.sd_school),
        sigma=_pick([s.sigma.sigma for s in sources if s.sigma], default.sigma),
    )


# -- the event-time models (bayesfed.modelling.event_stacked, .event_pooled) ----------------

#: Scale of the heterogeneity and step sds' HalfNormal priors, in units of the outcome's sd.
HETEROGENEITY_SD = 0.25

@dataclass(frozen=True)
class StackedPriors:
    """Resolved priors of the stacked model (module docstring's table), outcome units.

    Attributes
    ----------
    level : Normal
        Prior of each founding-cohort x year effect :math:`\\gamma_{e,k}`.
    slopes : tuple of Normal, length n_coef
    effect : float
        Sd of the Normal(0, .) priors of the gaps, leads, :math:`\\delta_0` and the random
        walk's drift (each :math:`\\delta_k` when independent).
    tau_step, sd_cohort_effect, sd_federation_effect : float
        Scales of the HalfNormal priors of the step and heterogeneity sds.
    sd_school, sd_cell, sigma : float
        Scales of the HalfNormal priors of the school, cell and pupil sds.
    shock_ar : float
        Both shape parameters of the Beta prior of :math:`(\\rho + 1)/2`.
    coef_names : tuple of str
    """

    level: Normal
    slopes: tuple[Normal, ...]
    effect: float
    tau_step: float
    sd_cohort_effect: float
    sd_federation_effect: float
    sd_school: float
    sd_cell: float
    sigma: float
    shock_ar: float = 2.0
    coef_names: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> number`` mapping for NetCDF attributes and JSON."""
        out = {"prior.gamma.mu": self.level.mu, "prior.gamma.sigma": self.level.sigma}
        for name, slope in zip(self.coef_names, self.slopes, strict=True):
            out[f"prior.beta[{name}].mu"] = slope.mu
            out[f"prior.beta[{name}].sigma"] = slope.sigma
        scalars = {"effect.sigma": self.effect, "tau_step.sigma": self.tau_step,
                   "sd_cohort_effect.sigma": self.sd_cohort_effect,
                   "sd_federation_effect.sigma": self.sd_federation_effect,
                   "sd_school.sigma": self.sd_school, "sd_cell.sigma": self.sd_cell,
                   "sigma.sigma": self.sigma, "shock_ar.beta": self.shock_ar}
        return out | {f"prior.{k}": float(v) for k, v in scalars.items()}


def resolve_stacked_priors(data: StackedData, spec_priors: Priors | None = None
                           ) -> StackedPriors:
    """The priors of the module docstring's table, with the spec's ``[priors]`` applied
    (``intercept`` sets :math:`\\gamma`'s, then ``slopes``/``slope``, ``sd_school``,
    ``sd_cell``, ``sigma`` and ``effect_sd``, with the precedence of
    :func:`bayesfed.modelling.priors.resolve_priors`).

    Raises
    ------
    SpecError
        The outcome or a predictor is constant, or ``slope`` names no coefficient.
    """
    spec_priors = spec_priors or Priors()
    sd_y = data.sd_y
    two_level = resolve_priors(Scales(data.n_pupils, data.y_mean, sd_y, data.sd_x,
                                      data.coef_names), spec_priors)
    sd_cell = spec_priors.sd_cell.sigma if spec_priors.sd_cell is not None else sd_y
    small = HETEROGENEITY_SD * sd_y
    return StackedPriors(level=two_level.intercept, slopes=two_level.slopes,
                         effect=effect_sd([spec_priors]) * sd_y, tau_step=small,
                         sd_cohort_effect=small, sd_federation_effect=small,
                         sd_school=two_level.sd_school, sd_cell=float(sd_cell),
                         sigma=two_level.sigma, coef_names=data.coef_names)


@dataclass(frozen=True)
class EventPriors:
    """Resolved priors of the joint event-time model (see the module docstring's table).

    Attributes
    ----------
    intercept : Normal
        Prior of ``level``, the intercept at centred predictors (outcome units).
    slopes : tuple of Normal, length n_coef
        Priors of the pupil coefficients (outcome units per predictor unit).
    cohort : float
        Sd of the ZeroSumNormal prior of the cohort deviations (outcome units).
    effect : float
        Sd of the Normal(0, .) prior of each effect (independent) or of ``delta[0]`` (random
        walk), outcome units.
    lead : float
        Sd of the Normal(0, .) prior of each lead (outcome units).
    tau_step : float
        Mean of the Gamma(2, 2 / tau_step) prior of the random walk's step sd (outcome
        units).
    gap : float
        Sd of the Normal(0, .) prior of ``federated_gap`` (outcome units).
    sd_school, sd_cell, sigma : float
        Scales of the HalfNormal priors of the school, cell and pupil sds (outcome units).
    sd_federation_effect, sd_type : float
        Scales of the HalfNormal priors of the heterogeneity sds (outcome units).
    coef_names : tuple of str, length n_coef
        Names of the coefficients ``slopes`` belong to.
    """

    intercept: Normal
    slopes: tuple[Normal, ...]
    cohort: float
    effect: float
    lead: float
    tau_step: float
    gap: float
    sd_school: float
    sd_cell: float
    sigma: float
    sd_federation_effect: float
    sd_type: float
    coef_names: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        """Flat ``name -> number`` mapping (``prior.level.mu``, ``prior.beta[fsm].sigma``,
        ``prior.sd_cell.sigma``, ...), for NetCDF attributes and JSON."""
        out = {"prior.level.mu": self.intercept.mu, "prior.level.sigma": self.intercept.sigma}
        for name, slope in zip(self.coef_names, self.slopes, strict=True):
            out[f"prior.beta[{name}].mu"] = slope.mu
            out[f"prior.beta[{name}].sigma"] = slope.sigma
        scalars = {"cohort_deviation.sigma": self.cohort, "delta.sigma": self.effect,
                   "lead.sigma": self.lead, "tau_step.mean": self.tau_step,
                   "federated_gap.sigma": self.gap, "sd_school.sigma": self.sd_school,
                   "sd_cell.sigma": self.sd_cell, "sigma.sigma": self.sigma,
                   "sd_federation_effect.sigma": self.sd_federation_effect,
                   "sd_type.sigma": self.sd_type}
        return out | {f"prior.{k}": float(v) for k, v in scalars.items()}


def resolve_event_priors(stats: CellStats, spec_priors: Priors | None = None
                         ) -> EventPriors:
    """The priors of the module docstring's table, with the spec's overrides applied.

    Parameters
    ----------
    stats : CellStats
        The pupils' statistics (their scales set the defaults).
    spec_priors : Priors, optional
        The spec's ``[priors]``; its ``intercept`` (the prior of ``level``), ``slopes``,
        ``slope``, ``sd_school``, ``sd_cell`` and ``sigma`` replace the defaults, with the
        precedence of :func:`bayesfed.modelling.priors.resolve_priors`.

    Returns
    -------
    EventPriors

    Raises
    ------
    SpecError
        The outcome or a predictor is constant, or ``slope`` names no coefficient (from
        :func:`bayesfed.modelling.priors.resolve_priors`).
    """
    spec_priors = spec_priors or Priors()
    sd_y, sd_x = stats.sd()
    two_level = resolve_priors(Scales(stats.n_pupils, float(stats.n @ stats.y_mean
                                                             / stats.n_pupils), sd_y, sd_x,
                                      stats.coef_names), spec_priors)
    sd_cell = spec_priors.sd_cell.sigma if spec_priors.sd_cell is not None else sd_y
    return EventPriors(intercept=two_level.intercept, slopes=two_level.slopes, cohort=sd_y,
                       effect=sd_y, lead=sd_y, tau_step=0.5 * sd_y, gap=sd_y,
                       sd_school=two_level.sd_school, sd_cell=float(sd_cell),
                       sigma=two_level.sigma, sd_federation_effect=0.25 * sd_y,
                       sd_type=0.25 * sd_y, coef_names=stats.coef_names)
