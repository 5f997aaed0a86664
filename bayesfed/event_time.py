r"""The joint event-time model: every cohort at once, school and cell intercepts integrated out.

Model
-----
For pupil :math:`i` in school :math:`j` and cohort (calendar year) :math:`t`, i.e. in cell
:math:`c = (j, t)`, with pupil predictors :math:`x_i` and event-year row :math:`E_i`
(:mod:`bayesfed.event_design`: federated flag times ``1[years_since = k]``):

.. math::

    y_i &= \alpha + x_i^\top\beta + \gamma_t + E_i^\top(\lambda, \delta) + u_j + v_c + e_i, \\
    u_j &\sim N(0, \tau^2), \quad v_c \sim N(0, \omega^2), \quad e_i \sim N(0, \sigma^2),

with cohort effects :math:`\gamma_t` (:math:`\gamma = 0` for the first cohort), federation
effects :math:`\delta_k` for years since founding :math:`k = 0..K`, leads :math:`\lambda_k`
for :math:`k \le -2` (placebo terms: zero under parallel trends) and year :math:`-1` as the
reference. Effect priors, ``effect_prior``:

* ``"random_walk"`` (default): :math:`\delta_0 \sim N(0, s_\delta)`,
  :math:`\delta_k = \delta_{k-1} + \epsilon_k`, :math:`\epsilon_k \sim N(0,
  \tau_{\mathrm{step}})` (``step``, centred), :math:`\tau_{\mathrm{step}}` learned;
* ``"independent"``: :math:`\delta_k \sim N(0, s_\delta)` each.

Marginal likelihood
-------------------
The random intercepts are integrated out exactly, so NUTS samples only the fixed effects and
the three standard deviations. Let :math:`\mu_c = \alpha + \bar x_c^\top\beta + \gamma_t +
E_c^\top(\lambda,\delta)` (cell means of the predictors; the other terms are constant within a
cell), :math:`r_c = \bar y_c - \mu_c`, :math:`n_c` the cell's pupils, :math:`N` all pupils and
:math:`C` all cells. Within a cell the covariance is :math:`\sigma^2 I + \omega^2 11^\top`; its
inverse splits a cell's residuals into their mean and the deviations from it, and only the
pooled within-cell sum of squares depends on the pupils themselves:

.. math::

    W(\beta) = \sum_i (\tilde y_i - \tilde x_i^\top\beta)^2
             = \tilde y^\top\tilde y - 2\beta^\top\tilde X^\top\tilde y
               + \beta^\top\tilde X^\top\tilde X\beta,

(tilde: centred at the cell mean). With :math:`h_c = n_c / (\sigma^2 + n_c\omega^2)` (the
precision of a cell mean given its school's intercept), :math:`H_j = \sum_{c \in j} h_c` and
:math:`A_j = \sum_{c \in j} h_c r_c`, the school level follows by the Woodbury identity and the
matrix determinant lemma applied to :math:`\tau^2 11^\top`:

.. math::

    -2 \log p(y \mid \alpha, \beta, \gamma, \lambda, \delta, \sigma, \omega, \tau) =
    N \log 2\pi + (N - C)\log\sigma^2 + \sum_c \log(\sigma^2 + n_c\omega^2)
    + \sum_j \log(1 + \tau^2 H_j) \\
    + W(\beta)/\sigma^2 + \sum_c h_c r_c^2 - \sum_j \frac{\tau^2 A_j^2}{1 + \tau^2 H_j}.

It is added to the model as a ``pm.Potential`` (``marginal_loglik``) and costs
:math:`O(C \cdot p)` per gradient, whatever the number of pupils (:class:`CellStats` holds the
sufficient statistics). :func:`build_event_time_reference` is the same model written plainly,
pupil rows with sampled :math:`u_j` and :math:`v_c`; ``tests/test_event_time.py`` checks that
the two agree exactly (the marginal equals the joint density divided by the Gaussian
conditional density of the intercepts).

Sampled parameters
------------------
NUTS sees ``beta``, the random walk's or the independent effects, ``lead``, the three sds
and, instead of ``intercept`` and ``gamma``, the ``level`` (mean outcome at the pupils' mean
composition :math:`\bar x`, averaged over cohorts) and zero-sum ``cohort_deviation``
:math:`d_t`, so that the fixed part of a cell is
:math:`\mathrm{level} + d_t + (\bar x_c - \bar x)^\top\beta + E_c^\top(\lambda, \delta)`;
``intercept`` :math:`= \mathrm{level} + d_1 - \bar x^\top\beta` and ``gamma``
:math:`= d_t - d_1` are deterministics. Why: with the first cohort as the free reference,
``gamma`` and ``intercept`` had a bulk ESS of 320-450 of 4,000 on the shipped study (its first
cohort has 15 schools, so every ``gamma`` shares that cohort's uncertainty); with a free mean
per cohort, 470 (all cohort means share the uncertainty of the mean school intercept, posterior
correlations 0.6-0.8); with level and zero-sum deviations, 750 or more. The random walk's
steps are centred: non-centred steps gave 40-55 divergences of 4,000, centred ones 11-19
with a HalfNormal step sd and 0-16 (usually 0-4) with the Gamma prior below, all at step sds
near 0.02 (a funnel of five steps that a boundary-avoiding prior mostly removes).

Priors
------
With :math:`s_y` the outcome's sample sd and :math:`s_k` that of predictor column ``k``
(:func:`bayesfed.priors.default_priors` supplies ``level``'s, the slopes' and two sds'):

=======================  ========================================  ============================
parameter                default prior                             why
=======================  ========================================  ============================
``level``                :math:`N(\bar y, 2.5 s_y)`                the intercept prior of
                                                                   :mod:`bayesfed.priors`, on
                                                                   centred predictors (as
                                                                   rstanarm does)
``beta[k]``              :math:`N(0, 2.5 s_y / s_k)`               as in :mod:`bayesfed.priors`
``sd_school``, ``sigma``  :math:`\mathrm{HalfNormal}(s_y)`          as in :mod:`bayesfed.priors`
``sd_cell``              :math:`\mathrm{HalfNormal}(s_y)`          a third level, same reasoning
``cohort_deviation``     :math:`\mathrm{ZeroSumNormal}(s_y)`       a calendar-year shift of
                                                                   more than 2 sd is implausible
``delta[k]``             :math:`N(0, s_y)` (``delta[0]`` only,     an effect of a school-level
                         random walk)                              change beyond 2 sd of pupil
                                                                   scores is implausible
``lead[k]``              :math:`N(0, s_y)`                         as ``delta``: no pull
                                                                   towards "no pre-trend"
``tau_step``             :math:`\mathrm{Gamma}(2, 2 / s_s)`,       mean :math:`s_s`, density
                         :math:`s_s = 0.5 s_y`                     :math:`\propto\tau` near 0
                                                                   (Chung et al. 2013): year-on-
                                                                   year changes below 1 sd
=======================  ========================================  ============================

Coefficients are per unit of their predictor; every other parameter is in outcome units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from bayesfed.design import Design
from bayesfed.event_design import CellStats, EventDesign, cell_stats
from bayesfed.priors import Normal, default_priors

EffectPrior = Literal["random_walk", "independent"]


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
    sd_school, sd_cell, sigma : float
        Scales of the HalfNormal priors of the school, cell and pupil sds (outcome units).
    """

    intercept: Normal
    slopes: tuple[Normal, ...]
    cohort: float
    effect: float
    lead: float
    tau_step: float
    sd_school: float
    sd_cell: float
    sigma: float


