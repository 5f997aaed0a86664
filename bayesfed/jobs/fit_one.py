"""One fit: a specification and a year's pupils (or their statistics) -> one ArviZ DataTree.

For a ``two_level`` specification and a year since founding (or the whole table when no year
is selected) :func:`fit_one` selects the pupils, builds the design, resolves the priors,
builds and samples the PyMC model, fits the same model by REML, and returns everything as one
DataTree; an ``event_time`` specification is fitted once, to every cohort of the table. The
fitter of each kind of specification is looked up in :data:`FITTERS`.

What a fit file holds (see :mod:`bayesfed.store`): groups ``posterior``, ``sample_stats``,
``observed_data`` and ``constant_data`` (``x_cov``: the predictors' covariance matrix over
pupils, needed by the variance decomposition; ``school_*``: per-school counts, means and
within-school cross products from :func:`bayesfed.posterior.checks.school_data`, for the
predictive checks and leave-one-school-out), and root attributes with the model name, the
year, the spec and column mapping (JSON), the resolved priors, the REML fit, the sampler
settings and seed, a hash of the input data, and the versions of bayesfed and its samplers.
A fit's numbers depend only on its data, its specification and :class:`FitOptions` (each
fit has its own seed, :func:`fit_seed`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import get_args

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from bayesfed import __version__
from bayesfed.design.cells import CellStats
from bayesfed.design.columns import design_for
from bayesfed.design.reduce import Reduced, ReducedYears, reduce_table
from bayesfed.design.stacked import stacked_data
from bayesfed.design.suffstats import sample_sha256, summary_of
from bayesfed.errors import BayesfedError
from bayesfed.inputs.spec import ModelSpec
from bayesfed.inputs.validate import PupilTable
from bayesfed.modelling.event_pooled import EventModel, add_effect_draws, build_event_time_parts
from bayesfed.modelling.event_stacked import StackedModel, build_stacked
from bayesfed.modelling.location_scale import add_scale_draws, build_location_scale
from bayesfed.modelling.priors import (
    LKJ_ETA,
    SD_LOG_SIGMA_PRIOR,
    EventPriors,
    StackedPriors,
    default_slope_sd,
    resolve_event_priors,
    resolve_priors,
    resolve_stacked_priors,
)
from bayesfed.modelling.random_slopes import (
    add_slope_draws,
    build_random_slopes,
    slope_data,
    slope_dataset,
)
from bayesfed.modelling.two_level import (
    add_school_draws,
    build_two_level,
    build_two_level_collapsed,
    collapsed_data,
)
from bayesfed.posterior.checks import school_data
from bayesfed.posterior.event_draws import posterior_draws
from bayesfed.posterior.partition import predictor_cov
from bayesfed.posterior.reml import fit_reml_stats
from bayesfed.sampling.nuts import Sampler, sample, sample_reusing

#: What a fit is given of the pupils: validated rows in memory, or their statistics reduced as
#: the file was read (per cell for an event-time spec, per year and school for a per-year one).
Table = PupilTable | Reduced | ReducedYears


@dataclass(frozen=True)
class FitOptions:
    """Sampler settings shared by every fit of a job.

    Attributes
    ----------
    draws, tune : int
        Kept draws and warm-up iterations per chain (both at least 1).
    chains : int
    seed : int
        Job seed; each fit's own seed is derived from it, the model name and the year, so
        fits differ from each other but a job is reproducible.
    sampler : {"nutpie", "pymc"}
    progress : bool
        Show the sampler's progress bar.
    """

    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    seed: int = 0
    sampler: Sampler = "nutpie"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.sampler not in get_args(Sampler):
            raise ValueError(f"sampler must be one of {get_args(Sampler)}, got {self.sampler!r}")
        # tune >= 1 too: nutpie 0.16 panics (a Rust assertion) when asked for no warm-up
        for name in ("draws", "tune", "chains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def fit_name(model: str, year: int | None) -> str:
    """File stem of a fit: ``M2_k3``, ``M2_k-1`` or, without a year, ``M2``."""
    return model if year is None else f"{model}_k{year}"


def fit_seed(seed: int, model: str, year: int | None) -> int:
    """A fit's own seed, derived from the job seed, the model name and the year."""
    entropy = [seed, zlib.crc32(model.encode()), 0 if year is None else 1000 + year]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def versions() -> dict[str, str]:
    """Versions of bayesfed and the libraries whose numbers a fit depends on."""
    out = {"bayesfed": __version__}
    for pkg in ("pymc", "pytensor", "nutpie", "numba", "arviz", "numpy", "statsmodels"):
        out[pkg] = version(pkg)
    return out


