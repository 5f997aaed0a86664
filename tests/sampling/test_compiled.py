"""bayesfed.sampling.compiled: nutpie's compiled model with cached C entry points.

Two implementations agreeing: the wrappers generated here and nutpie's own
(``nutpie.compile_pymc_model``) must return the same codes, log densities, gradients and
deterministics for the same inputs, valid or not, and give the same draws; a second
compilation of a graph must load both wrappers from the cache; a graph PyTensor cannot cache
must still compile (with nutpie's wrappers).
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import nutpie
import pandas as pd
import pymc as pm
import pytensor
import pytest

from bayesfed.design.cells import build_event_design, cell_stats
from bayesfed.design.columns import design_for
from bayesfed.inputs.read import read_table
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.event_pooled import build_event_time_parts
from bayesfed.modelling.priors import resolve_priors
from bayesfed.modelling.two_level import build_two_level_collapsed
from bayesfed.sampling import compiled as compiled_module
from bayesfed.sampling.compiled import compile_model
from bayesfed.sampling.nuts import sample

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "data" / "synthetic_study.parquet"
DOUBLE = ctypes.POINTER(ctypes.c_double)


def per_year_model(year: int = 1):
    """Per-year M2, collapsed, on the shipped study: one packed data container."""
    spec = load_spec(ROOT / "models" / "m2_federation.toml")
    table = validate_table(read_table(STUDY), spec, years=[year])
    design = design_for(table, spec, year)
    return build_two_level_collapsed(design, resolve_priors(design, spec.priors))


def event_model():
    """The event-time model on the shipped study: seven containers, 1-d and 2-d, float and
    int."""
    spec = load_spec(ROOT / "models" / "m1_pupil.toml")
    table = validate_table(pd.read_parquet(STUDY), spec)
    design = build_event_design(table.frame, spec.predictors.pupil, spec.categorical_coding())
    return build_event_time_parts(cell_stats(design)).model


def both(model):
    """The model compiled here and by nutpie, as ``bayesfed.sampling.nuts`` compiles (fast-math
    off)."""
    with pytensor.config.change_flags(numba__fastmath=False):
        return compile_model(model), nutpie.compile_pymc_model(model)


def call_logp(fn, x: np.ndarray, dim: int | None = None):
    """(code, log density, gradient) of nutpie's C log-density function at ``x``."""
    x = np.ascontiguousarray(x, dtype=float)
    grad, logp = np.full(x.size, -7.0), np.full((), -7.0)
    code = fn.compiled_logp_func.ctypes(
        x.size if dim is None else dim, x.ctypes.data_as(DOUBLE), grad.ctypes.data_as(DOUBLE),
        logp.ctypes.data_as(DOUBLE), ctypes.c_void_p(fn.user_data.ctypes.data))
    return code, float(logp), grad


def call_expand(fn, x: np.ndarray):
    x = np.ascontiguousarray(x, dtype=float)
    out = np.full(fn.n_expanded, -7.0)
    code = fn.compiled_expand_func.ctypes(
        x.size, fn.n_expanded, x.ctypes.data_as(DOUBLE), out.ctypes.data_as(DOUBLE),
        ctypes.c_void_p(fn.user_data.ctypes.data))
    return code, out


@pytest.mark.parametrize("build", [per_year_model, event_model], ids=["per_year", "event"])
def test_wrappers_answer_as_nutpies(build):
    """At random points, a point with a non-finite value and with the wrong dimension: the
    same return codes and, where valid, the same bits."""
    ours, theirs = both(build())
    assert ours.n_dim == theirs.n_dim and ours.n_expanded == theirs.n_expanded
    rng = np.random.default_rng(3)
    start = theirs.initial_point_func(0)
    points = [start + rng.normal(0, 0.3, start.size) for _ in range(5)]
    points.append(np.where(np.arange(start.size) == 1, np.nan, start))
    points.append(np.where(np.arange(start.size) == 0, 1e308, start))
    codes = []
    for x in points:
        a, b = call_logp(ours, x), call_logp(theirs, x)
        assert a[0] == b[0]
        codes.append(a[0])
        if a[0] == 0:
            assert a[1] == b[1]
            np.testing.assert_array_equal(a[2], b[2])
        ea, eb = call_expand(ours, x), call_expand(theirs, x)
        assert ea[0] == eb[0] == 0
        np.testing.assert_array_equal(ea[1], eb[1])
    assert codes[:5] == [0] * 5 and codes[5] == 3
    assert call_logp(ours, start, dim=start.size + 1)[0] == -1


