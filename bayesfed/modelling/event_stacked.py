r"""The stacked event-time model: federated schools compared with their own founding cohort.

Design and estimand
-------------------
Federations were founded in different years (founding cohorts :math:`e`), and each federation
has matched non-federated schools with the same founding year, observed over the same calendar
years. A cell :math:`c = (j, k)` is school :math:`j`'s pupils in year :math:`k` since founding
(calendar year :math:`t = e_j + k`); :math:`F_j` is the federated flag, :math:`f(j)` the
federation. For pupil :math:`i` of cell :math:`c`:

.. math::

    y_i = \gamma_{e,k} + (x_i - \bar x)^\top\beta
          + F_j\,[\,g_e + \theta_{e,k}\,] + F_j\,1[k \ge 0]\,b_{f(j)}
          + u_j + v_{j,k} + \epsilon_i,

* :math:`\gamma_{e,k}`: founding-cohort x calendar-year effects (a stacked design): a federated
  school is compared only with the schools of its own founding cohort in the same calendar
  year, never with schools founded earlier or later, so no already-treated school serves as a
  control (Sun & Abraham 2021; Callaway & Sant'Anna 2021; Borusyak, Jaravel & Spiess 2024);
* :math:`g_e`: the federated-vs-matched gap of cohort :math:`e` in the reference year
  :math:`k = -1` (it plays the part of school fixed effects: federations formed by weaker
  schools do not bias the effects);
* :math:`\theta_{e,k}`: the effect of federation on cohort :math:`e` in year :math:`k \ge 0`,
  :math:`\theta_{e,k} = \delta_k + \eta_{e,k}`, a common path :math:`\delta` (a random walk
  with drift over :math:`k`, :math:`\delta_k - \delta_{k-1} \sim N(d, \tau_s^2)`, so that a
  steadily growing effect is not flattened towards its mean; or independent) plus cohort
  deviations :math:`\eta_{e,k}`, partially pooled
  across cohorts with sd ``sd_cohort_effect`` :math:`\tau_\eta` (with the random walk a
  random walk too: :math:`\eta_{e,0}, \eta_{e,k} - \eta_{e,k-1} \sim N(0, \tau_\eta^2)`,
  so a cohort whose effect grows faster drifts from the common path); for :math:`k \le -2`
  the placebo leads :math:`\theta_{e,k} = \lambda_{e,k}` (zero under parallel trends and no
  anticipation);
* :math:`b_f \sim N(0, \tau_b^2)`: the federation's deviation of the effect
  (``sd_federation_effect``; federation is the unit that is treated);
* :math:`u_j \sim N(0, \tau^2)` school intercepts; :math:`v_{j,k}` school-by-cohort shocks,
  AR(1) over a school's consecutive years, :math:`\mathrm{corr}(v_{j,k}, v_{j,k'}) =
  \rho^{|k-k'|}`, variance :math:`\omega^2` (``shocks = "iid"``: :math:`\rho = 0`);
  :math:`\epsilon_i \sim N(0, \sigma^2)`.

The estimand is the average effect on the federated pupils (:mod:`bayesfed.posterior.effects`):
:math:`ATT(e,k)` = the mean over cohort :math:`e`'s federated pupils in year :math:`k` of
:math:`\theta_{e,k} + b_{f}`, and :math:`ATT(k) = \sum_e w(e,k) ATT(e,k)` with :math:`w(e,k)`
the share of the federated pupils in year :math:`k` who are in cohort :math:`e` (or the share
of the federations). Identification: parallel trends within founding cohort (federated and
matched schools of a cohort would have moved alike without federation) and no anticipation.

Marginal likelihood
-------------------
Everything Gaussian given the standard deviations and :math:`\rho` is integrated out exactly,
so NUTS samples only :math:`\beta` and the variance parameters. Each school's event-time grid
has :math:`T` positions (the years :math:`k_{\min}..K`); :math:`n_{jk}` pupils (0 where the
school has none), cell means :math:`\bar y_{jk}`, residuals :math:`r_{jk} = \bar y_{jk} - m -
(\bar x_{jk} - \bar x)^\top\beta` (:math:`m` the prior mean of :math:`\gamma`).

*The shocks* (information form, so that empty cells need nothing special): with
:math:`h_{jk} = n_{jk}/\sigma^2` and the AR(1) precision :math:`\Lambda = R(\rho)^{-1}/\omega^2`
(tridiagonal), :math:`J_j = \Lambda + \mathrm{diag}(h_j)` is tridiagonal, and the precision of
school :math:`j`'s cell means given the block and :math:`u_j` integrated is

.. math::

    M_v = H - H J^{-1} H, \qquad
    M_u = M_v - w\,q q^\top,\; q = M_v 1,\; w = \tau^2 / (1 + \tau^2\,1^\top q).

:math:`J^{-1}` comes from the continuants of :math:`J` (forward :math:`\vartheta`, backward
:math:`\varphi`): :math:`(J^{-1})_{ab} = (\rho/c)^{|a-b|}\vartheta_{\min(a,b)}
\varphi_{\max(a,b)+1}/\det J` with :math:`c = \omega^2(1-\rho^2)` (Usmani 1994), :math:`O(T^2)`
per school, vectorised over schools. *The federation deviations*: the schools of federation
:math:`f` share :math:`b_f` on their post-founding cells :math:`p`, a rank-one term,
:math:`M_f = \mathrm{blockdiag}(M_u) - w_f Q_f Q_f^\top` with :math:`Q_f = \sum_{j \in f}
M_{u,j} p`, :math:`s_f = p^\top Q_f`, :math:`w_f = \tau_b^2/(1 + \tau_b^2 s_f)`.

*The Gaussian block* :math:`x = (\tilde\gamma, \mu, \delta)`: per founding cohort the
:math:`T` values :math:`\tilde\gamma_{e,\cdot} = \gamma_{e,\cdot} - m` (every school of the
cohort) and :math:`\mu_{e,\cdot} = \tilde\gamma_{e,\cdot} + g_e + \theta_{e,\cdot}` (its
federated schools), and :math:`\delta`. In these coordinates the data's precision is
block-diagonal: :math:`\sum_{j \in e,\ \mathrm{matched}} M_{u,j}` for
:math:`\tilde\gamma_e` and :math:`\sum_{f \in e} M_f` for :math:`\mu_e`; the prior
(:func:`block_prior`) is a Gaussian whose precision :math:`Q` is a sum of constant matrices
over :math:`1/\mathrm{var}` of independent components (:math:`\tilde\gamma`, :math:`g`,
:math:`\lambda`, :math:`\eta`, :math:`\delta_0` and the random walk's steps; the map from
:math:`x` to them has determinant 1). With :math:`G = Q + H` and :math:`b` the data's linear
term,

.. math::

    -2 \log p(y \mid \beta, \sigma, \omega, \rho, \tau, \tau_b, \tau_\eta, \tau_s) =
    N \log 2\pi\sigma^2 + W(\beta)/\sigma^2
    + \sum_j \big[\log\det J_j + T \log\omega^2 + (T-1)\log(1-\rho^2)
    + \log(1 + \tau^2 1^\top q_j)\big] + \sum_f \log(1 + \tau_b^2 s_f) \\
    + r^\top M r + \log\det Q^{-1} + \log\det G - b^\top G^{-1} b,

with :math:`W(\beta)` the pooled within-cell sum of squares (as in
:mod:`bayesfed.modelling.event_pooled`). Per gradient this costs :math:`O(J T^3)` for :math:`J`
schools plus one Cholesky factorisation of :math:`G` (:math:`2ET + K + 2` rows, the effects of years
0..K and the drift: 87 for five cohorts, eight years and K = 5), whatever the
number of pupils. The sampler evaluates it and its gradient in one numba kernel
(:mod:`bayesfed.modelling.stacked_kernel`, adjoint by hand); :func:`marginal_loglik` writes the same
likelihood as a PyTensor graph, the reference the kernel's value and gradient are tested
against. After sampling, :func:`bayesfed.posterior.event_draws.posterior_draws` draws :math:`x`
from :math:`N(G^{-1}b, G^{-1})` and then each :math:`b_f` from its Gaussian conditional, one
per posterior draw. ``tests/test_event_stacked.py`` checks the marginal (graph and kernel)
against the dense Gaussian density of the pupils written directly from the model above.

Priors
------
With :math:`s_y` the outcome's sd (pupils of the fit) and :math:`e_s` = ``[priors] effect_sd``
(:data:`bayesfed.modelling.priors.EFFECT_SD`, 1), effects are stated in units of :math:`s_y`, as the
per-year ``federated`` coefficient's (:mod:`bayesfed.modelling.priors`):

==================================  ===============================================
parameter                           default prior
==================================  ===============================================
``beta[k]``                         :math:`N(0, s_y / (s_k \sqrt{p}))` (jointly scaled)
:math:`\gamma_{e,k}`                :math:`N(\bar y, 2.5 s_y)`
:math:`g_e, \lambda, \delta_0, d`   :math:`N(0, e_s s_y)` (independent effects: each
                                    :math:`\delta_k`)
``tau_step``                        :math:`\mathrm{HalfNormal}(s_y / 4)`
``sd_cohort_effect``                :math:`\mathrm{HalfNormal}(s_y / 4)`
``sd_federation_effect``            :math:`\mathrm{HalfNormal}(s_y / 4)`
``sd_school``, ``sd_cell``, sigma   :math:`\mathrm{HalfNormal}(s_y)`
``shock_ar``                        :math:`(\rho + 1)/2 \sim \mathrm{Beta}(2, 2)`
==================================  ===============================================

Why: the coefficients' and the cohort x year effects' priors are :mod:`bayesfed.modelling.priors`'
(the latter the intercept's); an effect of a school-level change beyond two pupil sds is
implausible; the half-normal priors of the step and heterogeneity sds have their mode at 0,
so a constant effect, the same for every cohort and federation, is allowed (not a
zero-avoiding gamma), and put 95% of their mass below half a pupil sd; the AR(1) correlation's
prior is centred on 0 and keeps away from the unit-root edges, where a school's shocks and its
intercept cannot be told apart. NUTS samples those three half-normal sds as the absolute values
of Normal variables (``<name>_signed``, dropped from the saved posterior): the same prior and
posterior, without the log scale's steep wall where a posterior piles up at 0
(:func:`symmetric_sd`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from bayesfed.design.cells import REFERENCE_YEAR
from bayesfed.design.stacked import StackedData
from bayesfed.modelling.priors import StackedPriors, resolve_stacked_priors
from bayesfed.modelling.stacked_kernel import SCALARS, draw_parts, stacked_loglik

Shocks = Literal["ar1", "iid"]
EffectPrior = Literal["random_walk", "independent"]

#: A floor under three variances, in units of the effect prior's sd: the variances of the cohort
#: deviations and of the random walk's steps and :math:`\omega^2(1-\rho^2)` get
#: ``(VARIANCE_FLOOR * effect)**2`` added (part of the model: the exactness tests include it).
#: A standard deviation of 1e-3 outcome sds is indistinguishable from 0 in any study, and the
#: floor keeps the block's precision well conditioned when a warm-up trajectory sends an sd
#: towards 0: with 1e-8 a chain reached a step sd of 0 (underflow), the Cholesky factorisation
#: of a precision of 1e15 failed, and the chain stopped (coverage study: 321 divergences in one
#: chain, R-hat 1.6, one study in 260).
VARIANCE_FLOOR = 1e-3


@dataclass(frozen=True)
class BlockLayout:
    """Where each part of the Gaussian block :math:`x = (\\tilde\\gamma, \\mu, \\delta,
    d)` sits (:func:`block_layout`).

    Attributes
    ----------
    gamma, mu : ndarray of int, shape (n_foundings, T)
        Positions of :math:`\\tilde\\gamma_{e,k}` and :math:`\\mu_{e,k}`.
    delta : int
        First position of :math:`\\delta` (years 0..K follow).
    drift : int or None
        Position of the random walk's drift :math:`d` (None for independent effects).
    size : int
        The block's length K.
    """

    gamma: np.ndarray
    mu: np.ndarray
    delta: int
    drift: int | None
    size: int


def block_layout(n_foundings: int, years: tuple[int, ...], effect_prior: EffectPrior
                 ) -> BlockLayout:
    """The :class:`BlockLayout` of a grid of ``years`` (leads, -1, 0..K)."""
    T = len(years)
    ET = n_foundings * T
    n_effects = T - years.index(REFERENCE_YEAR) - 1
    drift = 2 * ET + n_effects if effect_prior == "random_walk" else None
    return BlockLayout(gamma=np.arange(ET).reshape(n_foundings, T),
                       mu=ET + np.arange(ET).reshape(n_foundings, T), delta=2 * ET,
                       drift=drift, size=2 * ET + n_effects + (drift is not None))


class BlockPrior(NamedTuple):
    """The block's prior precision :math:`Q = \\sum_g R_g^\\top R_g / \\mathrm{var}_g`
    (:func:`block_prior`): per group of independent components, the constant matrix
    :math:`R_g^\\top R_g` (K, K) and how many components it has, and the block's layout."""

    gram: dict[str, np.ndarray]
    count: dict[str, int]
    layout: BlockLayout


