r"""One pass over the stacked event-time model's posterior draws: everything beside NUTS.

For each posterior draw of the sampled parameters :math:`\psi`
(:mod:`bayesfed.modelling.event_stacked`) one call of the fused kernel
(:func:`bayesfed.modelling.stacked_kernel.draw_parts`) gives the block's conditional
:math:`N(G^{-1}b, G^{-1})`, each school's precision :math:`M_{u,j}` and log-determinant terms, and
the residuals :math:`r`. From them, per draw:

* **exact draws** of the block :math:`x` and the federation deviations :math:`b`, so that
  :math:`(\psi, x, b)` is a draw from the joint posterior, and the effects named in
  :func:`bayesfed.modelling.event_stacked.effect_variables` and their aggregates
  (:mod:`bayesfed.posterior.effects`);
* **each school's log-likelihood** given :math:`(\psi, x, b)`, its intercept and shocks
  integrated out: :math:`\ell_j = -\frac12[N_j \log 2\pi\sigma^2 + W_j(\beta)/\sigma^2 +
  \log\det_j + e_j^\top M_{u,j} e_j]`, :math:`e_j = r_j - (\text{its block part}) - F_j p
  b_{f(j)}` (``log_likelihood``'s ``pupils``, for leave-one-school-out LOO: the question is how
  well the model predicts a school it has not seen; :math:`\sum_j \ell_j = \log p(y \mid \psi,
  x, b)`, tested);
* **the log prior** of the top-level priors: the sampled parameters' and the block components'
  with fixed variances (``log_prior``, :data:`PRIOR_PARTS`), which with the log-likelihood
  gives power-scaling prior sensitivity (Kallioinen et al. 2024; ``arviz_stats.psense``);
* **predictive statistics of new schools' cells**: residuals of every school's cell means
  replicated with a new intercept, new AR(1) shocks and new pupils' noise, :math:`e^{rep}_j
  \sim N(0, V_j)`, :math:`V_j = \mathrm{diag}(\sigma^2/n_{jk}) + \omega^2 R(\rho) + \tau^2
  11^\top`, against the observed :math:`e_j`: the sd of cell means, of school means and within
  schools, and the lag-1 correlation of a school's consecutive cells (:data:`STATISTICS`).
  A posterior predictive p-value near 0 or 1 says the model's variance structure misses
  something (replicating the fitted intercepts would reproduce the data and test nothing).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pymc as pm
import pytensor
import xarray as xr
from threadpoolctl import threadpool_limits

from bayesfed.design.stacked import StackedData
from bayesfed.modelling.event_stacked import (
    SIGNED,
    BlockLayout,
    DrawParts,
    StackedModel,
    draw_function,
    effect_variables,
)
from bayesfed.posterior.effects import WeightKind, att_variables, att_weights, weight_variables
from bayesfed.sampling.nuts import MAX_COMPILED

#: The parts of the log prior (``log_prior``'s ``prior``, dim ``part``): the sampled
#: parameters' priors and the block's components with fixed prior variances (the cohort x year
#: effects, gaps, leads and the first effect, :func:`bayesfed.modelling.event_stacked.block_prior`'s
#: groups ``gamma`` and ``effect``). The hierarchical parts (cohort deviations, random-walk
#: steps, federation deviations) are the model's structure, neither prior nor likelihood, as
#: in brms's ``lprior`` and priorsense.
PRIOR_PARTS = ("parameters", "fixed_effects")

#: Most posterior draws the predictive checks replicate (evenly spread): p-values to about
#: 0.02, at a fraction of the cost of every draw at national size (a replication draws every
#: school's cell means: 3,000 Cholesky factorisations).
CHECK_DRAWS = 500

#: Threads drawing the posterior draws' parts at once (the fused kernel and NumPy's linear
#: algebra release the GIL; each draw writes its own rows, so the result does not depend on it).
DRAW_THREADS = min(2, os.cpu_count() or 1)

#: The predictive statistics of the cell-mean residuals (:func:`cell_statistics`).
STATISTICS = ("sd_cell_mean", "sd_school_mean", "sd_within_school", "lag1_correlation")


def cell_statistics(e: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The :data:`STATISTICS` of cell-mean residuals.

    Parameters
    ----------
    e : ndarray, shape (..., n_schools, T)
        Residuals (outcome units); entries of empty cells are ignored.
    present : ndarray of bool, shape (n_schools, T)

    Returns
    -------
    ndarray, shape (..., 4)
    """
    w = present.astype(float)
    count = w.sum()
    mean = (e * w).sum(axis=(-2, -1), keepdims=True) / count
    sd_cell = np.sqrt((((e - mean) * w) ** 2).sum(axis=(-2, -1)) / (count - 1))
    per_school = w.sum(axis=1)
    school_mean = (e * w).sum(axis=-1) / per_school
    sd_school = school_mean.std(axis=-1, ddof=1)
    dev = (e - school_mean[..., None]) * w
    sd_within = np.sqrt((dev**2).sum(axis=(-2, -1)) / (count - len(per_school)))
    pairs = w[:, 1:] * w[:, :-1]
    cross = (dev[..., 1:] * dev[..., :-1] * pairs).sum(axis=(-2, -1))
    scale = np.sqrt((dev[..., 1:] ** 2 * pairs).sum(axis=(-2, -1))
                    * (dev[..., :-1] ** 2 * pairs).sum(axis=(-2, -1)))
    return np.stack([sd_cell, sd_school, sd_within, cross / scale], axis=-1)


