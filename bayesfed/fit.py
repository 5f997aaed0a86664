"""Fitting jobs: specs x years since founding -> one self-describing NetCDF file per fit.

For each ``two_level`` model specification and each selected year since founding (or the whole
table when no year is selected) a job selects the pupils, builds the design, resolves the
priors, builds and samples the PyMC model, fits the same model by REML, and saves everything as
one ArviZ DataTree in ``<out>/<model>_k<year>.nc`` (``<out>/<model>.nc`` without a year). An
``event_time`` specification is fitted once, to every cohort of the table
(:mod:`bayesfed.event_time`), into ``<out>/<model>.nc``.

What a fit file holds (see :mod:`bayesfed.store`): groups ``posterior``, ``sample_stats``,
``observed_data`` and ``constant_data`` (``x_cov``: the predictors' covariance matrix over
pupils, needed by the variance decomposition), and root attributes with the model name, the
year, the spec and column mapping (JSON), the resolved priors, the REML fit, the sampler
settings and seed, a hash of the input data, and the versions of bayesfed and its samplers.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import get_args

import numpy as np
import xarray as xr

from bayesfed import __version__
from bayesfed.design import Design, build_design
from bayesfed.errors import BayesfedError, DataError, OutputError
from bayesfed.event_design import EventDesign, build_event_design
from bayesfed.event_time import add_effect_draws, build_event_time_parts, resolve_event_priors
from bayesfed.models import add_school_draws, build_two_level, build_two_level_collapsed
from bayesfed.partition import predictor_cov
from bayesfed.priors import resolve_priors
from bayesfed.reml import fit_reml
from bayesfed.sampling import Sampler, sample
from bayesfed.spec import ModelSpec
from bayesfed.store import save_fit
from bayesfed.validate import PupilTable


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


def design_for(table: PupilTable, spec: ModelSpec, year: int | None) -> Design:
    """The design of one model on one year's pupils (the whole table when ``year`` is None)."""
    return build_design(table.select_year(year), spec.predictors.pupil, spec.predictors.school,
                        spec.categorical_coding())


def event_design_for(table: PupilTable, spec: ModelSpec) -> EventDesign:
    """The event-time design of an ``event_time`` spec on the whole table.

    Raises
    ------
    DataError
        An event year the spec asks for has no federated pupil (its term is not identified).
    """
    event = spec.event_options
    try:
        return build_event_design(table.frame, spec.predictors.pupil, spec.categorical_coding(),
                                  leads=event.leads, effects=range(event.years_after + 1))
    except ValueError as exc:
        raise DataError(f"{spec.source}: {exc}") from None


def versions() -> dict[str, str]:
    """Versions of bayesfed and the libraries whose numbers a fit depends on."""
    out = {"bayesfed": __version__}
    for pkg in ("pymc", "pytensor", "nutpie", "arviz", "numpy", "statsmodels"):
        out[pkg] = version(pkg)
    return out


def fit_one(
    table: PupilTable,
    spec: ModelSpec,
    year: int | None,
    options: FitOptions,
    data_hash: str,
) -> xr.DataTree:
    """Fit one model to one year's pupils; returns the DataTree to save.

    Parameters
    ----------
    table : PupilTable
        Validated for ``spec`` (and for ``year``).
    spec : ModelSpec
    year : int or None
        Years since founding to select, or None for the whole table.
    options : FitOptions
    data_hash : str
        SHA-256 of the input file, recorded for provenance.
    """
    if spec.model.family == "event_time":
        return fit_event_time(table, spec, options, data_hash)
    design = design_for(table, spec, year)
    priors = resolve_priors(design, spec.priors)
    seed = fit_seed(options.seed, spec.name, year)
    collapsed = spec.model.likelihood == "collapsed"
    model = (build_two_level_collapsed if collapsed else build_two_level)(design, priors)
    tree = sample(model, draws=options.draws, tune=options.tune, chains=options.chains,
                  seed=seed, sampler=options.sampler, progress=options.progress)
    if collapsed:  # the school intercepts, drawn from their exact conditional posterior
        tree = add_school_draws(tree, design, seed=seed)
    try:
        reml = asdict(fit_reml(design))
    except BayesfedError as exc:  # the cross-check failed; the Bayesian fit still stands
        reml = {"error": str(exc)}
    cov = predictor_cov(design)
    tree["constant_data"] = xr.DataTree(xr.Dataset({"x_cov": (("predictor", "predictor_"), cov)},
                                                   coords={"predictor": list(design.coef_names),
                                                           "predictor_": list(design.coef_names)}))
    tree.attrs.update(_provenance(table, spec, year, options, seed, data_hash) | {
        "bayesfed_priors": json.dumps(priors.as_dict(), sort_keys=True),
        "bayesfed_reml": json.dumps(reml, sort_keys=True),
        "bayesfed_n_pupils": design.n_pupils,
        "bayesfed_n_schools": design.n_schools,
    })
    return tree