def block_prior(n_foundings: int, years: tuple[int, ...], effect_prior: EffectPrior
                ) -> BlockPrior:
    """The block prior's constant parts (module docstring): groups ``gamma``
    (:math:`\\tilde\\gamma`, variance ``level.sigma``\\ :sup:`2`), ``effect`` (gaps, leads,
    :math:`\\delta_0` and the drift :math:`d`, or every :math:`\\delta_k`,
    ``effect``\\ :sup:`2`), ``eta`` (cohort deviations, ``sd_cohort_effect``\\ :sup:`2`) and
    ``step`` (the random walk's steps less its drift, :math:`\\delta_k - \\delta_{k-1} - d`,
    ``tau_step``\\ :sup:`2`).

    Each component is a row :math:`R` on the block: :math:`\\phi_{e,k} = \\mu_{e,k} -
    \\tilde\\gamma_{e,k}`; the gap :math:`g_e = \\phi_{e,-1}`; a lead or effect
    :math:`\\theta_{e,k} = \\phi_{e,k} - \\phi_{e,-1}`; :math:`\\eta_{e,k} = \\theta_{e,k} -
    \\delta_k`. With ``effect_prior = "random_walk"`` each cohort's deviations are a random walk
    too: :math:`\\eta_{e,0}` and the steps :math:`\\eta_{e,k} - \\eta_{e,k-1}` are the
    ``eta`` components (a cohort whose effect grows faster drifts away from the common path
    year by year); with ``"independent"``, each :math:`\\eta_{e,k}`.
    """
    T = len(years)
    r = years.index(REFERENCE_YEAR)
    n_effects = T - r - 1
    layout = block_layout(n_foundings, years, effect_prior)
    K = layout.size
    rows: dict[str, list[np.ndarray]] = {"gamma": [], "effect": [], "eta": [], "step": []}

    def row(*terms: tuple[int, float]) -> np.ndarray:
        out = np.zeros(K)
        for i, v in terms:
            out[i] += v
        return out

    for e in range(n_foundings):
        g, m = layout.gamma[e], layout.mu[e]
        phi = [((m[i], 1.0), (g[i], -1.0)) for i in range(T)]
        for i in range(T):
            rows["gamma"].append(row((g[i], 1.0)))
        rows["effect"].append(row(*phi[r]))
        eta = []  # eta_{e,k} = theta_{e,k} - delta_k, as (position, coefficient) terms
        for i in range(T):
            if i == r:
                continue
            theta = (*phi[i], *((j, -v) for j, v in phi[r]))
            if i < r:
                rows["effect"].append(row(*theta))
                continue
            eta.append((*theta, (layout.delta + i - r - 1, -1.0)))
            if effect_prior == "random_walk" and len(eta) > 1:  # its step
                rows["eta"].append(row(*eta[-1], *((j, -v) for j, v in eta[-2])))
            else:
                rows["eta"].append(row(*eta[-1]))
    d = layout.delta
    for k in range(n_effects):
        if effect_prior == "independent" or k == 0:
            rows["effect"].append(row((d + k, 1.0)))
        else:
            rows["step"].append(row((d + k, 1.0), (d + k - 1, -1.0), (layout.drift, -1.0)))
    if layout.drift is not None:
        rows["effect"].append(row((layout.drift, 1.0)))
    gram = {g: (np.array(v).T @ np.array(v) if v else np.zeros((K, K))) for g, v in rows.items()}
    return BlockPrior(gram, {g: len(v) for g, v in rows.items()}, layout)


