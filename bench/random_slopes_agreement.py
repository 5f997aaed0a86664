"""bayesfed's collapsed random-slope model against lme4 on one year of the shipped study.

M1's pupil predictors in one year since founding (default 0) with a random KS2 slope by school,
``(1 + ks2 | school_id)``; lme4 (``bench/r/random_slopes.R``, bobyqa) fits the same design
columns by ML and by REML. Two checks:

* **The likelihood.** bayesfed's collapsed log-likelihood
  (:func:`bayesfed.modelling.random_slopes.marginal_loglik`) at lme4's ML estimates must equal
  lme4's ``logLik`` there (same function, two implementations): printed difference, exit 1
  above 1e-6 nats.
* **The posterior.** bayesfed's posterior (nutpie, 4 chains x 1,000 draws) beside lme4's REML
  estimates: each fixed effect, the sds and the correlation, with the difference in posterior
  sds. Fixed effects should agree within Monte Carlo and prior effects (a fraction of a
  posterior sd); the sds' posterior means sit above REML's modes by the skew of their posteriors.

Also printed: bayesfed's sampling wall time and lme4's fitting time, in the same run. With
``--brms``, brms fits the same model with bayesfed's priors where it can state them
(``bench/brms_peer.py``), 4 chains x 1,000 draws: both posteriors side by side, the differences
in Monte Carlo errors (exit 1 above 4) and brms's compile and sampling times.

Usage: ``.venv/bin/python bench/random_slopes_agreement.py [--year 0] [--brms]`` (needs R with
lme4 and jsonlite, and for ``--brms`` brms and posterior, from Debian's packages, or ``make
bench-r``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
from brms_peer import brms_priors, compare, design_frame, run_brms

from bayesfed.design.columns import design_for
from bayesfed.design.suffstats import summary_of
from bayesfed.inputs.shipped import example_path, spec_path
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import default_priors, default_slope_sd
from bayesfed.modelling.random_slopes import build_random_slopes, marginal_loglik, slope_data
from bayesfed.sampling.nuts import sample

ROOT = Path(__file__).resolve().parent.parent
R_SCRIPT = ROOT / "bench" / "r" / "random_slopes.R"
SLOPE = "ks2"
TOLERANCE = 1e-6
#: Largest difference of posterior means allowed against brms, in Monte Carlo errors.
Z_MAX = 4.0


def loglik_at(summary, estimates: dict) -> float:
    """bayesfed's collapsed log-likelihood at lme4's (ML) estimates."""
    data = slope_data(summary, (SLOPE,))
    beta = np.asarray(estimates["beta"][1:])
    level = estimates["beta"][0] + data.x_centre @ beta
    g = np.concatenate([[data.y_centre - level], -beta, [1.0]])
    (s0, s1), rho = estimates["sd"], min(max(estimates["cor"], -1.0), 1.0)
    chol = np.array([[s0, 0.0], [s1 * rho, s1 * np.sqrt(1.0 - rho**2)]])  # |rho| = 1 allowed
    g_, s_, L_ = pt.dvector(), pt.dscalar(), pt.dmatrix()
    f = pytensor.function([g_, s_, L_], marginal_loglik(
        data.gram, data.cross, data.total, data.pupil_count, g_, s_, L_, 2))
    return float(f(g, estimates["sigma"], chol))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--year", type=int, default=0)
    parser.add_argument("--brms", action="store_true", help="also fit brms (minutes)")
    args = parser.parse_args()
    if shutil.which("Rscript") is None:
        print("Rscript not found: install R, lme4 and jsonlite (see the docstring)")
        return 2
    spec = load_spec(spec_path("m1"))
    table = validate_table(pd.read_parquet(example_path()), spec, years=[args.year])
    design = design_for(table, spec, args.year)
    summary = summary_of(design)
    k = design.coef_names.index(SLOPE)
    frame = design_frame(design)
    with tempfile.TemporaryDirectory(prefix="bayesfed-slopes-") as folder:
        data, out = Path(folder) / "data.csv", Path(folder) / "out.json"
        frame.to_csv(data, index=False)
        proc = subprocess.run(["Rscript", str(R_SCRIPT), str(data), str(out), f"x{k + 1}"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 2
        r = json.loads(out.read_text())
    print(f"M1, year {args.year}: {design.n_pupils:,} pupils, {design.n_schools} schools; "
          f"random slope on {SLOPE}; lme4 {r['lme4']}\n")
    ours = loglik_at(summary, r["ml"])
    diff = abs(ours - r["ml"]["loglik"])
    print(f"lme4 ML: sds {r['ml']['sd']}, correlation {r['ml']['cor']:.4f}, sigma "
          f"{r['ml']['sigma']:.4f}")
    print(f"log-likelihood at lme4's ML estimates: lme4 {r['ml']['loglik']:.8f}, bayesfed "
          f"{ours:.8f}, difference {diff:.2e} nats (tolerance {TOLERANCE:g})\n")
    priors, slope_sd = default_priors(summary), default_slope_sd(summary, (SLOPE,))
    model = build_random_slopes(summary, priors, (SLOPE,), slope_sd=slope_sd)
    start = time.perf_counter()
    tree = sample(model, draws=1000, tune=1000, chains=4, seed=1)
    seconds = time.perf_counter() - start
    post = tree["posterior"]
    diverging = int(tree["sample_stats"]["diverging"].sum())
    rows = [(f"beta[{name}]", post["beta"].sel(predictor=name), r["reml"]["beta"][1 + j])
            for j, name in enumerate(design.coef_names)]
    rows += [("sd_school", post["sd_school"], r["reml"]["sd"][0]),
             (f"sd_slope[{SLOPE}]", post["sd_slope"].sel(slope=SLOPE), r["reml"]["sd"][1]),
             (f"cor_school[intercept, {SLOPE}]",
              post["cor_school"].sel(re_term="intercept", re_term_b=SLOPE), r["reml"]["cor"]),
             ("sigma", post["sigma"], r["reml"]["sigma"])]
    print("| quantity | lme4 REML | bayesfed mean | bayesfed sd | difference / sd |")
    print("|---|---|---|---|---|")
    for name, draws, reml in rows:
        values = draws.to_numpy().ravel()
        mean, sd = values.mean(), values.std(ddof=1)
        print(f"| {name} | {reml:.4f} | {mean:.4f} | {sd:.4f} | {(mean - reml) / sd:+.2f} |")
    print(f"\nbayesfed: {seconds:.1f} s to compile and sample 4 x 1,000 draws ({diverging} "
          f"divergences); lme4: {r['reml']['seconds']:.1f} s (REML), "
          f"{r['ml']['seconds']:.1f} s (ML); lme4 converged: {r['reml']['converged']}, "
          f"{r['ml']['converged']}")
    worst = 0.0
    if args.brms:
        x = f"x{k + 1}"
        theirs = run_brms(frame, brms_priors(design, priors, float(slope_sd[0])), "slope", x)
        p = theirs["params"]
        print(f"\nbrms {theirs['brms']}, the same model and priors:\n")

        def draws(name: str, **sel) -> np.ndarray:
            return post[name].sel(**sel).transpose("chain", "draw").to_numpy()

        worst = compare(
            [(f"beta[{name}]", draws("beta", predictor=name), p[f"b_x{j + 1}"])
             for j, name in enumerate(design.coef_names)]
            + [("intercept", draws("intercept"), p["b_Intercept"]),
               ("sd_school", draws("sd_school"), p["sd_school__Intercept"]),
               (f"sd_slope[{SLOPE}]", draws("sd_slope", slope=SLOPE), p[f"sd_school__{x}"]),
               (f"cor_school[intercept, {SLOPE}]",
                draws("cor_school", re_term="intercept", re_term_b=SLOPE),
                p[f"cor_school__Intercept__{x}"]),
               ("sigma", draws("sigma"), p["sigma"])])
        print(f"\nbrms: {theirs['compile_seconds']:.1f} s to compile, {theirs['seconds']:.1f} s "
              f"to sample 4 x 1,000 draws ({theirs['divergences']} divergences); bayesfed "
              f"{seconds:.1f} s; largest |z| {worst:.2f} (limit {Z_MAX:g})")
    return 0 if diff <= TOLERANCE and worst <= Z_MAX else 1


if __name__ == "__main__":
    sys.exit(main())
