"""Figures of a report, drawn from the numbers of ``summary.json`` (computed nothing here).

Each function takes the parsed ``summary.json`` (and the published tables where a figure puts
the paper beside the posterior), writes one PNG atomically and returns its path and its alt
text; a stacked event-time fit gets two more, :func:`event_study` and
:func:`sensitivity_intervals`. The convergence figures (:func:`rank_by_year`,
:func:`rank_event_time`) are the exception: rank plots need the draws, so they take the fits
themselves (:func:`bayesfed.store.load_fit`) and are drawn with arviz-plots. Matplotlib runs
headless (the Agg backend); figures are closed after saving.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib import colormaps
from matplotlib.figure import Figure

from bayesfed.inputs.families import fit_kind, tree_kind
from bayesfed.inputs.published import published_rows
from bayesfed.posterior.intervals import PERCENT, PROB
from bayesfed.store import write_bytes

#: Half-width of the paper's normal intervals in standard errors (1.88 for 94%).
Z = NormalDist().inv_cdf((1 + PROB) / 2)

#: Dots per inch of the saved PNGs.
DPI = 120


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return write_bytes(path, buffer.getvalue())


def _save_pyplot(fig, path: Path) -> Path:
    """:func:`_save` of a figure arviz-plots made through pyplot, closed after."""
    import matplotlib.pyplot as plt

    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def _written(drawn: tuple[Figure, str] | None, path: Path) -> tuple[Path, str] | None:
    """A ``*_figure`` function's figure written to ``path`` (PNG, atomically): the file and
    its alt text, or None when there was nothing to draw."""
    if drawn is None:
        return None
    fig, alt = drawn
    return _save(fig, path), alt


def federation_trajectory(summary: dict, published: pd.DataFrame, path: Path
                          ) -> tuple[Path, str] | None:
    """:func:`federation_trajectory_figure` written to ``path``."""
    return _written(federation_trajectory_figure(summary, published), path)


def event_study(summary: dict, path: Path) -> tuple[Path, str] | None:
    """:func:`event_study_figure` written to ``path``."""
    return _written(event_study_figure(summary), path)


def sensitivity_intervals(summary: dict, path: Path) -> tuple[Path, str] | None:
    """:func:`sensitivity_figure` written to ``path``."""
    return _written(sensitivity_figure(summary), path)


def variance_partition(summary: dict, published: pd.DataFrame, path: Path
                       ) -> tuple[Path, str] | None:
    """:func:`variance_partition_figure` written to ``path``."""
    return _written(variance_partition_figure(summary, published), path)


def predictive_bands(summary: dict, model: str, path: Path) -> tuple[Path, str] | None:
    """:func:`predictive_figure` written to ``path``."""
    return _written(predictive_figure(summary, model), path)


def federation_trajectory_figure(summary: dict, published: pd.DataFrame
                                 ) -> tuple[Figure, str] | None:
    """The federation effect by year since founding: joint event-time model, per-year fits and
    the paper's Table 5, with 94% intervals.

    Parameters
    ----------
    summary : dict
        ``summary.json``; its first ``event_time`` fit gives the trajectory (leads included,
        the reference year -1 drawn at 0; of a stacked fit, ATT(k) and the aggregated leads),
        per-year fits with a ``federation_effect`` give one point each.
    published : DataFrame
        :func:`bayesfed.inputs.published.load_published`; Table 5's ``federated`` rows are drawn as
        estimate +- 1.88 SE (a 94% normal interval).

    Returns
    -------
    (Figure, str) or None
        The figure and its alt text; None when no fit has a federation effect. Without an
        event-time fit the per-year fits and the paper are drawn alone.
    """
    joint = next((f for f in summary["fits"] if fit_kind(f).joint), None)
    stacked = joint is not None and fit_kind(joint).by_cohort
    per_year = [f for f in summary["fits"] if fit_kind(f).per_year
                and "federation_effect" in f and f["year"] is not None]
    if joint is None and not per_year:
        return None
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    years = sorted({f["year"] for f in per_year})
    if joint is not None:
        effects = joint["federation_effect"]
        years = sorted([*map(int, effects), joint["reference_year"]])
        ref = joint["reference_year"]
        means = [0.0 if k == ref else effects[str(k)]["mean"] for k in years]
        low = [0.0 if k == ref else effects[str(k)]["hdi_low"] for k in years]
        high = [0.0 if k == ref else effects[str(k)]["hdi_high"] for k in years]
        ax.fill_between(years, low, high, color="tab:blue", alpha=0.2, linewidth=0)
        ax.plot(years, means, "o-", color="tab:blue",
                label=(f"ATT(k), stacked event-time model ({joint['model']}), {PERCENT} HDI"
                       if stacked else f"joint event-time model ({joint['model']}), {PERCENT} HDI"))
    if per_year:
        x = [f["year"] - 0.12 for f in per_year]
        e = [f["federation_effect"] for f in per_year]
        ax.errorbar(x, [v["mean"] for v in e],
                    yerr=[[v["mean"] - v["hdi_low"] for v in e],
                          [v["hdi_high"] - v["mean"] for v in e]],
                    fmt="s", color="tab:orange", capsize=3,
                    label=f"per-year model ({per_year[0]['model']}), {PERCENT} HDI")
    paper = published_rows(published, 5, "federated")
    if joint is None:  # only the paper's years that the folder has
        paper = paper[paper["year"].isin(years)]
    if not paper.empty:
        ax.errorbar(paper["year"].astype(float) + 0.12, paper["estimate"],
                    yerr=Z * paper["se"], fmt="D", color="tab:gray", capsize=3,
                    label=f"paper, Table 5 (estimate +- {Z:.2f} SE)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    if joint is not None:
        ax.axvline(-0.5, color="black", linestyle=":", linewidth=0.8)
        ax.set_xlabel("years since founding (-1: reference year; leads before it)")
    else:
        ax.set_xlabel("years since founding")
    ax.set_ylabel("federation effect (outcome units)")
    ax.set_xticks(years)
    ax.legend(fontsize=8, loc="upper left")
    shown = ([("the stacked event-time model's average effect on the federated pupils, "
               "ATT(k)," if stacked else "the joint event-time model's")
              + f" posterior means with {PERCENT} HDIs (line and band)"]
             if joint is not None else [])
    shown += ([f"the per-year models' posterior means with {PERCENT} HDIs (squares)"]
              if per_year else [])
    shown += [f"the paper's Table 5 estimates with {PERCENT} normal intervals (diamonds)"] \
        if not paper.empty else []
    alt = ("Federation effect by year since founding: " + ", ".join(shown[:-1])
           + (" and " if len(shown) > 1 else "") + shown[-1] + ".")
    return fig, alt


def _stacked(summary: dict) -> dict | None:
    """The first stacked event-time fit of ``summary`` (:mod:`bayesfed.modelling.event_stacked`)."""
    return next((f for f in summary["fits"] if fit_kind(f).joint
                 and fit_kind(f).by_cohort), None)


def _errorbar(ax, x, stats: list[dict], **kwargs) -> None:
    ax.errorbar(x, [s["mean"] for s in stats],
                yerr=[[s["mean"] - s["hdi_low"] for s in stats],
                      [s["hdi_high"] - s["mean"] for s in stats]], **kwargs)


def event_study_figure(summary: dict) -> tuple[Figure, str] | None:
    """Event-study figure of the stacked event-time model.

    ATT(k), the average effect on the federated pupils (or federations) by year since founding
    0..K, as a line with its 94% HDI band; the aggregated leads as points with 94% HDI error
    bars; each founding cohort's ATT(e,k) and leads as thin lines through the reference year
    -1 (0 by definition, marked); a horizontal line at 0.

    Returns
    -------
    (Figure, str) or None
        The figure and its alt text; None when ``summary`` has no stacked event-time fit.
    """
    fit = _stacked(summary)
    if fit is None:
        return None
    effects, ref = fit["federation_effect"], fit["reference_year"]
    leads = sorted((k for k in effects if int(k) < 0), key=int)
    years = sorted((k for k in effects if int(k) >= 0), key=int)
    by_cohort, leads_by = fit["federation_effect_by_cohort"], fit.get("leads_by_cohort", {})
    fig = Figure(figsize=(7.5, 4.4))
    ax = fig.subplots()
    colours = colormaps["viridis"]
    cohorts = sorted(by_cohort)
    for i, e in enumerate(cohorts):
        cells = {**leads_by.get(e, {}), **by_cohort[e]}
        keys = sorted([*cells, str(ref)], key=int)
        ax.plot([int(k) for k in keys], [0.0 if k == str(ref) else cells[k]["mean"]
                                         for k in keys],
                "-", marker=".", markersize=3, linewidth=0.8, alpha=0.7,
                color=colours(0.85 * i / max(1, len(cohorts) - 1)),
                label=f"founding cohort {e}, ATT(e,k)")
    x = [ref, *map(int, years)]
    post = [effects[k] for k in years]
    ax.fill_between(x, [0.0, *(s["hdi_low"] for s in post)],
                    [0.0, *(s["hdi_high"] for s in post)], color="tab:red", alpha=0.15,
                    linewidth=0)
    ax.plot(x, [0.0, *(s["mean"] for s in post)], "o-", color="tab:red", linewidth=2,
            label=f"ATT(k), {PERCENT} HDI")
    if leads:
        _errorbar(ax, [int(k) - 0.08 for k in leads], [effects[k] for k in leads], fmt="s",
                  color="tab:red", capsize=3, label=f"leads averaged over cohorts, {PERCENT} HDI")
    ax.plot([ref], [0.0], "o", markerfacecolor="white", markeredgecolor="black", zorder=5)
    ax.annotate("reference", (ref, 0.0), textcoords="offset points", xytext=(0, -14),
                ha="center", fontsize=8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axvline(ref + 0.5, color="black", linestyle=":", linewidth=0.8)
    ticks = [*map(int, leads), ref, *map(int, years)]
    ax.set_xticks(ticks)
    ax.set_xlabel("years since founding (-1: reference year; leads before it)")
    units = "federations" if fit["weights"]["kind"] == "federations" else "federated pupils"
    ax.set_ylabel(f"average effect on {units} (outcome units)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    alt = (f"Event study of the stacked event-time model {fit['model']}: the average effect "
           f"on {units} by year since founding, ATT(k) for years {years[0]} to {years[-1]}, "
           f"as a thick red line with its shaded {PERCENT} HDI band"
           + (f"; the leads of years {', '.join(leads)} averaged over founding cohorts as "
              f"red squares with {PERCENT} HDI error bars" if leads else "")
           + f"; each of the {len(cohorts)} founding cohorts' ATT(e,k)"
           + (" and leads" if leads_by else "") + " as thin lines; a horizontal line at zero "
           f"and the reference year {ref}, zero by definition, marked by an open circle.")
    return fig, alt


def sensitivity_figure(summary: dict) -> tuple[Figure, str] | None:
    """The sensitivity analysis of the stacked event-time model
    (:func:`bayesfed.posterior.effects.sensitivity`): for each M of the grid, the interval of the
    average effect (thick) and of each ATT(k) (thin, offset), a line at 0 and the breakdown
    value M, where the average's interval first covers 0, dashed.

    Returns
    -------
    (Path, str) or None
        None without a stacked fit or without its sensitivity analysis (no leads).
    """
    fit = _stacked(summary)
    if fit is None or fit["sensitivity"] is None:
        return None
    s = fit["sensitivity"]
    grid = np.asarray(s["grid"], dtype=float)
    years = sorted(s["att"], key=int)
    step = float(np.diff(np.sort(grid)).min()) if len(grid) > 1 else 1.0
    width = 0.7 * step / (len(years) + 1)
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    colours = colormaps["viridis"]
    for i, k in enumerate(years):
        offset = (i + 1) * width
        low, high = np.array(s["att"][k]).T
        ax.vlines(grid + offset, low, high,
                  color=colours(0.85 * i / max(1, len(years) - 1)),
                  linewidth=1.0, alpha=0.8, label=f"ATT({k})")
    low, high = np.array(s["average"]).T
    ax.vlines(grid, low, high, color="black", linewidth=3.0,
              label=f"average, years {years[0]}-{years[-1]}")
    ax.axhline(0.0, color="black", linewidth=0.8)
    m = s["breakdown_m"]
    beyond = m is not None and m > grid.max() + step
    if m is not None and not beyond:
        ax.axvline(m, color="tab:red", linestyle="--", linewidth=1.0,
                   label=f"breakdown M = {m:.2f}")
    if m is None or beyond:
        ax.set_title("no M up to 100 makes the average's interval cover 0" if m is None else
                     f"breakdown M = {m:.2f}, beyond the grid", fontsize=9)
    ax.set_xticks(grid, [f"{v:g}" for v in grid])
    ax.set_xlabel("M: post-founding trend change allowed, relative to the largest pre-founding "
                  "one")
    ax.set_ylabel(f"{PERCENT} interval of the effect (outcome units)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    alt = (f"Sensitivity of the stacked event-time model {fit['model']} to a violation of "
           "parallel trends: for each M in " + ", ".join(f"{v:g}" for v in grid)
           + f", the {PERCENT} interval of the average effect over years {years[0]} to {years[-1]} "
           "as a thick black bar and of each year's ATT(k) as thin coloured bars beside it, "
           "widening as M grows; a horizontal line at zero"
           + (". No M up to 100 makes the average's interval cover zero." if m is None else
              f". The breakdown value M = {m:.2f}, where the average's interval first covers "
              "zero, lies beyond the grid (named in the title)." if beyond else
              f" and a dashed red vertical line at the breakdown value M = {m:.2f}, where the "
              "average's interval first covers zero."))
    return fig, alt


def _two_level(summary: dict) -> list[dict]:
    return [f for f in summary["fits"] if fit_kind(f).per_year]


def variance_partition_figure(summary: dict, published: pd.DataFrame
                              ) -> tuple[Figure, str] | None:
    """Shares of the residual variance between schools and between pupils, per year and model.

    One stacked bar per (year, two-level model): the school share (posterior mean, with its 94%
    HDI as an error bar) below the pupil share; the REML share and, for the empty model, the
    paper's Table 3 share as markers.

    Returns
    -------
    (Figure, str) or None
        The figure and its alt text; None when the folder has no two-level fit.
    """
    fits = _two_level(summary)
    if not fits:
        return None
    models = sorted({f["model"] for f in fits})
    years = sorted({f["year"] for f in fits}, key=lambda y: -1 if y is None else y)
    width = 0.8 / len(models)
    fig = Figure(figsize=(min(9.0, max(5.0, 0.4 * len(years) * len(models) + 2)), 4.5))
    ax = fig.subplots()
    colours = colormaps["tab10"]
    labelled = set()
    for m, model in enumerate(models):
        for i, year in enumerate(years):
            fit = next((f for f in fits if f["model"] == model and f["year"] == year), None)
            if fit is None:
                continue
            x = i + (m - (len(models) - 1) / 2) * width
            school = fit["variance_partition"]["school"]
            ax.bar(x, school["mean"], width * 0.9, color=colours(m),
                   label=f"{model}: school share, {PERCENT} HDI" if model not in labelled else None)
            ax.bar(x, 1 - school["mean"], width * 0.9, bottom=school["mean"], color=colours(m),
                   alpha=0.25)
            labelled.add(model)
            ax.errorbar(x, school["mean"], yerr=[[school["mean"] - school["hdi_low"]],
                                                 [school["hdi_high"] - school["mean"]]],
                        fmt="none", color="black", capsize=3, linewidth=1)
            reml = fit["reml"].get("variance_partition", {}).get("school")
            if reml is not None:
                ax.plot(x, reml, "_", color="black", markersize=12, markeredgewidth=2,
                        label="REML" if "REML" not in labelled else None)
                labelled.add("REML")
            paper = published_rows(published, 3, "vpc_school", [year])
            if model == "M0" and not paper.empty:
                ax.plot(x, paper["estimate"].iloc[0] / 100, "D", color="tab:gray",
                        markersize=5, label="paper, Table 3" if "paper" not in labelled
                        else None)
                labelled.add("paper")
    ax.set_xticks(range(len(years)),
                  ["all pupils" if y is None else f"year {y}" for y in years])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the residual variance (pale: pupils)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1),
              ncols=min(len(models) + 2, 5), frameon=False)
    alt = ("Stacked bars per year since founding and model (" + ", ".join(models) + "): the "
           f"posterior mean share of the residual variance between schools, with its {PERCENT} "
           "HDI, "
           "below the share between pupils; REML shares as black dashes"
           + (" and the paper's Table 3 shares as grey diamonds" if "paper" in labelled else "")
           + ".")
    return fig, alt


def predictive_figure(summary: dict, model: str) -> tuple[Figure, str] | None:
    """Posterior predictive check of one model, per year: sorted observed school means and
    within-school sds against the 94% band of the replications of each rank.

    Returns
    -------
    (Figure, str) or None
        The figure and its alt text; None when no fit of ``model`` has ``predictive`` checks.
    """
    fits = [f for f in _two_level(summary) if f["model"] == model and "predictive" in f]
    if not fits:
        return None
    fig = Figure(figsize=(8.0, 1.9 * len(fits) + 0.9), layout="constrained")
    axes = fig.subplots(len(fits), 2, squeeze=False)
    for row, fit in enumerate(fits):
        for col, (key, label) in enumerate((("school_means", "school mean outcome"),
                                            ("within_sds", "within-school sd"))):
            band, ax = fit["predictive"][key], axes[row, col]
            rank = np.arange(1, len(band["observed"]) + 1)
            ax.fill_between(rank, band["low"], band["high"], color="tab:blue", alpha=0.3,
                            linewidth=0, label=f"replicated, {PERCENT} band")
            ax.plot(rank, band["observed"], ".", color="black", markersize=3, label="observed")
            if row == 0:
                ax.set_title(label)
            if col == 0:
                ax.set_ylabel("all pupils" if fit["year"] is None else f"year {fit['year']}")
            if row == len(fits) - 1:
                ax.set_xlabel("school rank")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    alt = (f"Posterior predictive check of {model}, one row per year: the observed school mean "
           "outcomes (left) and within-school standard deviations (right), sorted, as black "
           "dots over "
           f"the shaded {PERCENT} band of each rank in replications for new schools of the same "
           "sizes and compositions.")
    return fig, alt


def school_caterpillar(summary: dict, model: str, quantity: str, path: Path
                       ) -> tuple[Path, str] | None:
    """:func:`caterpillar_figure` written to ``path``."""
    return _written(caterpillar_figure(summary, model, quantity), path)


def school_blocks(fit: dict) -> dict[str, dict]:
    """A per-year fit's per-school blocks by quantity: ``sigma`` (``school_sigmas``) and
    ``slope[NAME]`` (``school_slopes``); empty for a random-intercept fit."""
    out = {f"slope[{k}]": v for k, v in fit.get("school_slopes", {}).items()}
    return out | ({"sigma": fit["school_sigmas"]} if "school_sigmas" in fit else {})


def caterpillar_figure(summary: dict, model: str, quantity: str
                       ) -> tuple[Figure, str] | None:
    """Each school's posterior mean and 94% HDI of a school-level quantity (its pupil sd, or its
    slope), sorted, one panel per year, over the estimate from the school's own pupils alone
    (open circles): the distance between the two is the shrinkage towards the population.

    Parameters
    ----------
    summary : dict
        ``summary.json``.
    model : str
    quantity : str
        A key of :func:`school_blocks`: ``sigma`` or ``slope[NAME]``.

    Returns
    -------
    (Figure, str) or None
        None when no fit of ``model`` has the quantity.
    """
    fits = [f for f in _two_level(summary) if f["model"] == model
            and quantity in school_blocks(f)]
    if not fits:
        return None
    label = ("pupil sd (outcome units)" if quantity == "sigma"
             else f"slope of {quantity[6:-1]} (outcome units per unit)")
    fig = Figure(figsize=(8.0, 1.8 * len(fits) + 0.9), layout="constrained")
    axes = fig.subplots(len(fits), 1, squeeze=False)[:, 0]
    for ax, fit in zip(axes, fits):
        block = school_blocks(fit)[quantity]
        order = np.argsort(block["mean"])
        rank = np.arange(1, order.size + 1)
        mean = np.array(block["mean"])[order]
        ax.vlines(rank, np.array(block["hdi_low"])[order], np.array(block["hdi_high"])[order],
                  color="tab:blue", alpha=0.5, linewidth=1, label=f"posterior {PERCENT} HDI")
        ax.plot(rank, mean, ".", color="tab:blue", markersize=3, label="posterior mean")
        own = np.array([np.nan if v is None else v for v in block["own"]])[order]
        ax.plot(rank, own, "o", markerfacecolor="none", color="black", markersize=3,
                markeredgewidth=0.6, label="own pupils only")
        ax.set_ylabel("all pupils" if fit["year"] is None else f"year {fit['year']}")
    axes[0].set_title(f"{model}: each school's {label}")
    axes[-1].set_xlabel("school, by posterior mean")
    axes[0].legend(fontsize=7, loc="upper left")
    alt = (f"Each school's {label.split(' (')[0]}, {model}, one panel per year: posterior means "
           f"with {PERCENT} highest-density intervals, schools sorted by their posterior mean, "
           "and open circles at the estimate from each school's own pupils alone; the gap "
           "between them is the shrinkage towards the population distribution.")
    return fig, alt


def _rank_figure(posterior: xr.Dataset, path: Path, rows: list[str], cols: list[str],
                 figsize: tuple[float, float]) -> Path:
    import arviz_plots as azp

    pc = azp.PlotCollection.grid(posterior, rows=rows, cols=cols, backend="matplotlib",
                                 figure_kwargs={"figsize": figsize, "layout": "constrained"},
                                 aes={"color": ["chain"], "overlay": ["chain"]})
    pc = azp.plot_rank(xr.DataTree.from_dict({"posterior": posterior}), plot_collection=pc,
                       backend="matplotlib")
    return _save_pyplot(pc.viz["figure"].item(), path)


RANK_ALT = ("Each panel shows, for one parameter, each chain's fractional-rank difference "
            "ECDF (arviz-plots' rank plot): lines that stay close to zero mean the chains "
            "explored the same distribution; p is the multi-chain uniformity test.")


#: The posterior variables :func:`rank_by_year` reads of a fit.
RANK_VARS = ("beta", "sd_school", "sigma")


def rank_by_year(trees: Mapping[int | None, xr.DataTree], path: Path) -> tuple[Path, str]:
    """Rank plots of one two-level model's fits by year: its federation effect (when it has
    one), ``sd_school`` and ``sigma``; rows are years, columns parameters.

    Parameters
    ----------
    trees : mapping of int or None to xarray.DataTree
        Year -> the model's fit (:func:`bayesfed.store.load_fit`, :data:`RANK_VARS` are
        enough), in column order.
    path : Path
    """
    parts, model = [], ""
    for tree in trees.values():
        post = tree.posterior
        model = str(tree.attrs["bayesfed_model"])
        names = post["beta"]["predictor"].to_numpy() if "beta" in post else []
        fed = {"federation effect": post["beta"].sel(predictor="federated", drop=True)} \
            if "federated" in names else {}
        parts.append(xr.Dataset({**fed, "sd_school": post["sd_school"],
                                 "sigma": post["sigma"]}))
    labels = ["all pupils" if y is None else f"year {y}" for y in trees]
    data = xr.concat(parts, dim=xr.DataArray(labels, dims="fit", name="fit"))
    _rank_figure(data, path, ["fit"], ["__variable__"],
                 (3.0 * len(data.data_vars) + 0.5, 2.0 * len(labels) + 0.6))
    alt = (f"Rank plots of {model} by year ({', '.join(labels)}) for "
           + ", ".join(data.data_vars) + ". " + RANK_ALT)
    return path, alt


#: The posterior variables :func:`rank_event_time` reads of an event-time fit (those present).
RANK_EVENT_VARS = ("lead", "delta", "lead_att", "att", "tau_step", "sd_federation_effect",
                   "sd_type", "sd_cohort_effect", "shock_ar", "sd_school", "sd_cell", "sigma")


def rank_event_time(tree: xr.DataTree, path: Path) -> tuple[Path, str]:
    """Rank plots of an event-time fit: every lead and effect, and its standard deviations.

    Of a pooled fit (:mod:`bayesfed.modelling.event_pooled`) the leads ``lead`` and effects
    ``delta``; of a stacked fit (:mod:`bayesfed.modelling.event_stacked`, attribute
    ``bayesfed_design``) the aggregated leads ``lead_att`` and ATT(k) ``att``, and ``shock_ar`` and
    ``sd_cohort_effect`` beside the standard deviations (each where the fit has it).
    """
    post = tree.posterior
    if tree_kind(tree.attrs).by_cohort:
        panels = {f"lead, year {k}": post["lead_att"].sel(lead_year=k, drop=True)
                  for k in post["lead_att"]["lead_year"].to_numpy()}
        panels |= {f"ATT({k})": post["att"].sel(event_year=k, drop=True)
                   for k in post["att"]["event_year"].to_numpy()}
    else:
        panels = {f"effect, year {k}": post["lead"].sel(lead_year=k, drop=True)
                  for k in post["lead"]["lead_year"].to_numpy()}
        panels |= {f"effect, year {k}": post["delta"].sel(event_year=k, drop=True)
                   for k in post["delta"]["event_year"].to_numpy()}
    panels |= {name: post[name] for name in ("tau_step", "sd_cohort_effect",
                                             "sd_federation_effect", "sd_type", "shock_ar",
                                             "sd_school", "sd_cell", "sigma") if name in post}
    data = xr.Dataset(panels)
    ncols = 4
    nrows = -(-len(panels) // ncols)
    import arviz_plots as azp

    pc = azp.PlotCollection.wrap(data, cols=["__variable__"], col_wrap=ncols,
                                 backend="matplotlib",
                                 figure_kwargs={"figsize": (11, 2.3 * nrows + 0.5),
                                                "layout": "constrained"},
                                 aes={"color": ["chain"], "overlay": ["chain"]})
    pc = azp.plot_rank(xr.DataTree.from_dict({"posterior": data}), plot_collection=pc,
                       backend="matplotlib")
    _save_pyplot(pc.viz["figure"].item(), path)
    alt = (f"Rank plots of the event-time model {tree.attrs['bayesfed_model']}, one panel "
           "each for " + "; ".join(panels) + ". " + RANK_ALT)
    return path, alt
