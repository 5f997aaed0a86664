"""Where the wall time of a national-size event-time fit goes, phase by phase.

The steps of ``bayesfed fit models/event_time.toml --data DATA --out DIR`` run one after
another in this process, each timed: imports, reading + validation + reduction to the cell
statistics (:func:`bayesfed.design.reduce.reduce_file`, batch by batch), building the PyMC
model, compiling it with nutpie, sampling (4 chains x DRAWS draws after TUNE warm-up
iterations, BLAS one thread), drawing the effects and saving the fit (the summary's cost shows
end to end in ``bench/event_time_scale.py``). Peak memory is
the process's maximum resident set size. Also printed: the bulk ESS of each year's effect
(ATT(k) in the stacked design, delta_k in the pooled one) and the leapfrog steps of the kept
draws (gradients a draw). A profile of bayesfed alone: the comparison with
peers on the same data is ``bench/event_time_scale.py``.

Run: ``.venv/bin/python bench/national_phases.py [DATA [SPEC [DRAWS [TUNE]]]]`` (default
``out/bench/event_time/national.parquet``, made by ``bench/event_time_scale.py``, or
``bayesfed simulate --scale national --seed 7 --out ...``; the shipped event-time spec, either
design; 1,000 draws per chain, and as many warm-up iterations as draws unless TUNE is given).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import json

    import arviz as az

    from bayesfed.design.reduce import reduce_file
    from bayesfed.design.stacked import stacked_data
    from bayesfed.inputs.spec import load_spec
    from bayesfed.jobs.fit_one import FitOptions, fit_seed
    from bayesfed.modelling.event_pooled import add_effect_draws, build_event_time_parts
    from bayesfed.modelling.event_stacked import build_stacked
    from bayesfed.modelling.priors import resolve_event_priors, resolve_stacked_priors
    from bayesfed.posterior.event_draws import posterior_draws
    from bayesfed.sampling.nuts import _compile, sample
    from bayesfed.store import save_fit

    phases: dict[str, float] = {"imports": time.perf_counter() - START}
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        ROOT / "out" / "bench" / "event_time" / "national.parquet")
    spec = load_spec(Path(sys.argv[2]) if len(sys.argv) > 2
                     else ROOT / "models" / "event_time.toml")
    event = spec.event_options
    draws = int(sys.argv[3]) if len(sys.argv) > 3 else FitOptions().draws
    tune = int(sys.argv[4]) if len(sys.argv) > 4 else draws
    options = FitOptions(draws=draws, tune=tune)

    def phase(name: str, step):
        start = time.perf_counter()
        out = step()
        phases[name] = time.perf_counter() - start
        return out

    reduced = phase("read + validate + reduce", lambda: reduce_file(data, spec))
    stats = reduced.stats
    if event.design == "stacked":
        stacked = stacked_data(stats)
        parts = phase("build model", lambda: build_stacked(
            stacked, resolve_stacked_priors(stacked, spec.priors), event.effect_prior, event.shocks,
            event.deviations))
    else:
        parts = phase("build model", lambda: build_event_time_parts(
            stats, resolve_event_priors(stats, spec.priors), event.effect_prior,
            event.deviations, event.type_effects))
    compiled = phase("compile", lambda: _compile(parts.model))
    seed = fit_seed(options.seed, spec.name, None)
    tree = phase("sample", lambda: sample(parts.model, draws=options.draws, tune=options.tune,
                                          chains=options.chains, seed=seed,
                                          compiled=compiled))
    if event.design == "stacked":
        tree = phase("effect draws", lambda: posterior_draws(parts, tree, seed=seed,
                                                             weights=event.weights))
    else:
        tree = phase("effect draws", lambda: add_effect_draws(parts, tree, seed=seed))
    with tempfile.TemporaryDirectory() as folder:
        tree.attrs.update({"bayesfed_model": spec.name, "bayesfed_family": "event_time"})
        phase("save", lambda: save_fit(tree, Path(folder) / "event_time.nc"))
    total = time.perf_counter() - START
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    effect = "att" if event.design == "stacked" else "delta"
    ess = az.ess(tree, var_names=[effect], method="bulk")[effect].to_numpy()
    steps = int(tree.sample_stats["n_steps"].sum())  # leapfrog steps of the kept draws
    print(f"{data}: {reduced.n_input_rows:,} rows, {len(stats.cells):,} cells")
    for name, seconds in phases.items():
        print(f"  {name:<26} {seconds:6.1f} s")
    print(f"  {'total':<26} {total:6.1f} s, peak memory {peak:.2f} GB")
    print(f"  {effect}(k) bulk ESS {', '.join(f'{v:.0f}' for v in ess)} of "
          f"{options.chains * options.draws} draws; {steps:,} gradients in the kept draws "
          f"({steps / (options.chains * options.draws):.1f} a draw)")
    print(json.dumps({"phases": phases, "total": total, "peak_gb": peak,
                      "ess_bulk": ess.tolist(), "gradients_kept": steps}))


if __name__ == "__main__":
    main()