def test_draws_equal_nutpies_and_new_data_reuses_the_code():
    """Same seed, same draws as nutpie's compilation; ``with_data`` (another year's data in
    the same graph) gives the draws of a model compiled for that year."""
    model = per_year_model(1)
    ours, theirs = both(model)
    kw = {"draws": 100, "tune": 100, "chains": 2, "seed": 5, "progress_bar": False}
    a, b = nutpie.sample(ours, **kw), nutpie.sample(theirs, **kw)
    for name in ("level", "beta", "sd_school", "sigma", "intercept"):
        np.testing.assert_array_equal(a.posterior[name].to_numpy(),
                                      b.posterior[name].to_numpy(), err_msg=name)
    year4 = per_year_model(4)
    data = {var.name: var.get_value() for var in year4.data_vars}
    pm.set_data(data, model=model)  # nutpie's initial points read the PyMC model's data
    refilled = nutpie.sample(ours.with_data(**data), **kw)
    fresh = nutpie.sample(both(year4)[1], **kw)
    np.testing.assert_array_equal(refilled.posterior["beta"].to_numpy(),
                                  fresh.posterior["beta"].to_numpy())


#: A fresh process: compile a model with a matrix product, then count numba's compilations
#: during its first sampling.
FIRST_SAMPLING = """
import numpy as np, nutpie, pymc as pm, pytensor
from numba.core import event
from bayesfed.sampling.compiled import compile_model
rng = np.random.default_rng(0)
X = rng.normal(size=(50, 3))
with pm.Model() as model:
    b = pm.Normal("b", shape=3)
    pm.Normal("y", mu=pm.math.dot(X, b), sigma=1.0, observed=X @ [1.0, 2.0, 3.0])
with pytensor.config.change_flags(numba__fastmath=False):
    compiled = compile_model(model)
started = []
class Count(event.Listener):
    def on_start(self, ev):
        started.append(ev.data)
    def on_end(self, ev):
        pass
with event.install_listener("numba:compile", Count()):
    nutpie.sample(compiled, draws=10, tune=10, chains=2, seed=1, progress_bar=False)
print(len(started))
"""


def test_the_first_sampling_of_a_process_compiles_nothing():
    """numba compiles an object-mode block of the matrix products on its first call;
    ``compile_model`` makes that call, so none is left for the sampler (without it: two
    compilations, 0.1 s of the per-year model's first sampling)."""
    run = subprocess.run([sys.executable, "-c", FIRST_SAMPLING], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-1] == "0"


def test_a_second_compilation_loads_both_wrappers_from_the_cache():
    """The first compilation may hit or fill the cache; the second, of the same graph with
    other data, must load both wrappers (no numba compilation)."""
    both(per_year_model(2))
    again = both(per_year_model(3))[0]
    assert again.compiled_logp_func.cache_hits == 1
    assert again.compiled_expand_func.cache_hits == 1


def test_a_graph_without_a_cache_key_compiles_with_nutpies_wrappers(monkeypatch):
    """Where PyTensor cannot cache the function, nutpie's own compilation is used, and the
    draws are the same."""
    model = per_year_model(1)
    monkeypatch.setattr(compiled_module, "CACHED_SRC_FUNCTIONS", {})
    with pytensor.config.change_flags(numba__fastmath=False):
        fallback = compile_model(model)
    assert "logp_numba" in fallback.compiled_logp_func.native_name
    monkeypatch.undo()
    kw = {"draws": 50, "tune": 50, "chains": 1, "seed": 2}
    np.testing.assert_array_equal(
        sample(model, compiled=fallback, **kw).posterior["beta"].to_numpy(),
        sample(model, **kw).posterior["beta"].to_numpy())


def test_with_pytensors_numba_cache_off_nutpies_wrappers_are_used():
    """``numba__cache=False`` (PyTensor's flag): nothing may be written to the cache, so the
    model compiles with nutpie's own wrappers."""
    with pm.Model() as model:
        pm.Normal("x")
    with pytensor.config.change_flags(numba__fastmath=False, numba__cache=False):
        fn = compile_model(model)
    assert "logp_numba" in fn.compiled_logp_func.native_name
    assert call_logp(fn, np.array([0.5]))[:2] == (0, -0.5 * np.log(2 * np.pi) - 0.125)