#: Scalars of the packed container ``stacked_constants`` (:func:`stacked_constants`), in
#: order; then the vectors (slopes' means and sds, the pupils' mean predictors, ``Xy``) and
#: ``XX``.
_PACKED = ("level_mu", "level_sigma", "effect", "tau_step", "sd_cohort_effect",
           "sd_federation_effect", "sd_school", "sd_cell", "sigma", "shock_ar", "n_pupils",
           "yy")


def stacked_constants(data: StackedData, priors: StackedPriors) -> np.ndarray:
    """Every number of the model that depends on the data but not per school, as one vector
    (the container ``stacked_constants``), so the compiled graph depends only on the spec's
    structure and numba's cache serves a new data set.

    Returns
    -------
    ndarray, shape (12 + 4 n_coef + n_coef**2,)
    """
    scalars = [priors.level.mu, priors.level.sigma, priors.effect, priors.tau_step,
               priors.sd_cohort_effect, priors.sd_federation_effect, priors.sd_school,
               priors.sd_cell, priors.sigma, priors.shock_ar, data.n_pupils, data.yy]
    return np.concatenate([scalars, [s.mu for s in priors.slopes],
                           [s.sigma for s in priors.slopes], data.x_mean, data.Xy,
                           np.ravel(data.XX)]).astype(float)


