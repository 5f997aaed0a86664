"""bayesfed's location-scale model against brms on one year of a study, in the same run.

M1's pupil predictors in one year since founding (default 0) with a pupil sd by school
correlated with the school intercept: bayesfed's ``[residual] by_school``
(:mod:`bayesfed.modelling.location_scale`, every school-level variable integrated out) and
brms's ``bf(y ~ x + (1 | p | school), sigma ~ 1 + (1 | p | school))`` (``bench/r/
brms_school_variation.R``, Stan's NUTS on the school effects), both 4 chains x 1,000 draws
after 1,000 warm-up iterations, on the same design columns and with the same priors where
brms can state them: the coefficients', ``sd_school``'s, ``sd_log_sigma``'s (HalfNormal(0.5))
and the correlation's (LKJ(2)). Two differ, and the data dominate both: brms puts a Normal
prior on the intercept at the predictors' means (here the marginal of bayesfed's, which is
conditional on the coefficients) and on the log of the median school's sd (here Normal(log sd
of the outcome, 1); bayesfed's is HalfNormal on the sd itself).

For each coefficient, ``sd_school``, ``sigma`` (the median school's pupil sd; brms's
``exp(b_sigma_Intercept)``), ``sd_log_sigma`` and ``cor_log_sigma`` it prints both posterior
means and sds and the difference in units of its Monte Carlo error (``z``, from both
samplers' MCSEs) and of the posterior sd; exit 1 when a ``|z|`` exceeds 4. Also printed:
bayesfed's and brms's seconds to compile and to sample, in the same run.

Usage: ``.venv/bin/python bench/location_scale_agreement.py [--year 0] [--data STUDY]``
(``--data``: a study of ``bayesfed simulate``, e.g. with ``--sd-log-sigma 0.3``; needs R with
brms, posterior and jsonlite from Debian's packages, or ``make bench-r``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from brms_peer import brms_priors, compare, design_frame, run_brms

from bayesfed.design.columns import design_for
from bayesfed.design.suffstats import summary_of
from bayesfed.inputs.shipped import example_path, spec_path
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.location_scale import build_location_scale
from bayesfed.modelling.priors import default_priors
from bayesfed.sampling.nuts import sample

#: Largest difference of posterior means allowed, in Monte Carlo errors.
Z_MAX = 4.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--year", type=int, default=0)
    parser.add_argument("--data", type=Path, default=example_path())
    args = parser.parse_args()
    if shutil.which("Rscript") is None:
        print("Rscript not found: install R, brms, posterior and jsonlite (docstring)")
        return 2
    spec = load_spec(spec_path("m1"))
    table = validate_table(pd.read_parquet(args.data), spec, years=[args.year])
    design = design_for(table, spec, args.year)
    summary = summary_of(design)
    priors = default_priors(summary)
    print(f"M1 with a pupil sd by school, year {args.year} of {args.data.name}: "
          f"{design.n_pupils:,} pupils, {design.n_schools} schools")
    start = time.perf_counter()
    tree = sample(build_location_scale(summary, priors), draws=1000, tune=1000, chains=4,
                  seed=1)
    seconds = time.perf_counter() - start
    theirs = run_brms(design_frame(design), brms_priors(design, priors), "scale")
    print(f"brms {theirs['brms']}\n")
    post = tree["posterior"]

    def draws(name: str, **sel) -> np.ndarray:
        return post[name].sel(**sel).transpose("chain", "draw").to_numpy()

    p = theirs["params"]
    rows = [(f"beta[{name}]", draws("beta", predictor=name), p[f"b_x{j + 1}"])
            for j, name in enumerate(design.coef_names)]
    rows += [("intercept", draws("intercept"), p["b_Intercept"]),
             ("sd_school", draws("sd_school"), p["sd_school__Intercept"]),
             ("sigma (median school)", draws("sigma"), p["sigma"]),
             ("sd_log_sigma", draws("sd_log_sigma"), p["sd_school__sigma_Intercept"]),
             ("cor_log_sigma", draws("cor_log_sigma"),
              p["cor_school__Intercept__sigma_Intercept"])]
    worst = compare(rows)
    diverging = int(tree["sample_stats"]["diverging"].sum())
    print(f"\nbayesfed: {seconds:.1f} s to compile and sample 4 x 1,000 draws ({diverging} "
          f"divergences); brms: {theirs['compile_seconds']:.1f} s to compile, "
          f"{theirs['seconds']:.1f} s to sample ({theirs['divergences']} divergences); "
          f"largest |z| {worst:.2f} (limit {Z_MAX:g})")
    return 0 if worst <= Z_MAX else 1


if __name__ == "__main__":
    sys.exit(main())