def fit_one(
    table: Table,
    spec: ModelSpec,
    year: int | None,
    options: FitOptions,
    data_hash: str,
    threads: int | None = None,
) -> xr.DataTree:
    """Fit one model to one year's pupils; returns the DataTree to save.

    Parameters
    ----------
    table : PupilTable, Reduced or ReducedYears
        Validated for ``spec`` (and for ``year``), in memory or reduced already as the file
        was read (:func:`bayesfed.design.reduce.reduce_file`).
    spec : ModelSpec
    year : int or None
        Years since founding to select, or None for the whole table.
    options : FitOptions
    data_hash : str
        SHA-256 of the input file, recorded for provenance.
    threads : int, optional
        Most chains sampled at once (:func:`bayesfed.sampling.nuts.sample`); not recorded, as the
        draws do not depend on it.
    """
    # one BLAS thread throughout: a matrix product summed in another order by more threads
    # (a Dask worker runs with one, this process with every core) changes the statistics in
    # the last bits, and NUTS amplifies that into other draws
    with threadpool_limits(limits=1, user_api="blas"):
        return FITTERS[spec.kind.name](table, spec, year, options, data_hash, threads)


def _fit_two_level(table: PupilTable | ReducedYears, spec: ModelSpec, year: int | None,
                   options: FitOptions, data_hash: str, threads: int | None) -> xr.DataTree:
    """:func:`fit_one` of a ``two_level`` spec.

    Everything but the pupil-row model uses the year's per-school summary
    (:class:`bayesfed.design.suffstats.SchoolSummary`), the REML cross-check included: the exact
    REML of the statistics (:func:`bayesfed.posterior.reml.fit_reml_stats`), milliseconds a fit
    whatever the number of pupils; statsmodels' REML on pupil rows
    (:func:`bayesfed.posterior.reml.fit_reml`) is its independent check in the tests.
    """
    if isinstance(table, ReducedYears):
        design, summary = None, table.summaries[year]
        if spec.model.likelihood == "pupil_rows":
            raise ValueError("the pupil-row likelihood needs the pupils, not their statistics")
    else:
        design = design_for(table, spec, year)
        summary = summary_of(design)
    priors = resolve_priors(summary, spec.priors)
    seed = fit_seed(options.seed, spec.name, year)
    settings = dict(draws=options.draws, tune=options.tune, chains=options.chains, seed=seed,
                    sampler=options.sampler, progress=options.progress, threads=threads)
    slopes = tuple(spec.random.slopes)
    recorded = priors.as_dict()
    if slopes:
        # random slopes (collapsed, the school effects drawn exactly afterwards); the pupil
        # counts are constants of its graph, so each year compiles its own
        scales = default_slope_sd(summary, slopes)
        data = slope_data(summary, slopes)
        tree = sample(build_random_slopes(summary, priors, slopes, slope_sd=scales),
                      **settings)
        tree = add_slope_draws(tree, summary, data, slopes, seed=seed)
        recorded |= {f"prior.sd_slope[{k}].sigma": float(v) for k, v in zip(slopes, scales)}
        recorded["prior.cor_school.eta"] = LKJ_ETA
    elif spec.residual.by_school:
        # a residual sd by school (collapsed; the intercepts drawn exactly afterwards)
        tree = sample(build_location_scale(summary, priors), **settings)
        tree = add_scale_draws(tree, summary, seed=seed)
        recorded |= {"prior.sd_log_sigma.sigma": SD_LOG_SIGMA_PRIOR,
                     "prior.cor_log_sigma.eta": LKJ_ETA}
    elif spec.model.likelihood == "collapsed":
        # one compiled model serves every year and every specification with the same
        # coefficients: they differ in the values of the model's one data container (the
        # statistics and the priors), not in its graph
        tree = sample_reusing(("two_level_collapsed", summary.coef_names),
                              lambda: build_two_level_collapsed(summary, priors),
                              {"collapsed_data": collapsed_data(summary, priors)}, **settings)
        # the school intercepts, drawn from their exact conditional posterior
        tree = add_school_draws(tree, summary, seed=seed)
    else:
        tree = sample(build_two_level(design, priors), **settings)
    try:
        if slopes:
            reml = {"unavailable": "the REML cross-check fits random intercepts only (random "
                    "slopes are compared with lme4 in bench/random_slopes_agreement.py)"}
        elif spec.residual.by_school:
            reml = {"unavailable": "the REML cross-check fits one residual variance (the "
                    "location-scale model is compared with brms in "
                    "bench/location_scale_agreement.py)"}
        else:
            reml = asdict(fit_reml_stats(summary.pooled(), summary.coef_names))
    except BayesfedError as exc:  # the cross-check failed; the Bayesian fit still stands
        reml = {"error": str(exc)}
    cov = predictor_cov(summary)
    constant = xr.Dataset({"x_cov": (("predictor", "predictor_"), cov)},
                          coords={"predictor": list(summary.coef_names),
                                  "predictor_": list(summary.coef_names)})
    # per-school aggregates (not pupil rows) for the predictive checks and leave-one-school-out;
    # a random-slope model's own too, for its leave-one-school-out and variance decomposition
    extra = school_data(summary)
    if slopes:
        extra = extra.merge(slope_dataset(data, summary.schools, slopes))
    tree["constant_data"] = xr.DataTree(constant.merge(extra))
    tree.attrs.update(_provenance(table, spec, year, options, seed, data_hash) | {
        "bayesfed_priors": json.dumps(recorded, sort_keys=True),
        "bayesfed_reml": json.dumps(reml, sort_keys=True),
        "bayesfed_n_pupils": summary.n_pupils,
        "bayesfed_n_schools": summary.n_schools,
        "bayesfed_sample": sample_sha256(summary),
    })
    return tree


