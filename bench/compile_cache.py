"""Do cold and warm compile caches give the same draws, and what does each option cost?

For each compilation option, the per-year M2 (collapsed, year 5 of the shipped study) and the
event-time model are compiled and sampled (nutpie or PyMC's NUTS, 2 chains x 1,000 draws after
1,000 warm-up, seed 7, BLAS pinned to one thread) in two fresh processes sharing one new,
empty PyTensor/numba cache: the first compiles from scratch ("cold"), the second finds what
the first stored ("warm"). Prints per process the compile and sampling seconds and the first
12 hex digits of a SHA-256 over every posterior draw; "same" says whether cold and warm drew
identical bits.

Options: ``fastmath`` (nutpie, numba with fast-math: PyTensor's default), ``ieee`` (nutpie,
numba with fast-math off), ``bayesfed`` (``ieee`` with nutpie's C wrappers cached,
:mod:`bayesfed.sampling.compiled`: what ``bayesfed fit`` runs), ``nocache`` (``ieee`` with numba's
cache disabled), ``pymc_c`` (PyMC's NUTS on PyTensor's C backend, ``mode="CVM"``),
``pymc_ieee`` (PyMC's NUTS on numba with fast-math off: ``bayesfed fit --sampler pymc``).
PyMC's lines report compile and sampling together. Run:
``.venv/bin/python bench/compile_cache.py [OPTION ...] [--m2-only]`` (all options, both
models, by default: about 10 minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ("fastmath", "ieee", "bayesfed", "nocache", "pymc_c", "pymc_ieee")


def build_models(m2_only: bool) -> dict:
    """The two models, built as ``bayesfed fit`` builds them."""
    from bayesfed.design.cells import cell_stats, event_design_for
    from bayesfed.design.columns import design_for
    from bayesfed.inputs.read import read_table
    from bayesfed.inputs.spec import load_spec
    from bayesfed.inputs.validate import validate_table
    from bayesfed.modelling.event_pooled import build_event_time_parts
    from bayesfed.modelling.priors import resolve_event_priors, resolve_priors
    from bayesfed.modelling.two_level import build_two_level_collapsed

    raw = read_table(ROOT / "data" / "synthetic_study.parquet")
    m2 = load_spec(ROOT / "models" / "m2_federation.toml")
    design = design_for(validate_table(raw, m2, years=[5]), m2, 5)
    models = {"M2_k5": build_two_level_collapsed(design, resolve_priors(design, m2.priors))}
    if not m2_only:
        spec = load_spec(ROOT / "models" / "event_time.toml")
        event = spec.event_options
        cells = cell_stats(event_design_for(validate_table(raw, spec), spec))
        models["event_time"] = build_event_time_parts(
            cells, resolve_event_priors(cells, spec.priors), event.effect_prior,
            event.federation_deviations, event.type_effects).model
    return models


def draws_hash(tree) -> str:
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(tree.posterior.data_vars):
        digest.update(np.ascontiguousarray(tree.posterior[name].to_numpy()).tobytes())
    return digest.hexdigest()[:12]


def child(option: str, m2_only: bool) -> None:
    """One process: compile and sample each model with ``option``; print one line each."""
    import nutpie
    import pymc as pm
    import pytensor
    from threadpoolctl import threadpool_limits

    from bayesfed.sampling.compiled import compile_model

    flags = {"numba__fastmath": option == "fastmath"}
    if option == "nocache":
        flags["numba__cache"] = False
    for name, model in build_models(m2_only).items():
        with threadpool_limits(limits=1), pytensor.config.change_flags(**flags):
            start = time.perf_counter()
            if option.startswith("pymc"):
                mode = "CVM" if option == "pymc_c" else None
                tree = pm.sample(draws=1000, tune=1000, chains=2, cores=1, random_seed=7,
                                 progressbar=False, compute_convergence_checks=False,
                                 model=model, compile_kwargs={"mode": mode} if mode else None)
                compiled = sampled = time.perf_counter()
            else:
                fn = (compile_model(model) if option == "bayesfed"
                      else nutpie.compile_pymc_model(model))
                compiled = time.perf_counter()
                tree = nutpie.sample(fn, draws=1000, tune=1000, chains=2, seed=7,
                                     progress_bar=False)
                sampled = time.perf_counter()
        print(f"{name} {compiled - start:.1f} {sampled - compiled:.2f} {draws_hash(tree)}",
              flush=True)


def main(argv: list[str]) -> None:
    m2_only = "--m2-only" in argv
    options = [a for a in argv if a in OPTIONS] or list(OPTIONS)
    print(f"{'option':10} {'model':11} {'cold s':>14} {'warm s':>14}  same")
    for option in options:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "PYTENSOR_FLAGS": f"base_compiledir={cache}",
                   "NUMBA_CACHE_DIR": f"{cache}/numba"}
            runs = []
            for _ in ("cold", "warm"):
                out = subprocess.run([sys.executable, __file__, "--child", option,
                                      *(["--m2-only"] if m2_only else [])], env=env,
                                     capture_output=True, text=True, check=True).stdout
                runs.append({line.split()[0]: line.split()[1:]
                             for line in out.splitlines() if line.strip()})
            for model in runs[0]:
                (c1, s1, h1), (c2, s2, h2) = runs[0][model], runs[1][model]
                print(f"{option:10} {model:11} {c1:>6} + {s1:>5} {c2:>6} + {s2:>5}  "
                      f"{'yes' if h1 == h2 else 'no'} ({h1}, {h2})", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], "--m2-only" in sys.argv)
    else:
        main(sys.argv[1:])
