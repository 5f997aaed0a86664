r"""Model checks of a two-level fit: prior and posterior predictive checks, leave-one-school-out.

A collapsed fit (:func:`bayesfed.modelling.two_level.build_two_level_collapsed`) keeps no pupil
rows: its file has no ``observed_data``. What the checks need are the per-school sufficient
statistics of the data, which :func:`school_data` computes from a design and which the fit stores in
its ``constant_data`` group (``school_n``, ``school_y_mean``, ``school_x_mean``, ``school_yy``,
``school_xy``, ``school_xx``: :data:`SCHOOL_DATA`). They are aggregates, not pupil rows: a
fit file can be shared where pupil-level data (the National Pupil Database) cannot, and their
size does not grow with the pupils. A fit without them gets no checks (the summary says so).

Notation as in :mod:`bayesfed.modelling.two_level`: school :math:`j` has :math:`n_j` pupils, mean
outcome
:math:`\bar y_j`, mean predictors :math:`\bar x_j` (every column of ``X``), and within-school
cross products of the outcome and predictors centred at their school means,
:math:`\tilde y_j^\top\tilde y_j`, :math:`\tilde X_j^\top\tilde y_j`,
:math:`\tilde X_j^\top\tilde X_j` (zero for school-level columns).

Predictive checks (:func:`predictive_checks`)
    Two statistics of the data are replicated, each exactly under the model:

    * **school means**, replicated for *new* schools with the same pupil counts and
      compositions: :math:`\bar y_j^{\mathrm{rep}} = \alpha + \bar x_j^\top\beta + \tau z_1 +
      (\sigma/\sqrt{n_j}) z_2`. Replicating the fitted schools' own intercepts instead would
      reproduce the observed means almost exactly (each mean is the average of about 200
      pupils) and test nothing; new schools test the Gaussian distribution of the school
      effects and their variance.
    * **within-school sds** :math:`s_j = \sqrt{\tilde y_j^\top\tilde y_j / (n_j - 1)}`: under
      the model :math:`\tilde y_j = \tilde X_j\beta + \tilde\varepsilon_j`, so
      :math:`\tilde y_j^\top\tilde y_j / \sigma^2` is noncentral chi-square with
      :math:`n_j - 1` degrees of freedom and noncentrality
      :math:`\beta^\top\tilde X_j^\top\tilde X_j\beta / \sigma^2`. This checks the pupil level:
      the scale of the residual and the model's assumption that it is the same in every
      school. Schools with one pupil have no within-school sd and are left out.

    Posterior predictive draws use :data:`REPLICATIONS` posterior draws of :math:`(\alpha,
    \beta, \tau, \sigma)`, evenly spaced through the chains (all of them when there are
    fewer); prior predictive draws the same number of draws from the fit's resolved priors
    (``bayesfed_priors``). A thousand replications put a p-value within 0.016 (one Monte
    Carlo sd) of its limit; each costs a draw per school of a noncentral chi-square, which was
    7.6 s of a national fit's summary with all 4,000 draws. Each statistic :math:`T` gets the
    observed value, the replicated mean and central 94% interval, and the predictive p-value
    :math:`P(T^{\mathrm{rep}} \ge T^{\mathrm{obs}})` (near 0 or 1: the model misses it).
    The sorted school means and within-school sds get a central 94% band per rank (the
    report's figure). The shape of the pupil-level outcome distribution (skew, floor and
    ceiling effects of exam scores) cannot be checked from aggregates: that needs pupil rows.

Leave-one-school-out (:func:`school_loglik`, :func:`loo_school`)
    The unit of cross-validation is the school: the pointwise log-likelihood of school
    :math:`j` is its marginal density with its intercept integrated out,

    .. math::

        \log p(y_j \mid \alpha, \beta, \tau, \sigma) = -\tfrac12 \big[ n_j \log 2\pi +
        (n_j - 1)\log\sigma^2 + \log(\sigma^2 + n_j\tau^2) + W_j(\beta)/\sigma^2
        + n_j r_j^2 / (\sigma^2 + n_j\tau^2) \big]

    with :math:`W_j(\beta) = \tilde y_j^\top\tilde y_j - 2\beta^\top\tilde X_j^\top\tilde y_j
    + \beta^\top\tilde X_j^\top\tilde X_j\beta` and :math:`r_j = \bar y_j - \alpha - \bar
    x_j^\top\beta`; the sum over schools is the collapsed model's likelihood
    (:func:`bayesfed.modelling.two_level.marginal_loglik`). PSIS-LOO on it estimates how well a
    model predicts the pupils of a school it has not seen, the natural question of a multilevel
    model (leaving out one pupil would be predicted from its own school's intercept).
    Models fitted to the same pupils (M0, M1, M2 of one year) are compared by their
    expected log predictive density (``arviz_stats.compare``).
"""