def fit_event_time(table: PupilTable, spec: ModelSpec, options: FitOptions,
                   data_hash: str) -> xr.DataTree:
    """Fit an ``event_time`` spec to every cohort of the table; returns the DataTree to save.

    The tree has no REML cross-check (``bayesfed_reml``; the frequentist comparison of the
    event-time model is a test, ``tests/test_event_time.py``) and no ``constant_data``; its
    attributes add
    ``bayesfed_n_cells``, ``bayesfed_n_cohorts``, ``bayesfed_n_dropped`` (pupils outside the
    modelled years), ``bayesfed_n_federations`` and ``bayesfed_n_types``.
    """
    event = spec.event_options
    design = event_design_for(table, spec)
    priors = resolve_event_priors(design, spec.priors)
    seed = fit_seed(options.seed, spec.name, None)
    parts = build_event_time_parts(design, priors, event.effect_prior,
                                   event.federation_deviations, event.type_effects)
    tree = sample(parts.model, draws=options.draws, tune=options.tune, chains=options.chains,
                  seed=seed, sampler=options.sampler, progress=options.progress)
    tree = add_effect_draws(parts, tree, seed=seed)
    tree.attrs.update(_provenance(table, spec, None, options, seed, data_hash) | {
        "bayesfed_priors": json.dumps(priors.as_dict(), sort_keys=True),
        "bayesfed_n_pupils": design.n_pupils,
        "bayesfed_n_schools": len(design.schools),
        "bayesfed_n_cells": len(design.cells),
        "bayesfed_n_cohorts": len(design.cohorts),
        "bayesfed_n_dropped": design.n_dropped,
        "bayesfed_n_federations": len(design.federations),
        "bayesfed_n_types": len(design.types),
    })
    return tree


def _provenance(table: PupilTable, spec: ModelSpec, year: int | None, options: FitOptions,
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


def planned_fits(specs: Sequence[ModelSpec], years: Sequence[int] | None
                 ) -> list[tuple[ModelSpec, int | None]]:
    """Every (spec, year) pair of a job, models in the order given, years ascending; an
    ``event_time`` spec is fitted once, to every cohort (year None)."""
    def spec_years(spec: ModelSpec) -> Sequence[int | None]:
        return [None] if years is None or spec.model.family == "event_time" else years

    return [(spec, year) for spec in specs for year in spec_years(spec)]


def run_job(
    tables: Mapping[str, PupilTable],
    specs: Sequence[ModelSpec],
    years: Sequence[int] | None,
    out: Path,
    options: FitOptions,
    data_hash: str,
    force: bool = False,
    on_fit: Callable[[str, int, int], None] | None = None,
) -> list[Path]:
    """Fit every (spec, year) pair and save each fit as it finishes.

    Parameters
    ----------
    tables : mapping of str to PupilTable
        Model name -> the table validated for that spec and every year.
    specs : sequence of ModelSpec
    years : sequence of int or None
    out : Path
        Output folder (created if needed).
    options : FitOptions
    data_hash : str
        SHA-256 of the input file.
    force : bool
        Replace existing fit files; without it an existing file stops the job before any
        sampling.
    on_fit : callable, optional
        Called as ``on_fit(name, i, n)`` before fit ``i`` of ``n`` starts (progress display).

    Returns
    -------
    list of Path
        The fit files written.
    """
    plan = planned_fits(specs, years)
    paths = [out / f"{fit_name(spec.name, year)}.nc" for spec, year in plan]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        shown = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise OutputError(f"{out} already holds {len(existing)} of these fits ({shown}); "
                          "use --force to replace them or choose another --out")
    written = []
    for i, ((spec, year), path) in enumerate(zip(plan, paths, strict=True)):
        if on_fit is not None:
            on_fit(path.stem, i, len(plan))
        tree = fit_one(tables[spec.name], spec, year, options, data_hash)
        written.append(save_fit(tree, path))
    return written
