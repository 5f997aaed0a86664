r"""The stacked event-time model's log-likelihood and its gradient, fused in one numba kernel.

:func:`bayesfed.modelling.event_stacked.marginal_loglik` writes the integrated likelihood as a
PyTensor graph; its gradient, taken by PyTensor, is dozens of separate loops over the schools' (S,
T) arrays and (2E, T, T) products, several times the cost of the pooled model's. This module
computes the same number and its gradient in one pass over the schools, forward and back, with
the adjoint written by hand (the graph stays the reference: ``tests/test_stacked_kernel.py``
checks both to 1e-9; ``docs/benchmarks.md`` has the costs). The schools are taken
:data:`CHUNK` at a time, each step of their algebra a loop over the chunk's schools.

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

import hashlib
import math
from pathlib import Path

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


#: Schools a chunk: the kernel's loops run over the schools of a chunk innermost, so that each
#: step of a school's algebra is one vector instruction for several schools (the pivots'
#: recursions are chains of dependent divisions, slow one school at a time), and a chunk's
#: (T, T, CHUNK) arrays stay in the core's cache.
CHUNK = 64


@numba.njit(cache=True)
def _chunk_forward(h, b, c, rho, tau2, Jinv, M, q, s, w, log_det, a, d, f):
    r"""The :math:`J^{-1}`, :math:`M_u` and :math:`q = M_v 1` of a chunk's first ``b`` schools.

    ``h`` (T, CHUNK) is :math:`n/\sigma^2`; writes ``Jinv`` and ``M`` (T, T, CHUNK), ``q``
    (T, CHUNK), ``s`` (:math:`1^\top q`), ``w`` and ``log_det`` (:math:`\log\det J_j +
    \log(1 + \tau^2 s_j)`) (CHUNK,); ``a``, ``d``, ``f`` (T, CHUNK) scratch.
    """
    T = h.shape[0]
    o2 = (rho / c) ** 2
    for i in range(T):
        end = 1.0 / c if (i == 0 or i == T - 1) else (1.0 + rho * rho) / c
        for jj in range(b):
            a[i, jj] = h[i, jj] + end
    for jj in range(b):
        d[0, jj] = a[0, jj]
        f[T - 1, jj] = a[T - 1, jj]
    for i in range(1, T):
        for jj in range(b):
            d[i, jj] = a[i, jj] - o2 / d[i - 1, jj]
    for i in range(T - 2, -1, -1):
        for jj in range(b):
            f[i, jj] = a[i, jj] - o2 / f[i + 1, jj]
    ratio = rho / c
    for i in range(T):
        for jj in range(b):
            Jinv[i, i, jj] = 1.0 / (d[i, jj] + f[i, jj] - a[i, jj])
            f[i, jj] = ratio / d[i, jj]  # f no longer needed: J^-1's ratio -o / d_i
    for k in range(T):
        for i in range(k - 1, -1, -1):
            for jj in range(b):
                v = Jinv[i + 1, k, jj] * f[i, jj]
                Jinv[i, k, jj] = v
                Jinv[k, i, jj] = v
    for i in range(T):
        for jj in range(b):
            q[i, jj] = h[i, jj]
    for i in range(T):
        for k in range(T):
            for jj in range(b):
                v = -h[i, jj] * Jinv[i, k, jj] * h[k, jj]
                M[i, k, jj] = v
                q[i, jj] += v
        for jj in range(b):
            M[i, i, jj] += h[i, jj]
    for jj in range(b):
        s[jj] = 0.0
    for i in range(T):
        for jj in range(b):
            s[jj] += q[i, jj]
    for jj in range(b):
        w[jj] = tau2 / (1.0 + tau2 * s[jj])
    for i in range(T):
        for k in range(T):
            for jj in range(b):
                M[i, k, jj] -= w[jj] * q[i, jj] * q[k, jj]
    for jj in range(b):  # one logarithm a school unless the product leaves a safe range
        v = 1.0 + tau2 * s[jj]
        for i in range(T):
            v *= d[i, jj]
        if 1e-250 < v < 1e250:
            log_det[jj] = math.log(v)
        else:
            v = math.log1p(tau2 * s[jj])
            for i in range(T):
                v += math.log(d[i, jj])
            log_det[jj] = v


@numba.njit(cache=True)
def _chunk_backward(Mbar, h, b, c, rho, tau2, Jinv, q, s, w, Mq, P, PM):
    r"""The adjoint of a chunk's :math:`M_u` and log-determinant terms.

    ``Mbar`` (T, T, CHUNK, symmetric in its first two axes) is :math:`\partial\ell/\partial M_u`
    of each school (overwritten); the log-determinant terms enter with weight 1; ``Mq`` (T,
    CHUNK), ``P`` and ``PM`` (T, T, CHUNK) scratch. Returns the derivatives of :math:`\ell`,
    summed over the chunk's first ``b`` schools, with respect to :math:`\log\sigma^2` through
    :math:`h` (times -1: :math:`\sum_a \bar h_a h_a`), :math:`c`, :math:`\rho` (through
    :math:`\Lambda` only) and :math:`\tau^2`.
    """
    T = h.shape[0]
    for i in range(T):
        for jj in range(b):
            Mq[i, jj] = 0.0
    for i in range(T):
        for k in range(T):
            for jj in range(b):
                Mq[i, jj] += Mbar[i, k, jj] * q[k, jj]
    tau2_bar = 0.0
    for jj in range(b):
        qMq = 0.0
        for i in range(T):  # a chunk's q and Mq are a few kB: strided is cheap here
            qMq += q[i, jj] * Mq[i, jj]
        one_plus = 1.0 + tau2 * s[jj]
        tau2_bar += -qMq / one_plus**2 + s[jj] / one_plus
        s[jj] = w[jj] * w[jj] * qMq + w[jj]  # s no longer needed: kappa
    for i in range(T):
        for k in range(T):
            for jj in range(b):
                Mbar[i, k, jj] += s[jj] - w[jj] * (Mq[i, jj] + Mq[k, jj])  # cotangent of M_v
                P[i, k, jj] = Jinv[i, k, jj] * h[k, jj]
                PM[i, k, jj] = 0.0
    for i in range(T):
        for m in range(T):
            for k in range(T):
                for jj in range(b):
                    PM[i, k, jj] += P[i, m, jj] * Mbar[m, k, jj]
    band = Mq  # Mq no longer needed: the diagonal of Lambda's cotangent
    for i in range(T):
        for jj in range(b):
            band[i, jj] = Jinv[i, i, jj]
        for k in range(T):
            for jj in range(b):
                band[i, jj] += PM[i, k, jj] * P[i, k, jj]
    h_bar_h = 0.0
    for i in range(T):
        for jj in range(b):
            h_bar_h += (Mbar[i, i, jj] - 2.0 * PM[i, i, jj] + band[i, jj]) * h[i, jj]
    off = 0.0  # the first off-diagonal of Lambda's cotangent, summed
    for i in range(T - 1):
        for jj in range(b):
            off += Jinv[i, i + 1, jj]
        for k in range(T):
            for jj in range(b):
                off += PM[i, k, jj] * P[i + 1, k, jj]
    ends = 0.0
    interior = 0.0
    for jj in range(b):
        ends += band[0, jj] + band[T - 1, jj]
    for i in range(1, T - 1):
        for jj in range(b):
            interior += band[i, jj]
    rho_bar = (2.0 * rho * interior - 2.0 * off) / c
    c_bar = (-(ends + (1.0 + rho * rho) * interior - 2.0 * rho * off) / c**2 + b * T / c)
    return h_bar_h, c_bar, rho_bar, tau2_bar


@numba.njit(cache=True)
def _forward(beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells,
             index, federation_founding, constants, grams, counts, post, n_foundings,
             floor_scale):
    r"""The forward pass of :func:`loglik_and_grad` (same parameters): :math:`\ell` and what
    the backward pass and the exact draws need, the schools' arrays by chunk (:data:`CHUNK`;
    school ``j`` is lane ``j % CHUNK`` of chunk ``j // CHUNK``)."""
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
    common_log_det = T * math.log(c) - math.log(omr2)

    # forward: every school's M, the group sums and the federations' rank-one terms
    n_chunks = (S + CHUNK - 1) // CHUNK
    hs = np.empty((n_chunks, T, CHUNK))
    rs = np.empty((n_chunks, T, CHUNK))
    qs = np.empty((n_chunks, T, CHUNK))
    Mps = np.empty((n_chunks, T, CHUNK))
    ss = np.empty((n_chunks, CHUNK))
    ws = np.empty((n_chunks, CHUNK))
    Ms = np.empty((n_chunks, T, T, CHUNK))
    Jinvs = np.empty((n_chunks, T, T, CHUNK))
    scratch = np.empty((4, T, CHUNK))
    lane_log_det = np.empty(CHUNK)
    log_dets = np.empty(S)
    group = np.empty(S, dtype=np.int64)
    H = np.zeros((2 * E, T, T))
    b = np.zeros((2 * E, T))
    fed_Q = np.zeros((F, T))
    fed_s = np.zeros(F)
    fed_pMr = np.zeros(F)
    quad = 0.0
    for ci in range(n_chunks):
        j0 = ci * CHUNK
        size = min(CHUNK, S - j0)
        hc, rc, M, Mp = hs[ci], rs[ci], Ms[ci], Mps[ci]
        for jj in range(size):
            j = j0 + jj
            for k in range(T):
                hc[k, jj] = cells[j, k, 0] / sigma2
                v = cells[j, k, 1] - level_mu
                for i in range(p):
                    v -= (cells[j, k, 2 + i] - x_mean[i]) * beta[i]
                rc[k, jj] = v
        _chunk_forward(hc, size, c, rho, tau2, Jinvs[ci], M, qs[ci], ss[ci], ws[ci],
                       lane_log_det, scratch[0], scratch[1], scratch[2])
        Mr = scratch[3]
        for i in range(T):
            for jj in range(size):
                Mr[i, jj] = 0.0
                Mp[i, jj] = 0.0
            for k in range(T):
                for jj in range(size):
                    Mr[i, jj] += M[i, k, jj] * rc[k, jj]
                    Mp[i, jj] += M[i, k, jj] * post[k]
        for i in range(T):
            for jj in range(size):
                quad += rc[i, jj] * Mr[i, jj]
        for jj in range(size):
            j = j0 + jj
            log_dets[j] = common_log_det + lane_log_det[jj]
            g = index[j, 0] + E * index[j, 1]
            group[j] = g
            for k in range(T):
                b[g, k] += Mr[k, jj]
                for m in range(T):
                    H[g, k, m] += M[k, m, jj]
            if index[j, 1] == 1:
                f = index[j, 2]
                for k in range(T):
                    fed_pMr[f] += post[k] * Mr[k, jj]
                    fed_Q[f, k] += Mp[k, jj]
                    fed_s[f] += post[k] * Mp[k, jj]
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

    return (minus2, hs, rs, Ms, Jinvs, qs, ss, ws, Mps, group, log_dets, fed_Q, fed_s, fed_w,
            fed_pMr, L, Ginv, xhat, XXb, within, variances)




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

    (minus2, hs, rs, Ms, Jinvs, qs, ss, ws, Mps, group, log_dets, fed_Q, fed_s, fed_w, fed_pMr, L,
     Ginv, xhat, XXb, within, variances) = _forward(
        beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells, index,
        federation_founding, constants, grams, counts, post, n_foundings, floor_scale)

    # backward
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
    n_chunks = hs.shape[0]
    es = np.empty((n_chunks, T, CHUNK))
    Mes = np.empty((n_chunks, T, CHUNK))
    Z = np.zeros(F)
    for ci in range(n_chunks):
        j0 = ci * CHUNK
        size = min(CHUNK, S - j0)
        ec, Me, M = es[ci], Mes[ci], Ms[ci]
        for jj in range(size):
            g = group[j0 + jj]
            for k in range(T):
                ec[k, jj] = rs[ci, k, jj] - xhat[g * T + k]
        for i in range(T):
            for jj in range(size):
                Me[i, jj] = 0.0
            for k in range(T):
                for jj in range(size):
                    Me[i, jj] += M[i, k, jj] * ec[k, jj]
        for jj in range(size):
            if index[j0 + jj, 1] == 1:
                f = index[j0 + jj, 2]
                for k in range(T):
                    Z[f] += post[k] * Me[k, jj]
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
    Mbar = np.empty((T, T, CHUNK))
    P = np.empty((T, T, CHUNK))
    PM = np.empty((T, T, CHUNK))
    r_bar = np.empty((T, CHUNK))
    Uc = np.empty((T, CHUNK))
    lanes = np.empty((3, CHUNK))  # each lane's alpha, w_f, w_f Z_f (0 for matched schools)
    for ci in range(n_chunks):
        j0 = ci * CHUNK
        size = min(CHUNK, S - j0)
        ec, Mp = es[ci], Mps[ci]
        for jj in range(size):
            j = j0 + jj
            g = group[j]
            for k in range(T):
                for m in range(T):
                    Mbar[k, m, jj] = Ginv[g * T + k, g * T + m]
            if index[j, 1] == 1 and F > 0:
                f = index[j, 2]
                wf = fed_w[f]
                lanes[0, jj] = wf + wf * wf * X[f]
                lanes[1, jj] = wf
                lanes[2, jj] = wf * Z[f]
                for k in range(T):
                    Uc[k, jj] = U[f, k]
            else:
                lanes[0, jj] = 0.0
                lanes[1, jj] = 0.0
                lanes[2, jj] = 0.0
                for k in range(T):
                    Uc[k, jj] = 0.0
        for k in range(T):
            for jj in range(size):
                r_bar[k, jj] = 2.0 * Mes[ci, k, jj] - 2.0 * lanes[2, jj] * Mp[k, jj]
            for m in range(T):
                pk, pm = post[k], post[m]
                for jj in range(size):
                    Mbar[k, m, jj] += (ec[k, jj] * ec[m, jj] + lanes[0, jj] * pk * pm
                                       - lanes[1, jj] * (Uc[k, jj] * pm + pk * Uc[m, jj])
                                       - lanes[2, jj] * (pk * ec[m, jj] + ec[k, jj] * pm))
        hb, cb, rb, tb = _chunk_backward(Mbar, hs[ci], size, c, rho, tau2, Jinvs[ci], qs[ci],
                                         ss[ci], ws[ci], Uc, P, PM)  # Uc as scratch
        h_bar_h += hb
        c_bar += cb
        rho_bar += rb
        tau2_bar += tb
        for jj in range(size):
            j = j0 + jj
            for k in range(T):
                for i in range(p):
                    grad_beta[i] -= r_bar[k, jj] * (cells[j, k, 2 + i] - x_mean[i])
    omr2_bar = c_bar * sd_cell * sd_cell - S / omr2
    grad[0] = 2.0 * n_pupils / sigma - 2.0 * within / (sigma2 * sigma) - 2.0 * h_bar_h / sigma
    grad[1] = c_bar * 2.0 * sd_cell * omr2
    grad[2] = 2.0 * sd_school * tau2_bar
    grad[3] = 2.0 * rho_bar + 4.0 * (1.0 - 2.0 * rho01) * omr2_bar
    grad[4] = 2.0 * sd_federation * taub2_bar
    return -0.5 * minus2, -0.5 * grad_beta, -0.5 * grad


