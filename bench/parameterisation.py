"""Which parameterisation of the per-year M2 samples best? Bulk ESS per second, same run.

Three PyMC versions of the same model (pupil predictors + school-level federation dummy, school
random intercepts) on one year of the shipped synthetic study, each sampled with nutpie
(4 chains x 1,000 draws after 1,000 warm-up, same seed):

- ``non_centred``: u_j = intercept + z_j' gamma + sd_school * e_j, e_j ~ N(0, 1);
- ``centred_u``: u_j ~ N(intercept + z_j' gamma, sd_school) sampled directly;
- ``school_mean`` (bayesfed's): the centred school mean at the school's own composition,
  m_j = u_j + xbar_j' beta (see ``bayesfed/modelling/two_level.py``).

Prints, per version, wall seconds (compile + sample), bulk ESS of the federation effect,
sd_school and sigma, the minimum bulk ESS over all coefficients, max R-hat, and the ratio of
each ESS/s to bayesfed's. Run: ``.venv/bin/python bench/parameterisation.py [YEAR]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import pymc as pm

from bayesfed.design.columns import Design, design_for
from bayesfed.inputs.read import read_table
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import PriorSet, resolve_priors
from bayesfed.modelling.two_level import build_two_level, school_values
from bayesfed.sampling.nuts import sample

ROOT = Path(__file__).resolve().parent.parent


def build_u(design: Design, priors: PriorSet, centred: bool) -> pm.Model:
    """The textbook pupil-row model with u_j itself as the free variable (peer versions)."""
    school = np.array(design.school_level)
    coords = {"school": list(design.schools), "predictor": list(design.coef_names)}
    with pm.Model(coords=coords) as model:
        intercept = pm.Normal("intercept", priors.intercept.mu, priors.intercept.sigma)
        beta = pm.Normal("beta", priors.slope_mu, priors.slope_sigma, dims="predictor")
        sd_school = pm.HalfNormal("sd_school", priors.sd_school)
        sigma = pm.HalfNormal("sigma", priors.sigma)
        mean = intercept + school_values(design, np.flatnonzero(school)) @ beta[school]
        if centred:
            u = pm.Normal("u", mean, sd_school, dims="school")
        else:
            e = pm.Normal("e", 0.0, 1.0, dims="school")
            u = pm.Deterministic("u", mean + sd_school * e, dims="school")
        pm.Normal("y", u[design.school_idx] + design.X[:, ~school] @ beta[~school], sigma,
                  observed=design.y)
    return model


def main(year: int = 5) -> None:
    spec = load_spec(ROOT / "models" / "m2_federation.toml")
    table = validate_table(read_table(ROOT / "data" / "synthetic_study.parquet"), spec,
                           years=[year])
    design = design_for(table, spec, year)
    priors = resolve_priors(design, spec.priors)
    versions = {
        "school_mean": lambda: build_two_level(design, priors),
        "centred_u": lambda: build_u(design, priors, centred=True),
        "non_centred": lambda: build_u(design, priors, centred=False),
    }
    print(f"per-year M2, year {year}: {design.n_pupils:,} pupils, {design.n_schools} schools; "
          "nutpie, 4 chains x 1,000 draws")
    # the first compile in a process pays numba's start-up; pay it before timing anything
    sample(versions["non_centred"](), draws=10, tune=10, chains=1, seed=0)
    rows = {}
    for name, build in versions.items():
        start = time.perf_counter()
        tree = sample(build(), draws=1000, tune=1000, chains=4, seed=1)
        seconds = time.perf_counter() - start
        ess = az.ess(tree, var_names=["beta", "sd_school", "sigma"])
        rhat = az.rhat(tree, var_names=["intercept", "beta", "sd_school", "sigma", "u"])
        rows[name] = {
            "seconds": seconds,
            "federated": float(ess["beta"].sel(predictor="federated")),
            "sd_school": float(ess["sd_school"]),
            "sigma": float(ess["sigma"]),
            "min_beta": float(ess["beta"].min()),
            "max_rhat": max(float(rhat[v].max()) for v in rhat.data_vars),
        }
    base = rows["school_mean"]
    print(f"{'version':<12} {'wall s':>7} {'ESS fed':>8} {'ESS sd_sch':>10} {'ESS sigma':>9} "
          f"{'min ESS b':>9} {'max R-hat':>9}   ESS/s relative to bayesfed (fed, sd_school, "
          "sigma, worst coefficient)")
    for name, r in rows.items():
        ratios = ", ".join(f"{(r[k] / r['seconds']) / (base[k] / base['seconds']):.2f}"
                           for k in ("federated", "sd_school", "sigma", "min_beta"))
        print(f"{name:<12} {r['seconds']:7.1f} {r['federated']:8.0f} {r['sd_school']:10.0f} "
              f"{r['sigma']:9.0f} {r['min_beta']:9.0f} {r['max_rhat']:9.3f}   {ratios}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