def fit_event_time(table: PupilTable | Reduced, spec: ModelSpec, options: FitOptions,
                   data_hash: str, threads: int | None = None) -> xr.DataTree:
    """Fit an ``event_time`` spec to every cohort of the table; returns the DataTree to save.

    ``table`` is the table reduced to the model's statistics as it was read
    (:func:`bayesfed.design.reduce.reduce_file`), or a table validated in memory (reduced
    here).

    The tree has no REML cross-check (``bayesfed_reml``; the frequentist comparisons of the
    event-time models are a test and a bench script, ``docs/validation.md``). The stacked
    design (:mod:`bayesfed.modelling.event_stacked`, the default) adds the groups of
    :func:`bayesfed.posterior.event_draws.posterior_draws`; the pooled one
    (:mod:`bayesfed.modelling.event_pooled`) has no ``constant_data``. Its attributes add
    ``bayesfed_design``, ``bayesfed_n_cells``, ``bayesfed_n_cohorts``, ``bayesfed_n_dropped``
    (pupils outside the modelled years), ``bayesfed_n_federations`` and, for the stacked
    design, ``bayesfed_weights``, ``bayesfed_deviation_unit`` (``federation``, or ``school``
    without a federation column) and ``bayesfed_n_foundings``; for the pooled one
    ``bayesfed_n_types``.
    """
    if isinstance(table, PupilTable):
        table = reduce_table(table, spec)
    stats = table.stats
    seed = fit_seed(options.seed, spec.name, None)
    build, add_draws = _JOINT[spec.kind.name]
    parts, priors, attrs = build(stats, spec)
    attrs |= {
        "bayesfed_priors": json.dumps(priors.as_dict(), sort_keys=True),
        "bayesfed_n_pupils": stats.n_pupils,
        "bayesfed_n_schools": len(stats.schools),
        "bayesfed_n_cohorts": len(stats.cohorts),
        "bayesfed_n_dropped": stats.n_dropped,
        "bayesfed_n_federations": len(stats.federations),
    }
    tree = sample(parts.model, draws=options.draws, tune=options.tune, chains=options.chains,
                  seed=seed, sampler=options.sampler, progress=options.progress,
                  threads=threads)
    tree = add_draws(parts, tree, seed, spec)
    tree.attrs.update(_provenance(table, spec, None, options, seed, data_hash) | attrs)
    return tree