from __future__ import annotations

import dataclasses
import json
import math

import arviz_stats as azs
import numba
import numpy as np
import xarray as xr
from scipy import stats

from bayesfed.design.columns import Design
from bayesfed.design.suffstats import SchoolSummary, quadratic_forms, summary_of
from bayesfed.inputs.families import tree_kind
from bayesfed.posterior import psis
from bayesfed.posterior.convergence import relative_ess
from bayesfed.posterior.intervals import PROB

#: Variables of a fit's ``constant_data`` that the checks need (:func:`school_data`).
SCHOOL_DATA = ("school_n", "school_y_mean", "school_x_mean", "school_yy", "school_xy",
               "school_xx")


def school_data(data: Design | SchoolSummary) -> xr.Dataset:
    """Per-school sufficient statistics of a design (or of its summary), for a fit's
    ``constant_data``.

    Parameters
    ----------
    data : Design or SchoolSummary

    Returns
    -------
    xarray.Dataset
        Coords ``school`` (the schools' labels), ``predictor`` and ``predictor_`` (the
        coefficient names); ``school_n`` (school; pupils), ``school_y_mean`` (school;
        outcome units), ``school_x_mean`` (school, predictor), ``school_yy`` (school; within-
        school sum of squares of the outcome), ``school_xy`` (school, predictor) and
        ``school_xx`` (``school, predictor, predictor_``): the centred cross products, zero for
        school-level columns. Summed over schools they are the pooled
        :class:`~bayesfed.design.suffstats.SchoolStats` cross products.
    """
    summary = summary_of(data)
    gram = summary.within  # (school, 1 + p, 1 + p)
    names = list(summary.coef_names)
    return xr.Dataset(
        {"school_n": ("school", summary.n.astype(np.int64)),
         "school_y_mean": ("school", summary.y_mean),
         "school_x_mean": (("school", "predictor"), summary.X_mean),
         "school_yy": ("school", gram[:, 0, 0]),
         "school_xy": (("school", "predictor"), gram[:, 1:, 0]),
         "school_xx": (("school", "predictor", "predictor_"), gram[:, 1:, 1:])},
        coords={"school": list(summary.schools), "predictor": names, "predictor_": names})


def has_slope_data(tree: xr.DataTree) -> bool:
    """Whether a fit is of the random-slope model and stores its per-school statistics
    (:func:`bayesfed.modelling.random_slopes.slope_dataset`)."""
    return "constant_data" in tree.children and "slope_gram" in tree["constant_data"]


def has_school_data(tree: xr.DataTree) -> bool:
    """Whether a fit stores the per-school statistics the checks need."""
    if tree_kind(tree.attrs).joint:
        return False
    if "constant_data" not in tree.children:
        return False
    return all(v in tree["constant_data"].data_vars for v in SCHOOL_DATA)


def _data(tree: xr.DataTree) -> dict[str, np.ndarray]:
    data = tree["constant_data"].to_dataset()
    return {v: data[v].to_numpy() for v in SCHOOL_DATA}


def _flat(da: xr.DataArray, *dims: str) -> np.ndarray:
    """Draws flattened chain by chain: shape (chain * draw, *dims)."""
    values = da.transpose("chain", "draw", *dims).to_numpy()
    return values.reshape(-1, *values.shape[2:])


