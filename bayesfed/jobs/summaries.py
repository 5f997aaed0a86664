"""Summaries of a job's saved fits computed in a worker process while the next fits sample.

A per-year fit's summary (diagnostics, predictive checks, leave-one-school-out, prior
sensitivity: :func:`bayesfed.posterior.summarize.summarize_file`) takes about as long as its
sampling, and a job of one process leaves the second core idle while it compiles a model or
saves a fit. So a job of :data:`MIN_FITS` or more per-year fits in one process, started where a
spawned process cannot run the user's script again (:func:`bayesfed.jobs.workers.spawn_safe`:
the ``bayesfed`` command, ``python -m``, a notebook), summarises each fit in one spawned worker
as soon as it is saved; ``summary.json`` is then assembled from those
summaries (:func:`bayesfed.posterior.summarize.summarize_dir`), each used only if its fit and
reference files are unchanged, so the file is the same as without the worker. A summary the
worker could not make is made again in the job's process, where its error surfaces.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from bayesfed.inputs.spec import ModelSpec
from bayesfed.jobs.fit_one import fit_name
from bayesfed.jobs.workers import stop_workers, worker_init
from bayesfed.posterior.summarize import FileSummary, summarize_file

#: Per-year fits a job must have to do for their summaries to be made beside them: the worker
#: costs about 3 s of imports on the other core.
MIN_FITS = 6


class SummaryWorker:
    """One spawned worker process summarising saved fits (module docstring).

    Use as a context manager: on leaving it with an exception (Ctrl-C included) the worker is
    killed; otherwise it is shut down once its summaries are collected (:meth:`results`).
    """

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=worker_init, initargs=(os.getpid(),))
        self._futures: dict[str, Future] = {}
        # start it now and import what summaries need (about 2 s) while the job reads its
        # table and compiles its first model
        self._pool.submit(importlib.import_module, "bayesfed.posterior.summarize")

    def __enter__(self) -> SummaryWorker:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            stop_workers(self._pool)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, path: Path, spec: ModelSpec, year: int | None) -> None:
        """Summarise the per-year fit just saved at ``path`` (other kinds are left to the
        end); its reference model's fit is the folder's ``<reference>_k<year>.nc`` if saved."""
        if not spec.kind.per_year:
            return
        reference = None
        if spec.model.reference:
            candidate = path.parent / f"{fit_name(spec.model.reference, year)}.nc"
            reference = candidate if candidate.exists() else None
        self._futures[path.name] = self._pool.submit(summarize_file, path, reference)

    def results(self) -> dict[str, FileSummary]:
        """The summaries made, by file name, once the worker has finished them all."""
        out = {}
        for name, future in self._futures.items():
            try:
                out[name] = future.result()
            except Exception:  # noqa: BLE001 - made again, and raised, by the job's process
                continue
        return out