def _stacked(stats: CellStats, spec: ModelSpec) -> tuple[StackedModel, StackedPriors, dict]:
    """The stacked model of ``stats`` (checked by the reduction: no error here), its priors
    and the attributes only its fits have."""
    event = spec.event_options
    data = stacked_data(stats)
    priors = resolve_stacked_priors(data, spec.priors)
    parts = build_stacked(data, priors, event.effect_prior, event.shocks, event.deviations)
    return parts, priors, {"bayesfed_design": "stacked", "bayesfed_weights": event.weights,
                           "bayesfed_deviation_unit": data.federation_unit,
                           "bayesfed_n_foundings": len(data.foundings),
                           "bayesfed_n_cells": data.n_cells}


def _pooled(stats: CellStats, spec: ModelSpec) -> tuple[EventModel, EventPriors, dict]:
    """The pooled event-time model of ``stats``, its priors and its own attributes."""
    event = spec.event_options
    priors = resolve_event_priors(stats, spec.priors)
    parts = build_event_time_parts(stats, priors, event.effect_prior, event.deviations,
                                   event.type_effects)
    return parts, priors, {"bayesfed_design": "pooled", "bayesfed_n_cells": len(stats.cells),
                           "bayesfed_n_types": len(stats.types)}


#: Per joint kind: its model, priors and attributes from the cell statistics; the draws added
#: after sampling (exact draws of what the likelihood integrates out).
_JOINT = {
    "event_stacked": (_stacked, lambda parts, tree, seed, spec: posterior_draws(
        parts, tree, seed=seed, weights=spec.event_options.weights)),
    "event_pooled": (_pooled, lambda parts, tree, seed, spec: add_effect_draws(
        parts, tree, seed=seed)),
}


def _fit_joint(table: Table, spec: ModelSpec, year: int | None, options: FitOptions,
               data_hash: str, threads: int | None) -> xr.DataTree:
    """:func:`fit_one` of an event-time spec (``year`` is None: one fit of every cohort)."""
    return fit_event_time(table, spec, options, data_hash, threads=threads)


#: The fitter of each kind of specification (:data:`bayesfed.inputs.families.KINDS`).
FITTERS: dict[str, Callable[..., xr.DataTree]] = {
    "two_level": _fit_two_level, "event_stacked": _fit_joint, "event_pooled": _fit_joint,
}


def _provenance(table: Table, spec: ModelSpec, year: int | None, options: FitOptions,
                seed: int, data_hash: str) -> dict[str, str]:
    """Root attributes every fit carries: what was fitted, how, to which data, with what."""
    return {
        "bayesfed_model": spec.name,
        "bayesfed_family": spec.model.family,
        "bayesfed_reference": spec.model.reference or "",
        "bayesfed_year": "" if year is None else str(year),
        "bayesfed_spec": spec.model_dump_json(),
        "bayesfed_columns": json.dumps(table.columns, sort_keys=True),
        "bayesfed_options": json.dumps({**asdict(options), "fit_seed": seed}, sort_keys=True),
        "bayesfed_data_sha256": data_hash,
        "bayesfed_versions": json.dumps(versions(), sort_keys=True),
    }