def _unpack(packed, p: int) -> dict[str, pt.TensorVariable]:
    out = {name: packed[i] for i, name in enumerate(_PACKED)}
    head = len(_PACKED)
    for i, name in enumerate(("slope_mu", "slope_sigma", "x_mean", "Xy")):
        out[name] = packed[head + i * p: head + (i + 1) * p]
    out["XX"] = packed[head + 4 * p:].reshape((p, p))
    return out


class SchoolAlgebra(NamedTuple):
    r"""Per-school factors of the precision :math:`M_u` of a school's cell means, its
    intercept and shocks integrated (:func:`school_algebra`): :math:`M_u = H - H J^{-1} H - w
    q q^\top`, with :math:`H J^{-1} H` semiseparable, :math:`(H J^{-1} H)_{ij} = A_i B_j` for
    :math:`i \le j` (and :math:`A_j B_i` below), so that products with :math:`M_u` and sums
    of :math:`M_u` over schools need no (S, T, T) array (:func:`apply_precision`,
    :func:`precision_sums`). NumPy arrays or tensors alike."""

    h: object  # (S, T): n / sigma^2, 0 for an empty cell
    A: object  # (S, T); independent shocks: the diagonal of H J^-1 H
    B: object  # (S, T); None for independent shocks
    q: object  # (S, T): M_v 1 = h - H J^-1 H 1
    w: object  # (S,): tau^2 / (1 + tau^2 1'q)
    log_det: object  # (S,): log det J + T log w^2 + (T-1) log(1-rho^2) + log(1 + tau^2 1'q)


def _sandwich(A, B, x):
    """:math:`(H J^{-1} H) x` of every school from its factors; ``x`` (S, T)."""
    if B is None:  # diagonal
        return A * x
    after = (B * x)[:, ::-1].cumsum(axis=1)[:, ::-1]  # sum over j >= i of B_j x_j
    before = (A * x).cumsum(axis=1) - A * x  # sum over j < i of A_j x_j
    return A * after + B * before


def apply_precision(algebra: SchoolAlgebra, x):
    """:math:`M_u x` of every school, ``x`` (S, T) -> (S, T)."""
    return (algebra.h * x - _sandwich(algebra.A, algebra.B, x)
            - algebra.w[:, None] * algebra.q * (algebra.q * x).sum(axis=1)[:, None])


def precision_sums(algebra: SchoolAlgebra, groups, T: int):
    r""":math:`\sum_{j} g_{kj} M_{u,j}` for each group row of ``groups`` (G, S) (weights, e.g.
    0/1 membership), shape (G, T, T): three matrix products over the schools."""
    G = groups.shape[0]

    def products(left, right):  # sum_j g_kj left_ja right_jb, (G, T, T)
        weighted = (groups[:, :, None] * left[None]).transpose(0, 2, 1).reshape((G * T, -1))
        return pt.dot(weighted, right).reshape((G, T, T))

    if algebra.B is None:  # diagonal
        sandwich = pt.dot(groups, algebra.A)[:, :, None] * np.eye(T)[None]
    else:
        AB = products(algebra.A, algebra.B)
        upper = np.triu(np.ones((T, T), dtype=bool))[None]
        sandwich = pt.where(upper, AB, AB.transpose(0, 2, 1))
    rank_one = products(algebra.w[:, None] * algebra.q, algebra.q)
    diagonal = pt.dot(groups, algebra.h)[:, :, None] * np.eye(T)[None]
    return diagonal - sandwich - rank_one