#: Posterior (and prior) draws replicated by the predictive checks (module docstring).
REPLICATIONS = 1000


def has_scale(tree: xr.DataTree) -> bool:
    """Whether a fit is of the location-scale model (a residual sd by school,
    :mod:`bayesfed.modelling.location_scale`)."""
    return "posterior" in tree.children and "sd_log_sigma" in tree.posterior


def _posterior_draws(tree: xr.DataTree) -> dict[str, np.ndarray]:
    """Draws of ``alpha``, ``beta``, ``tau``, ``sigma`` and, in a location-scale fit, ``s``
    (``sd_log_sigma``) and ``rho`` (``cor_log_sigma``)."""
    post = tree.posterior
    alpha = _flat(post["intercept"])
    beta = _flat(post["beta"], "predictor") if "beta" in post else np.zeros((alpha.size, 0))
    out = {"alpha": alpha, "beta": beta, "tau": _flat(post["sd_school"]),
           "sigma": _flat(post["sigma"])}
    if has_scale(tree):
        out |= {"s": _flat(post["sd_log_sigma"]), "rho": _flat(post["cor_log_sigma"])}
    if has_slope_data(tree):
        r = post.sizes["re_term"]
        packed = _flat(post["school_cov"], "school_cov_dim_0")
        chol = np.zeros((packed.shape[0], r, r))
        chol[:, *np.tril_indices(r)] = packed  # PyMC's packed lower triangle, row by row
        out["chol"] = chol
    return out


def _slope_columns(tree: xr.DataTree) -> np.ndarray:
    """The random slopes' columns among a random-slope fit's coefficients."""
    names = [str(v) for v in tree.posterior["beta"]["predictor"].to_numpy()]
    return np.array([names.index(str(k)) for k in tree.posterior["slope"].to_numpy()], dtype=int)


