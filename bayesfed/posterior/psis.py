"""Pareto-smoothed importance-sampling leave-one-out cross-validation (PSIS-LOO; Vehtari,
Gelman & Gabry 2017; Vehtari et al. 2024), vectorised over the left-out units.

ArviZ's ``arviz_stats.loo`` computes it one unit at a time (a Python call a unit: 4.3 s for the
3,000 schools of a national per-year fit); here every step is an array operation over all units,
in blocks of :data:`BLOCK`. The definitions are ArviZ's, step for step, and a test checks the
result against ``arviz_stats.loo`` (elpd, its standard error, p_loo, every unit's elpd and Pareto
k); it is returned as ArviZ's own result type, which ``arviz_stats.compare`` reads.

For unit ``i`` with log-likelihood draws ``l_s`` (S draws): the raw log weights ``-l_s`` are
shifted to a maximum of 0; the ``M`` largest (``M = floor(3 sqrt(S / r_eff))`` when
``S r_eff > 225``, else ``floor(S / 5)``) are replaced, on the weight scale, by the expected
order statistics of a generalized Pareto distribution fitted to their excesses over the next
largest (Zhang & Stephens' empirical Bayes fit with a weak prior on its shape ``k``), never
above the largest raw weight; ``elpd_i = log sum_s w_s exp(l_s)`` with the weights normalised,
``p_loo_i = log mean_s exp(l_s) - elpd_i``; ``k`` is the fitted shape, the Pareto k diagnostic.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from arviz_stats.utils import ELPDDataLOO
from scipy.special import logsumexp

#: Units processed together (bounds memory: the fit's grid is 30 + sqrt(M) values of M
#: tail draws a unit).
BLOCK = 256

#: The generalized Pareto fit's prior: ``b`` grid scale and the weight of the prior on ``k``
#: (a normal centred at 0.5), as ArviZ and ``loo``.
_PRIOR_BS, _PRIOR_K = 3, 10


def tail_length(n_samples: int, r_eff: float) -> int:
    """Draws in the smoothed tail (ArviZ's ``_get_ps_tails`` for the right tail)."""
    if n_samples * r_eff > 225:
        return int(np.floor(3 * (n_samples / r_eff) ** 0.5))
    return int(np.floor(n_samples / 5))


def _gpd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape ``k`` and scale of a generalized Pareto fit to each row of ``x`` (units, M),
    sorted ascending, positive excesses (ArviZ's ``_gpdfit``). NaN where the first quartile does
    not exceed the minimum; ``k`` infinite where the fit failed."""
    units, n = x.shape
    m_est = 30 + int(n**0.5)
    xstar = x[:, int((n / 4 + 0.5) - 1)]
    grid = 1 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=float) - 0.5))
    with np.errstate(divide="ignore", invalid="ignore"):
        b = grid[None, :] / (_PRIOR_BS * xstar[:, None]) + 1 / x[:, -1:]  # (units, m_est)
        k_grid = np.log1p(-b[:, :, None] * x[:, None, :]).mean(axis=2)
        scale = n * (np.log(-b / k_grid) - k_grid - 1)
        weight = np.exp(scale - logsumexp(scale, axis=1, keepdims=True))
        weight = np.where(weight >= 10 * np.finfo(float).eps, weight, 0.0)
        weight /= weight.sum(axis=1, keepdims=True)
        b_post = (b * weight).sum(axis=1)
        kappa = np.log1p(-b_post[:, None] * x).mean(axis=1)
        sigma = -kappa / b_post
    kappa = (n * kappa + _PRIOR_K * 0.5) / (n + _PRIOR_K)
    degenerate = xstar <= x[:, 0]
    failed = np.isnan(kappa)
    return (np.where(degenerate, np.nan, np.where(failed, np.inf, kappa)),
            np.where(degenerate | failed, np.nan, sigma))


def _smoothed_log_weights(log_lik: np.ndarray, r_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised PSIS log weights (units, S) and Pareto k (units,) of log-likelihood draws
    (units, S) (ArviZ's ``_psislw``)."""
    units, n_samples = log_lik.shape
    tail = tail_length(n_samples, r_eff)
    if tail < 5:
        raise ValueError("n_draws_tail must be at least 5")
    raw = -log_lik
    raw = raw - raw.max(axis=1, keepdims=True)
    # the tail and the largest value below it: a partition, then a sort of the tail alone
    # (ArviZ sorts every draw; tied values are interchangeable, so the result is the same)
    part = np.argpartition(raw, n_samples - tail - 1, axis=1)
    cutoff = np.take_along_axis(raw, part[:, n_samples - tail - 1:n_samples - tail], axis=1)
    top = part[:, n_samples - tail:]
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(raw, top, axis=1), axis=1),
                             axis=1)
    draws_tail = np.take_along_axis(raw, top, axis=1)
    max_tail = draws_tail.max(axis=1)
    if np.any(np.abs(max_tail - draws_tail.min(axis=1)) < np.finfo(float).tiny):
        raise ValueError("All tail values are the same")
    exp_cutoff = np.exp(cutoff)
    k, sigma = _gpd_fit(np.exp(draws_tail) - exp_cutoff)
    p = np.arange(0.5, tail) / tail
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        quantile = np.where(
            k[:, None] == 0, exp_cutoff - sigma[:, None] * np.log1p(-p),
            exp_cutoff + sigma[:, None] * np.expm1(-k[:, None] * np.log1p(-p)) / k[:, None])
        smoothed = np.log(np.where(sigma[:, None] <= 0, np.nan, quantile))
    smoothed = np.where(smoothed > max_tail[:, None], max_tail[:, None], smoothed)
    smooth = np.isfinite(k)
    weights = raw.copy()
    rows = np.flatnonzero(smooth)
    weights[rows[:, None], top[rows]] = smoothed[rows]
    return weights - logsumexp(weights, axis=1, keepdims=True), k


