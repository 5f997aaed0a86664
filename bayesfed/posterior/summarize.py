"""Summaries of saved fits: parameters, variance partitions, federation effect, diagnostics.

:func:`summarize_dir` reads every fit file in a folder and returns the content of
``summary.json``: ``{"bayesfed_version": ..., "prob": 0.94, "gates": {...}, "fits": [...]}``
with, for every fit,

- ``model``, ``year`` (int, or null when no year was selected), ``n_pupils``, ``n_schools``;
- ``terms``: ``intercept`` then the coefficient names in the spec's order (JSON objects are
  written with sorted keys, so this list keeps the reporting order);
- ``params``: ``intercept``, each coefficient by name (``fsm``, ``sen[school_action]``,
  ``federated``), ``sd_school`` and ``sigma``, each with ``mean``, ``sd``, ``hdi_low``,
  ``hdi_high`` (94% HDI), ``ess_bulk``, ``ess_tail``, ``r_hat``, ``mcse_mean``;
- ``variance_partition``: ``school`` and ``pupil`` shares (0-1) with mean, sd and HDI;
- ``variance_explained``: when the model names a reference model fitted in the same folder for
  the same year, the proportional reduction in variance at ``school`` and ``pupil`` level;
- ``decomposition``: shares of the model-implied total variance (``fixed``, ``school``,
  ``pupil``, ``r2_marginal``, ``r2_conditional``);
- ``federation_effect``: for a model with a ``federated`` coefficient, its summary plus
  ``p_positive`` = P(effect > 0);
- ``reml``: the REML fit of the same model to the same pupils (estimates, SEs, variances),
  with its ``variance_partition`` and ``variance_explained`` (point values, 0-1); only
  ``error`` when the REML fit failed its checks;
- ``diagnostics``: ``divergences``, ``max_r_hat``, ``min_ess_bulk``, ``min_ess_tail``,
  ``min_bfmi``, ``problems`` (plain-language list) and ``ok``;
- ``sampling_seconds``, ``sampler``, ``seed``, ``data_sha256``, ``file``;
- ``predictive`` and ``loo``: prior and posterior predictive checks and leave-one-school-out
  cross-validation (:mod:`bayesfed.posterior.checks`), for a two-level fit whose file stores the
  per-school statistics they need;
- a random-slope fit adds ``sd_slope[NAME]`` and ``cor_school[A,B]`` to ``params``,
  ``vpc_by_slope`` and ``school_slopes`` (:func:`school_slopes`); a location-scale fit (a
  pupil sd by school) adds ``sd_log_sigma`` and ``cor_log_sigma`` to ``params`` and
  ``school_sigmas`` (:func:`school_sigmas`).

The top level also holds ``loo_comparison``: per year, the models fitted to the same pupils
ranked by their leave-one-school-out expected log predictive density.

Numbers come from :mod:`bayesfed.posterior.partition` (shares) and ArviZ (summaries, diagnostics);
this module only collects them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import arviz_stats as azs
import numpy as np
import xarray as xr

from bayesfed import __version__
from bayesfed.design.suffstats import residual_ss
from bayesfed.inputs.families import fit_kind, tree_kind
from bayesfed.inputs.spec import ModelSpec
from bayesfed.posterior.checks import (
    compare_loo,
    has_scale,
    has_school_data,
    has_slope_data,
    log_prior,
    loo_school,
    loo_school_scale,
    loo_school_slopes,
    loo_summary,
    predictive_checks,
    psis_loo,
    school_loglik,
    school_loglik_scale,
    school_loglik_slopes,
    school_summary,
)
from bayesfed.posterior.convergence import dataset_diagnostics
from bayesfed.posterior.effects import sensitivity
from bayesfed.posterior.intervals import PROB
from bayesfed.posterior.partition import (
    decomposition_from_cov,
    decomposition_levels,
    hdi_summary,
    predictor_cov_levels,
    snijders_bosker,
    term_share_between,
    variance_explained,
    vpc,
    vpc_at,
)
from bayesfed.store import fit_attrs, load_fit, release, write_json

#: Diagnostic gates: a fit breaking any of them is marked failed (``diagnostics.ok`` false).
#: ``min_bfmi``: the energy Bayesian fraction of missing information of every chain (E-BFMI,
#: Betancourt 2016); below 0.3 the momentum resampling explores the energy poorly (heavy
#: tails, funnels) even when R-hat and ESS look fine.
GATES = {"max_r_hat": 1.01, "min_ess_bulk": 400, "min_ess_tail": 400, "divergences": 0,
         "min_bfmi": 0.3}

#: Parameters whose convergence is checked: the free ones and ``u``, every school's intercept
#: (``school_mean`` and ``school_effect`` are sums of these).
CHECKED = ("intercept", "beta", "sd_school", "sigma", "u")

#: Also checked in a random-slope fit: the school effects' packed Cholesky factor (free), the
#: slope sds and every school's slopes.
CHECKED_SLOPES = ("school_cov", "sd_slope", "school_slope")

#: Also checked in a location-scale fit: the sd of the schools' log pupil sds, its correlation
#: with the intercept and every school's log pupil sd (free).
CHECKED_SCALE = ("sd_log_sigma", "cor_log_sigma", "log_sigma_school")

#: Reported in a location-scale fit's ``params`` besides :data:`REPORTED`.
REPORTED_SCALE = ("sd_log_sigma", "cor_log_sigma")

#: Reported parameters, in order; ``beta`` is expanded to one entry per coefficient.
REPORTED = ("intercept", "beta", "sd_school", "sigma")


def _num(x: float) -> float | None:
    """A JSON-safe float (NaN becomes null)."""
    x = float(x)
    return x if np.isfinite(x) else None


#: Fields of a parameter's summary from ArviZ's summary, and its rows they come from.
_STATS = {"mean": "mean", "sd": "sd", "hdi_low": f"hdi{round(PROB * 100)}_lb",
          "hdi_high": f"hdi{round(PROB * 100)}_ub"}


def param_summaries(tree: xr.DataTree, names: tuple[str, ...] = REPORTED
                    ) -> dict[str, dict[str, float | None]]:
    """Posterior summary of parameters, one entry per element.

    Mean, sd and the :data:`~bayesfed.posterior.intervals.PROB` HDI are ArviZ's
    (``arviz.summary``); R-hat, ESS and the MCSE of the mean come from
    :mod:`bayesfed.posterior.convergence`, the definitions the gates use.

    Parameters
    ----------
    tree : xarray.DataTree
    names : tuple of str
        Posterior variables (those absent are skipped). A variable with one dim besides chain
        and draw gives one entry per coordinate, keyed by the coordinate's label
        (``beta`` -> ``fsm``, ``delta`` -> ``"3"``); a scalar is keyed by its name.

    Returns
    -------
    dict
        ``name -> {mean, sd, hdi_low, hdi_high, ess_bulk, ess_tail, r_hat, mcse_mean}``.
    """
    names = [v for v in names if v in tree.posterior]
    with np.errstate(invalid="ignore", divide="ignore"):  # a stuck chain: NaN, kept as null
        table = azs.summary(tree, var_names=names, kind="stats", ci_prob=PROB, ci_kind="hdi",
                           round_to="none", fmt="xarray")
    checks = dataset_diagnostics(tree.posterior.to_dataset(), names)
    out: dict[str, dict[str, float | None]] = {}
    for var in names:
        da = table[var]
        dims = [d for d in da.dims if d != "summary"]
        labels = [None] if not dims else list(da[dims[0]].to_numpy())
        for i, label in enumerate(labels):
            stats = da if label is None else da.sel({dims[0]: label})
            entry = {k: _num(stats.sel(summary=v)) for k, v in _STATS.items()}
            entry |= {k: _num(np.ravel(v)[i]) for k, v in checks[var].items()}
            out[var if label is None else str(label)] = entry
    return out


def diagnostics(tree: xr.DataTree) -> dict[str, object]:
    """Convergence diagnostics over every free parameter, and the gate verdict.

    Returns
    -------
    dict
        ``divergences`` (int), ``max_r_hat``, ``min_ess_bulk``, ``min_ess_tail`` (None when
        undefined, e.g. a chain that never moved; over all elements of :data:`CHECKED` (and
        :data:`CHECKED_SLOPES` in a random-slope fit, :data:`CHECKED_SCALE` in a
        location-scale fit), or of every posterior variable for an
        event-time fit; by
        :mod:`bayesfed.posterior.convergence`), ``min_bfmi`` (the smallest
        E-BFMI of any chain, from ``sample_stats.energy`` by ``arviz.bfmi``; None when
        undefined or the fit has no energy), ``problems`` (list of str) and ``ok`` (bool).
    """
    checked = (CHECKED + CHECKED_SLOPES + CHECKED_SCALE if tree_kind(tree.attrs).per_year
               else tuple(tree.posterior.data_vars))
    names = [v for v in checked if v in tree.posterior]
    checks = dataset_diagnostics(tree.posterior.to_dataset(), names)
    with np.errstate(invalid="ignore", divide="ignore"):
        bfmi = (azs.bfmi(tree.sample_stats["energy"]) if "energy" in tree.sample_stats
                else None)

    def extreme(key: str, fn) -> float | None:
        # a chain that never moved has zero variance: its R-hat and ESS are undefined (NaN),
        # which is reported as a failed gate
        values = np.concatenate([np.ravel(c[key]) for c in checks.values()])
        return None if not np.isfinite(values).all() else float(fn(values))

    out: dict[str, object] = {
        "divergences": int(tree.sample_stats["diverging"].sum()),
        "max_r_hat": extreme("r_hat", np.max),
        "min_ess_bulk": extreme("ess_bulk", np.min),
        "min_ess_tail": extreme("ess_tail", np.min),
        "min_bfmi": None if bfmi is None or not np.isfinite(bfmi).all() else float(bfmi.min()),
    }
    problems = []
    if out["divergences"] > GATES["divergences"]:
        problems.append(f"{out['divergences']} divergent transitions")
    if out["max_r_hat"] is None:
        problems.append("R-hat undefined (a chain did not move)")
    elif not out["max_r_hat"] <= GATES["max_r_hat"]:
        problems.append(f"R-hat {out['max_r_hat']:.3f} > {GATES['max_r_hat']}")
    for key, kind in (("min_ess_bulk", "bulk ESS"), ("min_ess_tail", "tail ESS")):
        if out[key] is None:
            problems.append(f"{kind} undefined (a chain did not move)")
        elif not out[key] >= GATES[key]:
            problems.append(f"{kind} {out[key]:.0f} < {GATES[key]}")
    if bfmi is not None and out["min_bfmi"] is None:
        problems.append("E-BFMI undefined (a chain did not move)")
    elif bfmi is not None and not out["min_bfmi"] >= GATES["min_bfmi"]:
        low = ", ".join(str(c) for c in bfmi["chain"].to_numpy()[bfmi < GATES["min_bfmi"]])
        problems.append(f"E-BFMI {out['min_bfmi']:.2f} < {GATES['min_bfmi']} (chain {low})")
    out["problems"] = problems
    out["ok"] = not problems
    return out


def _attr_json(tree: xr.DataTree, key: str) -> dict:
    return json.loads(tree.attrs[key])


def reml_point(reml: dict) -> xr.Dataset:
    """REML variances as a one-draw "posterior" (chain 1, draw 1), so that the variance
    partitions of :mod:`bayesfed.posterior.partition` apply to them unchanged."""
    return xr.Dataset({name: (("chain", "draw"), [[np.sqrt(reml[var])]])
                       for name, var in (("sd_school", "var_school"), ("sigma", "var_pupil"))})


def reml_summary(tree: xr.DataTree, reference: xr.DataTree | None) -> dict[str, object]:
    """The fit's REML results plus its variance partition (and reduction vs the reference;
    None at a level where the reference's REML variance is 0)."""
    reml = _attr_json(tree, "bayesfed_reml")
    if "error" in reml or "unavailable" in reml:
        return reml
    point = reml_point(reml)
    reml["variance_partition"] = {k: float(v.squeeze()) for k, v in vpc(point).items()}
    ref_reml = None if reference is None else _attr_json(reference, "bayesfed_reml")
    if ref_reml is not None and "error" not in ref_reml:
        # a reference variance of 0 (REML on the boundary) leaves that level's reduction
        # undefined: None, not an infinity
        with np.errstate(divide="ignore", invalid="ignore"):
            explained = variance_explained(reml_point(ref_reml), point)
        reml["variance_explained"] = {k: float(v.squeeze()) if np.isfinite(v).all() else None
                                      for k, v in explained.items()}
    return reml


