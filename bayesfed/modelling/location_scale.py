r"""The two-level model with a residual sd by school (a mixed-effects location-scale model,
Hedeker, Mermelstein & Demirtas 2008), every school-level variable integrated out.

For pupil :math:`i` in school :math:`j`, with the random-intercept model's fixed part
(:mod:`bayesfed.modelling.two_level`):

.. math::

    y_{ij} &= \alpha + x_{ij}^\top\beta + a_j + e_{ij}, \quad
    e_{ij} \sim \mathrm{Normal}(0, \sigma_j^2), \quad
    \log\sigma_j = \log\sigma + \omega_j, \\
    (a_j, \omega_j) &\sim \mathrm{MvNormal}\Big(0, \begin{pmatrix} \tau^2 & \rho\tau s \\
    \rho\tau s & s^2 \end{pmatrix}\Big), \quad
    s \sim \mathrm{HalfNormal}(s_\omega), \quad (\rho + 1)/2 \sim \mathrm{Beta}(\eta, \eta),

brms's ``bf(y ~ x + (1 | p | school), sigma ~ 1 + (1 | p | school))``. :math:`\sigma` =
``sigma`` is the median school's pupil sd (the sd at :math:`\omega_j = 0`), :math:`s` =
``sd_log_sigma`` the sd of the schools' log pupil sds, :math:`\rho` = ``cor_log_sigma`` the
correlation of a school's intercept with its log pupil sd. The Beta prior on :math:`(\rho+1)/2`
is the LKJ(:math:`\eta`) prior of a 2 x 2 correlation matrix (both densities are proportional
to :math:`(1-\rho^2)^{\eta-1}`), :math:`\eta` =
:data:`~bayesfed.modelling.priors.LKJ_ETA` as for random slopes, and :math:`s_\omega` =
:data:`~bayesfed.modelling.priors.SD_LOG_SIGMA_PRIOR`. The pupil variance of the variance
partition is the schools' mean :math:`E[\sigma_j^2] = \sigma^2 e^{2 s^2}`
(:func:`bayesfed.posterior.partition.pupil_variance`).

The intercept, in closed form. Given :math:`\omega_j` the intercept is Gaussian,
:math:`a_j \mid \omega_j \sim \mathrm{Normal}(m_j, t^2)` with :math:`m_j = \rho\tau\omega_j/s`
and :math:`t^2 = \tau^2(1 - \rho^2)`, so it integrates out school by school as in the
random-intercept model, with the school's own pupil variance :math:`\sigma_j^2`:

.. math::

    -2\log p(y_j \mid \omega_j, \cdot) = n_j\log 2\pi
    + (n_j - 1)\log\sigma_j^2 + \log(\sigma_j^2 + n_j t^2) + W_j(\beta)/\sigma_j^2
    + n_j (r_j - m_j)^2 / (\sigma_j^2 + n_j t^2),

with :math:`r_j = \bar y_j - \mu_j` the school's mean residual and :math:`W_j(\beta)` its
within-school residual sum of squares, a quadratic in :math:`\beta` of the school's centred
cross products (:attr:`~bayesfed.design.suffstats.SchoolSummary.within`).

The log sd, by quadrature. :math:`p(y_j \mid \cdot) = \int p(y_j \mid \omega, \cdot)\,
N(\omega; 0, s^2)\, d\omega` has no closed form, but it is one-dimensional and its integrand
is sharply peaked and close to Gaussian (a school's pupils determine :math:`\omega_j` to about
:math:`1/\sqrt{2(n_j-1)}`, 0.05 for 200 pupils). It is computed by adaptive Gauss-Hermite
quadrature (Liu & Pierce 1994; :func:`loglik_and_grad`): :data:`HERMITE_NODES` nodes
centred at the integrand's mode and scaled by its curvature there, both found by
:data:`NEWTON_STEPS` Newton steps from the mode of the school's within-school sum of squares.
The same function serves the model and the per-draw school log-likelihoods of
leave-one-school-out. So NUTS samples only the fixed part, ``sd_school``, ``sigma``,
``sd_log_sigma`` and ``cor_log_sigma``, whatever the number of schools or pupils. Sampling
the :math:`J` log sds instead failed the gates on the shipped study, whose pupil sd does not
vary by school: centred, E-BFMI 0.03 (the funnel at :math:`s \to 0`); non-centred, bulk ESS
150-256 from 4,000 draws. ``tests/modelling/test_location_scale.py`` checks the collapsed
density against the pupils' dense multivariate normal integrated by adaptive numerical
quadrature (scipy's ``quad``) to 1e-8.

After sampling, each school's log sd is drawn from its conditional (one-dimensional, by the
inverse of its distribution function on a grid: :func:`draw_log_sd`), then its intercept from
its Gaussian conditional given that (:func:`intercept_conditional`), so the stored
``u``, ``school_effect``, ``log_sigma_school`` and ``school_sigma`` (:math:`\sigma_j`) are
draws from the joint posterior (:func:`add_scale_draws`).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numba
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from pytensor.gradient import grad_undefined
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import basic as numba_basic

from bayesfed.design.suffstats import SchoolSummary, residual_ss
from bayesfed.modelling.priors import LKJ_ETA, SD_LOG_SIGMA_PRIOR, PriorSet
from bayesfed.modelling.two_level import centred_fixed_part

#: Gauss-Hermite nodes of the quadrature (module docstring).
HERMITE_NODES = 32

#: Newton steps to the integrand's mode, from the best of ``START_POINTS`` candidates: the
#: mode of the within-school part and the prior combined as Gaussians, and evenly spaced
#: points from 1 below the lower of the prior's mode and the within-school part's to 1.5
#: above the higher (log units).
NEWTON_STEPS = 5
START_POINTS = 33

#: Grid points of :func:`draw_log_sd`'s inverse distribution function, over ``GRID_SPAN``
#: curvature sds either side of the mode.
GRID_POINTS = 257
GRID_SPAN = 9.0

_NODES, _WEIGHTS = np.polynomial.hermite.hermgauss(HERMITE_NODES)
_LOG_WEIGHTS = np.log(_WEIGHTS)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@numba.njit(cache=True)
def _log_f(omega, n, ss, r, log_sigma, t2, rho_tau, s):  # pragma: no cover - compiled
    """The integrand's log (module docstring): the school's log-likelihood given its log sd
    deviation ``omega``, its intercept integrated out, plus ``omega``'s normal log prior."""
    log_s2 = 2 * (log_sigma + omega)
    s2 = math.exp(log_s2)
    v = s2 + n * t2
    z = omega / s
    d = r - rho_tau * z
    return (-0.5 * (n * 2 * _HALF_LOG_2PI + (n - 1) * log_s2 + math.log(v) + ss / s2
                    + n * d * d / v)
            - 0.5 * z * z - math.log(s) - _HALF_LOG_2PI)