def psis_loo(log_lik: xr.DataArray, r_eff: float) -> ELPDDataLOO:
    """PSIS-LOO of every unit, pointwise, as ``arviz_stats.loo(..., pointwise=True)``
    returns it, without the smoothed log weights (draws x units, large at national size, and
    nothing reads them).

    Parameters
    ----------
    log_lik : xarray.DataArray
        Dims (chain, draw, unit): each unit's log-likelihood per draw (nats).
    r_eff : float
        Relative efficiency of the draws (ArviZ: the mean over the posterior's elements of
        ESS(mean) / draws; :func:`bayesfed.posterior.convergence.relative_ess`).

    Returns
    -------
    arviz_stats.utils.ELPDDataLOO
        ``elpd_i`` and ``pareto_k`` keep the unit dimension and its coordinates.
    """
    unit = next(d for d in log_lik.dims if d not in ("chain", "draw"))
    values = log_lik.transpose(unit, "chain", "draw").to_numpy().reshape(log_lik.sizes[unit], -1)
    n_units, n_samples = values.shape
    elpd_i, p_loo_i, k = (np.empty(n_units) for _ in range(3))
    for start in range(0, n_units, BLOCK):
        block = values[start:start + BLOCK]
        log_weights, k[start:start + BLOCK] = _smoothed_log_weights(block, r_eff)
        elpd_i[start:start + BLOCK] = logsumexp(log_weights + block, axis=1)
        lppd_i = logsumexp(block, axis=1, b=1 / n_samples)
        p_loo_i[start:start + BLOCK] = lppd_i - elpd_i[start:start + BLOCK]
    good_k = min(1 - 1 / np.log10(n_samples), 0.7) if n_samples > 1 else 0.7
    coords = {unit: log_lik[unit]} if unit in log_lik.coords else {}
    return ELPDDataLOO(
        elpd=float(np.sum(elpd_i)),
        se=float(np.sqrt(n_units * np.var(elpd_i, ddof=1))) if n_units > 1 else 0.0,
        p=float(np.sum(p_loo_i)),
        n_samples=n_samples,
        n_data_points=n_units,
        scale="log",
        warning=bool(np.any(k > good_k)),
        good_k=good_k,
        elpd_i=xr.DataArray(elpd_i, dims=(unit,), coords=coords),
        pareto_k=xr.DataArray(k, dims=(unit,), coords=coords),
        approx_posterior=False,
        log_weights=None,
    )