def lkj_cholesky(r: int, eta: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of the lower Cholesky factor of an LKJ(``eta``) correlation matrix, shape
    (n, r, r): the onion method (Lewandowski, Kurowicka & Joe 2009), row by row."""
    out = np.zeros((n, r, r))
    out[:, 0, 0] = 1.0
    shape = eta + (r - 2) / 2
    for k in range(1, r):
        if k == 1:  # the first correlation: 2 Beta(shape, shape) - 1
            row = (2 * rng.beta(shape, shape, n) - 1)[:, None]
            y = row[:, 0] ** 2
        else:
            shape -= 0.5
            y = rng.beta(k / 2, shape, n)
            w = rng.standard_normal((n, k))
            row = np.sqrt(y)[:, None] * w / np.linalg.norm(w, axis=1, keepdims=True)
        out[:, k, :k] = row
        out[:, k, k] = np.sqrt(1 - y)
    return out


def _recorded_priors(tree: xr.DataTree) -> dict[str, np.ndarray | float]:
    """The fit's resolved priors (``bayesfed_priors``, see
    :meth:`bayesfed.modelling.priors.PriorSet.as_dict`) as arrays: ``alpha_mu``,
    ``alpha_sd``, ``beta_mu`` and ``beta_sd`` (predictor, in the posterior's order),
    ``tau_sd``, ``sigma_sd`` (outcome units)."""
    priors = json.loads(tree.attrs["bayesfed_priors"])
    post = tree.posterior
    names = [str(v) for v in post["beta"]["predictor"].to_numpy()] if "beta" in post else []
    out = {"alpha_mu": priors["prior.intercept.mu"], "alpha_sd": priors["prior.intercept.sigma"],
           "beta_mu": np.array([priors[f"prior.beta[{k}].mu"] for k in names]),
           "beta_sd": np.array([priors[f"prior.beta[{k}].sigma"] for k in names]),
           "tau_sd": priors["prior.sd_school.sigma"], "sigma_sd": priors["prior.sigma.sigma"]}
    if "prior.sd_log_sigma.sigma" in priors:  # a location-scale fit
        out |= {"s_sd": priors["prior.sd_log_sigma.sigma"],
                "rho_eta": priors["prior.cor_log_sigma.eta"]}
    if "prior.cor_school.eta" in priors:  # a random-slope fit
        out |= {"slope_sd": np.array([priors[f"prior.sd_slope[{k}].sigma"]
                                      for k in post["slope"].to_numpy()]),
                "cor_eta": priors["prior.cor_school.eta"]}
    return out


def _prior_draws(tree: xr.DataTree, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` draws from the fit's resolved priors (:func:`_recorded_priors`)."""
    p = _recorded_priors(tree)
    alpha = rng.normal(p["alpha_mu"], p["alpha_sd"], n)
    beta = np.column_stack([rng.normal(mu, sd, n) for mu, sd in zip(
        p["beta_mu"], p["beta_sd"], strict=True)]) if p["beta_mu"].size else np.zeros((n, 0))
    out = {"alpha": alpha, "beta": beta, "tau": np.abs(rng.normal(0.0, p["tau_sd"], n)),
           "sigma": np.abs(rng.normal(0.0, p["sigma_sd"], n))}
    if "s_sd" in p:
        out |= {"s": np.abs(rng.normal(0.0, p["s_sd"], n)),
                "rho": 2 * rng.beta(p["rho_eta"], p["rho_eta"], n) - 1}
    if "slope_sd" in p:
        sds = np.column_stack([out["tau"], np.abs(rng.normal(0.0, p["slope_sd"],
                                                             (n, p["slope_sd"].size)))])
        out["chol"] = sds[:, :, None] * lkj_cholesky(sds.shape[1], p["cor_eta"], n, rng)
    return out


def _replicate(draws: dict[str, np.ndarray], data: dict[str, np.ndarray],
               rng: np.random.Generator, slopes: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    r"""Replicated school means (draw, school) and within-school sds (draw, school with >= 2
    pupils), one replication per draw, for new schools (module docstring); with ``s`` and
    ``rho`` in ``draws`` (a location-scale fit), each new school's pupil sd is
    :math:`\sigma e^{s z}` and its intercept :math:`\tau(\rho z + \sqrt{1-\rho^2} z')`; with
    ``chol`` (a random-slope fit, ``slopes`` the slopes' columns), each new school draws its
    intercept and slopes :math:`b = L\xi`, which move its mean by :math:`\bar z_j^\top b` and
    its within-school sum of squares by its own slopes."""
    n = data["school_n"]
    alpha, beta, tau, sigma = draws["alpha"], draws["beta"], draws["tau"], draws["sigma"]
    mu = alpha[:, None] + beta @ data["school_x_mean"].T
    shape = mu.shape
    several = n >= 2
    sigma = np.broadcast_to(sigma[:, None], shape)
    if "chol" in draws:  # a new school's intercept and slopes b = L xi
        b = np.einsum("sab,sjb->sja", draws["chol"],
                      rng.standard_normal((*shape, draws["chol"].shape[-1])))
        effect = b[..., 0] + np.einsum("jk,sjk->sj", data["school_x_mean"][:, slopes],
                                       b[..., 1:])
        school_beta = np.broadcast_to(beta[:, None, :], (*shape, beta.shape[1])).copy()
        school_beta[..., slopes] += b[..., 1:]
        quad = np.einsum("sja,jab,sjb->sj", school_beta[:, several],
                         data["school_xx"][several], school_beta[:, several])
    else:
        effect = tau[:, None] * rng.standard_normal(shape)
        quad = quadratic_forms(beta, data["school_xx"][several])
    if "s" in draws:  # a new school's log pupil sd, and its intercept correlated with it
        z = rng.standard_normal(shape)
        rho = draws["rho"][:, None]
        effect = rho * tau[:, None] * z + np.sqrt(1 - rho**2) * effect
        sigma = sigma * np.exp(draws["s"][:, None] * z)
    means = mu + effect + (sigma / np.sqrt(n)) * rng.standard_normal(shape)
    s2 = sigma[:, several] ** 2
    ss = s2 * rng.noncentral_chisquare(n[several] - 1, np.maximum(quad / s2, 0.0))
    return means, np.sqrt(ss / (n[several] - 1))


def _statistics(means: np.ndarray, sds: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    """The checked statistics of school means (..., school) and within-school sds (...,
    school with >= 2 pupils)."""
    df = n[n >= 2] - 1
    return {
        "school_mean_mean": means.mean(axis=-1),
        "school_mean_sd": means.std(axis=-1, ddof=1),
        "school_mean_min": means.min(axis=-1),
        "school_mean_max": means.max(axis=-1),
        "within_sd_pooled": np.sqrt((df * sds**2).sum(axis=-1) / df.sum()),
        "within_sd_sd": sds.std(axis=-1, ddof=1),
        "within_sd_max": sds.max(axis=-1),
    }


def _observed(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    several = data["school_n"] >= 2
    return data["school_y_mean"], np.sqrt(data["school_yy"][several]
                                          / (data["school_n"][several] - 1))


def _check(observed: dict[str, np.ndarray], replicated: dict[str, np.ndarray]) -> dict:
    tail = (1 - PROB) / 2
    out = {}
    for name, obs in observed.items():
        rep = replicated[name]
        low, high = np.quantile(rep, [tail, 1 - tail])
        out[name] = {"observed": float(obs), "mean": float(rep.mean()), "low": float(low),
                     "high": float(high), "p_value": float((rep >= obs).mean())}
    return out


def _band(observed: np.ndarray, replicated: np.ndarray) -> dict[str, list[float]]:
    """Sorted observed values and the central band of each rank of the replications."""
    tail = (1 - PROB) / 2
    low, high = np.quantile(np.sort(replicated, axis=-1), [tail, 1 - tail], axis=0)
    return {"observed": np.sort(observed).tolist(), "low": low.tolist(), "high": high.tolist()}


def predictive_checks(tree: xr.DataTree, seed: int) -> dict[str, object]:
    """Prior and posterior predictive checks of a two-level fit (module docstring).

    Parameters
    ----------
    tree : xarray.DataTree
        A two-level fit whose ``constant_data`` holds :data:`SCHOOL_DATA`.
    seed : int
        Seed of the replications (the summary uses the fit's own seed).

    Returns
    -------
    dict
        ``draws`` (replications per check); ``posterior`` and ``prior``: statistic name ->
        ``observed``, ``mean``, ``low``, ``high`` (central 94% interval of the replications)
        and ``p_value`` = P(T_rep >= T_obs), for ``school_mean_mean``, ``school_mean_sd``,
        ``school_mean_min``, ``school_mean_max`` (outcome units, over schools),
        ``within_sd_pooled``, ``within_sd_sd``, ``within_sd_max`` (within-school sds, over
        schools with at least two pupils); ``school_means`` and ``within_sds``: ``observed``
        (sorted) and the posterior predictive ``low`` and ``high`` of each rank.
    """
    data = _data(tree)
    rng = np.random.default_rng([seed, 20240817])
    obs_means, obs_sds = _observed(data)
    observed = {k: v for k, v in _statistics(obs_means, obs_sds, data["school_n"]).items()}
    post = _posterior_draws(tree)
    size = post["alpha"].size
    keep = np.round(np.linspace(0, size - 1, min(size, REPLICATIONS))).astype(int)
    post = {k: v[keep] for k, v in post.items()}
    slopes = _slope_columns(tree) if "chol" in post else None
    rep_means, rep_sds = _replicate(post, data, rng, slopes)
    prior_means, prior_sds = _replicate(_prior_draws(tree, post["alpha"].size, rng), data, rng,
                                        slopes)
    n = data["school_n"]
    return {
        "draws": int(post["alpha"].size),
        "posterior": _check(observed, _statistics(rep_means, rep_sds, n)),
        "prior": _check(observed, _statistics(prior_means, prior_sds, n)),
        "school_means": _band(obs_means, rep_means),
        "within_sds": _band(obs_sds, rep_sds),
    }


#: Draws taken at once by :func:`school_loglik` (its temporaries: DRAW_BLOCK x schools).
DRAW_BLOCK = 256


@numba.njit(cache=True)
def _school_loglik(n: np.ndarray, y_mean: np.ndarray, yy: np.ndarray, fixed: np.ndarray,
                   fit_ss: np.ndarray, s2: np.ndarray, t2: np.ndarray
                   ) -> np.ndarray:  # pragma: no cover - compiled
    """Each school's marginal log-likelihood per draw (draw, school): ``n``, ``y_mean``, ``yy``
    its pupils' count, mean and within sum of squares (school,); ``fixed`` the fixed part of
    its mean and ``fit_ss`` ``beta' XX beta - 2 beta' Xy`` (draw, school); ``s2``, ``t2`` the
    pupil and school variances (draw,)."""
    draws, schools = fixed.shape
    out = np.empty((draws, schools))
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    for s in range(draws):
        log_s2 = math.log(s2[s])
        for j in range(schools):
            mean_var = s2[s] + n[j] * t2[s]
            r = y_mean[j] - fixed[s, j]
            out[s, j] = -(n[j] * half_log_2pi + 0.5 * ((n[j] - 1) * log_s2 + math.log(mean_var)
                          + (yy[j] + fit_ss[s, j]) / s2[s] + n[j] * r * r / mean_var))
    return out


def school_loglik(tree: xr.DataTree) -> xr.DataArray:
    """Pointwise log-likelihood of each school, its intercept integrated out (nats).

    Returns
    -------
    xarray.DataArray
        Dims (chain, draw, school); summed over schools, the collapsed model's log-likelihood.
    """
    data = _data(tree)
    post = tree.posterior
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    d = _posterior_draws(tree)
    beta = d["beta"]
    # the products by BLAS, the rest in one numba pass (numpy's elementwise passes over draws
    # x schools took 2.3 s at national size), a block of draws at a time: temporaries of a
    # few MB are reused, not page-faulted afresh as 100 MB ones are
    n = data["school_n"].astype(float)
    ll = np.empty((beta.shape[0], n.size))
    for start in range(0, beta.shape[0], DRAW_BLOCK):
        b = beta[start:start + DRAW_BLOCK]
        ll[start:start + DRAW_BLOCK] = _school_loglik(
            n, data["school_y_mean"], data["school_yy"],
            d["alpha"][start:start + DRAW_BLOCK, None] + b @ data["school_x_mean"].T,
            quadratic_forms(b, data["school_xx"]) - 2 * b @ data["school_xy"].T,
            d["sigma"][start:start + DRAW_BLOCK] ** 2, d["tau"][start:start + DRAW_BLOCK] ** 2)
    school = tree["constant_data"]["school"].to_numpy()
    return xr.DataArray(ll.reshape(chains, draws, -1), dims=("chain", "draw", "school"),
                        coords={"chain": post["chain"].to_numpy(),
                                "draw": post["draw"].to_numpy(), "school": school})


def log_prior(tree: xr.DataTree) -> xr.DataArray:
    r"""The two-level model's log prior density at each draw (nats): the Normal priors of
    ``intercept`` and each ``beta`` and the HalfNormal priors of ``sd_school`` and ``sigma``,
    with the numbers the fit records (``bayesfed_priors``; in the collapsed model the prior of
    ``level`` is the intercept's, moved with unit Jacobian); in a location-scale fit also the
    top-level priors of ``sd_log_sigma`` and ``cor_log_sigma`` (the schools' log sds are the
    model's, not the prior's: power-scaling leaves their distribution given ``sd_log_sigma``
    alone); in a random-slope fit also the slope sds' HalfNormal priors and the LKJ prior of
    the correlation, :math:`(\eta - 1)\log\det\Omega` (its constant cancels in
    power-scaling).

    Returns
    -------
    xarray.DataArray
        Dims (chain, draw).
    """
    p = _recorded_priors(tree)
    d = _posterior_draws(tree)
    density = (stats.norm.logpdf(d["alpha"], p["alpha_mu"], p["alpha_sd"])
               + stats.norm.logpdf(d["beta"], p["beta_mu"], p["beta_sd"]).sum(axis=1)
               + stats.halfnorm.logpdf(d["tau"], scale=p["tau_sd"])
               + stats.halfnorm.logpdf(d["sigma"], scale=p["sigma_sd"]))
    if "s" in d:
        density = (density + stats.halfnorm.logpdf(d["s"], scale=p["s_sd"])
                   + stats.beta.logpdf((d["rho"] + 1) / 2, p["rho_eta"], p["rho_eta"]))
    if "chol" in d:  # HalfNormal slope sds, LKJ(eta) correlation (up to its constant)
        sds = np.linalg.norm(d["chol"], axis=-1)
        log_det = 2 * (np.log(np.diagonal(d["chol"], axis1=1, axis2=2)) - np.log(sds)).sum(1)
        density = (density + stats.halfnorm.logpdf(sds[:, 1:], scale=p["slope_sd"]).sum(axis=1)
                   + (p["cor_eta"] - 1) * log_det)
    post = tree.posterior
    return xr.DataArray(density.reshape(post.sizes["chain"], post.sizes["draw"]),
                        dims=("chain", "draw"))


def loo_school(tree: xr.DataTree, ll: xr.DataArray | None = None) -> azs.ELPDData:
    """PSIS leave-one-school-out cross-validation of a two-level fit: pointwise elpd and Pareto
    k per school (``ll``: :func:`school_loglik`'s result, computed here when not given). The
    draws' relative efficiency is that of ``intercept``, ``sd_school`` and ``sigma``."""
    ll = school_loglik(tree) if ll is None else ll
    reff = relative_ess(tree.posterior.to_dataset()[["intercept", "sd_school", "sigma"]])
    return psis.psis_loo(ll, reff)


def school_loglik_slopes(tree: xr.DataTree) -> xr.DataArray:
    """Each school's log-likelihood per draw in a random-slope fit, its effects integrated out
    (nats; :func:`bayesfed.modelling.random_slopes.school_loglik`, from the statistics the fit
    stores); dims (chain, draw, school)."""
    # here, not at the top: the module imports PyMC, which a summary worker otherwise never needs
    from bayesfed.modelling.random_slopes import draw_parameters, school_loglik, slope_data_of

    post = tree.posterior.to_dataset()
    data = slope_data_of(tree["constant_data"].to_dataset())
    ll = school_loglik(data, *draw_parameters(post, data))
    return xr.DataArray(ll.reshape(post.sizes["chain"], post.sizes["draw"], -1),
                        dims=("chain", "draw", "school"),
                        coords={"school": tree["constant_data"]["school"].to_numpy()})


def loo_school_slopes(tree: xr.DataTree, ll: xr.DataArray) -> azs.ELPDData:
    """PSIS leave-one-school-out of a random-slope fit (``ll``: :func:`school_loglik_slopes`);
    the draws' relative efficiency that of ``intercept``, ``sd_school``, ``sd_slope`` and
    ``sigma``."""
    post = tree.posterior.to_dataset()
    reff = relative_ess(post[["intercept", "sd_school", "sd_slope", "sigma"]])
    return psis.psis_loo(ll, reff)


def school_summary(tree: xr.DataTree) -> SchoolSummary:
    """The :class:`~bayesfed.design.suffstats.SchoolSummary` of the per-school statistics a
    two-level fit stores (:func:`school_data`); a column is taken as school-level when it has
    no within-school variation in any school."""
    data = _data(tree)
    p = data["school_xy"].shape[1]
    within = np.empty((data["school_n"].size, 1 + p, 1 + p))
    within[:, 0, 0] = data["school_yy"]
    within[:, 1:, 0] = within[:, 0, 1:] = data["school_xy"]
    within[:, 1:, 1:] = data["school_xx"]
    constant = tree["constant_data"]
    names = tuple(str(v) for v in constant["predictor"].to_numpy())
    flat = ~np.diagonal(data["school_xx"], axis1=1, axis2=2).any(axis=0)
    return SchoolSummary(n=data["school_n"], y_mean=data["school_y_mean"],
                         X_mean=data["school_x_mean"], within=within,
                         schools=tuple(str(v) for v in constant["school"].to_numpy()),
                         coef_names=names, school_level=tuple(bool(v) for v in flat))


def school_loglik_scale(tree: xr.DataTree) -> xr.DataArray:
    """Each school's log-likelihood per draw in a location-scale fit, its intercept and its
    log pupil sd integrated out (nats;
    :func:`bayesfed.modelling.location_scale.school_loglik`): the density of a new
    school's pupils, as the random-intercept model's :func:`school_loglik` is; dims (chain,
    draw, school)."""
    # here, not at the top: the module imports PyMC, which a summary worker otherwise never needs
    from bayesfed.modelling.location_scale import school_loglik as scale_school_loglik

    post = tree.posterior.to_dataset()
    ll = scale_school_loglik(post, school_summary(tree))
    return xr.DataArray(ll.reshape(post.sizes["chain"], post.sizes["draw"], -1),
                        dims=("chain", "draw", "school"),
                        coords={"school": tree["constant_data"]["school"].to_numpy()})


def loo_school_scale(tree: xr.DataTree, ll: xr.DataArray) -> azs.ELPDData:
    """PSIS leave-one-school-out of a location-scale fit (``ll``: :func:`school_loglik_scale`,
    each school's own intercept and pupil sd integrated out, so that it is comparable with the
    random-intercept model's); the draws' relative efficiency that of ``intercept``,
    ``sd_school``, ``sd_log_sigma`` and ``sigma``."""
    reff = relative_ess(tree.posterior.to_dataset()[["intercept", "sd_school", "sd_log_sigma",
                                                     "sigma"]])
    return psis.psis_loo(ll, reff)


def psis_loo(tree: xr.DataTree, var_name: str) -> azs.ELPDData:
    """PSIS-LOO of the ``log_likelihood`` variable ``var_name``, pointwise
    (:func:`bayesfed.posterior.psis.psis_loo`), the draws' relative efficiency that of every
    posterior variable, as ``arviz_stats.loo`` takes it."""
    return psis.psis_loo(tree.log_likelihood[var_name],
                         relative_ess(tree.posterior.to_dataset()))


def loo_summary(elpd: azs.ELPDData) -> dict[str, float | int | str]:
    """The numbers ``summary.json`` keeps of a leave-one-school-out result."""
    k = elpd.pareto_k.to_numpy()
    return {"unit": "school", "elpd": float(elpd.elpd), "se": float(elpd.se),
            "p_loo": float(elpd.p), "n_units": int(elpd.n_data_points),
            "good_k": float(elpd.good_k), "pareto_k_max": float(np.max(k)),
            "n_high_pareto_k": int((k > elpd.good_k).sum())}


def compare_loo(results: dict[str, azs.ELPDData]) -> list[dict[str, float | int | str]]:
    """Models fitted to the same pupils, ranked by leave-one-school-out elpd.

    Returns
    -------
    list of dict
        Best first: ``model``, ``rank`` (0 best), ``elpd``, ``se``, ``p_loo``, ``elpd_diff``
        (elpd below the best model's), ``dse`` (standard error of the difference) and
        ``weight`` (stacking weight).
    """
    # A school's log density is the sum over its ~200 pupils (about -500 nats), and
    # arviz_stats' stacking exponentiates it unguarded: exp underflows to 0 and every model
    # gets weight 1/n. Stacking weights do not change when every model's elpd of a school is
    # shifted by the same amount, so each school's best elpd is subtracted first; elpd, se,
    # elpd_diff and dse are not computed from the shifted values.
    best = xr.concat([r.elpd_i for r in results.values()], dim="model").max("model")
    shifted = {name: dataclasses.replace(r, elpd_i=r.elpd_i - best)
               for name, r in results.items()}
    table = azs.compare(shifted, round_to="none")
    return [{"model": str(name), "rank": int(row["rank"]), "elpd": float(row["elpd"]),
             "se": float(row["se"]), "p_loo": float(row["p"]),
             "elpd_diff": float(row["elpd_diff"]), "dse": float(row["dse"]),
             "weight": float(row["weight"])} for name, row in table.iterrows()]