def fit_year(attrs: Mapping[str, object]) -> int | None:
    """The year since founding a fit selected (from the fit's attributes), or None."""
    text = str(attrs["bayesfed_year"])
    return int(text) if text else None


def different_pupils(attrs: Mapping[str, object], ref_attrs: Mapping[str, object]
                     ) -> str | None:
    """Why a fit cannot be compared with its reference model's fit (None when it can): they
    were fitted to different pupils. Compared by their samples' fingerprints
    (:func:`bayesfed.design.suffstats.sample_sha256`; by pupil counts for files written
    before fingerprints) and their data's hash."""
    model, ref = attrs["bayesfed_model"], ref_attrs["bayesfed_model"]
    n, m = int(attrs["bayesfed_n_pupils"]), int(ref_attrs["bayesfed_n_pupils"])
    same_data = attrs.get("bayesfed_data_sha256") == ref_attrs.get("bayesfed_data_sha256")
    same = (attrs["bayesfed_sample"] == ref_attrs["bayesfed_sample"]
            if "bayesfed_sample" in attrs and "bayesfed_sample" in ref_attrs else n == m)
    if same and same_data:
        return None
    which = "different data" if not same_data else f"different pupils ({n:,} and {m:,})"
    return (f"not compared with {ref}: {model} and {ref} were fitted to {which}, so the "
            "variance one explains of the other's is not defined; fit both in one job (with "
            "--drop-incomplete, rows missing a value any of its models needs are dropped for "
            "all of them)")


