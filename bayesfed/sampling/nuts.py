"""Posterior sampling of a PyMC model with nutpie (default) or PyMC's own NUTS.

Both samplers return an ArviZ 1.x :class:`xarray.DataTree` with the groups ``posterior``
(dims ``chain``, ``draw`` and each variable's own dims), ``sample_stats`` (including the bool
``diverging``, dims ``chain``, ``draw``) and ``observed_data``; warm-up draws are not kept. The
root's attribute ``sampling_seconds`` is the wall time of compiling and sampling, in seconds.

BLAS is pinned to one thread while sampling: nutpie runs its chains as threads in one process,
and a multi-threaded BLAS inside each chain's gradient would oversubscribe the cores. nutpie
runs ``min(chains, threads)`` chains at a time (``threads`` defaults to the usable cores; a job
of several worker processes gives each a share, :func:`bayesfed.jobs.schedule.run_job`); the draws
do not depend on it.

Reproducibility: the same model (same data), ``seed`` and library versions give identical draws
with either sampler, run to run, process to process, whatever the machine's load (nutpie seeds
each chain from ``seed`` and the chain number) and whatever PyTensor's on-disk compile cache
holds. The last needs one setting, made here: the model is compiled with numba's fast-math
flags off (``pytensor.config.numba__fastmath``, on by default). With them on, LLVM may
reassociate sums, fuse multiply-adds and use approximate ``log``/``exp`` wherever it inlines
one operation into another, and a graph compiled from scratch is inlined differently from one
whose operations come precompiled from PyTensor's cache (``~/.pytensor``, shared by every
process of the user): the log density then differs in the last bits (relative 1e-14), NUTS
amplifies that, and a cold-cache run gave different (statistically equivalent) draws from a
warm-cache one. With IEEE semantics kept, where code is inlined cannot change a result, so
cold and warm caches give the same bits; the cache keys include the flag, so entries compiled
with fast-math by other code are never reused. It costs little compile time, cold or warm,
where the alternatives cost more: numba without its cache recompiles every fit from scratch,
and PyTensor's C backend, usable only by PyMC's own sampler, compiles more slowly still
(``docs/benchmarks.md``, section "Reproducible compilation: what each option costs
(``bench/compile_cache.py``)"). Another machine (CPU features) or other library versions may
still give different, statistically equivalent draws: each fit records its versions.

Ctrl-C (KeyboardInterrupt) stops sampling and propagates: both samplers' own handling, which
returns the draws so far as if sampling had finished, is bypassed, so a partial posterior can
never be saved as a fit.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, get_args

import numpy as np
import nutpie
import pymc as pm
import pytensor
import xarray as xr
from threadpoolctl import threadpool_limits

from bayesfed.sampling.compiled import compile_model

Sampler = Literal["nutpie", "pymc"]

#: Groups kept in the returned tree.
GROUPS = ("posterior", "sample_stats", "observed_data")


def observed_data(model: pm.Model) -> xr.Dataset:
    """The observed values of a model's likelihood terms, with their dims and coords.

    Parameters
    ----------
    model : pm.Model

    Returns
    -------
    xarray.Dataset
        One variable per observed random variable (e.g. ``y`` with dims ``pupil``).
    """
    data = {}
    for rv in model.observed_RVs:
        values = np.asarray(model.rvs_to_values[rv].eval())
        dims = model.named_vars_to_dims.get(rv.name) or tuple(
            f"{rv.name}_dim_{i}" for i in range(values.ndim))
        data[rv.name] = xr.DataArray(values, dims=dims, coords={
            d: np.asarray(model.coords[d]) for d in dims if model.coords.get(d) is not None})
    return xr.Dataset(data)


def _compile(model: pm.Model):
    """nutpie's compiled model, with numba's fast-math off (module docstring) and its machine
    code cached (:mod:`bayesfed.sampling.compiled`)."""
    with pytensor.config.change_flags(numba__fastmath=False):
        return compile_model(model)


def _nutpie(model: pm.Model, draws: int, tune: int, chains: int, seed: int,
            progress: bool, target_accept: float, threads: int | None,
            compiled=None) -> xr.DataTree:
    if compiled is None:
        compiled = _compile(model)
    cores = None if threads is None else max(1, min(chains, threads))
    sampler = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                            save_warmup=False, progress_bar=progress,
                            target_accept=target_accept, cores=cores, blocking=False)
    # nutpie's blocking sample() answers Ctrl-C with the draws so far; here it stops for good
    try:
        return sampler.wait()
    except BaseException:
        sampler.cancel()
        raise


class _Interrupted(BaseException):
    """Ctrl-C while PyMC samples (PyMC would catch a KeyboardInterrupt)."""


@contextmanager
def _ctrl_c_propagates() -> Iterator[None]:
    """While PyMC samples, Ctrl-C raises KeyboardInterrupt out of ``pm.sample``.

    PyMC catches KeyboardInterrupt inside each chain's loop, keeps the draws so far and goes
    on with the next chain; a handler raising an exception it does not catch stops it. Only
    in the main thread, and only where Ctrl-C would raise KeyboardInterrupt anyway (not where
    it is ignored, as in :func:`bayesfed.jobs.schedule.run_job`'s worker processes).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupt(signum, frame):
        raise _Interrupted

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    except _Interrupted:
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _pymc(model: pm.Model, draws: int, tune: int, chains: int, seed: int,
          progress: bool, target_accept: float, threads: int | None) -> xr.DataTree:
    # One process: no multiprocessing start-up, and BLAS stays under this thread's limit.
    with _ctrl_c_propagates():
        return pm.sample(draws=draws, tune=tune, chains=chains, cores=1, random_seed=seed,
                         nuts_sampler="pymc", progressbar=progress, blas_cores=None,
                         compute_convergence_checks=False, target_accept=target_accept,
                         model=model)


def sample(
    model: pm.Model,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
    sampler: Sampler = "nutpie",
    progress: bool = False,
    target_accept: float = 0.8,
    threads: int | None = None,
    compiled=None,
) -> xr.DataTree:
    """Draw from a model's posterior.

    Parameters
    ----------
    model : pm.Model
        E.g. from :func:`bayesfed.modelling.two_level.build_two_level`.
    draws, tune : int
        Kept draws and warm-up (tuning) iterations per chain.
    chains : int
        Number of chains.
    seed : int
        Random seed; the same seed and data give identical draws.
    sampler : {"nutpie", "pymc"}
        nutpie (compiled with numba; chains run in parallel threads) or PyMC's NUTS (chains
        one after another in this process).
    progress : bool
        Show the sampler's progress bar.
    target_accept : float
        Target mean acceptance probability of NUTS's step-size adaptation, in (0, 1); higher
        means smaller steps (slower, fewer divergences in funnels).
    threads : int, optional
        Most chains nutpie runs at once, each in its own thread (default: the usable cores).
        The draws do not depend on it.
    compiled : nutpie.CompiledPyMCModel, optional
        ``model`` already compiled by nutpie (:func:`sample_reusing`); nutpie only.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (chain, draw, ...), ``sample_stats`` (chain, draw) and
        ``observed_data``; root attribute ``sampling_seconds`` (float, s).
    """
    if sampler not in get_args(Sampler):
        raise ValueError(f"sampler must be one of {get_args(Sampler)}, got {sampler!r}")
    if compiled is not None and sampler != "nutpie":
        raise ValueError("a compiled model is nutpie's; PyMC's sampler compiles its own")
    args = (model, draws, tune, chains, seed, progress, target_accept, threads)
    start = time.perf_counter()
    # fast-math off: results that do not depend on PyTensor's compile cache (module docstring)
    with threadpool_limits(limits=1), pytensor.config.change_flags(numba__fastmath=False):
        tree = _nutpie(*args, compiled) if sampler == "nutpie" else _pymc(*args)
    seconds = time.perf_counter() - start
    shape = tuple(tree["posterior"].sizes.get(d, 0) for d in ("chain", "draw"))
    if shape != (chains, draws):
        raise RuntimeError(f"{sampler} returned {shape[0]} chains x {shape[1]} draws, "
                           f"not {chains} x {draws}")
    groups = {f"/{g}": tree[g].to_dataset() for g in GROUPS if g in tree.children}
    groups.setdefault("/observed_data", observed_data(model))
    out = xr.DataTree.from_dict(groups)
    out.attrs["sampling_seconds"] = seconds
    out.attrs["sampler"] = sampler
    return out


#: Models compiled by :func:`sample_reusing`, by key: (model, nutpie's compiled model), the
#: most recently used last.
_COMPILED: OrderedDict[Hashable, tuple[pm.Model, object]] = OrderedDict()

#: Compiled models kept per process (each a few MB of machine code).
MAX_COMPILED = 8


def sample_reusing(
    key: Hashable,
    build: Callable[[], pm.Model],
    data: Mapping[str, np.ndarray],
    *,
    sampler: Sampler = "nutpie",
    **kwargs,
) -> xr.DataTree:
    """:func:`sample`, reusing a model compiled earlier in this process for the same graph.

    Compiling dominates the cost of a small model (seconds against a fraction of a second of
    sampling), and the per-year fits of one specification differ in data, not in graph. The
    first call with a ``key`` builds the model and compiles it with nutpie; a later call with
    the same key puts ``data`` into the compiled model's data containers (and into the
    PyMC model's, which nutpie's initial points read) and samples it. The draws are the same as
    those of a model built and compiled afresh from the same data: the compiled code does not
    depend on the containers' values (fast-math off, see the module docstring), and the
    initial points and seeds are the same (tested in ``tests/test_collapsed.py``).

    Parameters
    ----------
    key : hashable
        Identifies the graph: two calls may share a key only if ``build`` makes the same
        graph for both (e.g. the specification and the coefficient names).
    build : callable
        Builds the PyMC model with this call's data; called on the first use of ``key``, and
        on every call with ``sampler="pymc"`` (PyMC's sampler compiles per call).
    data : mapping of str to ndarray
        The value of each of the model's data containers (``pm.Data``) for this call; every
        container must be given.
    sampler : {"nutpie", "pymc"}
    **kwargs
        Passed on to :func:`sample` (draws, tune, chains, seed, progress, target_accept,
        threads).

    Returns
    -------
    xarray.DataTree
        As :func:`sample`; ``sampling_seconds`` counts compilation only on the first call.
    """
    if sampler != "nutpie":
        return sample(build(), sampler=sampler, **kwargs)
    hit = _COMPILED.pop(key, None)
    if hit is None:
        model = build()
        start = time.perf_counter()
        compiled = _compile(model)
        compile_seconds = time.perf_counter() - start
    else:
        model, compiled = hit
    names = {var.name for var in compiled.shared_var_keys}
    if set(data) != names:
        raise ValueError(f"data must give every data container of the model: "
                         f"{sorted(names)}, got {sorted(data)}")
    if hit is not None:
        pm.set_data(data, model=model)
        compiled = compiled.with_data(**data)
        compile_seconds = 0.0
    _COMPILED[key] = (model, compiled)
    while len(_COMPILED) > MAX_COMPILED:
        _COMPILED.popitem(last=False)
    tree = sample(model, sampler="nutpie", compiled=compiled, **kwargs)
    tree.attrs["sampling_seconds"] += compile_seconds
    return tree
