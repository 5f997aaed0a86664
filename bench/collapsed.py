"""Collapsed (school intercepts integrated out) vs pupil-row likelihood: bulk ESS per second.

Three PyMC versions of the same per-year M2 (pupil predictors + school-level federation dummy,
school random intercepts, the same priors) on one year of the shipped synthetic study, each
sampled with nutpie (4 chains x 1,000 draws after 1,000 warm-up, same seed, BLAS pinned to one
thread):

- ``pupil_rows`` (bayesfed's reference): ``build_two_level``, one likelihood term per pupil,
  the school means sampled;
- ``collapsed`` (bayesfed's): ``build_two_level_collapsed``, per-school sufficient statistics,
  ``level`` (the intercept at the pupils' mean predictors) sampled, the school intercepts drawn
  exactly afterwards by ``add_school_draws`` (timed with it);
- ``collapsed_uncentred``: the same likelihood with the intercept at uncentred predictors as
  the free variable (the parameterisation ``collapsed`` was chosen against).

Prints, per version, the compile, sampling and school-draw seconds, the bulk ESS of the
federation effect, sd_school and sigma, the smallest bulk ESS over the coefficients and
intercept and over the school intercepts ``u``, max R-hat, and the ratio of each ESS per
second (compile + sampling + school draws) to ``pupil_rows``'s, and the same ratio per
sampling second alone (sampling + school draws). Compile times depend on PyTensor's on-disk
cache: a graph compiled before with the same constants (the same year of the same data, in
any earlier run) compiles faster, so the total ratios of a first and a repeated run differ;
the sampling-only ratios do not. Run: ``.venv/bin/python bench/collapsed.py [YEAR]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import nutpie
import pymc as pm
from threadpoolctl import threadpool_limits

from bayesfed.design.columns import Design, design_for
from bayesfed.design.suffstats import school_stats
from bayesfed.inputs.read import read_table
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import PriorSet, resolve_priors
from bayesfed.modelling.two_level import (
    add_school_draws,
    build_two_level,
    build_two_level_collapsed,
    marginal_loglik,
)
from bayesfed.sampling.nuts import _compile

ROOT = Path(__file__).resolve().parent.parent
SEED = 1


def build_uncentred(design: Design, priors: PriorSet) -> pm.Model:
    """The collapsed likelihood with ``intercept`` itself as the free variable."""
    stats = school_stats(design)
    with pm.Model(coords={"predictor": list(design.coef_names)}) as model:
        intercept = pm.Normal("intercept", np.float64(priors.intercept.mu),
                              np.float64(priors.intercept.sigma))
        beta = pm.Normal("beta", priors.slope_mu, priors.slope_sigma, dims="predictor")
        sd_school = pm.HalfNormal("sd_school", np.float64(priors.sd_school))
        sigma = pm.HalfNormal("sigma", np.float64(priors.sigma))
        pm.Potential("marginal_loglik", marginal_loglik(
            stats, intercept + pm.math.dot(stats.X_mean, beta), beta, sigma, sd_school))
    return model


def run(model: pm.Model, draws: int, tune: int) -> tuple[object, float, float]:
    """Compile and sample with nutpie as :func:`bayesfed.sampling.nuts.sample` does, timing the
    two apart: (tree, compile seconds, sampling seconds)."""
    with threadpool_limits(limits=1):
        start = time.perf_counter()
        compiled = _compile(model)
        compiled_at = time.perf_counter()
        tree = nutpie.sample(compiled, draws=draws, tune=tune, chains=4, seed=SEED,
                             save_warmup=False, progress_bar=False)
        done = time.perf_counter()
    return tree, compiled_at - start, done - compiled_at


def main(year: int = 5) -> None:
    spec = load_spec(ROOT / "models" / "m2_federation.toml")
    table = validate_table(read_table(ROOT / "data" / "synthetic_study.parquet"), spec,
                           years=[year])
    design = design_for(table, spec, year)
    priors = resolve_priors(design, spec.priors)
    versions = {
        "pupil_rows": (lambda: build_two_level(design, priors), False),
        "collapsed": (lambda: build_two_level_collapsed(design, priors), True),
        "collapsed_uncentred": (lambda: build_uncentred(design, priors), True),
    }
    print(f"per-year M2, year {year}: {design.n_pupils:,} pupils, {design.n_schools} schools; "
          "nutpie, 4 chains x 1,000 draws after 1,000 warm-up")
    # the first compile in a process pays numba's start-up; pay it before timing anything, on
    # a model unlike the timed ones (a timed graph compiled before would be cached)
    with pm.Model() as warm_up:
        pm.Normal("x")
    run(warm_up, draws=10, tune=10)
    rows = {}
    for name, (build, collapsed) in versions.items():
        tree, compile_s, sample_s = run(build(), draws=1000, tune=1000)
        start = time.perf_counter()
        if collapsed:
            tree = add_school_draws(tree, design, seed=SEED)
        draws_s = time.perf_counter() - start
        ess = az.ess(tree, var_names=["intercept", "beta", "sd_school", "sigma", "u"])
        rhat = az.rhat(tree, var_names=["intercept", "beta", "sd_school", "sigma", "u"])
        rows[name] = {
            "compile": compile_s, "sample": sample_s, "draws": draws_s,
            "federated": float(ess["beta"].sel(predictor="federated")),
            "sd_school": float(ess["sd_school"]),
            "sigma": float(ess["sigma"]),
            "min_coef": min(float(ess["beta"].min()), float(ess["intercept"])),
            "min_u": float(ess["u"].min()),
            "max_rhat": max(float(rhat[v].max()) for v in rhat.data_vars),
            "divergences": int(np.sum(tree.sample_stats["diverging"])),
        }
    base = rows["pupil_rows"]
    keys = ("federated", "sd_school", "sigma", "min_coef", "min_u")
    print(f"{'version':<20} {'compile s':>9} {'sample s':>8} {'u s':>5} {'ESS fed':>7} "
          f"{'ESS sd_sch':>10} {'ESS sigma':>9} {'min ESS coef':>12} {'min ESS u':>9} "
          f"{'max R-hat':>9} {'div':>3}")
    for name, r in rows.items():
        print(f"{name:<20} {r['compile']:9.1f} {r['sample']:8.2f} {r['draws']:5.2f} "
              f"{r['federated']:7.0f} {r['sd_school']:10.0f} {r['sigma']:9.0f} "
              f"{r['min_coef']:12.0f} {r['min_u']:9.0f} {r['max_rhat']:9.3f} "
              f"{r['divergences']:3d}")
    print("ESS/s relative to pupil_rows (federated, sd_school, sigma, worst coefficient, "
          "worst u):")
    for name, r in rows.items():
        for label, seconds in (("total", lambda x: x["compile"] + x["sample"] + x["draws"]),
                               ("sampling only", lambda x: x["sample"] + x["draws"])):
            ratios = ", ".join(f"{(r[k] / seconds(r)) / (base[k] / seconds(base)):.2f}"
                               for k in keys)
            print(f"  {name:<20} {label:<14} {ratios}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