#: Posterior variables a summary does not read: sums of the school intercepts, draws x schools
#: each (about 100 MB apiece for a national fit).
UNREAD = ("school_effect", "school_mean")

#: What a fit's summary reads of its reference model's fit, besides its attributes.
REFERENCE_VARS = ("sd_school", "sigma", "sd_log_sigma")


def summarize_fit(tree: xr.DataTree, reference: xr.DataTree | None = None,
                  file: str = "") -> dict[str, object]:
    """Summary of one fit (see the module docstring for the fields).

    Parameters
    ----------
    tree : xarray.DataTree
        A fit saved by :func:`bayesfed.jobs.fit_one.fit_one`.
    reference : xarray.DataTree, optional
        The fit of the model's reference model on the same pupils.
    file : str
        The fit's file name, recorded in the summary.
    """
    kind = tree_kind(tree.attrs)
    if kind.joint:
        return (summarize_stacked_fit if kind.by_cohort else summarize_event_fit)(tree, file)
    post = tree.posterior.to_dataset()
    params = param_summaries(tree)
    cov = tree.constant_data["x_cov"].to_numpy()
    slopes = has_slope_data(tree)
    moment = tree.constant_data["slope_moment"].to_numpy() if slopes else None
    shares = decomposition_from_cov(post, cov, z_moment=moment)
    out: dict[str, object] = {
        **_common(tree, file),
        "terms": [n for n in params if n not in ("sd_school", "sigma")],
        "params": params,
        "variance_partition": {k: hdi_summary(v, PROB) for k, v in vpc(post).items()},
        "decomposition": {k: hdi_summary(v, PROB) for k, v in shares.items()},
        "diagnostics": diagnostics(tree),
    }
    if slopes:
        out |= slope_summary(post, moment)
        out["params"] |= out.pop("slope_params")
        out["school_slopes"] = school_slopes(tree)
    if has_scale(tree):
        out["params"] |= param_summaries(tree, REPORTED_SCALE)
        out["school_sigmas"] = school_sigmas(tree)
    refused = None if reference is None else different_pupils(tree.attrs, reference.attrs)
    if refused is None and reference is not None and slopes:
        refused = (f"not compared with {reference.attrs['bayesfed_model']}: the school variance "
                   "of a model with random slopes depends on the predictor, so the share of "
                   "the reference's it explains is not one number")
    out["reml"] = reml_summary(tree, None if refused else reference)
    if has_school_data(tree) and not slopes:  # the fixed part within and between schools
        within, between = predictor_cov_levels(tree["constant_data"])
        levels = decomposition_levels(post, within, between)
        out["decomposition"] |= {"fixed_within": hdi_summary(levels["f1"], PROB),
                                 "fixed_between": hdi_summary(levels["f2"], PROB)}
        out["r2_within"] = hdi_summary(levels["r2_within"], PROB)
        out["r2_between"] = hdi_summary(levels["r2_between"], PROB)
        if "federated" in out["terms"]:
            out["federation_share_between"] = hdi_summary(
                term_share_between(post, between, "federated"), PROB)
    if reference is not None:
        out["reference"] = str(reference.attrs["bayesfed_model"])
        if refused:
            out["comparison_refused"] = refused
        else:
            ref_post = reference.posterior.to_dataset()
            out["variance_explained"] = {k: hdi_summary(v, PROB) for k, v in
                                         variance_explained(ref_post, post).items()}
            size = int(tree.attrs["bayesfed_n_pupils"]) / int(tree.attrs["bayesfed_n_schools"])
            out["r2_snijders_bosker"] = {k: hdi_summary(v, PROB) for k, v in
                                         snijders_bosker(ref_post, post, size).items()}
    if "beta" in post and "federated" in post["beta"]["predictor"].to_numpy():
        draws = post["beta"].sel(predictor="federated")
        out["federation_effect"] = {**hdi_summary(draws, PROB),
                                    "p_positive": float((draws > 0).mean())}
    return out