#: Compiled per-draw functions of models used in this process, by ``id(model)``: (model,
#: draw function, prior function); the most recent last. The functions read the model's data
#: containers when called, so a model whose containers were refilled
#: (:func:`bayesfed.sampling.nuts.sample_reusing`) reuses them.
_FUNCTIONS: OrderedDict[int, tuple] = OrderedDict()


def _compiled(parts: StackedModel):
    """:func:`bayesfed.modelling.event_stacked.draw_function` and :func:`_prior_function` of the
    model, compiled once per model and process."""
    hit = _FUNCTIONS.pop(id(parts.model), None)
    if hit is None or hit[0] is not parts.model:
        hit = (parts.model, draw_function(parts), _prior_function(parts.model))
    _FUNCTIONS[id(parts.model)] = hit
    while len(_FUNCTIONS) > MAX_COMPILED:
        _FUNCTIONS.popitem(last=False)
    return hit[1:]


def _prior_function(model: pm.Model):
    """Compiled :math:`\\log p(\\psi)`: the sum of the free variables' prior log densities at
    their (constrained) values, in ``model.free_RVs`` order."""
    values = [rv.type() for rv in model.free_RVs]
    total = sum(pm.logp(rv, v).sum() for rv, v in zip(model.free_RVs, values, strict=True))
    return pytensor.function(values, total)


def _fixed_effects_prior(parts: StackedModel):
    """:math:`\\log` of the block prior's components with fixed variances at a block draw
    ``x`` (K,): groups ``gamma`` and ``effect`` of
    :func:`bayesfed.modelling.event_stacked.block_prior`."""
    variances = {"gamma": parts.priors.level.sigma**2, "effect": parts.priors.effect**2}

    def log_density(x: np.ndarray) -> float:
        return sum(-0.5 * (parts.prior.count[g] * math.log(2 * math.pi * v)
                           + x @ parts.prior.gram[g] @ x / v) for g, v in variances.items())

    return log_density


def cell_residuals(out: DrawParts, x: np.ndarray, b: np.ndarray, data: StackedData,
                   layout: BlockLayout) -> np.ndarray:
    """Each school's cell-mean residuals after the block and the deviations, shape (S, T):
    :math:`r_j` less :math:`\\mu_{e}` (federated) or :math:`\\tilde\\gamma_e` (matched)
    less :math:`F_j p\\, b_{f(j)}`; outcome units.

    Parameters
    ----------
    out : bayesfed.modelling.event_stacked.DrawParts
        The kernel's outputs at one draw (:func:`bayesfed.modelling.event_stacked.draw_function`).
    x : ndarray, shape (K,)
        A block draw.
    b : ndarray, shape (F,)
        Deviations of the F federations (zeros without them).
    data : StackedData
    layout : BlockLayout
    """
    fed = data.federated == 1
    gamma, mu = x[layout.gamma], x[layout.mu]
    block = np.where(fed[:, None], mu[data.founding_idx], gamma[data.founding_idx])
    post = np.array([k >= 0 for k in data.years], dtype=float)
    deviation = b[np.maximum(data.federation_idx, 0)] * fed
    return out.residual - block - deviation[:, None] * post[None, :]