@numba.njit(cache=True)
def _mode_and_scale(n, ss, r, log_sigma, t2, rho_tau, s):  # pragma: no cover - compiled
    """The integrand's mode and curvature sd: the best of the mode of the within-school part
    and the prior combined as Gaussians and ``START_POINTS`` evenly spaced points from 1
    below the lower of the prior's mode (0) and the within-school part's to 1.5 above the
    higher (log units; far from the data the integrand can have a mode at each, and one
    beyond where a large mean residual pulls the sd up), then Newton's method on central
    differences."""
    own, weight = 0.0, 0.0
    if n > 1:
        own = 0.5 * math.log(max(ss, 1e-300) / (n - 1)) - log_sigma
        weight = 2 * (n - 1)  # the within part's curvature at its mode
    precision = weight + 1 / (s * s)
    scale = 1 / math.sqrt(precision)
    mode = own * weight / precision
    best = _log_f(mode, n, ss, r, log_sigma, t2, rho_tau, s)
    low, high = min(own, 0.0) - 1.0, max(own, 0.0) + 1.5
    for k in range(START_POINTS):
        point = low + (high - low) * k / (START_POINTS - 1)
        value = _log_f(point, n, ss, r, log_sigma, t2, rho_tau, s)
        if value > best:
            mode, best = point, value
    for _ in range(NEWTON_STEPS):
        h = 1e-3 * scale
        f0 = _log_f(mode - h, n, ss, r, log_sigma, t2, rho_tau, s)
        f1 = _log_f(mode, n, ss, r, log_sigma, t2, rho_tau, s)
        f2 = _log_f(mode + h, n, ss, r, log_sigma, t2, rho_tau, s)
        curv = min((f2 - 2 * f1 + f0) / (h * h), -1.0 / (100 * scale) ** 2)
        step = -((f2 - f0) / (2 * h)) / curv
        mode += min(max(step, -3 * scale), 3 * scale)
        scale = 1 / math.sqrt(-curv)
    return mode, scale


