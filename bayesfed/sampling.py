"""Posterior sampling of a PyMC model with nutpie (default) or PyMC's own NUTS.

Both samplers return an ArviZ 1.x :class:`xarray.DataTree` with the groups ``posterior``
(dims ``chain``, ``draw`` and each variable's own dims), ``sample_stats`` (including the bool
``diverging``, dims ``chain``, ``draw``) and ``observed_data``; warm-up draws are not kept. The
root's attribute ``sampling_seconds`` is the wall time of compiling and sampling, in seconds.

BLAS is pinned to one thread while sampling: nutpie runs its chains as threads in one process,
and a multi-threaded BLAS inside each chain's gradient would oversubscribe the cores.

Reproducibility: the same model (same data) and ``seed`` give identical draws with either
sampler, whatever the machine's load (nutpie seeds each chain from ``seed`` and chain number),
as long as the compiled code is the same. It need not be: PyTensor's numba functions built
fresh and those loaded from its on-disk cache (``~/.pytensor``, shared by every process of the
user) can differ in the last bits of the log density and gradient (relative 1e-14, from the
order of floating-point operations), and NUTS trajectories amplify such differences, so a run
with a cold cache, another machine or another PyTensor version gives different, statistically
equivalent draws.
"""

from __future__ import annotations

import time
from typing import Literal, get_args

import numpy as np
import nutpie
import pymc as pm
import xarray as xr
from threadpoolctl import threadpool_limits

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


def _nutpie(model: pm.Model, draws: int, tune: int, chains: int, seed: int,
            progress: bool, target_accept: float) -> xr.DataTree:
    compiled = nutpie.compile_pymc_model(model)
    return nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, seed=seed,
                         save_warmup=False, progress_bar=progress, target_accept=target_accept)


def _pymc(model: pm.Model, draws: int, tune: int, chains: int, seed: int,
          progress: bool, target_accept: float) -> xr.DataTree:
    # One process: no multiprocessing start-up, and BLAS stays under this thread's limit.
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
) -> xr.DataTree:
    """Draw from a model's posterior.

    Parameters
    ----------
    model : pm.Model
        E.g. from :func:`bayesfed.models.build_two_level`.
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

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (chain, draw, ...), ``sample_stats`` (chain, draw) and
        ``observed_data``; root attribute ``sampling_seconds`` (float, s).
    """
    if sampler not in get_args(Sampler):
        raise ValueError(f"sampler must be one of {get_args(Sampler)}, got {sampler!r}")
    run = _nutpie if sampler == "nutpie" else _pymc
    start = time.perf_counter()
    with threadpool_limits(limits=1):
        tree = run(model, draws, tune, chains, seed, progress, target_accept)
    seconds = time.perf_counter() - start
    groups = {f"/{g}": tree[g].to_dataset() for g in GROUPS if g in tree.children}
    groups.setdefault("/observed_data", observed_data(model))
    out = xr.DataTree.from_dict(groups)
    out.attrs["sampling_seconds"] = seconds
    out.attrs["sampler"] = sampler
    return out