def _school_intervals(draws: xr.DataArray) -> dict[str, list[float]]:
    """Posterior ``mean``, ``hdi_low`` and ``hdi_high`` of a (chain, draw, school) variable,
    one value a school."""
    draws = draws.transpose("school", "chain", "draw")
    low, high = azs.hdi(draws, prob=PROB, dim=["chain", "draw"]).transpose(
        "ci_bound", ...).to_numpy()
    return {"mean": draws.mean(("chain", "draw")).to_numpy().tolist(),
            "hdi_low": low.tolist(), "hdi_high": high.tolist()}


def school_slopes(tree: xr.DataTree) -> dict[str, dict[str, list]]:
    """Each school's slopes in a random-slope fit, with the estimates from its own pupils
    alone, to show the shrinkage (the report's caterpillar plots).

    Returns
    -------
    dict
        Slope name -> lists in the order of the schools: ``school``, ``n``, ``own`` (the
        coefficient's posterior mean plus the school's least-squares slope deviation from its
        own pupils' residuals at the posterior mean of the fixed part; None where its pupils
        cannot determine it: fewer pupils than effects, or a predictor with no spread in the
        school), ``mean``, ``hdi_low`` and ``hdi_high`` (posterior of the school's slope;
        outcome units per predictor unit).
    """
    constant = tree["constant_data"]
    post = tree.posterior
    gram = constant["slope_gram"].to_numpy()
    cross = constant["slope_cross"].to_numpy()
    n = constant["slope_school_n"].to_numpy()
    level = float(post["level"].mean())
    beta = post["beta"].mean(("chain", "draw")).transpose("predictor").to_numpy()
    g = np.concatenate([[float(constant["slope_y_centre"]) - level], -beta, [1.0]])
    rhs = cross @ g  # (school, r): the random-effect design's cross products with residuals
    r = gram.shape[-1]
    # a school's own fit is taken where its Gram matrix is well conditioned
    ok = (n >= r + 1) & (np.linalg.cond(gram) < 1e10)
    own = np.full(rhs.shape, np.nan)
    own[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
    names = [str(v) for v in post["slope"].to_numpy()]
    coef = [str(v) for v in post["beta"]["predictor"].to_numpy()]
    out = {}
    for k, name in enumerate(names, start=1):
        fixed = beta[coef.index(name)]
        out[name] = {"school": [str(v) for v in constant["school"].to_numpy()],
                     "n": n.astype(int).tolist(),
                     "own": [None if np.isnan(v) else float(fixed + v) for v in own[:, k]],
                     **_school_intervals(post["school_slope"].sel(slope=name, drop=True))}
    return out


def school_sigmas(tree: xr.DataTree) -> dict[str, list]:
    r"""Each school's pupil sd in a location-scale fit, with the estimate from its own pupils
    alone, to show the shrinkage (the report's caterpillar plot).

    Returns
    -------
    dict
        Lists in the order of the schools: ``school`` (labels), ``n`` (pupils), ``own`` (the
        root mean square of the school's within-school residuals at the posterior mean of
        ``beta``, with ``n - 1`` degrees of freedom; None for a one-pupil school), ``mean``,
        ``hdi_low`` and ``hdi_high`` (posterior of :math:`\sigma_j`, outcome units).
    """
    constant = tree["constant_data"]
    summary = school_summary(tree)
    n = summary.n
    post = tree.posterior
    beta = (post["beta"].mean(("chain", "draw")).transpose("predictor").to_numpy()
            if "beta" in post else np.zeros(0))
    ss = residual_ss(beta[None], summary.within)[0]
    own = [float(np.sqrt(v / (k - 1))) if k > 1 else None for v, k in zip(ss, n)]
    return {"school": [str(v) for v in constant["school"].to_numpy()],
            "n": n.astype(int).tolist(), "own": own,
            **_school_intervals(post["school_sigma"])}


def slope_summary(posterior: xr.Dataset, moment: np.ndarray) -> dict[str, object]:
    """What a random-slope fit's summary adds (:mod:`bayesfed.modelling.random_slopes`).

    Parameters
    ----------
    posterior : xarray.Dataset
    moment : ndarray, shape (r, r)
        The pupils' mean of :math:`z z^\top`, :math:`z = (1, x_S)`.

    Returns
    -------
    dict
        ``slope_params``: ``sd_slope[NAME]`` and ``cor_school[A,B]`` (each pair once) with the
        fields of :func:`param_summaries`; ``variance_partition``: the VPC of a pupil at the
        pupils' mean of the slope predictors (:func:`bayesfed.posterior.partition.vpc_at`);
        ``vpc_by_slope``: per slope, ``x`` (its mean and the mean -+ one sd over pupils) and the
        VPC ``school`` there (the other slopes at their means).
    """
    names = [str(k) for k in posterior["slope"].to_numpy()]
    terms = ["intercept", *names]
    derived = {f"sd_slope[{k}]": posterior["sd_slope"].sel(slope=k, drop=True) for k in names}
    for i, a in enumerate(terms):
        for b in terms[i + 1:]:
            derived[f"cor_school[{a},{b}]"] = posterior["cor_school"].sel(
                re_term=a, re_term_b=b, drop=True)
    params = param_summaries(xr.DataTree.from_dict({"posterior": xr.Dataset(derived)}),
                             tuple(derived))
    mean = moment[0]  # (1, E[x_S])
    at_mean = vpc_at(posterior, mean[None])
    by_slope = {}
    for k, name in enumerate(names, start=1):
        sd = float(np.sqrt(max(moment[k, k] - mean[k] ** 2, 0.0)))
        points = np.repeat(mean[None], 3, axis=0)
        points[:, k] = mean[k] + np.array([-sd, 0.0, sd])
        shares = vpc_at(posterior, points)
        by_slope[name] = {"x": points[:, k].tolist(),
                          "school": [hdi_summary(shares.isel(point=i, drop=True), PROB)
                                     for i in range(3)]}
    school = at_mean.isel(point=0, drop=True)
    return {"slope_params": params,
            "variance_partition": {"school": hdi_summary(school, PROB),
                                   "pupil": hdi_summary(1 - school, PROB)},
            "vpc_by_slope": by_slope}


def _common(tree: xr.DataTree, file: str) -> dict[str, object]:
    """What every fit's summary starts with: which model, data size, sampler and provenance."""
    options = _attr_json(tree, "bayesfed_options")
    return {
        "model": str(tree.attrs["bayesfed_model"]),
        "family": str(tree.attrs.get("bayesfed_family", "two_level")),
        "year": fit_year(tree.attrs),
        "file": file,
        "n_pupils": int(tree.attrs["bayesfed_n_pupils"]),
        "n_schools": int(tree.attrs["bayesfed_n_schools"]),
        "sampling_seconds": float(tree.attrs["sampling_seconds"]),
        "sampler": options["sampler"],
        "seed": options["fit_seed"],
        "draws": options["draws"] * options["chains"],
        "data_sha256": str(tree.attrs["bayesfed_data_sha256"]),
        "sample_sha256": tree.attrs.get("bayesfed_sample"),
    }


#: Scalar parameters of the event-time model reported in ``params`` (those present).
EVENT_SCALARS = ("federated_gap", "sd_school", "sd_cell", "sigma", "tau_step",
                 "sd_federation_effect", "sd_type")


def _with_p_positive(stats: dict, draws: xr.DataArray) -> dict:
    return {**stats, "p_positive": float((draws > 0).mean())}


def summarize_event_fit(tree: xr.DataTree, file: str = "") -> dict[str, object]:
    """Summary of an event-time fit (:func:`bayesfed.jobs.fit_one.fit_event_time`).

    Returns
    -------
    dict
        The fields every fit has (``model``, ``family`` = ``"event_time"``, ``year`` null,
        sizes, sampler, provenance, ``diagnostics``) plus ``terms``; ``params``
        (``intercept``, coefficients and :data:`EVENT_SCALARS`); ``federation_effect``
        keyed by year since founding (``"0"`` ..) and lead (``"-2"`` ..), each a parameter
        summary plus ``p_positive``; ``reference_year`` (-1); ``trajectory``
        (``p_last_gt_first`` = P(delta_K > delta_0), ``first``, ``last``); ``pre_trend``
        (``leads``, ``flagged``: some lead's 94% HDI excludes 0); ``variance_partition``
        (``school``, ``cell``, ``pupil`` shares); ``type_effect`` (type -> summary plus
        ``p_positive``) when modelled; ``n_cells``, ``n_cohorts``, ``n_dropped``,
        ``n_federations``.
    """
    post = tree.posterior.to_dataset()
    params = param_summaries(tree, ("intercept", "beta", *EVENT_SCALARS))
    effects = param_summaries(tree, ("lead", "delta"))
    effect_draws = {str(k): post["lead"].sel(lead_year=k) for k in post["lead"]["lead_year"]
                    .to_numpy()} | {str(k): post["delta"].sel(event_year=k)
                                    for k in post["delta"]["event_year"].to_numpy()}
    years = [str(k) for k in post["delta"]["event_year"].to_numpy()]
    leads = [str(k) for k in post["lead"]["lead_year"].to_numpy()]
    out: dict[str, object] = {
        **_common(tree, file),
        "terms": [n for n in params if n not in EVENT_SCALARS],
        "params": params,
        "federation_effect": {k: _with_p_positive(effects[k], effect_draws[k])
                              for k in (*leads, *years)},
        "reference_year": -1,
        "trajectory": {"first": years[0], "last": years[-1], "p_last_gt_first": float(
            (effect_draws[years[-1]] > effect_draws[years[0]]).mean())},
        "pre_trend": {"leads": leads, "flagged": any(
            not effects[k]["hdi_low"] <= 0.0 <= effects[k]["hdi_high"] for k in leads)},
        "variance_partition": {k: hdi_summary(v, PROB) for k, v in vpc(post).items()},
        "diagnostics": diagnostics(tree),
    }
    for key in ("n_cells", "n_cohorts", "n_dropped", "n_federations"):
        out[key] = int(tree.attrs[f"bayesfed_{key}"])
    if "type_effect" in post:
        types = param_summaries(tree, ("type_effect",))
        out["type_effect"] = {k: _with_p_positive(types[k], post["type_effect"].sel(
            federation_type=k)) for k in types}
    return out


#: Scalar parameters of the stacked event-time model reported in ``params`` (those present).
STACKED_SCALARS = ("sd_school", "sd_cell", "sigma", "shock_ar", "sd_federation_effect",
                   "sd_cohort_effect", "tau_step")


def _by_outer(tree: xr.DataTree, var: str, outer: str) -> dict[str, dict[str, dict]]:
    """Summaries of a (chain, draw, outer, inner) variable: ``outer label -> inner label ->``
    the fields of :func:`param_summaries` plus ``p_positive``."""
    draws = tree.posterior[var].transpose("chain", "draw", outer, ...)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = azs.summary(tree, var_names=[var], kind="stats", ci_prob=PROB, ci_kind="hdi",
                           round_to="none", fmt="xarray")[var]
    checks = dataset_diagnostics(draws.to_dataset(name=var), [var])[var]
    inner = next(d for d in table.dims if d not in ("summary", outer))
    out: dict[str, dict[str, dict]] = {}
    for i, a in enumerate(draws[outer].to_numpy()):
        out[str(a)] = {}
        for j, b in enumerate(draws[inner].to_numpy()):
            cell = table.sel({outer: a, inner: b})
            out[str(a)][str(b)] = ({k: _num(cell.sel(summary=v)) for k, v in _STATS.items()}
                                   | {k: _num(v[i, j]) for k, v in checks.items()}
                                   | {"p_positive": float((draws.sel({outer: a, inner: b})
                                                           > 0).mean())})
    return out


def prior_sensitivity(tree: xr.DataTree, names: tuple[str, ...] = ("att", "att_average")
                      ) -> dict[str, dict[str, object]]:
    """Power-scaling sensitivity (Kallioinen et al. 2024, ``arviz_stats.psense_summary``) of
    the effect aggregates to the prior and to the likelihood (the fit's ``log_prior`` and
    ``log_likelihood`` groups: :mod:`bayesfed.posterior.event_draws`).

    Returns
    -------
    dict
        ``name -> {prior, likelihood, diagnosis}``: the cumulative Jensen-Shannon distance of
        the posterior under power-scaling of each part (above 0.05: sensitive), and
        arviz-stats' reading (``"✓"``, ``"potential strong prior / weak likelihood"`` or
        ``"potential prior-data conflict"``). Names are ``att[k]`` and ``att_average``.
    """
    table = azs.psense_summary(tree, var_names=list(names), round_to=6)
    return {str(name): {"prior": float(row["prior"]), "likelihood": float(row["likelihood"]),
                        "diagnosis": str(row["diagnosis"])} for name, row in table.iterrows()}


def event_checks(tree: xr.DataTree) -> dict[str, object]:
    """The stacked model's predictive checks of new schools' cells: ``draws`` (replications,
    :data:`bayesfed.posterior.event_draws.CHECK_DRAWS` at most) and per statistic
    (:data:`bayesfed.posterior.event_draws.STATISTICS`) the observed mean over draws, the
    replications' mean and central 94% interval, and ``p_value`` = P(T_rep >= T_obs)."""
    pp = tree.posterior_predictive
    out: dict[str, object] = {"draws": int(pp.sizes["replication"]),
                              "unit": "new schools' cells", "posterior": {}}
    for stat in pp["statistic"].to_numpy():
        obs = pp["check_observed"].sel(statistic=stat).to_numpy().ravel()
        rep = pp["check_replicated"].sel(statistic=stat).to_numpy().ravel()
        low, high = np.quantile(rep, [(1 - PROB) / 2, (1 + PROB) / 2])
        out["posterior"][str(stat)] = {"observed": float(obs.mean()), "mean": float(rep.mean()),
                                       "low": float(low), "high": float(high),
                                       "p_value": float((rep >= obs).mean())}
    return out


def summarize_stacked_fit(tree: xr.DataTree, file: str = "") -> dict[str, object]:
    """Summary of a stacked event-time fit (:mod:`bayesfed.modelling.event_stacked`).

    Returns
    -------
    dict
        The fields every fit has plus ``design`` (``"stacked"``); ``terms`` and ``params``
        (coefficients and :data:`STACKED_SCALARS`); ``federation_effect`` keyed by year since
        founding (``"0"`` ..: :math:`ATT(k)`) and lead (``"-2"`` ..: aggregated leads), each a
        parameter summary plus ``p_positive``; ``federation_effect_by_cohort`` (founding year
        -> year -> the same, :math:`ATT(e,k)`) and ``leads_by_cohort``; ``att_average`` (the
        mean of :math:`ATT(k)` over k); ``weights`` (``kind``; ``by_year``: year -> founding
        year -> :math:`w(e,k)`; ``federated_pupils``: the same layout, counts); ``gap`` (the
        federated-vs-matched gap of each founding cohort in year -1); ``reference_year``
        (-1); ``trajectory``; ``pre_trend`` (``leads``, ``flagged``: some aggregated lead's
        94% HDI excludes 0); ``sensitivity`` (:func:`bayesfed.posterior.effects.sensitivity`);
        ``prior_sensitivity`` (:func:`prior_sensitivity`); ``variance_partition``
        (``school``, ``cell``, ``pupil``); ``predictive`` (:func:`event_checks`);
        ``deviation_unit``; ``n_cells``,
        ``n_cohorts``, ``n_foundings``, ``n_dropped``, ``n_federations``.
    """
    post = tree.posterior.to_dataset()
    params = param_summaries(tree, ("beta", *STACKED_SCALARS))
    effects = param_summaries(tree, ("lead_att", "att"))
    draws = {str(k): post["lead_att"].sel(lead_year=k) for k in post["lead_year"].to_numpy()}
    draws |= {str(k): post["att"].sel(event_year=k) for k in post["event_year"].to_numpy()}
    years = [str(k) for k in post["event_year"].to_numpy()]
    leads = [str(k) for k in post["lead_year"].to_numpy()]
    weights = tree.constant_data.to_dataset()
    average = param_summaries(tree, ("att_average",))["att_average"]
    out: dict[str, object] = {
        **_common(tree, file),
        "design": "stacked",
        "terms": [n for n in params if n not in STACKED_SCALARS],
        "params": params,
        "federation_effect": {k: _with_p_positive(effects[k], draws[k]) for k in (*leads, *years)},
        "federation_effect_by_cohort": _by_outer(tree, "att_cohort", "founding"),
        "leads_by_cohort": _by_outer(tree, "lead", "founding") if leads else {},
        "att_average": _with_p_positive(average, post["att_average"]),
        "gap": {k: v for k, v in param_summaries(tree, ("federated_gap",)).items()},
        "weights": {"kind": str(tree.attrs["bayesfed_weights"]),
                    "by_year": {str(k): {str(e): float(weights["att_weight"].sel(
                        founding=e, year=k)) for e in weights["founding"].to_numpy()}
                                for k in weights["year"].to_numpy()},
                    "federated_pupils": {str(k): {str(e): int(weights["federated_pupils"].sel(
                        founding=e, year=k)) for e in weights["founding"].to_numpy()}
                                         for k in weights["year"].to_numpy()}},
        "reference_year": -1,
        "trajectory": {"first": years[0], "last": years[-1], "p_last_gt_first": float(
            (draws[years[-1]] > draws[years[0]]).mean())},
        "pre_trend": {"leads": leads, "flagged": any(
            not effects[k]["hdi_low"] <= 0.0 <= effects[k]["hdi_high"] for k in leads)},
        "sensitivity": sensitivity(
            post["att"].transpose("chain", "draw", "event_year").to_numpy().reshape(
                -1, len(years)),
            post["lead_att"].transpose("chain", "draw", "lead_year").to_numpy().reshape(
                -1, len(leads)), [int(k) for k in years],
            ModelSpec.model_validate_json(tree.attrs["bayesfed_spec"]).event_options.sensitivity,
            PROB),
        "prior_sensitivity": prior_sensitivity(tree),
        "variance_partition": {k: hdi_summary(v, PROB) for k, v in vpc(post).items()},
        "predictive": event_checks(tree),
        "diagnostics": diagnostics(tree),
        "deviation_unit": str(tree.attrs["bayesfed_deviation_unit"]),
    }
    for key in ("n_cells", "n_cohorts", "n_foundings", "n_dropped", "n_federations"):
        out[key] = int(tree.attrs[f"bayesfed_{key}"])
    return out


def compare_with_per_year(fits: list[dict]) -> None:
    """Add ``per_year_comparison`` to each event-time fit, in place, when the folder also
    holds per-year fits with a federation effect for its years since founding.

    ``per_year_comparison`` = ``{"model": name, "width_ratio": {year: ratio}}``: the joint
    model's 94% HDI width of delta_k over the per-year model's (below 1: the joint model is
    more precise).
    """
    per_year = [f for f in fits if fit_kind(f).per_year and "federation_effect" in f
                and f["year"] is not None]
    for fit in (f for f in fits if fit_kind(f).joint):
        ratios, model = {}, None
        for other in per_year:
            key = str(other["year"])
            if key in fit["federation_effect"]:
                joint, single = fit["federation_effect"][key], other["federation_effect"]
                ratios[key] = ((joint["hdi_high"] - joint["hdi_low"])
                               / (single["hdi_high"] - single["hdi_low"]))
                model = other["model"]
        if ratios:
            fit["per_year_comparison"] = {"model": model, "width_ratio": ratios}


def file_stamp(path: Path | None) -> tuple[int, int] | None:
    """A file's version: its modification time (ns) and size; None for no file."""
    if path is None:
        return None
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@dataclass(frozen=True)
class FileSummary:
    """One fit file's part of ``summary.json`` and the file versions it was computed from.

    Attributes
    ----------
    stamp, reference_stamp : tuple of int or None
        :func:`file_stamp` of the fit file and of its reference model's file, taken before
        either was read.
    reference : Path or None
        The reference model's fit file used (``variance_explained``).
    fit : dict
        The fit's entry of ``summary.json``'s ``fits`` (before the folder-wide comparisons).
    elpd : arviz_stats.ELPDData or None
        Its leave-one-school-out result (:func:`add_model_checks`).
    """

    stamp: tuple[int, int] | None
    reference: Path | None
    reference_stamp: tuple[int, int] | None
    fit: dict
    elpd: azs.ELPDData | None

    def current(self, path: Path, reference: Path | None) -> bool:
        """Whether it is the summary of ``path``'s file, with ``reference``, as they are now."""
        return (self.stamp, self.reference, self.reference_stamp) == (
            file_stamp(path), reference, file_stamp(reference))


def summarize_file(path: Path, reference: Path | None) -> FileSummary:
    """Summary of one fit file (:func:`summarize_fit` and :func:`add_model_checks`), its
    reference model's fit being ``reference`` (of which only the variances are read). The fit
    is freed before returning (:func:`bayesfed.store.release`)."""
    stamp, reference_stamp = file_stamp(path), file_stamp(reference)
    tree = load_fit(path, skip=UNREAD)
    ref = None if reference is None else load_fit(reference, posterior=REFERENCE_VARS)
    fit = summarize_fit(tree, ref, file=path.name)
    elpd = add_model_checks(fit, tree)
    nbytes = tree.nbytes
    del tree, ref
    release(nbytes)
    return FileSummary(stamp, reference, reference_stamp, fit, elpd)


def summarize_dir(folder: str | Path, done: Mapping[str, FileSummary] | None = None
                  ) -> dict[str, object]:
    """Summaries of every fit file (``*.nc``) in a folder, ordered by model then year.

    A fit's reference model (``[model] reference`` in its spec) is looked up among the fits of
    the same year in the folder; without it the fit has no ``variance_explained``. One fit is
    held at a time (a national fit's school draws are hundreds of megabytes), and of its
    reference only the variances (:data:`REFERENCE_VARS`).

    ``done`` holds summaries computed already, by file name (a job computes them in a worker
    process while the next fits sample: :mod:`bayesfed.jobs.summaries`); one is used only if
    it is :meth:`FileSummary.current`, so the result is the same as without it.
    """
    folder = Path(folder)
    done = done or {}
    paths = sorted(folder.glob("*.nc"))
    attrs = {path: fit_attrs(path) for path in paths}
    by_key = {(str(a["bayesfed_model"]), fit_year(a)): path for path, a in attrs.items()}
    fits, elpds = [], {}
    for path in paths:
        ref_name = str(attrs[path].get("bayesfed_reference", ""))
        ref_path = by_key.get((ref_name, fit_year(attrs[path]))) if ref_name else None
        part = done.get(path.name)
        if part is None or not part.current(path, ref_path):
            part = summarize_file(path, ref_path)
        if part.elpd is not None:
            elpds[path.name] = part.elpd
        fits.append(part.fit)
    fits.sort(key=lambda f: (f["model"], -10**6 if f["year"] is None else f["year"]))
    compare_with_per_year(fits)
    out = {"bayesfed_version": __version__, "prob": PROB, "gates": GATES, "fits": fits,
           "loo_comparison": loo_comparisons(fits, elpds)}
    refused = loo_refusals(fits, elpds)
    return out | ({"loo_refused": refused} if refused else {})


def add_model_checks(fit: dict, tree: xr.DataTree) -> azs.ELPDData | None:
    """Add ``loo`` (and, for a two-level fit, ``predictive``) to a fit's summary when its
    file holds what they need, in place; return its leave-one-school-out result. Two-level
    fits need the per-school statistics (:func:`bayesfed.posterior.checks.has_school_data`;
    a random-slope fit also its own, for leave-one-school-out); a
    stacked event-time fit stores each school's log-likelihood
    (:mod:`bayesfed.posterior.event_draws`) and its predictive checks are in its summary already. A
    fit that failed its diagnostic gates gets no ``loo`` (its draws are not a posterior sample to
    importance-weight): None, as without the statistics.
    """
    stacked = "log_likelihood" in tree.children and "pupils" in tree.log_likelihood
    slopes = has_slope_data(tree)
    if not (stacked or slopes or has_school_data(tree)):
        return None
    if not stacked and has_school_data(tree):
        fit["predictive"] = predictive_checks(tree, seed=int(fit["seed"]))
    if not fit["diagnostics"]["ok"]:
        return None
    if stacked:
        elpd = psis_loo(tree, "pupils")
    elif slopes:
        ll = school_loglik_slopes(tree)  # once: for LOO and for the prior sensitivity
        elpd = loo_school_slopes(tree, ll)
        moment = tree.constant_data["slope_moment"].to_numpy()
        fit["prior_sensitivity"] = two_level_prior_sensitivity(
            tree, ll, vpc_at(tree.posterior.to_dataset(), moment[:1]).isel(point=0, drop=True))
    elif has_scale(tree):
        ll = school_loglik_scale(tree)  # each school's intercept and pupil sd integrated out
        elpd = loo_school_scale(tree, ll)
        fit["prior_sensitivity"] = two_level_prior_sensitivity(tree, ll)
    else:
        ll = school_loglik(tree)  # once: for LOO and for the prior sensitivity
        elpd = loo_school(tree, ll)
        fit["prior_sensitivity"] = two_level_prior_sensitivity(tree, ll)
    fit["loo"] = loo_summary(elpd)
    return elpd


def two_level_prior_sensitivity(tree: xr.DataTree, ll: xr.DataArray,
                                vpc_school: xr.DataArray | None = None
                                ) -> dict[str, dict[str, object]]:
    """:func:`prior_sensitivity` of a per-year fit's key quantities: the school share of the
    residual variance (``vpc_school``: by default :func:`bayesfed.posterior.partition.vpc`'s;
    a random-slope fit's at the slope predictors' means) and, where the model has it, the
    federation effect (``federated``). The power-scaled prior is every prior of the model
    (:func:`bayesfed.posterior.checks.log_prior`); the likelihood is each school's, its school
    effects integrated out (``ll``: :func:`bayesfed.posterior.checks.school_loglik` or its
    random-slope and location-scale versions)."""
    post = tree.posterior
    quantities = {"vpc_school": (vpc(post.to_dataset())["school"] if vpc_school is None
                                 else vpc_school)}
    if "beta" in post and "federated" in post["beta"]["predictor"].to_numpy():
        quantities["federated"] = post["beta"].sel(predictor="federated", drop=True)
    scaled = xr.DataTree.from_dict({
        "posterior": xr.Dataset(quantities),
        "log_prior": xr.Dataset({"prior": log_prior(tree)}),
        "log_likelihood": xr.Dataset({"y": ll})})
    return prior_sensitivity(scaled, tuple(quantities))


def loo_comparisons(fits: list[dict], elpds: Mapping[str, azs.ELPDData]) -> list[dict]:
    """The leave-one-school-out comparisons of the models fitted to the same pupils.

    Parameters
    ----------
    fits : list of dict
        The fits' summaries, in order; ``file`` names each.
    elpds : mapping of str to ELPDData
        File name -> the fit's leave-one-school-out result (fits without one are left out).

    Returns
    -------
    list of dict
        One entry per group of at least two fits of the same year, data file and sizes:
        ``year``, ``unit`` (``"school"``) and ``models``
        (:func:`bayesfed.posterior.checks.compare_loo`, best first).
    """
    return [{"year": year, "unit": "school",
             "models": compare_loo({f["model"]: elpds[f["file"]] for f in group})}
            for year, groups in _loo_groups(fits, elpds).items()
            for group in groups.values() if len(group) >= 2]


def _loo_groups(fits: list[dict], elpds: Mapping[str, azs.ELPDData]
                ) -> dict[object, dict[tuple, list[dict]]]:
    """Year -> (data hash, sample fingerprint, pupils, schools) -> the fits with a
    leave-one-school-out result made from those pupils (the identity :func:`different_pupils`
    uses): only fits of one group are compared."""
    out: dict[object, dict[tuple, list[dict]]] = {}
    for fit in fits:
        if fit["file"] in elpds:
            key = (fit["data_sha256"], fit.get("sample_sha256"), fit["n_pupils"],
                   fit["n_schools"])
            out.setdefault(fit["year"], {}).setdefault(key, []).append(fit)
    return out


def loo_refusals(fits: list[dict], elpds: Mapping[str, azs.ELPDData]) -> list[dict]:
    """The years whose leave-one-school-out results could not all be compared, because their
    fits were made from different data or pupils (the groups of :func:`loo_comparisons`).

    Returns
    -------
    list of dict
        ``year`` and ``groups``: per group of comparable fits, its ``models``, ``n_pupils``
        and ``n_schools``; one entry per year with more than one group.
    """
    return [{"year": year, "groups": [{"models": [f["model"] for f in group],
                                       "n_pupils": key[2], "n_schools": key[3]}
                                      for key, group in groups.items()]}
            for year, groups in _loo_groups(fits, elpds).items() if len(groups) > 1]


def write_summary(folder: str | Path, done: Mapping[str, FileSummary] | None = None) -> Path:
    """Write ``summary.json`` for the fits in ``folder`` (``done``: as :func:`summarize_dir`);
    returns its path."""
    return write_json(Path(folder) / "summary.json", summarize_dir(folder, done))
