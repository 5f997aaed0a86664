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
  ``problems`` (plain-language list) and ``ok``;
- ``sampling_seconds``, ``sampler``, ``seed``, ``data_sha256``, ``file``.

Numbers come from :mod:`bayesfed.partition` (shares) and ArviZ (summaries, diagnostics);
this module only collects them.
"""

from __future__ import annotations

import json
from pathlib import Path

import arviz as az
import numpy as np
import xarray as xr

from bayesfed import __version__
from bayesfed.partition import decomposition_from_cov, hdi_summary, variance_explained, vpc
from bayesfed.store import load_fit, write_json

#: Probability mass of every reported interval.
PROB = 0.94

#: Diagnostic gates: a fit breaking any of them is marked failed (``diagnostics.ok`` false).
GATES = {"max_r_hat": 1.01, "min_ess_bulk": 400, "min_ess_tail": 400, "divergences": 0}

#: Parameters whose convergence is checked: the free ones and ``u``, every school's intercept.
CHECKED = ("intercept", "beta", "sd_school", "sigma", "school_mean", "u")

#: Reported parameters, in order; ``beta`` is expanded to one entry per coefficient.
REPORTED = ("intercept", "beta", "sd_school", "sigma")


def _num(x: float) -> float | None:
    """A JSON-safe float (NaN becomes null)."""
    x = float(x)
    return x if np.isfinite(x) else None


def param_summaries(tree: xr.DataTree) -> dict[str, dict[str, float | None]]:
    """ArviZ summary of the reported parameters, keyed by coefficient name.

    Returns
    -------
    dict
        ``name -> {mean, sd, hdi_low, hdi_high, ess_bulk, ess_tail, r_hat, mcse_mean}``.
    """
    names = [v for v in REPORTED if v in tree.posterior]
    table = az.summary(tree, var_names=names, kind="all", ci_prob=PROB, ci_kind="hdi",
                       round_to="none", fmt="xarray")
    label = f"hdi{round(PROB * 100)}"
    fields = {"mean": "mean", "sd": "sd", "hdi_low": f"{label}_lb", "hdi_high": f"{label}_ub",
              "ess_bulk": "ess_bulk", "ess_tail": "ess_tail", "r_hat": "r_hat",
              "mcse_mean": "mcse_mean"}
    out: dict[str, dict[str, float | None]] = {}
    for var in names:
        da = table[var]
        entries = [(var, da)] if "predictor" not in da.dims else [
            (str(p), da.sel(predictor=p)) for p in da["predictor"].to_numpy()]
        for name, stats in entries:
            out[name] = {k: _num(stats.sel(summary=v)) for k, v in fields.items()}
    return out


def diagnostics(tree: xr.DataTree) -> dict[str, object]:
    """Convergence diagnostics over every free parameter, and the gate verdict.

    Returns
    -------
    dict
        ``divergences`` (int), ``max_r_hat``, ``min_ess_bulk``, ``min_ess_tail`` (over all
        elements of ``intercept``, ``beta``, ``sd_school``, ``sigma``, ``school_mean`` and ``u``),
        ``problems`` (list of str) and ``ok`` (bool).
    """
    names = [v for v in CHECKED if v in tree.posterior]
    rhat = az.rhat(tree, var_names=names)
    ess_bulk = az.ess(tree, var_names=names, method="bulk")
    ess_tail = az.ess(tree, var_names=names, method="tail")

    def extreme(ds: xr.Dataset, fn) -> float:
        return float(fn([float(fn(ds[v].to_numpy())) for v in ds.data_vars]))

    out: dict[str, object] = {
        "divergences": int(tree.sample_stats["diverging"].sum()),
        "max_r_hat": extreme(rhat, np.max),
        "min_ess_bulk": extreme(ess_bulk, np.min),
        "min_ess_tail": extreme(ess_tail, np.min),
    }
    problems = []
    if out["divergences"] > GATES["divergences"]:
        problems.append(f"{out['divergences']} divergent transitions")
    if not out["max_r_hat"] <= GATES["max_r_hat"]:
        problems.append(f"R-hat {out['max_r_hat']:.3f} > {GATES['max_r_hat']}")
    for key, kind in (("min_ess_bulk", "bulk ESS"), ("min_ess_tail", "tail ESS")):
        if not out[key] >= GATES[key]:
            problems.append(f"{kind} {out[key]:.0f} < {GATES[key]}")
    out["problems"] = problems
    out["ok"] = not problems
    return out


def _attr_json(tree: xr.DataTree, key: str) -> dict:
    return json.loads(tree.attrs[key])


def reml_point(reml: dict) -> xr.Dataset:
    """REML variances as a one-draw "posterior" (chain 1, draw 1), so that the variance
    partitions of :mod:`bayesfed.partition` apply to them unchanged."""
    return xr.Dataset({name: (("chain", "draw"), [[np.sqrt(reml[var])]])
                       for name, var in (("sd_school", "var_school"), ("sigma", "var_pupil"))})


def reml_summary(tree: xr.DataTree, reference: xr.DataTree | None) -> dict[str, object]:
    """The fit's REML results plus its variance partition (and reduction vs the reference)."""
    reml = _attr_json(tree, "bayesfed_reml")
    if "error" in reml:
        return reml
    point = reml_point(reml)
    reml["variance_partition"] = {k: float(v.squeeze()) for k, v in vpc(point).items()}
    ref_reml = None if reference is None else _attr_json(reference, "bayesfed_reml")
    if ref_reml is not None and "error" not in ref_reml:
        ref = reml_point(ref_reml)
        reml["variance_explained"] = {k: float(v.squeeze())
                                      for k, v in variance_explained(ref, point).items()}
    return reml