@numba.njit(cache=True)
def _school(n, ss, r, log_sigma, t2, rho_tau, s, grad):  # pragma: no cover - compiled
    """One school's log-likelihood, its log sd integrated out by adaptive Gauss-Hermite
    quadrature, and (in ``grad``, when it has length 6) its derivatives with respect to
    ``ss``, ``r``, ``log_sigma``, ``t2``, ``rho_tau`` and ``s``: the quadrature's weighted
    mean of the integrand's derivatives at the nodes (the nodes' centre and scale held fixed:
    the integral does not depend on them, up to the quadrature's error)."""
    mode, scale = _mode_and_scale(n, ss, r, log_sigma, t2, rho_tau, s)
    root2h = math.sqrt(2.0) * scale
    terms = np.empty(HERMITE_NODES)
    top = -np.inf
    for k in range(HERMITE_NODES):
        x = _NODES[k]
        terms[k] = (_log_f(mode + root2h * x, n, ss, r, log_sigma, t2, rho_tau, s)
                    + x * x + _LOG_WEIGHTS[k])
        top = max(top, terms[k])
    total = 0.0
    for k in range(HERMITE_NODES):
        terms[k] = math.exp(terms[k] - top)
        total += terms[k]
    if grad.size:
        grad[:] = 0.0
        for k in range(HERMITE_NODES):
            weight = terms[k] / total
            omega = mode + root2h * _NODES[k]
            s2 = math.exp(2 * (log_sigma + omega))
            v = s2 + n * t2
            z = omega / s
            d = r - rho_tau * z
            pull = n * d / v  # the derivative with respect to the intercept's mean shift
            grad[0] -= weight * 0.5 / s2
            grad[1] -= weight * pull
            grad[2] -= weight * ((n - 1) + s2 / v - ss / s2 - n * d * d * s2 / (v * v))
            grad[3] -= weight * 0.5 * n * (1 / v - n * d * d / (v * v))
            grad[4] += weight * pull * z
            grad[5] += weight * (-pull * rho_tau * z / s + z * z / s - 1 / s)
    return top + math.log(total) + math.log(root2h)


@numba.njit(cache=True)
def loglik_and_grad(n, ss, r, log_sigma, t2, rho_tau, s):  # pragma: no cover - compiled
    """The model's log-likelihood (nats): the sum over schools of each school's, its log sd
    integrated out by adaptive Gauss-Hermite quadrature (module docstring), with its
    gradient with respect to each school's ``ss`` and ``r`` (school,) and to ``log_sigma``,
    ``t2``, ``rho_tau`` and ``s`` (4,)."""
    schools = n.size
    grad_ss, grad_r, grad = np.empty(schools), np.empty(schools), np.zeros(4)
    one = np.empty(6)
    value = 0.0
    for j in range(schools):
        value += _school(n[j], ss[j], r[j], log_sigma, t2, rho_tau, s, one)
        grad_ss[j], grad_r[j] = one[0], one[1]
        grad += one[2:]
    return value, grad_ss, grad_r, grad


@numba.njit(cache=True)
def school_logliks(n, ss, r, log_sigma, t2, rho_tau, s):  # pragma: no cover - compiled
    """Each school's log-likelihood, its log sd integrated out (as :func:`loglik_and_grad`),
    per draw and school, shape (draws, school): ``ss`` and ``r`` (draws, school), the scalars
    (draws,)."""
    draws, schools = r.shape
    out = np.empty((draws, schools))
    none = np.empty(0)
    for d in range(draws):
        for j in range(schools):
            out[d, j] = _school(n[j], ss[d, j], r[d, j], log_sigma[d], t2[d], rho_tau[d],
                                s[d], none)
    return out


