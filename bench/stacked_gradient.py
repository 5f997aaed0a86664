"""What one gradient of the stacked event-time model costs, and where, against the pooled one.

Both event-time designs of the shipped spec are built on one study (default: the national
study, ``out/bench/event_time/national.parquet``; any pupil table works), and the log density
and its gradient compiled as one function (as nutpie does) with PyTensor's numba backend (what
nutpie samples) and its C backend, BLAS one thread, at the models' initial points, each timed
over ``--calls`` calls after a warm-up call: the pooled model, the stacked model as sampled
(its likelihood the fused kernel, :mod:`bayesfed.modelling.stacked_kernel`) and the stacked model
with the likelihood's PyTensor graph instead
(:func:`bayesfed.modelling.event_stacked.reference_loglik`, PyTensor's gradient). Then the graph's
parts, each compiled on its own with its gradient with respect to the variance parameters (numba):
the per-school algebra of the shocks and the school intercept (``school_algebra``, its
log-determinants), the quadratic form of the cell means (``apply_precision``), and the sums of the
schools' precisions over the block's groups (``precision_sums``). Printed: milliseconds a call and
the ratio to the pooled model's gradient (the peer, measured in the same run).

Run: ``.venv/bin/python bench/stacked_gradient.py [DATA] [--calls 40]``. Figures:
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytensor
import pytensor.tensor as pt
from threadpoolctl import threadpool_limits

from bayesfed.design.reduce import reduce_file
from bayesfed.design.stacked import stacked_data
from bayesfed.inputs.spec import load_spec
from bayesfed.modelling import event_stacked
from bayesfed.modelling.event_pooled import build_event_time_parts
from bayesfed.modelling.event_stacked import build_stacked, reference_loglik
from bayesfed.modelling.priors import resolve_event_priors, resolve_stacked_priors

ROOT = Path(__file__).resolve().parent.parent


def per_call(function, args, calls: int) -> float:
    """Milliseconds a call, after one warm-up call."""
    function(*args)
    start = time.perf_counter()
    for _ in range(calls):
        function(*args)
    return (time.perf_counter() - start) / calls * 1e3


def model_gradient(model, mode: str, calls: int, density=None) -> float:
    """Milliseconds of one call of the log density and its gradient, compiled as one function
    (as nutpie does); ``density``: another log density on the model's value variables."""
    point = model.initial_point()
    logp = model.logp() if density is None else density
    fn = pytensor.function(model.value_vars,
                           [logp, *pytensor.grad(logp, model.value_vars)], mode=mode)
    args = [point[v.name] for v in model.value_vars]
    return per_call(lambda *a: fn(*a), args, calls)


def graph_density(parts):
    """The stacked model's log density with the likelihood as the PyTensor graph
    (:func:`bayesfed.modelling.event_stacked.reference_loglik`) in place of the fused kernel."""
    model = parts.model
    priors = model.logp(vars=model.free_RVs)
    (graph,) = model.replace_rvs_by_values([reference_loglik(parts)])
    return priors + graph


def parts(data, calls: int) -> dict[str, float]:
    """The stacked likelihood's per-school parts with their gradients (numba), ms a call."""
    n = pytensor.shared(data.cells[:, :, 0])
    r = pytensor.shared(data.cells[:, :, 1] - data.cells[:, :, 1].mean())
    sigma, sd_cell, sd_school, rho = pt.dscalars(4)
    params = [sigma, sd_cell, sd_school, rho]
    values = [1.0, 0.3, 0.3, 0.4]
    T = data.cells.shape[1]
    algebra = event_stacked.school_algebra(n, sigma, sd_cell, sd_school, rho, 1 - rho**2, T,
                                           1e-6)
    E = len(data.foundings)
    in_cohort = data.founding_idx[None, :] == np.arange(E)[:, None]
    onehot = np.concatenate([in_cohort * (1 - data.federated), in_cohort * data.federated])
    outputs = {
        "school algebra (log-determinants)": algebra.log_det.sum(),
        "+ quadratic form of the cell means": (algebra.log_det.sum()
                                               + (r * event_stacked.apply_precision(algebra, r)
                                                  ).sum()),
        "+ precision sums over the groups": (
            algebra.log_det.sum()
            + (event_stacked.precision_sums(algebra, pt.as_tensor(onehot.astype(float)), T)
               ** 2).sum()),
    }
    out = {}
    for name, value in outputs.items():
        function = pytensor.function(params, [value, *pt.grad(value, params)], mode="NUMBA")
        out[name] = per_call(function, values, calls)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?",
                        default=ROOT / "out" / "bench" / "event_time" / "national.parquet")
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    spec = load_spec(ROOT / "models" / "event_time.toml")
    event = spec.event_options
    stats = reduce_file(Path(args.data), spec).stats
    data = stacked_data(stats)
    S, T, _ = data.cells.shape
    print(f"{args.data}: {S:,} schools x {T} grid years, {len(data.federations):,} "
          f"federations, {len(data.foundings)} founding cohorts")
    parts_ = build_stacked(data, resolve_stacked_priors(data, spec.priors), event.effect_prior,
                           event.shocks, event.deviations)
    pooled = build_event_time_parts(stats, resolve_event_priors(stats, spec.priors),
                                    event.effect_prior).model
    times = {}
    with threadpool_limits(limits=1):  # as the sampler runs
        for mode, label in (("NUMBA", "numba"), ("FAST_RUN", "C")):
            times[f"pooled, {label}"] = model_gradient(pooled, mode, args.calls)
            times[f"stacked, fused kernel, {label}"] = model_gradient(parts_.model, mode,
                                                                      args.calls)
            times[f"stacked, PyTensor graph, {label}"] = model_gradient(
                parts_.model, mode, args.calls, graph_density(parts_))
        times |= {f"graph part: {k}": v for k, v in parts(data, args.calls).items()}
    peer = times["pooled, numba"]
    print("log density + gradient, ms a call (ratio to the pooled model's, numba):")
    for name, ms in times.items():
        print(f"  {name:<58} {ms:7.3f} ms  {ms / peer:6.1f} x")


if __name__ == "__main__":
    main()