def fit_year(tree: xr.DataTree) -> int | None:
    """The year since founding a fit selected, or None."""
    text = str(tree.attrs["bayesfed_year"])
    return int(text) if text else None


def summarize_fit(tree: xr.DataTree, reference: xr.DataTree | None = None,
                  file: str = "") -> dict[str, object]:
    """Summary of one fit (see the module docstring for the fields).

    Parameters
    ----------
    tree : xarray.DataTree
        A fit saved by :func:`bayesfed.fit.fit_one`.
    reference : xarray.DataTree, optional
        The fit of the model's reference model on the same pupils.
    file : str
        The fit's file name, recorded in the summary.
    """
    post = tree.posterior.to_dataset()
    params = param_summaries(tree)
    cov = tree.constant_data["x_cov"].to_numpy()
    shares = decomposition_from_cov(post, cov)
    options = _attr_json(tree, "bayesfed_options")
    out: dict[str, object] = {
        "model": str(tree.attrs["bayesfed_model"]),
        "year": fit_year(tree),
        "file": file,
        "n_pupils": int(tree.attrs["bayesfed_n_pupils"]),
        "n_schools": int(tree.attrs["bayesfed_n_schools"]),
        "terms": [n for n in params if n not in ("sd_school", "sigma")],
        "params": params,
        "variance_partition": {k: hdi_summary(v, PROB) for k, v in vpc(post).items()},
        "decomposition": {k: hdi_summary(v, PROB) for k, v in shares.items()},
        "diagnostics": diagnostics(tree),
        "reml": reml_summary(tree, reference),
        "sampling_seconds": float(tree.attrs["sampling_seconds"]),
        "sampler": options["sampler"],
        "seed": options["fit_seed"],
        "draws": options["draws"] * options["chains"],
        "data_sha256": str(tree.attrs["bayesfed_data_sha256"]),
    }
    if reference is not None:
        ref_post = reference.posterior.to_dataset()
        out["reference"] = str(reference.attrs["bayesfed_model"])
        out["variance_explained"] = {k: hdi_summary(v, PROB) for k, v in
                                     variance_explained(ref_post, post).items()}
    if "beta" in post and "federated" in post["beta"]["predictor"].to_numpy():
        draws = post["beta"].sel(predictor="federated")
        out["federation_effect"] = {**hdi_summary(draws, PROB),
                                    "p_positive": float((draws > 0).mean())}
    return out


def summarize_dir(folder: str | Path) -> dict[str, object]:
    """Summaries of every fit file (``*.nc``) in a folder, ordered by model then year.

    A fit's reference model (``[model] reference`` in its spec) is looked up among the fits of
    the same year in the folder; without it the fit has no ``variance_explained``.
    """
    folder = Path(folder)
    trees = {path.name: load_fit(path) for path in sorted(folder.glob("*.nc"))}
    by_key = {(str(t.attrs["bayesfed_model"]), fit_year(t)): t for t in trees.values()}
    fits = []
    for name, tree in trees.items():
        ref_name = str(tree.attrs.get("bayesfed_reference", ""))
        reference = by_key.get((ref_name, fit_year(tree))) if ref_name else None
        fits.append(summarize_fit(tree, reference, file=name))
    fits.sort(key=lambda f: (f["model"], -10**6 if f["year"] is None else f["year"]))
    return {"bayesfed_version": __version__, "prob": PROB, "gates": GATES, "fits": fits}


def write_summary(folder: str | Path) -> Path:
    """Write ``summary.json`` for the fits in ``folder``; returns its path."""
    return write_json(Path(folder) / "summary.json", summarize_dir(folder))
