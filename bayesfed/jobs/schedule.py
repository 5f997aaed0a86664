"""Fitting jobs: specs x years since founding -> one self-describing NetCDF file per fit.

A job (:func:`run_job`) runs :func:`bayesfed.jobs.fit_one.fit_one` for every (spec, year) pair
(:func:`planned_fits`) and saves each fit as ``<out>/<model>_k<year>.nc`` (``<out>/<model>.nc``
without a year or for an ``event_time`` spec). It never loses finished work: each fit is saved
atomically as it finishes (:mod:`bayesfed.store`), an interrupted job keeps every finished
fit, and ``resume=True`` keeps the fits already complete for the same spec, data and sampler
options (:func:`resume_problem`) and fits the rest. ``jobs=N`` runs the fits in N worker
processes; a fit's numbers do not depend on N, on the order the fits run in, or on being
resumed (each fit has its own seed and compiled code that does not depend on PyTensor's
cache, :mod:`bayesfed.sampling.nuts`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, replace
from pathlib import Path

from bayesfed.design.reduce import ReducedYears
from bayesfed.errors import BayesfedError, OutputError
from bayesfed.inputs.spec import ModelSpec
from bayesfed.jobs.fit_one import FitOptions, Table, fit_name, fit_one, fit_seed, versions
from bayesfed.jobs.workers import stop_workers, worker_init
from bayesfed.store import load_fit, release, remove_stale_temporaries, save_fit


def planned_fits(specs: Sequence[ModelSpec], years: Sequence[int] | None
                 ) -> list[tuple[ModelSpec, int | None]]:
    """Every (spec, year) pair of a job, models in the order given, years ascending; an
    ``event_time`` spec is fitted once, to every cohort (year None)."""
    def spec_years(spec: ModelSpec) -> Sequence[int | None]:
        return [None] if years is None or spec.kind.joint else years

    return [(spec, year) for spec in specs for year in spec_years(spec)]


#: Sampler options a resumed job must share with a fit file for the file to be kept.
RESUME_OPTIONS = ("draws", "tune", "chains", "seed", "sampler", "fit_seed")


def resume_problem(path: Path, spec: ModelSpec, year: int | None, options: FitOptions,
                   data_hash: str) -> str | None:
    """Why the fit file ``path`` cannot be kept by a resumed job; None when it can.

    It can when it loads completely and records the same model, year, specification, data
    hash, sampler options (:data:`RESUME_OPTIONS`) and library versions
    (:func:`~bayesfed.jobs.fit_one.versions`) as the job would, with every chain and draw.

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
    if year is None or spec.kind.joint:
        return table
    return replace(table, frame=table.select_year(year))


def _fit_and_save(table: Table, spec: ModelSpec, year: int | None,
                  options: FitOptions, data_hash: str, path: Path, threads: int | None
                  ) -> Path:
    """One fit, saved atomically: what a job does per fit, in this process or a worker."""
    tree = fit_one(table, spec, year, options, data_hash, threads=threads)
    saved, nbytes = save_fit(tree, path), tree.nbytes
    del tree
    release(nbytes)
    return saved


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
    on_saved: Callable[[Path, ModelSpec, int | None], None] | None = None,
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
    on_saved : callable, optional
        Called as ``on_saved(path, spec, year)`` when a fit of a job of one process
        (``jobs`` 1, no ``executor``) is saved (:mod:`bayesfed.jobs.summaries`).

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
            if on_saved is not None:
                on_saved(paths[i], spec, year)
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
    order = iter(sorted(todo, key=lambda i: plan[i][0].kind.per_year))
    written: list[Path] = []
    started = 0
    pool = executor or ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=worker_init, initargs=(os.getpid(),))
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
            stop_workers(pool)
            pool.shutdown(wait=True, cancel_futures=True)
        else:  # the caller's executor: cancel what has not started
            for future in pending:
                future.cancel()
        remove_stale_temporaries(out)
        raise
    if executor is None:
        pool.shutdown(wait=True)
    return written