@numba.njit(cache=True)
def _draw_log_sd(n, ss, r, log_sigma, t2, rho_tau, s, uniform):  # pragma: no cover
    """:func:`draw_log_sd`'s draws, shape (draws, school), from uniforms of that shape."""
    draws, schools = r.shape
    out = np.empty((draws, schools))
    grid, f, cdf = np.empty(GRID_POINTS), np.empty(GRID_POINTS), np.empty(GRID_POINTS)
    for d in range(draws):
        for j in range(schools):
            args = (n[j], ss[d, j], r[d, j], log_sigma[d], t2[d], rho_tau[d], s[d])
            mode, scale = _mode_and_scale(*args)
            width = scale * 2 * GRID_SPAN / (GRID_POINTS - 1)
            top = -np.inf
            for k in range(GRID_POINTS):
                grid[k] = mode + scale * (-GRID_SPAN) + width * k
                f[k] = _log_f(grid[k], *args)
                top = max(top, f[k])
            cdf[0] = 0.0
            for k in range(GRID_POINTS):
                f[k] = math.exp(f[k] - top)
                if k:
                    cdf[k] = cdf[k - 1] + 0.5 * (f[k] + f[k - 1]) * width  # trapezoids
            target = uniform[d, j] * cdf[-1]
            k = 0
            while k < GRID_POINTS - 2 and cdf[k + 1] < target:
                k += 1
            # within cell k the density is linear, f0 + (f1 - f0) u / width: invert its integral
            rest, f0 = target - cdf[k], f[k]
            slope = (f[k + 1] - f0) / width
            if abs(slope) * width > 1e-12 * f0:
                u = (math.sqrt(max(f0 * f0 + 2 * slope * rest, 0.0)) - f0) / slope
            else:
                u = rest / f0
            out[d, j] = grid[k] + min(max(u, 0.0), width)
    return out


def log_integrand(omega, n, ss, r, log_sigma, t2, rho_tau, s) -> np.ndarray:
    """The integrand's log (nats; module docstring) at each ``omega``, the other arguments
    scalars: one school's log-likelihood given its log sd deviation plus that deviation's
    normal log prior."""
    return np.array([_log_f(float(w), n, ss, r, log_sigma, t2, rho_tau, s)
                     for w in np.ravel(omega)]).reshape(np.shape(omega))


class ScaleLogLik(Op):
    """:func:`loglik_and_grad` as a PyTensor Op: inputs ``n``, ``ss``, ``r`` (school,) and the
    scalars ``log_sigma``, ``t2``, ``rho_tau``, ``s``; outputs the log-likelihood and its three
    gradients, which its ``pullback`` reuses, so a graph of the log density and its gradient
    runs the kernel once."""

    __props__ = ()

    def make_node(self, *inputs):
        """The node of the kernel's inputs (tensors or numbers)."""
        inputs = [pt.as_tensor_variable(x) for x in inputs]
        return Apply(self, inputs, [pt.dscalar(), pt.dvector(), pt.dvector(), pt.dvector()])

    def perform(self, node, inputs, output_storage):
        """Run :func:`loglik_and_grad` (backends other than numba)."""
        arrays = [np.asarray(x, dtype=float) for x in inputs[:3]]
        scalars = [float(x) for x in inputs[3:]]
        value, grad_ss, grad_r, grad = loglik_and_grad(*arrays, *scalars)
        output_storage[0][0] = np.asarray(value)
        output_storage[1][0] = grad_ss
        output_storage[2][0] = grad_r
        output_storage[3][0] = grad

    def pullback(self, inputs, outputs, cotangents):
        """The gradient outputs times the log-likelihood's cotangent; ``n`` has none."""
        g = cotangents[0]
        _, grad_ss, grad_r, grad = outputs
        return ([grad_undefined(self, 0, inputs[0]), g * grad_ss, g * grad_r]
                + [g * grad[i] for i in range(4)])


scale_loglik = ScaleLogLik()