def school_algebra(n, sigma, sd_cell, sd_school, rho, one_minus_rho2, T: int,
                   floor: float | pt.TensorVariable = 0.0) -> SchoolAlgebra:
    r"""The :class:`SchoolAlgebra` of every school (module docstring).

    :math:`J^{-1}` from the pivots of :math:`J`'s LDL factorisations from either end (ratios
    of continuants, so nothing overflows however small :math:`\omega^2(1-\rho^2)`):
    :math:`d_i = a_i - o^2/d_{i-1}`, :math:`f_i = a_i - o^2/f_{i+1}`, :math:`(J^{-1})_{jj} =
    1/(d_j + f_j - a_j)` and :math:`(J^{-1})_{ij} = (J^{-1})_{jj} \prod_{m=i}^{j-1}
    (-o/d_m)` for :math:`i < j`, with :math:`a` the diagonal and :math:`o = -\rho/c` the
    off-diagonal of :math:`J`, :math:`c = \omega^2(1-\rho^2)`; :math:`\log\det J =
    \sum_i \log d_i`. With :math:`L` the cumulative sums of :math:`\log|o/d_m|` and
    :math:`s = \mathrm{sign}(\rho)`, :math:`(J^{-1})_{ij} = (s^i e^{-L_i})(s^j e^{L_j}
    (J^{-1})_{jj})` for :math:`i \le j`: a semiseparable matrix, whose factors times
    :math:`h` are :math:`A` and :math:`B`. (:math:`d_m \ge 1/c` for :math:`m < T`, so each
    :math:`|o/d_m| \le |\rho| < 1`; :math:`e^{-L}` overflows only for :math:`|\rho|` below
    about :math:`10^{-40}`, and :math:`|\rho|` is taken at least :math:`10^{-20}`, which changes
    the likelihood by less than :math:`10^{-20}`.)

    Parameters
    ----------
    n : tensor, shape (S, T)
        Pupils per school and grid year (0: none).
    sigma, sd_cell, sd_school : tensor scalars
        :math:`\sigma`, :math:`\omega`, :math:`\tau` (outcome units).
    rho, one_minus_rho2 : tensor scalars or floats
        :math:`\rho` and :math:`1 - \rho^2` (0 and 1 for independent shocks; passed
        separately so that :math:`1 - \rho^2` can be computed without cancellation).
    T : int
        Grid length (at least 2).
    floor : float or tensor scalar
        Added to :math:`c = \omega^2(1-\rho^2)` (:data:`VARIANCE_FLOOR`).
    """
    h = n / sigma**2
    c = sd_cell**2 * one_minus_rho2 + floor
    ends = pt.concatenate([[1.0], pt.repeat(1 + rho**2, T - 2), [1.0]])
    a = h + ends[None, :] / c
    off2 = (rho / c) ** 2
    d = [a[:, 0]]  # forward pivots
    for i in range(1, T):
        d.append(a[:, i] - off2 / d[-1])
    f = [a[:, T - 1]]  # backward pivots
    for i in range(T - 2, -1, -1):
        f.append(a[:, i] - off2 / f[-1])
    d, f = pt.stack(d, axis=1), pt.stack(f[::-1], axis=1)  # (S, T)
    diagonal = 1 / (d + f - a)
    if isinstance(rho, float) and rho == 0.0:  # J diagonal: H J^-1 H = diag(A), no B
        A, B = h * h * diagonal, None
    else:
        logs = pt.log(pt.maximum(pt.abs(rho), 1e-20) / c) - pt.log(d[:, :-1])
        L = pt.concatenate([pt.zeros_like(logs[:, :1]), pt.cumsum(logs, axis=1)], axis=1)
        sign = pt.switch(pt.lt(rho, 0), (-1.0) ** np.arange(T), np.ones(T))[None, :]
        A = h * sign * pt.exp(-L)
        B = h * sign * pt.exp(L) * diagonal
    q = h - _sandwich(A, B, pt.ones_like(h))
    s = q.sum(axis=1)
    w = sd_school**2 / (1 + sd_school**2 * s)
    # log det Lambda^-1 = T log c - log(1 - rho^2) (= T log w^2 + (T-1) log(1 - rho^2))
    log_det = (pt.log(d).sum(axis=1) + T * pt.log(c) - pt.log(one_minus_rho2)
               + pt.log1p(sd_school**2 * s))
    return SchoolAlgebra(h, A, B, q, w, log_det)


class Params(NamedTuple):
    """The sampled parameters the likelihood needs (tensors)."""

    beta: pt.TensorVariable
    sigma: pt.TensorVariable
    sd_cell: pt.TensorVariable
    sd_school: pt.TensorVariable
    rho: pt.TensorVariable | float
    one_minus_rho2: pt.TensorVariable | float
    sd_federation: pt.TensorVariable | None
    sd_cohort: pt.TensorVariable
    tau_step: pt.TensorVariable | None
    shock_ar_01: pt.TensorVariable | None = None  # (rho + 1)/2 as sampled; None: iid shocks