def default_event_priors(design: EventDesign) -> EventPriors:
    """The data-scaled default priors of the module docstring's table.

    Parameters
    ----------
    design : EventDesign

    Returns
    -------
    EventPriors

    Raises
    ------
    SpecError
        The outcome or a predictor is constant (from :func:`bayesfed.priors.default_priors`).
    """
    two_level = default_priors(Design(
        y=design.y, X=design.X, coef_names=design.coef_names, school_idx=design.school_idx,
        schools=design.schools, school_level=(False,) * len(design.coef_names)))
    sd_y = two_level.sigma
    return EventPriors(intercept=two_level.intercept, slopes=two_level.slopes, cohort=sd_y,
                       effect=sd_y, lead=sd_y, tau_step=0.5 * sd_y, sd_school=sd_y,
                       sd_cell=sd_y, sigma=sd_y)


def _coords(design: EventDesign) -> dict[str, list[str]]:
    return {
        "school": list(design.schools),
        "cell": list(design.cells),
        "cohort": list(design.cohorts[1:]),
        "cohort_all": list(design.cohorts),
        "predictor": list(design.coef_names),
        "event_year": list(design.effect_terms),
        "step_year": list(design.effect_terms[1:]),
        "lead_year": list(design.lead_terms),
    }


def _f64(value: float) -> np.float64:
    # PyTensor would store a Python float that is exact in float32 (2.5) as a float32 constant.
    return np.float64(value)