@numba.njit(cache=True, nogil=True)
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
        :math:`w_f` and :math:`\sum_{j \in f} p^\top M_j r_j`.
    fed_Q : ndarray, shape (F, T)
    school_precision : ndarray, shape (S, T, T)
        Each school's :math:`M_u` (0 in the rows and columns of empty cells).
    school_log_det : ndarray, shape (S,)
        Each school's log-determinant terms.
    residual : ndarray, shape (S, T)
        :math:`r`.
    """
    (minus2, hs, rs, Ms, Jinvs, qs, ss, ws, Mps, group, log_dets, fed_Q, fed_s, fed_w, fed_pMr, L,
     Ginv, xhat, XXb, within, variances) = _forward(
        beta, sigma, sd_cell, sd_school, rho01, sd_federation, sd_cohort, tau_step, cells, index,
        federation_founding, constants, grams, counts, post, n_foundings, floor_scale)
    S, T, _ = cells.shape
    precision = np.empty((S, T, T))
    residual = np.empty((S, T))
    for j in range(S):
        ci, jj = j // CHUNK, j % CHUNK
        for k in range(T):
            residual[j, k] = rs[ci, k, jj]
            for m in range(T):
                precision[j, k, m] = Ms[ci, k, m, jj]
    return -0.5 * minus2, xhat, L, fed_w, fed_Q, fed_pMr, precision, log_dets, residual


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


def source_digest() -> str:
    """SHA-256 of this module's source: part of the kernel's key in PyTensor's numba cache, so
    that a changed kernel is compiled again instead of served from the cache (PyTensor's
    default key is the Op's class and props only, which do not change with the code)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@numba_basic.register_funcify_and_cache_key(StackedLogLik)
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

    return fused, f"bayesfed.modelling.stacked_kernel.StackedLogLik:{source_digest()}"