def marginal_loglik(cells, index, federation_founding, constants: dict, params: Params,
                    prior: BlockPrior, years: tuple[int, ...], n_foundings: int,
                    n_federations) -> pt.TensorVariable:
    """The module docstring's log-likelihood (nats) as a PyTensor graph: the reference the
    fused kernel the sampler evaluates is checked against (:func:`reference_loglik`,
    ``tests/test_stacked_kernel.py``), itself checked against the pupils' dense Gaussian
    density (``tests/test_event_stacked.py``).

    Parameters
    ----------
    cells : tensor, shape (S, T, 2 + p)
        :attr:`bayesfed.design.stacked.StackedData.cells`.
    index : tensor of int, shape (S, 3)
        Each school's founding cohort, federated flag and federation (0 for matched).
    federation_founding : tensor of int, shape (F,)
    constants : dict of tensors
        :func:`stacked_constants`, unpacked.
    params : Params
    prior : BlockPrior
    years : tuple of int
        The grid.
    n_foundings : int
    n_federations : int or tensor
    """
    T, E = len(years), n_foundings
    n, ybar, Xbar = cells[:, :, 0], cells[:, :, 1], cells[:, :, 2:]
    founding, federated, federation = index[:, 0], index[:, 1], index[:, 2]
    floor = (VARIANCE_FLOOR * constants["effect"]) ** 2
    algebra = school_algebra(n, params.sigma, params.sd_cell, params.sd_school, params.rho,
                             params.one_minus_rho2, T, floor)
    r = ybar - constants["level_mu"] - pt.dot(Xbar - constants["x_mean"], params.beta)
    Mr = apply_precision(algebra, r)
    quad = (r * Mr).sum()
    log_det = algebra.log_det.sum()
    in_cohort = pt.eq(founding[None, :], np.arange(E)[:, None])  # (E, S)
    fed = pt.cast(federated, "float64")
    onehot = pt.concatenate([in_cohort * (1 - fed)[None, :], in_cohort * fed[None, :]])
    H = precision_sums(algebra, onehot, T)  # (2E, T, T): gamma_e..., mu_e...
    b = pt.dot(onehot, Mr)  # (2E, T)
    post = np.array([k >= 0 for k in years], dtype=float)
    fed_Q = pt.zeros((n_federations, T))
    fed_pMr = pt.zeros((n_federations,))
    fed_w = pt.zeros((n_federations,))
    if params.sd_federation is not None:
        Mp = apply_precision(algebra, pt.ones_like(r) * post) * fed[:, None]  # (S, T)
        fed_Q = fed_Q[federation].inc(Mp)
        fed_pMr = fed_pMr[federation].inc(pt.dot(Mr, post) * fed)
        s_f = pt.dot(fed_Q, post)
        t2 = params.sd_federation**2
        fed_w = t2 / (1 + t2 * s_f)
        of_cohort = pt.eq(federation_founding[None, :], np.arange(E)[:, None])  # (E, F)
        weighted = (of_cohort[:, :, None] * (fed_w[:, None] * fed_Q)[None])  # (E, F, T)
        H = pt.inc_subtensor(H[E:], -pt.dot(weighted.transpose(0, 2, 1).reshape((E * T, -1)),
                                            fed_Q).reshape((E, T, T)))
        b = pt.inc_subtensor(b[E:], -pt.dot(of_cohort, (fed_w * fed_pMr)[:, None] * fed_Q))
        quad = quad - pt.sum(fed_w * fed_pMr**2)
        log_det = log_det + pt.sum(pt.log1p(t2 * s_f))
    # the block: prior precision plus the data's block-diagonal precision
    variances = {"gamma": constants["level_sigma"] ** 2, "effect": constants["effect"] ** 2,
                 "eta": params.sd_cohort**2 + floor}
    if params.tau_step is not None:
        variances["step"] = params.tau_step**2 + floor
    Q = sum(pt.as_tensor(prior.gram[g]) / v for g, v in variances.items())
    log_det_cov = sum(prior.count[g] * pt.log(v) for g, v in variances.items())
    eye = np.eye(2 * E)
    data_block = (H[:, :, None, :] * eye[:, None, :, None]).reshape((2 * E * T, 2 * E * T))
    G = pt.inc_subtensor(Q[: 2 * E * T, : 2 * E * T], data_block)
    b_vec = pt.concatenate([b.ravel(), pt.zeros(prior.layout.size - 2 * E * T)])
    chol = pt.linalg.cholesky(G)
    half = pt.linalg.solve_triangular(chol, b_vec, lower=True)
    beta = params.beta
    within = (constants["yy"] - 2 * pt.dot(beta, constants["Xy"])
              + pt.dot(beta, pt.dot(constants["XX"], beta)))
    N = constants["n_pupils"]
    minus2 = (N * pt.log(2 * np.pi * params.sigma**2) + within / params.sigma**2 + log_det
              + quad + log_det_cov + 2 * pt.sum(pt.log(pt.diag(chol))) - pt.sum(half**2))
    return -0.5 * minus2


class StackedModel(NamedTuple):
    """:func:`build_stacked`: the PyMC model and what the exact draws need."""

    model: pm.Model
    data: StackedData
    priors: StackedPriors
    prior: BlockPrior
    deviations: bool
    shocks: Shocks


def container_values(data: StackedData, priors: StackedPriors) -> dict[str, np.ndarray]:
    """The values of the model's data containers (:func:`build_stacked`): everything it
    takes from the data, so a model compiled for one data set serves another of the same
    structure (:func:`bayesfed.sampling.nuts.sample_reusing`)."""
    return {"stacked_constants": stacked_constants(data, priors), "school_cells": data.cells,
            "school_index": np.column_stack([data.founding_idx, data.federated,
                                             np.maximum(data.federation_idx, 0)]),
            "federation_founding": data.federation_founding}


def _coords(data: StackedData) -> dict[str, list[str]]:
    return {"predictor": list(data.coef_names), "founding": list(data.foundings),
            "event_year": [str(k) for k in data.effect_years],
            "lead_year": [str(k) for k in data.lead_years],
            "federation": list(data.federations), "school": list(data.schools)}


#: Suffix of the free variable whose absolute value is a :func:`symmetric_sd` scale.
SIGNED = "_signed"