def school_loglik(out: DrawParts, e: np.ndarray, beta: np.ndarray, sigma: float,
                  data: StackedData) -> np.ndarray:
    """Each school's log-likelihood given the sampled parameters, the block and the
    deviations, its intercept and shocks integrated out (module docstring), shape (S,), nats.

    Parameters
    ----------
    out : bayesfed.modelling.event_stacked.DrawParts
        The kernel's outputs at the draw.
    e : ndarray, shape (S, T)
        :func:`cell_residuals`.
    beta : ndarray, shape (n_coef,)
    sigma : float
    data : StackedData
    """
    within = data.school_within
    W = within[:, 0, 0] - 2 * within[:, 1:, 0] @ beta + (within[:, 1:, 1:] @ beta) @ beta
    quad = _quadratic(e, out.school_precision)
    return -0.5 * (data.n.sum(axis=1) * math.log(2 * math.pi * sigma**2) + W / sigma**2
                   + out.school_log_det + quad)


@numba.njit(cache=True, nogil=True)
def _quadratic(e: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """:math:`e_j^\\top P_j e_j` for each school: ``e`` (S, T), ``precision`` (S, T, T) -> (S,)."""
    S, T = e.shape
    out = np.zeros(S)
    for j in range(S):
        for k in range(T):
            row = 0.0
            for m in range(T):
                row += precision[j, k, m] * e[j, m]
            out[j] += e[j, k] * row
    return out


def posterior_draws(parts: StackedModel, tree: xr.DataTree, seed: int,
                    weights: WeightKind = "pupils") -> xr.DataTree:
    """Add the module docstring's draws to a sampled fit of the stacked model.

    Parameters
    ----------
    parts : StackedModel
    tree : xarray.DataTree
        The sampled posterior (dims chain, draw).
    seed : int
        Seed of the standard-normal draws (block, deviations, replications).
    weights : {"pupils", "federations"}
        Weights of the effect aggregates (:mod:`bayesfed.posterior.effects`).

    Returns
    -------
    xarray.DataTree
        ``tree`` with, in ``posterior``, the effects
        (:func:`bayesfed.modelling.event_stacked.effect_variables`) and aggregates
        (:func:`bayesfed.posterior.effects.att_variables`); the
        groups ``log_likelihood`` (``pupils``: chain, draw, school: each school's pupils),
        ``log_prior`` (``prior``: chain, draw, part: :data:`PRIOR_PARTS`),
        ``posterior_predictive`` (``check_observed`` and ``check_replicated``: replication,
        statistic; :data:`CHECK_DRAWS` draws spread evenly over the chains) and
        ``constant_data`` (the weights, :func:`bayesfed.posterior.effects.weight_variables`).
    """
    data, model = parts.data, parts.model
    fn, prior_fn = _compiled(parts)
    post = tree.posterior.to_dataset()
    inputs = list(model.free_RVs)
    values = [post[v.name].transpose("chain", "draw", ...).to_numpy() for v in inputs]
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    F, S = len(data.federations), len(data.schools)
    layout = parts.prior.layout
    K = layout.size
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_chains, n_draws, K))
    z_fed = rng.standard_normal((n_chains, n_draws, F))
    total = n_chains * n_draws
    replicated = np.unique(np.linspace(0, total - 1, min(CHECK_DRAWS, total)).round().astype(int))
    # each replication its own row and stream, so the draws do not depend on the threads' order
    seeds = np.random.SeedSequence(int(rng.integers(2**63))).spawn(len(replicated))
    streams = {i: (row, seed) for row, (i, seed)
               in enumerate(zip(replicated.tolist(), seeds, strict=True))}
    x = np.empty((n_chains, n_draws, K))
    b = np.zeros((n_chains, n_draws, F))
    loglik = np.empty((n_chains, n_draws, S))
    checks = np.empty((len(replicated), 2, len(STATISTICS)))
    present = data.n > 0
    names = {v.name: i for i, v in enumerate(inputs)}

    def one(i: int) -> None:
        c, d = divmod(i, n_draws)
        point = [v[c, d] for v in values]
        out = fn(*point)
        x[c, d] = out.block_mean + np.linalg.solve(out.block_chol.T, z[c, d])
        if parts.deviations:
            w = out.fed_w
            mine = x[c, d, layout.mu][data.federation_founding]  # (F, T)
            b[c, d] = (w * (out.fed_pMr - (out.fed_Q * mine).sum(axis=1))
                       + np.sqrt(w) * z_fed[c, d])
        e = cell_residuals(out, x[c, d], b[c, d], data, layout)
        loglik[c, d] = school_loglik(out, e, point[names["beta"]],
                                     float(point[names["sigma"]]), data)
        if i in streams:
            row, seed = streams[i]
            checks[row] = _replicate(e, present, data.n, point, names,
                                     np.random.default_rng(seed))

    # the kernel and the linear algebra release the GIL: the draws run on every core, BLAS on
    # one thread each (1.8-2.0 s against 3.4 s for 1,000 national draws on two cores)
    with threadpool_limits(1), ThreadPoolExecutor(DRAW_THREADS) as pool:
        for _ in pool.map(one, range(total), chunksize=64):
            pass
    fixed_effects = _fixed_effects_prior(parts)
    log_prior = np.array([[(float(prior_fn(*(v[c, d] for v in values))), fixed_effects(x[c, d]))
                           for d in range(n_draws)] for c in range(n_chains)]
                         ).reshape(n_chains, n_draws, len(PRIOR_PARTS))
    effects = effect_variables(x, b, data, layout, parts.deviations)
    # the signed scales' absolute values are the model's sds (already in the posterior)
    posterior = post.drop_vars([v for v in post.data_vars if v.endswith(SIGNED)]
                               ).assign(effects)
    weight = att_weights(data, weights)
    posterior = posterior.assign(att_variables(posterior, data, weight))
    tree["posterior"] = xr.DataTree(posterior)
    dims = ("chain", "draw")
    tree["log_likelihood"] = xr.DataTree(xr.Dataset(
        {"pupils": xr.DataArray(loglik, dims=(*dims, "school"),
                                coords={"school": list(data.schools)})}))
    tree["log_prior"] = xr.DataTree(xr.Dataset({"prior": xr.DataArray(
        log_prior, dims=(*dims, "part"), coords={"part": list(PRIOR_PARTS)})}))
    statistic = {"statistic": list(STATISTICS)}
    tree["posterior_predictive"] = xr.DataTree(xr.Dataset({
        "check_observed": xr.DataArray(checks[:, 0], dims=("replication", "statistic"),
                                       coords=statistic),
        "check_replicated": xr.DataArray(checks[:, 1], dims=("replication", "statistic"),
                                         coords=statistic)}))
    tree["constant_data"] = xr.DataTree(xr.Dataset(weight_variables(data, weight)))
    return tree


def _replicate(e: np.ndarray, present: np.ndarray, n: np.ndarray, point: list,
               names: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """The statistics of the observed residuals ``e`` (S, T) and of one replication for new
    schools' cells; shape (2, n_statistics)."""
    sigma = float(point[names["sigma"]])
    omega = float(point[names["sd_cell"]])
    tau = float(point[names["sd_school"]])
    rho = 2 * float(point[names["shock_ar_01"]]) - 1 if "shock_ar_01" in names else 0.0
    T = n.shape[1]
    lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    V = (omega**2 * rho**lag + tau**2)[None] + np.eye(T)[None] * (
        sigma**2 / np.maximum(n, 1))[:, :, None]  # empty cells: any variance, ignored
    rep = np.einsum("sij,sj->si", np.linalg.cholesky(V), rng.standard_normal(n.shape))
    return np.stack([cell_statistics(e, present), cell_statistics(rep, present)])