class Terms(NamedTuple):
    """The PyTensor variables the likelihood needs (see :func:`_fixed_effects`)."""

    beta: pt.TensorVariable  # (n_coef,)
    cohort_mean: pt.TensorVariable  # (n_cohorts,): level + cohort deviation
    event: pt.TensorVariable  # (n_event_terms,): leads, then effects
    sd_school: pt.TensorVariable
    sd_cell: pt.TensorVariable
    sigma: pt.TensorVariable


def _fixed_effects(design: EventDesign, priors: EventPriors, effect_prior: EffectPrior) -> Terms:
    """Add every parameter but the random intercepts to the model in context.

    The fixed part of a pupil's mean is ``cohort_mean[t] + (x - xbar)' beta + E' event``, with
    ``xbar`` the pupils' mean predictors (the module docstring's "Sampled parameters").
    """
    beta = pm.Normal("beta", mu=np.array([s.mu for s in priors.slopes]),
                     sigma=np.array([s.sigma for s in priors.slopes]), dims="predictor")
    level = pm.Normal("level", mu=_f64(priors.intercept.mu), sigma=_f64(priors.intercept.sigma))
    deviation = pm.ZeroSumNormal("cohort_deviation", sigma=_f64(priors.cohort),
                                 dims="cohort_all")
    composition = pt.dot(design.X.mean(axis=0), beta)
    pm.Deterministic("intercept", level + deviation[0] - composition)
    pm.Deterministic("gamma", deviation[1:] - deviation[0], dims="cohort")
    if effect_prior == "random_walk":
        # Gamma(2, 2 / s): mean s, density ~ tau near 0 (boundary-avoiding; module docstring)
        tau_step = pm.Gamma("tau_step", alpha=2.0, beta=2.0 / _f64(priors.tau_step))
        delta_first = pm.Normal("delta_first", mu=0.0, sigma=_f64(priors.effect))
        step = pm.Normal("step", mu=0.0, sigma=tau_step, dims="step_year")
        delta = pm.Deterministic(
            "delta", delta_first + pt.concatenate([pt.zeros(1), pt.cumsum(step)]),
            dims="event_year")
    elif effect_prior == "independent":
        delta = pm.Normal("delta", mu=0.0, sigma=_f64(priors.effect), dims="event_year")
    else:
        raise ValueError(f"effect_prior must be 'random_walk' or 'independent', "
                         f"got {effect_prior!r}")
    lead = pm.Normal("lead", mu=0.0, sigma=_f64(priors.lead), dims="lead_year")
    return Terms(
        beta=beta,
        cohort_mean=level + deviation,
        event=pt.concatenate([lead, delta]),
        sd_school=pm.HalfNormal("sd_school", sigma=_f64(priors.sd_school)),
        sd_cell=pm.HalfNormal("sd_cell", sigma=_f64(priors.sd_cell)),
        sigma=pm.HalfNormal("sigma", sigma=_f64(priors.sigma)),
    )


