r"""The stacked event-time model's log-likelihood and its gradient, fused in one numba kernel.

:func:`bayesfed.modelling.event_stacked.marginal_loglik` writes the integrated likelihood as a
PyTensor graph; its gradient, taken by PyTensor, is dozens of separate loops over the schools' (S,
T) arrays and (2E, T, T) products, several times the cost of the pooled model's. This module
computes the same number and its gradient in one pass over the schools, forward and back, with
the adjoint written by hand (the graph stays the reference: ``tests/test_stacked_kernel.py``
checks both to 1e-9; ``docs/benchmarks.md`` has the costs).

The adjoint in brief (notation of :mod:`bayesfed.modelling.event_stacked`; :math:`\ell = -2\log p`).
The block enters through :math:`\log\det G - b^\top G^{-1} b`, so
:math:`\partial\ell/\partial G = G^{-1} + \hat x\hat x^\top` and :math:`\partial\ell/\partial b =
-2\hat x` with :math:`\hat x = G^{-1}b`. With these held fixed, everything a school
:math:`j` of group :math:`g` (a founding cohort's matched or federated schools) contributes is

.. math::

    \mathrm{tr}(C_g M_j) + e_j^\top M_j e_j + \log\det{}_j, \qquad
    C_g = (G^{-1})_{gg},\; e_j = r_j - \hat x_g,

and a federation :math:`f` adds :math:`\log(1 + \tau_b^2 s_f) - w_f (Q_f^\top C_g Q_f + Z_f^2)`
with :math:`Z_f = \sum_{j \in f} p^\top M_j e_j`. So each school's :math:`M_j` has the
cotangent :math:`\bar M_j = C_g + e_j e_j^\top` plus rank-one terms of its federation, and
:math:`\partial\ell/\partial r_j = 2 M_j e_j - 2 w_f Z_f M_j p`. Back through
:math:`M = M_v - w q q^\top` (:math:`q = M_v 1`) and :math:`M_v = H - H J^{-1} H`:
:math:`\mathrm{tr}(\bar M_v\, dM_v) = \sum_a dh_a [\bar M_v - 2 P\bar M_v]_{aa} +
\mathrm{tr}(P \bar M_v P^\top dJ)` with :math:`P = J^{-1}H`, and :math:`dJ` is diagonal plus
the tridiagonal :math:`d\Lambda`, so only the band of :math:`P\bar M_v P^\top` is needed. The
prior's variances: :math:`\partial\ell/\partial v_g = n_g/v_g - \mathrm{tr}((G^{-1} + \hat x
\hat x^\top) R_g^\top R_g)/v_g^2`. Cost: :math:`O(S T^3)` with :math:`T^3` one small matrix
product a school, plus :math:`O(K^3)` for the block.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import grad_undefined
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch import basic as numba_basic

#: The scalar parameters whose gradient :func:`loglik_and_grad` returns, in order.
SCALARS = ("sigma", "sd_cell", "sd_school", "shock_ar_01", "sd_federation_effect",
           "sd_cohort_effect", "tau_step")


@numba.njit(cache=True, inline="always")
def _matvec(M, x, out):
    """``out = M @ x`` for a small (T, T) block of any layout; returns ``out``."""
    T = x.shape[0]
    for i in range(T):
        v = 0.0
        for k in range(T):
            v += M[i, k] * x[k]
        out[i] = v
    return out


@numba.njit(cache=True, inline="always")
def _dot(x, y):
    v = 0.0
    for i in range(x.shape[0]):
        v += x[i] * y[i]
    return v


@numba.njit(cache=True)
def _school_forward(h, c, rho, tau2, Jinv, M, q, work):
    r"""One school's :math:`J^{-1}` and :math:`M_u`, written into ``Jinv`` and ``M`` (T, T),
    and :math:`q = M_v 1` into ``q`` (T,); ``h`` (T,) is :math:`n/\sigma^2`, ``work`` (3, T)
    scratch. Returns ``(s, w, log_det_J)``: :math:`s = 1^\top q`, :math:`w`."""
    T = h.shape[0]
    a, d, f = work[0], work[1], work[2]
    for i in range(T):
        end = 1.0 if (i == 0 or i == T - 1) else 1.0 + rho * rho
        a[i] = h[i] + end / c
    o2 = (rho / c) ** 2
    d[0] = a[0]
    for i in range(1, T):
        d[i] = a[i] - o2 / d[i - 1]
    f[T - 1] = a[T - 1]
    for i in range(T - 2, -1, -1):
        f[i] = a[i] - o2 / f[i + 1]
    log_det_J = 0.0
    for i in range(T):
        log_det_J += math.log(d[i])
        Jinv[i, i] = 1.0 / (d[i] + f[i] - a[i])
        f[i] = rho / (c * d[i])  # f no longer needed: the ratio -o / d_i
    for j in range(T):
        for i in range(j - 1, -1, -1):
            Jinv[i, j] = Jinv[i + 1, j] * f[i]
            Jinv[j, i] = Jinv[i, j]
    s = 0.0
    for i in range(T):
        v = 0.0
        for k in range(T):
            M[i, k] = -h[i] * Jinv[i, k] * h[k]
            v += M[i, k]
        M[i, i] += h[i]
        q[i] = v + h[i]
        s += q[i]
    w = tau2 / (1.0 + tau2 * s)
    for i in range(T):
        for k in range(T):
            M[i, k] -= w * q[i] * q[k]
    return s, w, log_det_J


@numba.njit(cache=True)
def _school_backward(Mbar, h, c, rho, tau2, Jinv, q, s, w, work, P, PM):
    r"""The adjoint of one school's :math:`M_u` and log-determinant terms.

    ``Mbar`` (T, T, symmetric) is :math:`\partial\ell/\partial M_u` (overwritten); the
    log-determinant terms enter with weight 1; ``work`` (2, T), ``P`` and ``PM`` (T, T)
    scratch. Returns the derivatives of :math:`\ell` with respect to :math:`\log\sigma^2`
    through :math:`h` (times -1: :math:`\sum_a \bar h_a h_a`), :math:`c`, :math:`\rho`
    (through :math:`\Lambda` only) and :math:`\tau^2`.
    """
    T = h.shape[0]
    Mq, band = work[0], work[1]
    _matvec(Mbar, q, Mq)
    qMq = _dot(q, Mq)
    one_plus = 1.0 + tau2 * s
    tau2_bar = -qMq / one_plus**2 + s / one_plus
    kappa = w * w * qMq + w
    for i in range(T):
        for k in range(T):
            Mbar[i, k] += kappa - w * (Mq[i] + Mq[k])  # now the cotangent of M_v
            P[i, k] = Jinv[i, k] * h[k]
            PM[i, k] = 0.0
    for i in range(T):
        for m in range(T):
            v = P[i, m]
            for k in range(T):
                PM[i, k] += v * Mbar[m, k]
    h_bar_h = 0.0
    for i in range(T):
        y = 0.0
        for k in range(T):
            y += PM[i, k] * P[i, k]
        h_bar_h += (Mbar[i, i] - 2.0 * PM[i, i] + y + Jinv[i, i]) * h[i]
        band[i] = y + Jinv[i, i]
    off = 0.0  # the first off-diagonal of Lambda's cotangent, summed
    for i in range(T - 1):
        y = 0.0
        for k in range(T):
            y += PM[i, k] * P[i + 1, k]
        off += y + Jinv[i, i + 1]
    interior = 0.0
    for i in range(1, T - 1):
        interior += band[i]
    rho_bar = (2.0 * rho * interior - 2.0 * off) / c
    c_bar = (-(band[0] + band[T - 1] + (1.0 + rho * rho) * interior - 2.0 * rho * off) / c**2
             + T / c)
    return h_bar_h, c_bar, rho_bar, tau2_bar


@numba.njit(cache=True)
def _forward(beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells,
             index, federation_founding, constants, grams, counts, post, n_foundings,
             floor_scale):
    r"""The forward pass of :func:`loglik_and_grad` (same parameters): :math:`\ell` and what
    the backward pass and the exact draws need."""
    S, T, width = cells.shape
    p = width - 2
    E = n_foundings
    F = federation_founding.shape[0]
    K = grams.shape[1]
    head = 12
    level_mu, level_sigma, effect = constants[0], constants[1], constants[2]
    n_pupils, yy = constants[10], constants[11]
    x_mean = constants[head + 2 * p: head + 3 * p]
    Xy = constants[head + 3 * p: head + 4 * p]
    XX = constants[head + 4 * p:].reshape((p, p))
    floor = (floor_scale * effect) ** 2
    sigma2, tau2, taub2 = sigma * sigma, sd_school * sd_school, sd_federation * sd_federation
    rho = 2.0 * rho01 - 1.0
    omr2 = 4.0 * rho01 * (1.0 - rho01)
    c = sd_cell * sd_cell * omr2 + floor

    # forward: every school's M, the group sums and the federations' rank-one terms
    h = np.empty((S, T))
    r = np.empty((S, T))
    for j in range(S):
        for k in range(T):
            h[j, k] = cells[j, k, 0] / sigma2
            v = cells[j, k, 1] - level_mu
            for i in range(p):
                v -= (cells[j, k, 2 + i] - x_mean[i]) * beta[i]
            r[j, k] = v
    Ms = np.empty((S, T, T))
    Jinvs = np.empty((S, T, T))
    qs = np.empty((S, T))
    ss = np.empty(S)
    ws = np.empty(S)
    work = np.empty((3, T))
    vec = np.empty(T)
    group = np.empty(S, dtype=np.int64)
    H = np.zeros((2 * E, T, T))
    b = np.zeros((2 * E, T))
    fed_Q = np.zeros((F, T))
    fed_s = np.zeros(F)
    fed_pMr = np.zeros(F)
    log_dets = np.empty(S)
    quad = 0.0
    for j in range(S):
        s, w, log_det_J = _school_forward(h[j], c, rho, tau2, Jinvs[j], Ms[j], qs[j], work)
        ss[j], ws[j] = s, w
        log_dets[j] = T * math.log(c) - math.log(omr2) + log_det_J + math.log1p(tau2 * s)
        g = index[j, 0] + E * index[j, 1]
        group[j] = g
        M = Ms[j]
        Mr = _matvec(M, r[j], vec)
        quad += _dot(r[j], Mr)
        for k in range(T):
            b[g, k] += Mr[k]
            for m in range(T):
                H[g, k, m] += M[k, m]
        if index[j, 1] == 1:
            f = index[j, 2]
            fed_pMr[f] += _dot(post, Mr)
            Mp = _matvec(M, post, vec)
            for k in range(T):
                fed_Q[f, k] += Mp[k]
            fed_s[f] += _dot(post, Mp)
    minus2 = log_dets.sum()
    fed_w = taub2 / (1.0 + taub2 * fed_s)
    for f in range(F):
        g = E + federation_founding[f]
        minus2 += math.log1p(taub2 * fed_s[f])
        quad -= fed_w[f] * fed_pMr[f] ** 2
        for k in range(T):
            b[g, k] -= fed_w[f] * fed_pMr[f] * fed_Q[f, k]
            for m in range(T):
                H[g, k, m] -= fed_w[f] * fed_Q[f, k] * fed_Q[f, m]

    # the block
    variances = np.array([level_sigma**2, effect**2, sd_cohort**2 + floor, tau_step**2 + floor])
    G = np.zeros((K, K))
    for gi in range(4):
        G += grams[gi] / variances[gi]
        minus2 += counts[gi] * math.log(variances[gi])
    bvec = np.zeros(K)
    for g in range(2 * E):
        G[g * T:(g + 1) * T, g * T:(g + 1) * T] += H[g]
        bvec[g * T:(g + 1) * T] = b[g]
    L = np.linalg.cholesky(G)
    Linv = np.zeros((K, K))  # L^-1 by forward substitution
    for i in range(K):
        Linv[i, i] = 1.0 / L[i, i]
        for k in range(i):
            v = 0.0
            for m in range(k, i):
                v += L[i, m] * Linv[m, k]
            Linv[i, k] = -v / L[i, i]
        minus2 += 2.0 * math.log(L[i, i])
    Ginv = Linv.T @ Linv
    xhat = Ginv @ bvec
    XXb = np.zeros(p)
    for i in range(p):
        for k in range(p):
            XXb[i] += XX[i, k] * beta[k]
    within = yy - 2.0 * _dot(beta, Xy) + _dot(beta, XXb)
    minus2 += (n_pupils * math.log(2.0 * math.pi * sigma2) + within / sigma2 + quad
               - _dot(bvec, xhat))

    return (minus2, h, r, Ms, Jinvs, qs, ss, ws, group, log_dets, fed_Q, fed_s, fed_w, fed_pMr,
            L, Ginv, xhat, XXb, within, variances)




@numba.njit(cache=True)
def loglik_and_grad(beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step,
                    cells, index, federation_founding, constants, grams, counts, post,
                    n_foundings, floor_scale):
    r"""The stacked model's log-likelihood and its gradient (module docstring).

    Parameters
    ----------
    beta : ndarray, shape (p,)
    sigma, sd_cell, sd_school, sd_federation, sd_cohort, tau_step : float
        Outcome units; ``sd_federation`` 0 without federation deviations, ``tau_step`` any
        positive number for independent effects (its group in ``grams`` is empty).
    rho01 : float
        :math:`(\rho + 1)/2`; 0.5 for independent shocks.
    cells, index, federation_founding, constants
        :func:`bayesfed.modelling.event_stacked.container_values`.
    grams : ndarray, shape (4, K, K)
        :class:`bayesfed.modelling.event_stacked.BlockPrior` ``gram`` of ``gamma``, ``effect``,
        ``eta``, ``step``; ``counts`` (4,) their ``count``.
    post : ndarray, shape (T,)
        1 for the grid years >= 0.
    n_foundings : int
    floor_scale : float
        :data:`bayesfed.modelling.event_stacked.VARIANCE_FLOOR`.

    Returns
    -------
    loglik : float
        Nats.
    grad_beta : ndarray, shape (p,)
    grad_scalars : ndarray, shape (7,)
        With respect to :data:`SCALARS`, in order.
    """
    S, T, width = cells.shape
    p = width - 2
    E = n_foundings
    F = federation_founding.shape[0]
    K = grams.shape[1]
    head = 12
    effect, n_pupils = constants[2], constants[10]
    x_mean = constants[head + 2 * p: head + 3 * p]
    Xy = constants[head + 3 * p: head + 4 * p]
    floor = (floor_scale * effect) ** 2
    sigma2, tau2, taub2 = sigma * sigma, sd_school * sd_school, sd_federation * sd_federation
    rho = 2.0 * rho01 - 1.0
    omr2 = 4.0 * rho01 * (1.0 - rho01)
    c = sd_cell * sd_cell * omr2 + floor

    (minus2, h, r, Ms, Jinvs, qs, ss, ws, group, log_dets, fed_Q, fed_s, fed_w, fed_pMr, L, Ginv,
     xhat, XXb, within, variances) = _forward(
        beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells, index,
        federation_founding, constants, grams, counts, post, n_foundings, floor_scale)

    # backward
    work = np.empty((3, T))
    vec = np.empty(T)
    grad = np.zeros(7)
    grad_beta = (2.0 * XXb - 2.0 * Xy) / sigma2
    for gi in (2, 3):
        tr = 0.0
        for i in range(K):
            for k in range(K):
                tr += grams[gi, i, k] * (Ginv[i, k] + xhat[i] * xhat[k])
        v_bar = counts[gi] / variances[gi] - tr / variances[gi] ** 2
        if gi == 2:
            grad[5] = 2.0 * sd_cohort * v_bar
        else:
            grad[6] = 2.0 * tau_step * v_bar
    e = np.empty((S, T))
    Z = np.zeros(F)
    for j in range(S):
        g = group[j]
        for k in range(T):
            e[j, k] = r[j, k] - xhat[g * T + k]
        if index[j, 1] == 1:
            Z[index[j, 2]] += _dot(post, _matvec(Ms[j], e[j], vec))
    X = np.zeros(F)
    U = np.zeros((F, T))  # C_g Q_f
    taub2_bar = 0.0
    for f in range(F):
        g = E + federation_founding[f]
        _matvec(Ginv[g * T:(g + 1) * T, g * T:(g + 1) * T], fed_Q[f], U[f])
        X[f] = _dot(fed_Q[f], U[f]) + Z[f] ** 2
        one_plus = 1.0 + taub2 * fed_s[f]
        taub2_bar += fed_s[f] / one_plus - X[f] / one_plus**2
    h_bar_h = 0.0
    c_bar = 0.0
    rho_bar = 0.0
    tau2_bar = 0.0
    Mbar = np.empty((T, T))
    P = np.empty((T, T))
    PM = np.empty((T, T))
    r_bar = np.empty(T)
    Mp = np.empty(T)
    for j in range(S):
        g = group[j]
        M = Ms[j]
        ej = e[j]
        _matvec(M, ej, r_bar)
        for k in range(T):
            r_bar[k] *= 2.0
            for m in range(T):
                Mbar[k, m] = Ginv[g * T + k, g * T + m] + ej[k] * ej[m]
        if index[j, 1] == 1 and F > 0:
            f = index[j, 2]
            wf = fed_w[f]
            alpha = wf + wf * wf * X[f]
            wz = wf * Z[f]
            _matvec(M, post, Mp)
            for k in range(T):
                r_bar[k] -= 2.0 * wz * Mp[k]
                for m in range(T):
                    Mbar[k, m] += (alpha * post[k] * post[m]
                                   - wf * (U[f, k] * post[m] + post[k] * U[f, m])
                                   - wz * (post[k] * ej[m] + ej[k] * post[m]))
        hb, cb, rb, tb = _school_backward(Mbar, h[j], c, rho, tau2, Jinvs[j], qs[j], ss[j],
                                          ws[j], work, P, PM)
        h_bar_h += hb
        c_bar += cb
        rho_bar += rb
        tau2_bar += tb
        for k in range(T):
            for i in range(p):
                grad_beta[i] -= r_bar[k] * (cells[j, k, 2 + i] - x_mean[i])
    omr2_bar = c_bar * sd_cell * sd_cell - S / omr2
    grad[0] = 2.0 * n_pupils / sigma - 2.0 * within / (sigma2 * sigma) - 2.0 * h_bar_h / sigma
    grad[1] = c_bar * 2.0 * sd_cell * omr2
    grad[2] = 2.0 * sd_school * tau2_bar
    grad[3] = 2.0 * rho_bar + 4.0 * (1.0 - 2.0 * rho01) * omr2_bar
    grad[4] = 2.0 * sd_federation * taub2_bar
    return -0.5 * minus2, -0.5 * grad_beta, -0.5 * grad


@numba.njit(cache=True)
def draw_parts(beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells,
               index, federation_founding, constants, grams, counts, post, n_foundings,
               floor_scale):
    r"""What the exact draws of one posterior draw need (:mod:`bayesfed.posterior.event_draws`);
    parameters as :func:`loglik_and_grad`'s.

    Returns
    -------
    loglik : float
    block_mean : ndarray, shape (K,)
        :math:`G^{-1} b`.
    block_chol : ndarray, shape (K, K)
        Lower Cholesky factor of the block's precision :math:`G`.
    fed_w, fed_pMr : ndarray, shape (F,)
        :math:`w_f` and :math:`\sum_{j \in f} p^	op M_j r_j`.
    fed_Q : ndarray, shape (F, T)
    school_precision : ndarray, shape (S, T, T)
        Each school's :math:`M_u` (0 in the rows and columns of empty cells).
    school_log_det : ndarray, shape (S,)
        Each school's log-determinant terms.
    residual : ndarray, shape (S, T)
        :math:`r`.
    """
    (minus2, h, r, Ms, Jinvs, qs, ss, ws, group, log_dets, fed_Q, fed_s, fed_w, fed_pMr, L, Ginv,
     xhat, XXb, within, variances) = _forward(
        beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells, index,
        federation_founding, constants, grams, counts, post, n_foundings, floor_scale)
    return -0.5 * minus2, xhat, L, fed_w, fed_Q, fed_pMr, Ms, log_dets, r


class StackedLogLik(Op):
    """:func:`loglik_and_grad` as a PyTensor Op: outputs the log-likelihood, its gradient with
    respect to ``beta`` and to the :data:`SCALARS`; its ``pullback`` reuses the last two, so a
    graph of the log density and its gradient computes the kernel once. Inputs in the order of
    :func:`loglik_and_grad`'s parameters; only the first eight have gradients."""

    __props__ = ()

    def make_node(self, *inputs):
        """The node of :func:`loglik_and_grad`'s inputs (tensors or numbers)."""
        inputs = [pt.as_tensor_variable(x) for x in inputs]
        outputs = [pt.dscalar(), pt.dvector(), pt.dvector()]
        return Apply(self, inputs, outputs)

    def perform(self, node, inputs, output_storage):
        """Run :func:`loglik_and_grad` (backends other than numba)."""
        scalars = [float(x) for x in inputs[1:8]]
        rest = [np.asarray(x) for x in inputs[8:15]]
        value, grad_beta, grad = loglik_and_grad(np.asarray(inputs[0], dtype=float), *scalars,
                                                 *rest, int(inputs[15]), float(inputs[16]))
        output_storage[0][0] = np.asarray(value)
        output_storage[1][0] = grad_beta
        output_storage[2][0] = grad

    def pullback(self, inputs, outputs, cotangents):
        """The gradient outputs times the log-likelihood's cotangent; the data inputs have
        none."""
        g = cotangents[0]
        _, grad_beta, grad = outputs
        return ([g * grad_beta] + [g * grad[i] for i in range(7)]
                + [grad_undefined(self, i, x) for i, x in enumerate(inputs) if i >= 8])


stacked_loglik = StackedLogLik()


@numba_basic.register_funcify_default_op_cache_key(StackedLogLik)
def _numba_stacked_loglik(op, node, **kwargs):
    @numba_basic.numba_njit
    def fused(beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells,
              index, federation_founding, constants, grams, counts, post, n_foundings,
              floor_scale):
        value, grad_beta, grad = loglik_and_grad(
            beta, sigma.item(), sd_cell.item(), sd_school.item(), rho01.item(),
            sd_federation.item(), sd_cohort.item(), tau_step.item(), cells, index,
            federation_founding, constants, grams, counts, post, n_foundings.item(),
            floor_scale.item())
        return np.asarray(value), grad_beta, grad

    return fused, 1
