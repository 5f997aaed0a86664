r"""The joint event-time model: every cohort at once, school and cell intercepts integrated out.

Model
-----
For pupil :math:`i` in school :math:`j` and cohort (calendar year) :math:`t`, i.e. in cell
:math:`c = (j, t)`, with pupil predictors :math:`x_i` and event-year row :math:`E_i`
(:mod:`bayesfed.design.cells`: federated flag times ``1[years_since = k]``):

.. math::

    y_i &= \alpha + x_i^\top\beta + \gamma_t + g F_j + E_i^\top(\lambda, \delta)
           + P_c (b_{f(j)} + \theta_{m(j)}) + u_j + v_c + e_i, \\
    u_j &\sim N(0, \tau^2), \quad v_c \sim N(0, \omega^2), \quad e_i \sim N(0, \sigma^2),

with cohort effects :math:`\gamma_t` (:math:`\gamma = 0` for the first cohort), the
``federated_gap`` :math:`g` between federated (:math:`F_j = 1`) and matched schools in the
reference year, federation effects :math:`\delta_k` for years since founding :math:`k = 0..K`,
leads :math:`\lambda_k` for :math:`k \le -2` (placebo terms: zero under parallel trends) and
year :math:`-1` as the reference. The gap plays the part of the school fixed effects of a
two-way fixed-effects event study: without it a level difference between federated and matched
schools (federations formed by weak schools, say) would leak into :math:`\lambda` and
:math:`\delta`. Optional heterogeneity, for a federated school's cells in years since founding
:math:`k \ge 0` (:math:`P_c = 1`): its federation's deviation :math:`b_f \sim N(0,
\tau_b^2)` (``federation_deviations``; ``sd_federation_effect`` :math:`\tau_b`) and its
federation type's deviation :math:`\theta_m \sim N(0, \tau_\theta^2)` (``type_effects``;
``sd_type``), both non-centred; ``type_effect`` :math:`= \bar\delta + \theta_m` is a type's
effect averaged over years 0..K. Effect priors, ``effect_prior``:

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

The Gaussian block. The leads, the effects and, when modelled, the federation and type
deviations, :math:`\theta = (\lambda, \delta, b, \theta_m)`, enter the cell means linearly,
:math:`\mu_c = \mu^0_c + z_c^\top\theta` (:func:`effect_columns`), and have a zero-mean
Gaussian prior with precision :math:`P` (:func:`effect_prior_precision`; for the random walk
it depends on :math:`\tau_{\mathrm{step}}`). So they are integrated out too: writing the
quadratic form above as :math:`r^\top M r` with :math:`r = r^0 - Z\theta`, and
:math:`G = P + Z^\top M Z`, :math:`b = Z^\top M r^0` (both sums over cells and schools of
the same :math:`h_c`, :math:`A_j` and :math:`B_j = \sum_{c \in j} h_c z_c`),

.. math::

    -2 \log p(y \mid \ldots, \tau_{\mathrm{step}}) = [\text{the above at } r^0]
    + \log\det P^{-1} + \log\det G - b^\top G^{-1} b,

one Cholesky factorisation of the :math:`K \times K` matrix :math:`G` per gradient
(:math:`K` = 7 by default). After sampling, :func:`add_effect_draws` draws :math:`\theta`
from its exact conditional posterior :math:`N(G^{-1}b, G^{-1})` beside every posterior draw.

The whole is added to the model as a ``pm.Potential`` (``marginal_loglik``) and costs
:math:`O(C (p + K))` per gradient, whatever the number of pupils (:class:`CellStats` holds the
sufficient statistics). :func:`build_event_time_reference` is the same model written plainly,
pupil rows with sampled :math:`u_j`, :math:`v_c` and :math:`\theta`;
``tests/test_event_time.py`` checks that the two agree exactly (the marginal equals the joint
density divided by the Gaussian conditional density of the intercepts and :math:`\theta`).

Sampled parameters
------------------
NUTS sees ``beta``, ``federated_gap``, ``tau_step`` (random walk), the three sds (and the
heterogeneity sds) and, instead of ``intercept`` and
``gamma``, the ``level`` (mean outcome at the pupils' mean composition :math:`\bar x` and
federated share :math:`\bar F`, averaged over cohorts) and zero-sum ``cohort_deviation``
:math:`d_t`, so that the fixed part of a cell is
:math:`\mathrm{level} + d_t + (\bar x_c - \bar x)^\top\beta + (F_c - \bar F) g + E_c^\top(\lambda,
\delta)`; ``intercept`` :math:`= \mathrm{level} + d_1 - \bar x^\top\beta - \bar F g` and
``gamma`` :math:`= d_t - d_1` are deterministics. Why: with the first cohort as the free reference,
every ``gamma`` and the ``intercept`` share the uncertainty of that one cohort's few schools,
and mix poorly; with a free mean per cohort, all cohort means share the uncertainty of the mean
school intercept and are strongly correlated in the posterior; the level and zero-sum
deviations mix best of the three. Why the Gaussian block is integrated out rather than
sampled: a sampled random walk has a funnel between :math:`\tau_{\mathrm{step}}` and its
steps, which gave divergences with non-centred and centred steps alike (centred ones even at a
higher ``target_accept``), and so did sampled non-centred heterogeneity deviations; with the
block integrated out there are none, with or without the heterogeneity terms, and the
smallest bulk ESS is higher. The measurements: ``docs/benchmarks.md``, section "Event-time
model: sampled vs integrated effects, and a first national-size run".

Priors
------
With :math:`s_y` the outcome's sample sd and :math:`s_k` that of predictor column ``k``
(:func:`bayesfed.modelling.priors.default_priors` supplies ``level``'s, the slopes' and two sds'):

==========================  ========================================  ============================
parameter                   default prior                             why
==========================  ========================================  ============================
``level``                   :math:`N(\bar y, 2.5 s_y)`                the intercept prior of
                                                                      the two-level model, on
                                                                      centred predictors (as
                                                                      rstanarm does)
``beta[k]``                 :math:`N(0, s_y/(s_k\sqrt{p}))`           as in the two-level model
``sd_school``, ``sigma``    :math:`\mathrm{HalfNormal}(s_y)`          as in the two-level model
``sd_cell``                 :math:`\mathrm{HalfNormal}(s_y)`          a third level, same reasoning
``cohort_deviation``        :math:`\mathrm{ZeroSumNormal}(s_y)`       a calendar-year shift of
                                                                      more than 2 sd is implausible
``delta[k]``                :math:`N(0, s_y)` (``delta[0]`` only,     an effect of a school-level
                            random walk)                              change beyond 2 sd of pupil
                                                                      scores is implausible
``lead[k]``                 :math:`N(0, s_y)`                         as ``delta``: no pull
                                                                      towards "no pre-trend"
``federated_gap``           :math:`N(0, s_y)`                         as ``delta``
``sd_federation_effect``    :math:`\mathrm{HalfNormal}(s_y / 4)`      effects that differ between
``sd_type``                 :math:`\mathrm{HalfNormal}(s_y / 4)`      federations by more than
                                                                      half a pupil sd (95% of the
                                                                      prior below) are implausible
``tau_step``                :math:`\mathrm{Gamma}(2, 2 / s_s)`,       mean :math:`s_s`, density
                            :math:`s_s = 0.5 s_y`                     :math:`\propto\tau` near 0
                                                                      (Chung et al. 2013): year-on-
                                                                      year changes below 1 sd
==========================  ========================================  ============================

Coefficients are per unit of their predictor; every other parameter is in outcome units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr

from bayesfed.design.cells import CellStats, EventDesign, cell_stats
from bayesfed.modelling.priors import EventPriors, Normal, resolve_event_priors

EffectPrior = Literal["random_walk", "independent"]


def _coords(design: EventDesign | CellStats) -> dict[str, list[str]]:
    return {
        "school": list(design.schools),
        "cell": list(design.cells),
        "cohort": list(design.cohorts[1:]),
        "cohort_all": list(design.cohorts),
        "predictor": list(design.coef_names),
        "event_year": list(design.effect_terms),
        "step_year": list(design.effect_terms[1:]),
        "lead_year": list(design.lead_terms),
        "federation": list(design.federations),
        "federation_type": list(design.types),
    }


def _f64(value):
    # PyTensor would store a Python float that is exact in float32 (2.5) as a float32 constant.
    return value if isinstance(value, pt.TensorVariable) else np.float64(value)


#: The scalar priors of :class:`EventPriors` in the packed container ``event_constants``
#: (:func:`event_constants`), in order; after them come the pupils' share in federated
#: schools, the pupil count, the school count and the pooled within-cell ``yy``, then the
#: vectors (slopes' means and sds, the pupils' mean predictors, ``Xy``) and ``XX``.
_PACKED_PRIORS = ("cohort", "effect", "lead", "tau_step", "gap", "sd_school", "sd_cell",
                  "sigma", "sd_federation_effect", "sd_type")


def event_constants(stats: CellStats, priors: EventPriors) -> np.ndarray:
    """Every number of the event-time model that depends on the data but is not per cell,
    packed into one vector: the container ``event_constants``.

    With them in a container rather than in the graph, the compiled model depends on the
    data only through its structure (coefficients, cohorts, event years), so numba's cache
    serves a new data set of the same structure and a new national fit skips most of its
    compilation (``docs/benchmarks.md``, section "National-size event-time model read in
    batches (``bench/national_phases.py``)").

    Returns
    -------
    ndarray, shape (16 + 4 n_coef + n_coef**2,)
    """
    return np.concatenate([
        [priors.intercept.mu, priors.intercept.sigma],
        [getattr(priors, name) for name in _PACKED_PRIORS],
        [stats.federated_mean, stats.n_pupils, len(stats.schools), stats.yy],
        [p.mu for p in priors.slopes], [p.sigma for p in priors.slopes],
        stats.x_mean, stats.Xy, np.ravel(stats.XX)]).astype(float)


class _Unpacked(NamedTuple):
    priors: EventPriors  # fields tensors
    x_mean: pt.TensorVariable
    federated_mean: pt.TensorVariable
    n_pupils: pt.TensorVariable
    n_schools: pt.TensorVariable
    yy: pt.TensorVariable
    Xy: pt.TensorVariable
    XX: pt.TensorVariable


def _unpack_constants(packed: pt.TensorVariable, coef_names: tuple[str, ...]) -> _Unpacked:
    """The tensors of :func:`event_constants`' vector."""
    k = len(coef_names)
    head = 2 + len(_PACKED_PRIORS)
    scalars = {name: packed[2 + i] for i, name in enumerate(_PACKED_PRIORS)}
    vectors = [packed[head + 4 + i * k: head + 4 + (i + 1) * k] for i in range(4)]
    priors = EventPriors(
        intercept=Normal(packed[0], packed[1]),
        slopes=tuple(Normal(vectors[0][j], vectors[1][j]) for j in range(k)),
        coef_names=coef_names, **scalars)
    return _Unpacked(priors, vectors[2], packed[head], packed[head + 1],
                     pt.cast(packed[head + 2], "int64"), packed[head + 3], vectors[3],
                     packed[head + 4 + 4 * k:].reshape((k, k)))


class Terms(NamedTuple):
    """The PyTensor variables the likelihood needs (see :func:`_fixed_effects`)."""

    beta: pt.TensorVariable  # (n_coef,)
    cohort_mean: pt.TensorVariable  # (n_cohorts,): level + cohort deviation
    gap: pt.TensorVariable  # federated_gap
    tau_step: pt.TensorVariable | None  # the random walk's step sd, or None
    sd_federation: pt.TensorVariable | None  # sd of the federations' deviations, or None
    sd_type: pt.TensorVariable | None  # sd of the federation types' deviations, or None
    sd_school: pt.TensorVariable
    sd_cell: pt.TensorVariable
    sigma: pt.TensorVariable


def fixed_columns(design: EventDesign | CellStats, cohort_idx: np.ndarray,
                  X_mean: np.ndarray, federated: np.ndarray) -> np.ndarray:
    """Rows' columns of the fixed part without the Gaussian block: cohort one-hot, predictors
    minus the pupils' mean, federated flag minus the pupils' mean.

    Parameters
    ----------
    design : EventDesign or CellStats
        Supplies the cohorts and the pupils' means.
    cohort_idx : ndarray of int, shape (n_rows,)
    X_mean : ndarray, shape (n_rows, n_coef)
        Each row's predictors (a pupil's, or a cell's means).
    federated : ndarray, shape (n_rows,)

    Returns
    -------
    ndarray, shape (n_rows, n_cohorts + n_coef + 1)
        Its product with (cohort means, ``beta``, ``federated_gap``) is the fixed part.
    """
    onehot = cohort_idx[:, None] == np.arange(len(design.cohorts))[None, :]
    return np.column_stack([onehot, X_mean - design.x_mean,
                            federated - design.federated_mean]).astype(float)


def effect_columns(E: np.ndarray, post: np.ndarray, federation_idx: np.ndarray,
                   type_idx: np.ndarray, n_federations: int, n_types: int) -> np.ndarray:
    """The rows' columns of the Gaussian block :math:`\\theta`: event-year indicators, then
    ``post`` times the one-hot federation (``n_federations`` columns, 0 to leave out), then
    ``post`` times the one-hot federation type (``n_types``, 0 to leave out).

    Returns
    -------
    ndarray, shape (n_rows, n_event_terms + n_federations + n_types)
    """
    blocks = [E]
    for idx, n in ((federation_idx, n_federations), (type_idx, n_types)):
        if n:
            blocks.append(post[:, None] * (idx[:, None] == np.arange(n)[None, :]))
    return np.hstack(blocks)


def _fixed_effects(design: EventDesign | CellStats, priors: EventPriors, effect_prior: EffectPrior,
                   federation_deviations: bool = False, type_effects: bool = False,
                   centre: tuple | None = None) -> Terms:
    """Add every parameter but the random intercepts, the leads and the effects to the model
    in context (the random walk's ``tau_step`` included).

    The rest of the fixed part of a row is given by :func:`_row_mean` (the module docstring's
    "Sampled parameters"). ``centre``: the pupils' mean predictors and share in federated
    schools, by default ``design``'s (tensors from the packed constants in the marginal
    model).
    """
    x_mean, federated_mean = centre or (design.x_mean, design.federated_mean)
    if effect_prior not in ("random_walk", "independent"):
        raise ValueError(f"effect_prior must be 'random_walk' or 'independent', "
                         f"got {effect_prior!r}")
    beta = pm.Normal("beta", mu=_stack([s.mu for s in priors.slopes]),
                     sigma=_stack([s.sigma for s in priors.slopes]), dims="predictor")
    level = pm.Normal("level", mu=_f64(priors.intercept.mu), sigma=_f64(priors.intercept.sigma))
    deviation = pm.ZeroSumNormal("cohort_deviation", sigma=_f64(priors.cohort),
                                 dims="cohort_all")
    gap = pm.Normal("federated_gap", mu=0.0, sigma=_f64(priors.gap))
    composition = pt.dot(x_mean, beta) + federated_mean * gap
    pm.Deterministic("intercept", level + deviation[0] - composition)
    pm.Deterministic("gamma", deviation[1:] - deviation[0], dims="cohort")
    tau_step = sd_federation = sd_type = None
    if effect_prior == "random_walk":
        # Gamma(2, 2 / s): mean s, density ~ tau near 0 (boundary-avoiding; module docstring)
        tau_step = pm.Gamma("tau_step", alpha=2.0, beta=2.0 / _f64(priors.tau_step))
    if federation_deviations:
        if not design.federations:
            raise ValueError("federation_deviations needs the federation column")
        sd_federation = pm.HalfNormal("sd_federation_effect",
                                      sigma=_f64(priors.sd_federation_effect))
    if type_effects:
        if not design.types:
            raise ValueError("type_effects needs the federation_type column")
        sd_type = pm.HalfNormal("sd_type", sigma=_f64(priors.sd_type))
    return Terms(
        beta=beta,
        cohort_mean=level + deviation,
        gap=gap,
        tau_step=tau_step,
        sd_federation=sd_federation,
        sd_type=sd_type,
        sd_school=pm.HalfNormal("sd_school", sigma=_f64(priors.sd_school)),
        sd_cell=pm.HalfNormal("sd_cell", sigma=_f64(priors.sd_cell)),
        sigma=pm.HalfNormal("sigma", sigma=_f64(priors.sigma)),
    )


def _stack(values: list) -> np.ndarray | pt.TensorVariable:
    """Numbers as an array, tensors as a tensor."""
    if any(isinstance(v, pt.TensorVariable) for v in values):
        return pt.stack(values)
    return np.array(values, dtype=float)


def _row_mean(terms: Terms, fixed) -> pt.TensorVariable:
    """Fixed part of each row without the Gaussian block, ``cohort_mean[t] + (x - xbar)' beta
    + (F - Fbar) gap``, as one product with the rows' :func:`fixed_columns` (a gather by cohort
    cost as much as the product); shape (n_rows,), outcome units."""
    return pt.dot(fixed, pt.concatenate([terms.cohort_mean, terms.beta, terms.gap[None]]))


def differences(n: int) -> np.ndarray:
    """The (n, n) matrix taking a trajectory to its first value and its steps:
    ``(D @ delta)[0] = delta[0]``, ``(D @ delta)[k] = delta[k] - delta[k - 1]``."""
    return np.eye(n) - np.eye(n, k=-1)


def effect_prior_precision(priors: EventPriors, n_leads: int, n_effects: int, terms: Terms,
                           n_federations: int = 0, n_types: int = 0):
    """Precision matrix and log-determinant of the covariance of the zero-mean Gaussian prior
    of :math:`\\theta = (\\lambda, \\delta, b, \\theta_m)`: leads, effects and, when
    modelled, the federations' and the types' deviations (:func:`effect_columns` order).

    Leads are independent :math:`N(0, s_\\lambda^2)`. Effects are independent
    :math:`N(0, s_\\delta^2)` (``terms.tau_step`` None) or a random walk,
    :math:`D\\delta \\sim N(0, \\mathrm{diag}(s_\\delta^2, \\tau^2, \\ldots))` with :math:`D`
    = :func:`differences` (determinant 1). Deviations are independent with variances
    ``sd_federation_effect`` squared and ``sd_type`` squared. The precision is
    :math:`D^\\top \\mathrm{diag}(\\mathrm{var})^{-1} D`, :math:`D` block-diagonal (identity
    outside the effects).

    Returns
    -------
    precision : tensor, shape (K, K)
    log_det_cov : tensor scalar
    """
    lead_var = pt.as_tensor(_f64(priors.lead)) ** 2
    effect_var = pt.as_tensor(_f64(priors.effect)) ** 2
    if terms.tau_step is None:
        var = [pt.repeat(lead_var[None], n_leads), pt.repeat(effect_var[None], n_effects)]
    else:
        var = [pt.repeat(lead_var[None], n_leads), effect_var[None],
               pt.repeat((terms.tau_step**2)[None], n_effects - 1)]
    for sd, n in ((terms.sd_federation, n_federations), (terms.sd_type, n_types)):
        if n:
            var.append(pt.repeat((sd**2)[None], n))
    var = pt.concatenate(var)
    K = n_leads + n_effects + n_federations + n_types
    D = np.eye(K)
    if terms.tau_step is not None:
        D[n_leads: n_leads + n_effects, n_leads: n_leads + n_effects] = differences(n_effects)
    precision = pt.dot(D.T / var[None, :], D)
    return precision, pt.sum(pt.log(var))


@dataclass(frozen=True)
class BlockIndex:
    """Where the cells' columns of the Gaussian block are 1 (:func:`block_index`).

    The columns (:func:`effect_columns`) are indicators with at most a few ones per cell (its
    event year, its federation, its type), so the block's sums over cells are scatter-adds over
    these entries rather than products with a dense (n_cells, K) matrix: at national size the
    dense product and its gradient took almost all of a gradient's time (``docs/benchmarks.md``,
    section "National-size event-time model after issue 5's changes (idle machine)").

    Attributes
    ----------
    entries : ndarray of int, shape (n_entries, 3)
        One row per 1 in the columns: the cell, the column, and ``school * K + column`` (its
        place in a flattened (n_schools, K) array).
    pairs : ndarray of int, shape (n_pairs, 2)
        One row per ordered pair of 1s in the same cell (each entry with itself included): the
        cell and ``column_a * K + column_b`` (its place in a flattened (K, K) array).
    n_columns : int
        ``K``.
    """

    entries: np.ndarray | pt.TensorVariable
    pairs: np.ndarray | pt.TensorVariable
    n_columns: int


def block_index(columns: np.ndarray, school_idx: np.ndarray) -> BlockIndex:
    """The :class:`BlockIndex` of the cells' block columns.

    Parameters
    ----------
    columns : ndarray, shape (n_cells, K)
        0/1 columns of the Gaussian block (:func:`effect_columns` of the cell statistics).
    school_idx : ndarray of int, shape (n_cells,)
        Each cell's school.

    Raises
    ------
    ValueError
        An entry of ``columns`` is neither 0 nor 1.
    """
    if not np.isin(columns, (0.0, 1.0)).all():
        raise ValueError("the block columns of a cell must be 0/1 indicators")
    K = columns.shape[1]
    cell, column = np.nonzero(columns)  # row-major: grouped by cell
    counts = np.bincount(cell, minlength=columns.shape[0])
    starts = np.cumsum(counts) - counts
    partners = counts[cell]  # each entry pairs with every entry of its cell
    first = np.repeat(np.arange(cell.size), partners)
    offset = np.arange(first.size) - np.repeat(np.cumsum(partners) - partners, partners)
    second = starts[cell[first]] + offset
    return BlockIndex(
        entries=np.column_stack([cell, column, school_idx[cell] * K + column]).astype(np.int64),
        pairs=np.column_stack([cell[first], column[first] * K + column[second]]
                              ).astype(np.int64),
        n_columns=K)


@dataclass(frozen=True)
class CellSizes:
    """The distinct cell sizes, so that what depends on a cell only through its size is
    computed once per size (:func:`cell_sizes`).

    Attributes
    ----------
    n : ndarray or tensor, shape (n_sizes,)
        The distinct pupil counts of the cells (float).
    idx : ndarray or tensor of int, shape (n_cells,)
        Each cell's size, as an index into ``n``.
    count : ndarray or tensor, shape (n_sizes,)
        How many cells have each size (float).
    """

    n: np.ndarray | pt.TensorVariable
    idx: np.ndarray | pt.TensorVariable
    count: np.ndarray | pt.TensorVariable


def cell_sizes(n: np.ndarray) -> CellSizes:
    """:class:`CellSizes` of the cells' pupil counts ``n`` (n_cells,)."""
    sizes, idx, count = np.unique(n, return_inverse=True, return_counts=True)
    return CellSizes(n=sizes.astype(float), idx=idx.astype(np.int64), count=count.astype(float))


class Marginal(NamedTuple):
    """The integrated likelihood and the Gaussian conditional posterior of the effects."""

    loglik: pt.TensorVariable  # scalar, nats
    effect_mean: pt.TensorVariable  # (K,): E[theta | y, rest]
    effect_chol: pt.TensorVariable  # (K, K): lower Cholesky factor of the conditional precision


def marginal_loglik(stats: CellStats, block: BlockIndex, n_schools: int, cell_mean, beta,
                    sigma, sd_cell, sd_school, precision, log_det_cov,
                    n_pupils=None, sizes: CellSizes | None = None) -> Marginal:
    """The exact log-likelihood with school and cell intercepts and the Gaussian block
    (leads, effects, deviations) integrated out.

    Parameters
    ----------
    stats : CellStats
        Arrays, or tensors (the model's data containers) for ``n``, ``y_mean`` and
        ``school_idx``.
    block : BlockIndex
        Where the cells' block columns are 1; ``entries`` and ``pairs`` arrays or tensors.
    n_schools : int
    cell_mean : tensor, shape (n_cells,)
        :math:`\\mu_c`, the fixed part at each cell's mean predictors without the leads and
        effects (outcome units).
    beta : tensor, shape (n_coef,)
    sigma, sd_cell, sd_school : tensor scalars
        Pupil, cell and school sds (outcome units).
    precision, log_det_cov : tensors, shapes (K, K) and ()
        Prior of the Gaussian block (:func:`effect_prior_precision`).
    n_pupils : int, optional
        :math:`N`; by default the sum of ``stats.n`` (which must then be an array).
    sizes : CellSizes, optional
        The distinct cell sizes (arrays or tensors); by default :func:`cell_sizes` of
        ``stats.n`` (which must then be an array).

    Returns
    -------
    Marginal
        The module docstring's formula (nats), and the conditional posterior of
        :math:`\\theta` given everything else: mean and Cholesky factor of the precision.
    """
    s2, w2, t2 = sigma**2, sd_cell**2, sd_school**2
    n_pupils = int(stats.n.sum()) if n_pupils is None else n_pupils
    n_cells = stats.y_mean.shape[0]
    K = block.n_columns
    # cells share few distinct sizes (416 among 24,000 at national size): the logs and
    # divisions are made once per size
    sizes = cell_sizes(np.asarray(stats.n)) if sizes is None else sizes
    size_var = s2 + sizes.n * w2  # variance of a cell mean times n_c, per size
    h = (sizes.n / size_var)[sizes.idx]
    r = stats.y_mean - cell_mean
    w = t2 / (1 + t2 * pt.zeros(n_schools)[stats.school_idx].inc(h))  # per school
    A = pt.zeros(n_schools)[stats.school_idx].inc(h * r)
    cell, column, school_column = block.entries[:, 0], block.entries[:, 1], block.entries[:, 2]
    B = pt.zeros(n_schools * K)[school_column].inc(h[cell]).reshape((n_schools, K))
    within = stats.yy - 2 * pt.dot(beta, stats.Xy) + pt.dot(beta, pt.dot(stats.XX, beta))
    log_det = ((n_pupils - n_cells) * pt.log(s2) + pt.sum(sizes.count * pt.log(size_var))
               - pt.sum(pt.log(w / t2)))  # log(1 + t2 H_j) = -log(w_j / t2)
    quad = within / s2 + pt.sum(h * r**2) - pt.sum(w * A**2)
    # the leads and effects: Gaussian in theta with precision G and linear term b
    zhz = pt.zeros(K * K)[block.pairs[:, 1]].inc(h[block.pairs[:, 0]]).reshape((K, K))
    G = precision + zhz - pt.dot(B.T * w[None, :], B)
    b = pt.zeros(K)[column].inc((h * r)[cell]) - pt.dot(B.T, w * A)
    chol = pt.linalg.cholesky(G)
    half = pt.linalg.solve_triangular(chol, b, lower=True)
    log_det = log_det + log_det_cov + 2 * pt.sum(pt.log(pt.diag(chol)))
    quad = quad - pt.sum(half**2)
    loglik = -0.5 * (n_pupils * np.log(2 * np.pi) + log_det + quad)
    mean = pt.linalg.solve_triangular(chol.T, half, lower=False)
    return Marginal(loglik, mean, chol)


class EventModel(NamedTuple):
    """:func:`build_event_time_parts`: the PyMC model and what recovers the Gaussian block."""

    model: pm.Model
    marginal: Marginal
    n_leads: int
    n_federations: int  # 0 without federation deviations
    n_types: int  # 0 without type effects


def build_event_time_parts(
    stats: CellStats,
    priors: EventPriors | None = None,
    effect_prior: EffectPrior = "random_walk",
    federation_deviations: bool = False,
    type_effects: bool = False,
) -> EventModel:
    """:func:`build_event_time`, keeping the conditional posterior of the effects for
    :func:`add_effect_draws`.

    The per-cell arrays are the model's data containers, not constants of the graph (numba
    compiles constants into the machine code, which at national size made compiling slow:
    ``docs/benchmarks.md``, section "National-size event-time model after issue 5's changes
    (idle machine)"): ``cell_y`` (n_cells,) the cells' mean outcomes; ``cell_size`` (n_cells, 2)
    each cell's size index (:class:`CellSizes`) and school; ``size_values`` (n_sizes, 2) the
    distinct cell sizes and how many cells have each; ``cell_fixed`` (n_cells, n_cohorts +
    n_coef + 1) the cohort one-hot, the centred mean predictors and the centred federated flag,
    whose product with (cohort means, ``beta``, ``federated_gap``) is the fixed part of each
    cell; ``block_entries`` and ``block_pairs`` (:class:`BlockIndex`).
    """
    priors = priors or resolve_event_priors(stats)
    n_fed = len(stats.federations) if federation_deviations else 0
    n_types = len(stats.types) if type_effects else 0
    columns = effect_columns(stats.E, stats.post, stats.federation_idx, stats.type_idx,
                             n_fed, n_types)
    index = block_index(columns, stats.school_idx)
    with pm.Model(coords=_coords(stats)) as model:
        sizes = cell_sizes(stats.n)
        constants = _unpack_constants(pm.Data("event_constants", event_constants(stats, priors)),
                                      stats.coef_names)
        cell_y = pm.Data("cell_y", stats.y_mean)
        cell_size = pm.Data("cell_size", np.column_stack([sizes.idx, stats.school_idx]))
        size_values = pm.Data("size_values", np.column_stack([sizes.n, sizes.count]))
        cell_fixed = pm.Data("cell_fixed", fixed_columns(stats, stats.cohort_idx,
                                                         stats.X_mean, stats.federated))
        block = BlockIndex(pm.Data("block_entries", index.entries),
                           pm.Data("block_pairs", index.pairs), index.n_columns)
        terms = _fixed_effects(stats, constants.priors, effect_prior, federation_deviations,
                               type_effects, centre=(constants.x_mean, constants.federated_mean))
        cell_mean = _row_mean(terms, cell_fixed)
        precision, log_det_cov = effect_prior_precision(
            constants.priors, stats.n_leads, len(stats.effect_terms), terms, n_fed, n_types)
        data = replace(stats, y_mean=cell_y, school_idx=cell_size[:, 1], yy=constants.yy,
                       Xy=constants.Xy, XX=constants.XX)
        marginal = marginal_loglik(data, block, constants.n_schools, cell_mean, terms.beta,
                                   terms.sigma, terms.sd_cell, terms.sd_school, precision,
                                   log_det_cov, n_pupils=constants.n_pupils,
                                   sizes=CellSizes(n=size_values[:, 0], idx=cell_size[:, 0],
                                                   count=size_values[:, 1]))
        pm.Potential("marginal_loglik", marginal.loglik)
    return EventModel(model, marginal, stats.n_leads, n_fed, n_types)


def build_event_time(
    stats: CellStats,
    priors: EventPriors | None = None,
    effect_prior: EffectPrior = "random_walk",
    federation_deviations: bool = False,
    type_effects: bool = False,
) -> pm.Model:
    """Build the joint event-time model with the intercepts, leads and effects integrated out.

    Parameters
    ----------
    stats : CellStats
        The pupils' per-cell statistics (:func:`bayesfed.design.cells.cell_stats` of a
        design, or :func:`bayesfed.design.reduce.reduce_file` of a file read in batches).
    priors : EventPriors, optional
        Defaults to :func:`~bayesfed.modelling.priors.resolve_event_priors` of ``stats``.
    effect_prior : {"random_walk", "independent"}
        Prior of the effects ``delta`` (module docstring).
    federation_deviations, type_effects : bool
        Add the heterogeneity terms (module docstring); they need ``stats.federations``
        and ``stats.types``.

    Returns
    -------
    pm.Model
        Coords ``school``, ``cell``, ``cohort_all`` (every cohort), ``cohort`` (all but the
        first), ``predictor``, ``event_year`` (effects, "0".."K"), ``step_year`` ("1".."K"),
        ``lead_year`` (leads, "-2"), ``federation`` and ``federation_type``. Free variables
        ``level``, ``cohort_deviation`` (cohort_all), ``beta`` (predictor),
        ``federated_gap``, ``sd_school``, ``sd_cell``, ``sigma`` and, for the random walk,
        ``tau_step``; with heterogeneity ``sd_federation_effect`` and ``sd_type``.
        Deterministics ``intercept`` and ``gamma`` (cohort). The likelihood is the potential
        ``marginal_loglik``; the leads, effects and deviations are drawn after sampling by
        :func:`add_effect_draws`.
    """
    return build_event_time_parts(stats, priors, effect_prior, federation_deviations,
                                  type_effects).model


def add_effect_draws(parts: EventModel, tree, seed: int):
    """Draw the Gaussian block from its exact conditional posterior, one per draw.

    Given every sampled parameter, :math:`\\theta` (leads, effects and the deviations) is
    Gaussian with precision :math:`G` and mean :math:`G^{-1} b` (:func:`marginal_loglik`), so a
    draw of :math:`\\theta` beside each posterior draw is a draw from the joint posterior.

    Parameters
    ----------
    parts : EventModel
    tree : xarray.DataTree
        The sampled posterior of ``parts.model`` (dims chain, draw).
    seed : int
        Seed of the standard-normal draws.

    Returns
    -------
    xarray.DataTree
        ``tree`` with ``lead`` (lead_year), ``delta`` (event_year), ``step`` (step_year,
        delta_k - delta_{k-1}) and, when modelled, ``federation_deviation`` (federation),
        ``type_deviation`` and ``type_effect`` (federation_type: the type's effect averaged
        over years 0..K) added to its posterior.
    """
    model, marginal = parts.model, parts.marginal
    inputs = list(model.free_RVs)
    fn = pytensor.function(inputs, [marginal.effect_mean, marginal.effect_chol],
                           on_unused_input="ignore")
    post = tree.posterior.to_dataset()
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    values = [post[v.name].transpose("chain", "draw", ...).to_numpy() for v in inputs]
    n_effects = len(model.coords["event_year"])
    K = parts.n_leads + n_effects + parts.n_federations + parts.n_types
    theta = np.empty((n_chains, n_draws, K))
    z = np.random.default_rng(seed).standard_normal((n_chains, n_draws, K))
    for c in range(n_chains):
        for d in range(n_draws):
            mean, chol = fn(*(v[c, d] for v in values))
            theta[c, d] = mean + np.linalg.solve(chol.T, z[c, d])
    ends = np.cumsum([parts.n_leads, n_effects, parts.n_federations, parts.n_types])
    lead, delta, federation, kind = np.split(theta, ends[:-1], axis=-1)
    coords = {k: list(model.coords[k]) for k in ("lead_year", "event_year", "step_year")}
    new = {"lead": (("chain", "draw", "lead_year"), lead),
           "delta": (("chain", "draw", "event_year"), delta),
           "step": (("chain", "draw", "step_year"), np.diff(delta, axis=-1))}
    if parts.n_federations:
        new["federation_deviation"] = (("chain", "draw", "federation"), federation)
        coords["federation"] = list(model.coords["federation"])
    if parts.n_types:
        new["type_deviation"] = (("chain", "draw", "federation_type"), kind)
        new["type_effect"] = (("chain", "draw", "federation_type"),
                              delta.mean(axis=-1, keepdims=True) + kind)
        coords["federation_type"] = list(model.coords["federation_type"])
    tree["posterior"] = xr.DataTree(post.assign(
        {k: xr.DataArray(v[1], dims=v[0]) for k, v in new.items()}).assign_coords(coords))
    return tree


def build_event_time_reference(
    design: EventDesign,
    priors: EventPriors | None = None,
    effect_prior: EffectPrior = "random_walk",
    federation_deviations: bool = False,
    type_effects: bool = False,
) -> pm.Model:
    """The same model written plainly: pupil rows with sampled intercepts, leads and effects.

    A readable reference for :func:`build_event_time` (slow to sample at full size).

    Parameters
    ----------
    design : EventDesign
    priors : EventPriors, optional
    effect_prior : {"random_walk", "independent"}
    federation_deviations, type_effects : bool

    Returns
    -------
    pm.Model
        As :func:`build_event_time`, plus coord ``pupil``; free variables ``u`` (school) and
        ``v`` (cell), both centred at 0, ``lead`` (lead_year) and either ``delta_first`` and
        the centred ``step`` (step_year) with the deterministic ``delta`` (random walk) or a
        free ``delta`` (event_year), the centred ``federation_deviation`` and
        ``type_deviation`` when modelled; the observed ``y`` (pupil) instead of the potential.
    """
    priors = priors or resolve_event_priors(cell_stats(design))
    coords = _coords(design) | {"pupil": np.arange(design.n_pupils)}
    with pm.Model(coords=coords) as model:
        terms = _fixed_effects(design, priors, effect_prior, federation_deviations,
                               type_effects)
        if terms.tau_step is not None:
            delta_first = pm.Normal("delta_first", mu=0.0, sigma=_f64(priors.effect))
            step = pm.Normal("step", mu=0.0, sigma=terms.tau_step, dims="step_year")
            delta = pm.Deterministic(
                "delta", delta_first + pt.concatenate([pt.zeros(1), pt.cumsum(step)]),
                dims="event_year")
        else:
            delta = pm.Normal("delta", mu=0.0, sigma=_f64(priors.effect), dims="event_year")
        lead = pm.Normal("lead", mu=0.0, sigma=_f64(priors.lead), dims="lead_year")
        block = [lead, delta]
        n_fed = len(design.federations) if federation_deviations else 0
        n_types = len(design.types) if type_effects else 0
        if n_fed:
            block.append(pm.Normal("federation_deviation", mu=0.0, sigma=terms.sd_federation,
                                   dims="federation"))
        if n_types:
            block.append(pm.Normal("type_deviation", mu=0.0, sigma=terms.sd_type,
                                   dims="federation_type"))
        u = pm.Normal("u", mu=0.0, sigma=terms.sd_school, dims="school")
        v = pm.Normal("v", mu=0.0, sigma=terms.sd_cell, dims="cell")
        columns = effect_columns(design.E, design.post, design.federation_idx,
                                 design.type_idx, n_fed, n_types)
        mu = (_row_mean(terms, fixed_columns(design, design.cohort_idx, design.X,
                                             design.federated))
              + pt.dot(columns, pt.concatenate(block))
              + u[design.school_idx] + v[design.cell_idx])
        pm.Normal("y", mu=mu, sigma=terms.sigma, observed=design.y, dims="pupil")
    return model