def symmetric_sd(name: str, sigma) -> pt.TensorVariable:
    r"""A HalfNormal(``sigma``) standard deviation sampled as :math:`|x|`, :math:`x \sim
    \mathrm{Normal}(0, \text{sigma})` (free variable ``<name>_signed``, deterministic
    ``name``): the same prior and posterior of the sd, since the likelihood depends on its
    square only. For an sd whose posterior reaches 0 (cohort deviations, the random walk's
    steps, federation deviations: often not distinguishable from 0) the log scale NUTS
    would otherwise sample has a long left tail and a steep right wall, where a step size
    tuned to the bulk diverges: 2-4 divergent transitions in 4,000 national-size draws, and
    none with :math:`x` (``docs/benchmarks.md``, section "Scales sampled by their sign")."""
    return pm.Deterministic(name, pt.abs(pm.Normal(name + SIGNED, mu=0.0, sigma=sigma)))


def _f64(value):
    return value if isinstance(value, pt.TensorVariable) else np.float64(value)


def build_stacked(data: StackedData, priors: StackedPriors | None = None,
                  effect_prior: EffectPrior = "random_walk", shocks: Shocks = "ar1",
                  federation_deviations: bool = True) -> StackedModel:
    """Build the stacked event-time model with every Gaussian part integrated out.

    The data are containers (numba compiles constants into the machine code, and the
    compiled graph then serves any data set of the same structure): ``school_cells``
    (:attr:`bayesfed.design.stacked.StackedData.cells`), ``school_index`` (S, 3: founding
    cohort, federated flag, federation), ``federation_founding`` (F,) and ``stacked_constants``
    (:func:`stacked_constants`).

    Returns
    -------
    StackedModel
        The model's free variables: ``beta`` (predictor), ``sigma``, ``sd_school``,
        ``sd_cell``, ``shock_ar_01`` (AR(1) shocks; deterministic ``shock_ar`` =
        :math:`\\rho`) and, as :func:`symmetric_sd` samples them, ``sd_cohort_effect``,
        ``tau_step`` (random walk) and ``sd_federation_effect`` (federation deviations).
        The likelihood is the potential ``marginal_loglik``;
        :func:`bayesfed.posterior.event_draws.posterior_draws` adds the block and the
        deviations.
    """
    if effect_prior not in ("random_walk", "independent"):
        raise ValueError(f"effect_prior must be 'random_walk' or 'independent', "
                         f"got {effect_prior!r}")
    if shocks not in ("ar1", "iid"):
        raise ValueError(f"shocks must be 'ar1' or 'iid', got {shocks!r}")
    priors = priors or resolve_stacked_priors(data)
    prior = block_prior(len(data.foundings), data.years, effect_prior)
    p = len(data.coef_names)
    values = container_values(data, priors)
    with pm.Model(coords=_coords(data)) as model:
        containers = {name: pm.Data(name, value) for name, value in values.items()}
        constants = _unpack(containers["stacked_constants"], p)
        beta = pm.Normal("beta", mu=constants["slope_mu"], sigma=constants["slope_sigma"],
                         dims="predictor")
        rho, one_minus_rho2, rho01 = 0.0, 1.0, None
        if shocks == "ar1":
            rho01 = pm.Beta("shock_ar_01", alpha=_f64(priors.shock_ar),
                            beta=_f64(priors.shock_ar))
            rho = pm.Deterministic("shock_ar", 2 * rho01 - 1)
            one_minus_rho2 = 4 * rho01 * (1 - rho01)
        params = Params(
            beta=beta,
            sigma=pm.HalfNormal("sigma", sigma=constants["sigma"]),
            sd_cell=pm.HalfNormal("sd_cell", sigma=constants["sd_cell"]),
            sd_school=pm.HalfNormal("sd_school", sigma=constants["sd_school"]),
            rho=rho,
            one_minus_rho2=one_minus_rho2,
            sd_federation=(symmetric_sd("sd_federation_effect",
                                         constants["sd_federation_effect"])
                           if federation_deviations else None),
            sd_cohort=symmetric_sd("sd_cohort_effect", constants["sd_cohort_effect"]),
            tau_step=(symmetric_sd("tau_step", constants["tau_step"])
                      if effect_prior == "random_walk" else None),
            shock_ar_01=rho01,
        )
        pm.Potential("marginal_loglik", fused_loglik(params, containers, prior, data))
    return StackedModel(model, data, priors, prior, federation_deviations, shocks)


def reference_loglik(parts: StackedModel) -> pt.TensorVariable:
    """:func:`marginal_loglik`'s graph on the model's own free variables and data containers
    (not part of the model's density, which is the fused kernel's)."""
    model, data = parts.model, parts.data
    names = set(model.named_vars)
    rho01 = model["shock_ar_01"] if "shock_ar_01" in names else None
    params = Params(
        beta=model["beta"], sigma=model["sigma"], sd_cell=model["sd_cell"],
        sd_school=model["sd_school"],
        rho=2 * rho01 - 1 if rho01 is not None else 0.0,
        one_minus_rho2=4 * rho01 * (1 - rho01) if rho01 is not None else 1.0,
        sd_federation=(model["sd_federation_effect"] if "sd_federation_effect" in names
                       else None),
        sd_cohort=model["sd_cohort_effect"],
        tau_step=model["tau_step"] if "tau_step" in names else None, shock_ar_01=rho01)
    constants = _unpack(model["stacked_constants"], len(data.coef_names))
    return marginal_loglik(model["school_cells"], model["school_index"],
                           model["federation_founding"], constants, params, parts.prior,
                           data.years, len(data.foundings), len(data.federations))


#: The block prior's groups in the order the fused kernel takes them.
_GROUPS = ("gamma", "effect", "eta", "step")

#: Values the fused kernel takes for parameters a variant of the model does not have: iid
#: shocks (rho = 0), no federation deviations, independent effects (no step group).
_ABSENT = {"shock_ar_01": 0.5, "sd_federation_effect": 0.0, "tau_step": 1.0}