def marginal_loglik(stats: CellStats, n_schools: int, cell_mean, beta, sigma, sd_cell,
                    sd_school):
    """The exact log-likelihood with school and cell intercepts integrated out.

    Parameters
    ----------
    stats : CellStats
    n_schools : int
    cell_mean : tensor, shape (n_cells,)
        :math:`\\mu_c`, the fixed part at each cell's mean predictors (outcome units).
    beta : tensor, shape (n_coef,)
    sigma, sd_cell, sd_school : tensor scalars
        Pupil, cell and school sds (outcome units).

    Returns
    -------
    tensor scalar
        The formula of the module docstring (nats).
    """
    s2, w2, t2 = sigma**2, sd_cell**2, sd_school**2
    n_pupils, n_cells = int(stats.n.sum()), stats.n.size
    cell_var = s2 + stats.n * w2  # variance of a cell mean times n_c, per cell
    h = stats.n / cell_var
    r = stats.y_mean - cell_mean
    H = pt.zeros(n_schools)[stats.school_idx].inc(h)
    A = pt.zeros(n_schools)[stats.school_idx].inc(h * r)
    within = stats.yy - 2 * pt.dot(beta, stats.Xy) + pt.dot(beta, pt.dot(stats.XX, beta))
    log_det = ((n_pupils - n_cells) * pt.log(s2) + pt.sum(pt.log(cell_var))
               + pt.sum(pt.log1p(t2 * H)))
    quad = within / s2 + pt.sum(h * r**2) - pt.sum(t2 * A**2 / (1 + t2 * H))
    return -0.5 * (n_pupils * np.log(2 * np.pi) + log_det + quad)


def build_event_time(
    design: EventDesign,
    priors: EventPriors | None = None,
    effect_prior: EffectPrior = "random_walk",
) -> pm.Model:
    """Build the joint event-time model with the intercepts integrated out.

    Parameters
    ----------
    design : EventDesign
    priors : EventPriors, optional
        Defaults to :func:`default_event_priors` of ``design``.
    effect_prior : {"random_walk", "independent"}
        Prior of the effects ``delta`` (module docstring).

    Returns
    -------
    pm.Model
        Coords ``school``, ``cell``, ``cohort_all`` (every cohort), ``cohort`` (all but the
        first), ``predictor``, ``event_year`` (effects, "0".."K"), ``step_year`` ("1".."K")
        and ``lead_year`` (leads, "-2"). Free variables ``level``, ``cohort_deviation``
        (cohort_all), ``beta`` (predictor), ``lead`` (lead_year), ``sd_school``, ``sd_cell``,
        ``sigma`` and, for the random walk, ``tau_step``, ``delta_first`` and ``step``
        (step_year) with the deterministic ``delta`` (event_year); ``delta`` is free for
        ``"independent"``. Deterministics ``intercept`` and ``gamma`` (cohort). The
        likelihood is the potential ``marginal_loglik``; no pupil-level variable is kept.
    """
    priors = priors or default_event_priors(design)
    stats = cell_stats(design)
    with pm.Model(coords=_coords(design)) as model:
        terms = _fixed_effects(design, priors, effect_prior)
        x_centred = stats.X_mean - design.X.mean(axis=0)
        cell_mean = (terms.cohort_mean[stats.cohort_idx] + pt.dot(x_centred, terms.beta)
                     + pt.dot(stats.E, terms.event))
        pm.Potential("marginal_loglik", marginal_loglik(
            stats, len(design.schools), cell_mean, terms.beta, terms.sigma, terms.sd_cell,
            terms.sd_school))
    return model


def build_event_time_reference(
    design: EventDesign,
    priors: EventPriors | None = None,
    effect_prior: EffectPrior = "random_walk",
) -> pm.Model:
    """The same model written plainly: pupil rows with sampled school and cell intercepts.

    A readable reference for :func:`build_event_time` (slow to sample at full size).

    Parameters
    ----------
    design : EventDesign
    priors : EventPriors, optional
    effect_prior : {"random_walk", "independent"}

    Returns
    -------
    pm.Model
        As :func:`build_event_time`, plus coord ``pupil``, free variables ``u`` (school) and
        ``v`` (cell), both centred at 0, and the observed ``y`` (pupil) instead of the
        potential.
    """
    priors = priors or default_event_priors(design)
    coords = _coords(design) | {"pupil": np.arange(design.n_pupils)}
    with pm.Model(coords=coords) as model:
        terms = _fixed_effects(design, priors, effect_prior)
        u = pm.Normal("u", mu=0.0, sigma=terms.sd_school, dims="school")
        v = pm.Normal("v", mu=0.0, sigma=terms.sd_cell, dims="cell")
        mu = (terms.cohort_mean[design.cohort_idx]
              + pt.dot(design.X - design.X.mean(axis=0), terms.beta)
              + pt.dot(design.E, terms.event) + u[design.school_idx] + v[design.cell_idx])
        pm.Normal("y", mu=mu, sigma=terms.sigma, observed=design.y, dims="pupil")
    return model