def _source_digest() -> str:
    """SHA-256 of this module's source: part of the kernel's key in PyTensor's numba cache (as
    :func:`bayesfed.modelling.stacked_kernel.source_digest`)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@numba_basic.register_funcify_and_cache_key(ScaleLogLik)
def _numba_scale_loglik(op, node, **kwargs):
    @numba_basic.numba_njit
    def fused(n, ss, r, log_sigma, t2, rho_tau, s):
        value, grad_ss, grad_r, grad = loglik_and_grad(n, ss, r, log_sigma.item(), t2.item(),
                                                       rho_tau.item(), s.item())
        return np.asarray(value), grad_ss, grad_r, grad

    return fused, f"bayesfed.modelling.location_scale.ScaleLogLik:{_source_digest()}"


def _within_ss(within, beta):
    """:math:`W_j(\\beta)` of each school from its centred cross products ``within`` (school,
    1 + p, 1 + p; outcome first) and ``beta`` (p,) or None (tensors)."""
    if beta is None:
        return within[:, 0, 0]
    return (within[:, 0, 0] - 2 * pt.dot(within[:, 1:, 0], beta)
            + pt.sum(pt.dot(within[:, 1:, 1:], beta) * beta, axis=1))


def build_location_scale(summary: SchoolSummary, priors: PriorSet,
                         sd_log_sigma: float = SD_LOG_SIGMA_PRIOR,
                         eta: float = LKJ_ETA) -> pm.Model:
    """Build the collapsed location-scale model (module docstring).

    Parameters
    ----------
    summary : SchoolSummary
    priors : PriorSet
        The fixed part's, ``sd_school``'s and ``sigma``'s priors, as for the random-intercept
        model (``sigma``'s applies to the median school's pupil sd).
    sd_log_sigma : float
        Scale of ``sd_log_sigma``'s HalfNormal prior (log units).
    eta : float
        Shape of the prior of ``cor_log_sigma`` (LKJ of the 2 x 2 correlation).

    Returns
    -------
    pm.Model
        Coord ``predictor``. Free variables ``beta``, ``level``, ``sd_school``, ``sigma``,
        ``sd_log_sigma`` and ``cor_log_sigma_unit`` ((rho + 1) / 2); deterministics
        ``intercept`` and ``cor_log_sigma``; the likelihood is the potential
        ``marginal_loglik``. No school-level variable.
    """
    p = len(summary.coef_names)
    n = summary.n.astype(float)
    x_centre = n @ summary.X_mean / n.sum()
    with pm.Model(coords={"predictor": list(summary.coef_names)}) as model:
        within = pm.Data("scale_within", summary.within)
        x_mean = pm.Data("scale_x_mean", summary.X_mean)
        y_mean = pm.Data("scale_y_mean", summary.y_mean)
        count = pm.Data("scale_n", n)
        beta, level = centred_fixed_part(x_centre, priors.slope_mu, priors.slope_sigma,
                                         np.float64(priors.intercept.mu),
                                         np.float64(priors.intercept.sigma), p)
        fixed = level + (0.0 if beta is None else pt.dot(x_mean - x_centre, beta))
        sd_school = pm.HalfNormal("sd_school", sigma=np.float64(priors.sd_school))
        sigma = pm.HalfNormal("sigma", sigma=np.float64(priors.sigma))
        s = pm.HalfNormal("sd_log_sigma", sigma=np.float64(sd_log_sigma))
        unit = pm.Beta("cor_log_sigma_unit", alpha=np.float64(eta), beta=np.float64(eta))
        rho = pm.Deterministic("cor_log_sigma", 2 * unit - 1)
        pm.Potential("marginal_loglik", scale_loglik(
            count, _within_ss(within, beta), y_mean - fixed, pt.log(sigma),
            sd_school**2 * (1 - rho**2), rho * sd_school, s)[0])
    return model


def draw_parameters(posterior: xr.Dataset, summary: SchoolSummary) -> dict[str, np.ndarray]:
    r"""A fit's draws, chains one after the other, as :func:`log_integrand` takes them.

    Returns
    -------
    dict
        :func:`log_integrand`'s ``n`` (school,), ``within_ss`` and ``resid`` (draws,
        school), ``log_sigma``, ``t2``, ``rho_tau`` and ``s`` (draws, 1); and ``fixed``
        (draws, school: :math:`\mu_j`, the fixed part at each school's mean predictors),
        ``beta`` (draws, p) and ``intercept`` (draws,). Outcome units.
    """
    def flat(name: str) -> np.ndarray:
        da = posterior[name].transpose("chain", "draw", ...).to_numpy()
        return da.reshape(-1, *da.shape[2:])

    intercept = flat("intercept")
    p = len(summary.coef_names)
    beta = flat("beta") if p else np.zeros((intercept.size, 0))
    fixed = intercept[:, None] + beta @ summary.X_mean.T
    tau, rho = flat("sd_school")[:, None], flat("cor_log_sigma")[:, None]
    return {"n": summary.n.astype(float), "within_ss": residual_ss(beta, summary.within),
            "resid": summary.y_mean - fixed, "log_sigma": np.log(flat("sigma"))[:, None],
            "t2": tau**2 * (1 - rho**2), "rho_tau": rho * tau,
            "s": flat("sd_log_sigma")[:, None], "fixed": fixed, "beta": beta,
            "intercept": intercept}


def _kernel_args(d: dict[str, np.ndarray]) -> tuple:
    """:func:`draw_parameters`'s values as the kernels take them."""
    return (d["n"], d["within_ss"], d["resid"],
            *(np.ascontiguousarray(d[k][:, 0]) for k in ("log_sigma", "t2", "rho_tau", "s")))


def school_loglik(posterior: xr.Dataset, summary: SchoolSummary) -> np.ndarray:
    """Each school's log-likelihood per draw, its intercept and log pupil sd integrated out
    (nats), shape (draws, school): the terms of the model's likelihood (for leave-one-school-out
    and prior sensitivity)."""
    d = draw_parameters(posterior, summary)
    return school_logliks(*_kernel_args(d))


def draw_log_sd(d: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    r"""One draw of each school's log pupil-sd deviation :math:`\omega_j` from its conditional
    given the data and each posterior draw of the other parameters, shape (draws, school):
    the inverse of its distribution function, the density (:func:`log_integrand`) piecewise
    linear between :data:`GRID_POINTS` points over ``GRID_SPAN`` curvature sds either side
    of its mode (beyond them a near-Gaussian density has no mass a float can hold). ``d`` is
    :func:`draw_parameters`'s result."""
    return _draw_log_sd(*_kernel_args(d), rng.uniform(size=d["resid"].shape))


def intercept_conditional(d: dict[str, np.ndarray], omega: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of each school effect :math:`a_j` given its log sd deviation ``omega``
    (draws, school), the data and the other parameters (draws, school; outcome units): the
    prior :math:`N(m_j, t^2)` updated by the school's mean residual :math:`r_j` of variance
    :math:`\\sigma_j^2/n_j`, written so that it holds at :math:`t = 0` too. ``d`` is
    :func:`draw_parameters`'s result."""
    s2 = np.exp(2 * (d["log_sigma"] + omega))
    total = s2 + d["n"] * d["t2"]
    shift = d["rho_tau"] * omega / d["s"]
    mean = shift + d["t2"] * d["n"] * (d["resid"] - shift) / total
    return mean, np.sqrt(s2 * d["t2"] / total)


def add_scale_draws(tree: xr.DataTree, summary: SchoolSummary, seed: int) -> xr.DataTree:
    """Add a draw of every school's log pupil sd and intercept per posterior draw to a fit of
    :func:`build_location_scale` (:func:`draw_log_sd`, then :func:`intercept_conditional`).

    Returns
    -------
    xarray.DataTree
        A copy whose ``posterior`` also holds (chain, draw, school): ``log_sigma_school``
        (:math:`\\omega_j`, log units), ``school_sigma`` (:math:`\\sigma_j = \\sigma
        e^{\\omega_j}`), and ``u`` and ``school_effect`` as in the random-intercept model
        (:func:`bayesfed.modelling.two_level.add_school_draws`); outcome units.
    """
    post = tree["posterior"].to_dataset()
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    d = draw_parameters(post, summary)
    rng = np.random.default_rng(seed)
    omega = draw_log_sd(d, rng)
    mean, sd = intercept_conditional(d, omega)
    effect = mean + sd * rng.standard_normal(mean.shape)
    school = np.array(summary.school_level, dtype=bool)
    u = d["intercept"][:, None] + d["beta"][:, school] @ summary.X_mean[:, school].T + effect
    dims = ("chain", "draw", "school")

    def shaped(values: np.ndarray) -> tuple:
        return dims, values.reshape(chains, draws, -1)

    out = tree.copy()
    out["posterior"] = post.assign(
        log_sigma_school=shaped(omega), school_sigma=shaped(np.exp(d["log_sigma"] + omega)),
        u=shaped(u), school_effect=shaped(effect),
    ).assign_coords(school=list(summary.schools))
    return out