def _kernel_constants(prior: BlockPrior, data: StackedData) -> tuple:
    """The fused kernel's structural inputs after the data containers: the block prior's grams
    (4, K, K) and counts (4,), the post-founding indicator of the grid (T,), the number of
    founding cohorts and :data:`VARIANCE_FLOOR`."""
    return (np.stack([prior.gram[g] for g in _GROUPS]),
            np.array([prior.count[g] for g in _GROUPS], dtype=float),
            np.array([k >= 0 for k in data.years], dtype=float),
            np.int64(len(data.foundings)), np.float64(VARIANCE_FLOOR))


def fused_loglik(params: Params, containers: dict, prior: BlockPrior, data: StackedData
                 ) -> pt.TensorVariable:
    """:func:`marginal_loglik`'s log-likelihood from the fused kernel
    (:mod:`bayesfed.modelling.stacked_kernel`: the same number, its gradient by hand, one pass over
    the schools), what the sampler evaluates; ``containers`` are :func:`build_stacked`'s data."""
    def given(value, name):
        return value if value is not None else pt.as_tensor(_ABSENT[name])

    loglik, _, _ = stacked_loglik(
        params.beta, params.sigma, params.sd_cell, params.sd_school,
        given(params.shock_ar_01, "shock_ar_01"),
        given(params.sd_federation, "sd_federation_effect"), params.sd_cohort,
        given(params.tau_step, "tau_step"),
        *(containers[name] for name in _CONTAINERS), *_kernel_constants(prior, data))
    return loglik


#: The data containers in the order the fused kernel takes them.
_CONTAINERS = ("school_cells", "school_index", "federation_founding", "stacked_constants")


class DrawParts(NamedTuple):
    """What the exact draws of one posterior draw need
    (:func:`bayesfed.modelling.stacked_kernel.draw_parts`; shapes there)."""

    loglik: float
    block_mean: np.ndarray
    block_chol: np.ndarray
    fed_w: np.ndarray
    fed_Q: np.ndarray
    fed_pMr: np.ndarray
    school_precision: np.ndarray
    school_log_det: np.ndarray
    residual: np.ndarray


def draw_function(parts: StackedModel):
    """A function of the free variables' values (in ``model.free_RVs`` order) to the
    :class:`DrawParts` of that draw, from the fused kernel and the model's data containers
    as they are when it is called (so a model whose containers were refilled is served)."""
    model = parts.model
    names = [v.name.removesuffix(SIGNED) for v in model.free_RVs]
    signed = [v.name.endswith(SIGNED) for v in model.free_RVs]  # symmetric_sd's: |x| is the sd
    constants = _kernel_constants(parts.prior, parts.data)

    def draw(*values) -> DrawParts:
        point = _ABSENT | {name: abs(value) if sign else value
                           for name, value, sign in zip(names, values, signed, strict=True)}
        data = [model[name].get_value(borrow=True) for name in _CONTAINERS]
        return DrawParts(*draw_parts(np.asarray(point["beta"], dtype=float),
                                     *(float(point[n]) for n in SCALARS), *data, *constants))

    return draw


def effect_variables(x: np.ndarray, b: np.ndarray, data: StackedData, layout: BlockLayout,
                     deviations: bool) -> dict[str, xr.DataArray]:
    """The named effects of block draws and deviations.

    Parameters
    ----------
    x : ndarray, shape (n_chains, n_draws, K)
        Draws of the block (:class:`BlockLayout`).
    b : ndarray, shape (n_chains, n_draws, F)
        Draws of the federation deviations.
    data : StackedData
    layout : BlockLayout
    deviations : bool
        Whether ``b`` is modelled.

    Returns
    -------
    dict of str to DataArray
        ``delta`` (event_year: the common path), ``cohort_effect`` (founding, event_year:
        :math:`\\theta_{e,k}`), ``lead`` (founding, lead_year: :math:`\\lambda_{e,k}`),
        ``federated_gap`` (founding: :math:`g_e`), with the random walk ``effect_drift`` (its
        drift :math:`d`, outcome units a year) and, with deviations, ``federation_deviation``
        (federation); outcome units, dims chain and draw first.
    """
    r = data.reference
    gamma = x[..., layout.gamma]  # (chain, draw, E, T)
    phi = x[..., layout.mu] - gamma
    theta = phi - phi[..., r: r + 1]
    coords = {"founding": list(data.foundings), "event_year": [str(k) for k in data.effect_years],
              "lead_year": [str(k) for k in data.lead_years]}
    dims = ("chain", "draw")
    delta = x[..., layout.delta: layout.delta + len(data.effect_years)]
    out = {
        "delta": xr.DataArray(delta, dims=(*dims, "event_year"),
                              coords={"event_year": coords["event_year"]}),
        "cohort_effect": xr.DataArray(theta[..., r + 1:], dims=(*dims, "founding", "event_year"),
                                      coords={k: coords[k] for k in ("founding", "event_year")}),
        "lead": xr.DataArray(theta[..., :r], dims=(*dims, "founding", "lead_year"),
                             coords={k: coords[k] for k in ("founding", "lead_year")}),
        "federated_gap": xr.DataArray(phi[..., r], dims=(*dims, "founding"),
                                      coords={"founding": coords["founding"]}),
    }
    if layout.drift is not None:
        out["effect_drift"] = xr.DataArray(x[..., layout.drift], dims=dims)
    if deviations:
        out["federation_deviation"] = xr.DataArray(
            b, dims=(*dims, "federation"), coords={"federation": list(data.federations)})
    return out
