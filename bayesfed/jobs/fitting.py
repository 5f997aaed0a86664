"""Fitting jobs: specs x years since founding -> one self-describing NetCDF file per fit.

For each ``two_level`` model specification and each selected year since founding (or the whole
table when no year is selected) a job selects the pupils, builds the design, resolves the
priors, builds and samples the PyMC model, fits the same model by REML, and saves everything as
one ArviZ DataTree in ``<out>/<model>_k<year>.nc`` (``<out>/<model>.nc`` without a year). An
``event_time`` specification is fitted once, to every cohort of the table
(:mod:`bayesfed.modelling.event_pooled`), into ``<out>/<model>.nc``.

What a fit file holds (see :mod:`bayesfed.store`): groups ``posterior``, ``sample_stats``,
``observed_data`` and ``constant_data`` (``x_cov``: the predictors' covariance matrix over
pupils, needed by the variance decomposition; ``school_*``: per-school counts, means and
within-school cross products from :func:`bayesfed.posterior.checks.school_data`, for the predictive
checks and leave-one-school-out), and root attributes with the model name, the
year, the spec and column mapping (JSON), the resolved priors, the REML fit, the sampler
settings and seed, a hash of the input data, and the versions of bayesfed and its samplers.

A job (:func:`run_job`) never loses finished work: each fit is saved atomically as it finishes
(:mod:`bayesfed.store`), an interrupted job keeps every finished fit, and ``resume=True`` keeps
the fits already complete for the same spec, data and sampler options (:func:`resume_problem`)
and fits the rest. ``jobs=N`` runs the fits in N worker processes; a fit's numbers do not
depend on N, on the order the fits run in, or on being resumed (each fit has its own seed,
:func:`fit_seed`, and compiled code that does not depend on PyTensor's cache,
:mod:`bayesfed.sampling.nuts`).
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import get_args

import numpy as np
import xarray as xr
from threadpoolctl import threadpool_limits

from bayesfed import __version__
from bayesfed.design.cells import EventDesign, build_event_design
from bayesfed.design.columns import Design, build_design
from bayesfed.design.reduce import Reduced, ReducedYears, reduce_table
from bayesfed.design.stacked import stacked_data
from bayesfed.design.suffstats import summary_of
from bayesfed.errors import BayesfedError, DataError, OutputError
from bayesfed.inputs.spec import ModelSpec
from bayesfed.inputs.validate import PupilTable
from bayesfed.modelling.event_pooled import (
    add_effect_draws,
    build_event_time_parts,
    resolve_event_priors,
)
from bayesfed.modelling.event_stacked import build_stacked, resolve_stacked_priors
from bayesfed.modelling.priors import resolve_priors
from bayesfed.modelling.two_level import (
    add_school_draws,
    build_two_level,
    build_two_level_collapsed,
    collapsed_data,
)
from bayesfed.posterior.checks import school_data
from bayesfed.posterior.event_draws import posterior_draws
from bayesfed.posterior.partition import predictor_cov
from bayesfed.posterior.reml import fit_reml, fit_reml_stats
from bayesfed.sampling.nuts import Sampler, sample, sample_reusing
from bayesfed.store import load_fit, remove_stale_temporaries, save_fit

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
        if spec.model.family == "event_time":
            return fit_event_time(table, spec, options, data_hash, threads=threads)
        return _fit_two_level(table, spec, year, options, data_hash, threads)


def _fit_two_level(table: PupilTable | ReducedYears, spec: ModelSpec, year: int | None,
                   options: FitOptions, data_hash: str, threads: int | None) -> xr.DataTree:
    """:func:`fit_one` of a ``two_level`` spec.

    Everything but the pupil-row model and statsmodels' REML uses the year's per-school
    summary (:class:`bayesfed.design.suffstats.SchoolSummary`); from a reduced table (no rows) the
    REML cross-check is the exact REML of the statistics
    (:func:`bayesfed.posterior.reml.fit_reml_stats`).
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
    if spec.model.likelihood == "collapsed":
        # one compiled model per specification serves every year: the years differ in the
        # values of the model's data containers, not in its graph
        tree = sample_reusing((spec.model_dump_json(), summary.coef_names),
                              lambda: build_two_level_collapsed(summary, priors),
                              {"collapsed_data": collapsed_data(summary, priors)}, **settings)
        # the school intercepts, drawn from their exact conditional posterior
        tree = add_school_draws(tree, summary, seed=seed)
    else:
        tree = sample(build_two_level(design, priors), **settings)
    try:
        reml = asdict(fit_reml(design) if design is not None
                      else fit_reml_stats(summary.pooled(), summary.coef_names))
    except BayesfedError as exc:  # the cross-check failed; the Bayesian fit still stands
        reml = {"error": str(exc)}
    cov = predictor_cov(summary)
    constant = xr.Dataset({"x_cov": (("predictor", "predictor_"), cov)},
                          coords={"predictor": list(summary.coef_names),
                                  "predictor_": list(summary.coef_names)})
    # per-school aggregates (not pupil rows) for the predictive checks and leave-one-school-out
    tree["constant_data"] = xr.DataTree(constant.merge(school_data(summary)))
    tree.attrs.update(_provenance(table, spec, year, options, seed, data_hash) | {
        "bayesfed_priors": json.dumps(priors.as_dict(), sort_keys=True),
        "bayesfed_reml": json.dumps(reml, sort_keys=True),
        "bayesfed_n_pupils": summary.n_pupils,
        "bayesfed_n_schools": summary.n_schools,
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
    event = spec.event_options
    if isinstance(table, PupilTable):
        table = reduce_table(table, spec)
    stats = table.stats
    seed = fit_seed(options.seed, spec.name, None)
    if event.design == "stacked":
        data = stacked_data(stats)  # checked by the reduction: no error here
        priors = resolve_stacked_priors(data, spec.priors)
        parts = build_stacked(data, priors, event.effect_prior, event.shocks, event.deviations)
        attrs = {"bayesfed_design": "stacked", "bayesfed_weights": event.weights,
                 "bayesfed_deviation_unit": data.federation_unit,
                 "bayesfed_n_foundings": len(data.foundings),
                 "bayesfed_n_cells": data.n_cells}
    else:
        priors = resolve_event_priors(stats, spec.priors)
        parts = build_event_time_parts(stats, priors, event.effect_prior, event.deviations,
                                       event.type_effects)
        attrs = {"bayesfed_design": "pooled", "bayesfed_n_cells": len(stats.cells),
                 "bayesfed_n_types": len(stats.types)}
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
    if event.design == "stacked":
        tree = posterior_draws(parts, tree, seed=seed, weights=event.weights)
    else:
        tree = add_effect_draws(parts, tree, seed=seed)
    tree.attrs.update(_provenance(table, spec, None, options, seed, data_hash) | attrs)
    return tree


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


def planned_fits(specs: Sequence[ModelSpec], years: Sequence[int] | None
                 ) -> list[tuple[ModelSpec, int | None]]:
    """Every (spec, year) pair of a job, models in the order given, years ascending; an
    ``event_time`` spec is fitted once, to every cohort (year None)."""
    def spec_years(spec: ModelSpec) -> Sequence[int | None]:
        return [None] if years is None or spec.model.family == "event_time" else years

    return [(spec, year) for spec in specs for year in spec_years(spec)]


#: Sampler options a resumed job must share with a fit file for the file to be kept.
RESUME_OPTIONS = ("draws", "tune", "chains", "seed", "sampler", "fit_seed")


def resume_problem(path: Path, spec: ModelSpec, year: int | None, options: FitOptions,
                   data_hash: str) -> str | None:
    """Why the fit file ``path`` cannot be kept by a resumed job; None when it can.

    It can when it loads completely and records the same model, year, specification, data
    hash, sampler options (:data:`RESUME_OPTIONS`) and library versions (:func:`versions`) as
    the job would, with every chain and draw.

    Returns
    -------
    str or None
        The reason, worded to follow the file name ("cannot be read ...").
    """
    try:
        tree = load_fit(path)
    except Exception as exc:  # truncated, not HDF5, not a DataTree: all refused
        return f"cannot be read as a fit ({type(exc).__name__}): incomplete or not a fit file"
    attrs = tree.attrs
    try:
        stored = json.loads(attrs["bayesfed_options"])
        stored_versions = json.loads(attrs["bayesfed_versions"])
        identity = (attrs["bayesfed_model"], str(attrs["bayesfed_year"]), attrs["bayesfed_spec"],
                    attrs["bayesfed_data_sha256"])
    except (KeyError, TypeError, ValueError):
        return "is not a bayesfed fit file (its provenance attributes are missing)"
    if identity[:2] != (spec.name, "" if year is None else str(year)):
        return f"holds another fit (model {identity[0]}, year {identity[1] or 'none'})"
    if identity[2] != spec.model_dump_json():
        return "was fitted with a different model specification"
    if identity[3] != data_hash:
        return (f"was fitted to different data (SHA-256 {str(identity[3])[:12]}, this job's "
                f"{data_hash[:12]})")
    wanted = {**asdict(options), "fit_seed": fit_seed(options.seed, spec.name, year)}
    differ = [f"{k} {stored.get(k)}, not {wanted[k]}" for k in RESUME_OPTIONS
              if stored.get(k) != wanted[k]]
    if differ:
        return f"was fitted with other sampler options ({'; '.join(differ)})"
    now = versions()
    differ = [f"{k} {stored_versions.get(k)}, now {v}" for k, v in now.items()
              if stored_versions.get(k) != v]
    if differ:
        return f"was fitted with other library versions ({'; '.join(differ)})"
    if "posterior" not in tree.children or "sample_stats" not in tree.children:
        return "is incomplete (no posterior or sample statistics)"
    shape = tuple(tree["posterior"].sizes.get(d, 0) for d in ("chain", "draw"))
    if shape != (options.chains, options.draws):
        return f"is incomplete ({shape[0]} chains x {shape[1]} draws)"
    return None


def usable_cpus() -> int:
    """CPU cores this process may run on."""
    count = getattr(os, "process_cpu_count", None)  # Python >= 3.13
    if count is not None:
        return count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _table_for(table: Table, spec: ModelSpec, year: int | None) -> Table:
    """Only the pupils (or statistics) one fit needs (what a worker process is sent)."""
    if isinstance(table, ReducedYears):
        return table.select_year(year)
    if year is None or spec.model.family == "event_time":
        return table
    return replace(table, frame=table.select_year(year))


def _fit_and_save(table: Table, spec: ModelSpec, year: int | None,
                  options: FitOptions, data_hash: str, path: Path, threads: int | None
                  ) -> Path:
    """One fit, saved atomically: what a job does per fit, in this process or a worker."""
    saved = save_fit(fit_one(table, spec, year, options, data_hash, threads=threads), path)
    # a DataTree's nodes refer to their parents: only the cycle collector frees a fit (a
    # national one is hundreds of megabytes), and it runs by object counts, not bytes
    gc.collect()
    return saved


def _worker_init(parent: int) -> None:
    """Set up a worker process of a parallel job.

    Ctrl-C reaches the whole process group; only the parent acts on it (it stops the workers).
    A worker whose parent died without stopping it (SIGKILL) exits within a second instead of
    waiting for work forever; what it was writing stays a temporary, never a fit file.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Kill a pool's worker processes now (their temporaries are removed afterwards)."""
    kill = getattr(pool, "kill_workers", None)  # Python >= 3.14
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()


def run_job(
    tables: Mapping[str, Table],
    specs: Sequence[ModelSpec],
    years: Sequence[int] | None,
    out: Path,
    options: FitOptions,
    data_hash: str,
    force: bool = False,
    on_fit: Callable[[str, int, int], None] | None = None,
    *,
    resume: bool = False,
    jobs: int = 1,
    on_note: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> list[Path]:
    """Fit every (spec, year) pair and save each fit as it finishes.

    Parameters
    ----------
    tables : mapping of str to PupilTable, Reduced or ReducedYears
        Model name -> the table validated for that spec and every year (an ``event_time``
        spec's reduced to its statistics as it was read).
    specs : sequence of ModelSpec
    years : sequence of int or None
    out : Path
        Output folder (created if needed).
    options : FitOptions
    data_hash : str
        SHA-256 of the input file.
    force : bool
        Replace existing fit files; without it (or ``resume``) an existing file stops the job
        before any sampling.
    on_fit : callable, optional
        Called as ``on_fit(name, i, n)`` when fit ``i`` of the ``n`` to run starts (progress
        display).
    resume : bool
        Keep the existing fit files that are complete for this job (:func:`resume_problem`)
        and fit the rest; any other existing fit file stops the job before any sampling.
        Excludes ``force``.
    jobs : int
        Worker processes fitting at once (spawned; the largest fits, event-time ones, go
        first). Each samples ``min(chains, cores // jobs)`` chains at a time, so N workers
        never run more chains than the machine has cores; with 1 the fits run one after the
        other in this process. The numbers do not depend on it.
    on_note : callable, optional
        Called with a line for the user (fits kept, temporaries removed).
    executor : concurrent.futures.Executor, optional
        Run the fits there instead, at most ``jobs`` at once: a Dask cluster's
        (``client.get_executor()``, :mod:`bayesfed.design.distributed`), whose workers must see
        ``out``. On Ctrl-C or a failure the fits not started are cancelled; those running
        finish on their workers.

    Returns
    -------
    list of Path
        The fit files written (not those kept).

    Raises
    ------
    OutputError
        Existing fits without ``force`` or ``resume``, or existing fits ``resume`` cannot
        keep.
    KeyboardInterrupt
        Ctrl-C: the fits finished so far are kept, workers are stopped and temporaries
        removed.

    Notes
    -----
    Temporaries left by a killed run (:func:`bayesfed.store.stale_temporaries`) are removed
    first.
    """
    if force and resume:
        raise ValueError("force and resume exclude each other")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    note = on_note or (lambda text: None)
    plan = planned_fits(specs, years)
    paths = [out / f"{fit_name(spec.name, year)}.nc" for spec, year in plan]
    removed = remove_stale_temporaries(out)
    if removed:
        note(f"removed {len(removed)} unfinished temporary file(s) left by a killed run: "
             + ", ".join(p.name for p in removed))
    existing = [p for p in paths if p.exists()]
    if existing and not (force or resume):
        shown = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise OutputError(f"{out} already holds {len(existing)} of these fits ({shown}); "
                          "use --force to replace them, --resume to keep the complete ones "
                          "and fit the rest, or choose another --out")
    todo = list(range(len(plan)))
    if resume and existing:
        problems = {paths[i].name: resume_problem(paths[i], *plan[i], options, data_hash)
                    for i in todo if paths[i].exists()}
        bad = [f"{name} {why}" for name, why in problems.items() if why is not None]
        if bad:
            raise OutputError(f"cannot resume in {out}: " + "; ".join(bad) + ". Use --force to "
                              "refit every fit, or choose another --out")
        note(f"kept {len(problems)} complete fit(s): " + ", ".join(problems))
        todo = [i for i in todo if not paths[i].exists()]
    if executor is None and (jobs == 1 or len(todo) <= 1):
        written = []
        for k, i in enumerate(todo):
            if on_fit is not None:
                on_fit(paths[i].stem, k, len(todo))
            spec, year = plan[i]
            written.append(_fit_and_save(tables[spec.name], spec, year, options, data_hash,
                                         paths[i], None))
        return written
    return _run_parallel(tables, plan, paths, todo, options, data_hash, jobs, on_fit, out,
                         executor)


def _run_parallel(tables: Mapping[str, Table],
                  plan: list[tuple[ModelSpec, int | None]], paths: list[Path],
                  todo: list[int], options: FitOptions, data_hash: str, jobs: int,
                  on_fit: Callable[[str, int, int], None] | None, out: Path,
                  executor: Executor | None = None) -> list[Path]:
    """:func:`run_job`'s fits in ``jobs`` spawned worker processes, or on ``executor``.

    At most ``jobs`` fits are in flight, each sent only its own pupils, so memory holds one
    fit's data per worker. On any failure or Ctrl-C the workers are killed (an executor's
    fits not started are cancelled), their temporaries removed, and the exception raised;
    fits already saved stay.
    """
    workers = max(1, min(jobs, len(todo)))
    # chains sampled at once: the cores shared by this machine's workers; a cluster's
    # workers each sample on their own cores
    threads = max(1, usable_cpus() // workers) if executor is None else None
    options = replace(options, progress=False)  # one progress bar per worker would garble
    # the largest fits first, so that no worker is left alone with one at the end
    order = iter(sorted(todo, key=lambda i: plan[i][0].model.family != "event_time"))
    written: list[Path] = []
    started = 0
    pool = executor or ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init, initargs=(os.getpid(),))
    pending: dict[Future, int] = {}

    def submit() -> None:
        nonlocal started
        i = next(order, None)
        if i is None:
            return
        spec, year = plan[i]
        if on_fit is not None:
            on_fit(paths[i].stem, started, len(todo))
        started += 1
        pending[pool.submit(_fit_and_save, _table_for(tables[spec.name], spec, year), spec,
                            year, options, data_hash, paths[i], threads)] = i

    try:
        for _ in range(workers):
            submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    written.append(future.result())
                except BrokenProcessPool:
                    raise BayesfedError(
                        f"a worker process died while fitting {paths[i].stem} (out of memory? "
                        "try fewer --jobs); the finished fits are kept, --resume fits the "
                        "rest") from None
                submit()
    except BaseException:
        if executor is None:
            _stop_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
        else:  # the caller's executor: cancel what has not started
            for future in pending:
                future.cancel()
        remove_stale_temporaries(out)
        raise
    if executor is None:
        pool.shutdown(wait=True)
    return written
