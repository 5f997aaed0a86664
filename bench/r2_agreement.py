"""bayesfed's variance decomposition against R's ``performance::r2_nakagawa`` on lme4 fits.

For M0, M1 and M2 in each year since founding 0-5 of the shipped study, lme4 fits the model by
REML to bayesfed's own design columns (``bench/r/r2_nakagawa.R``) and ``performance`` computes
Nakagawa's marginal and conditional R-squared from that fit. bayesfed's decomposition
(:func:`bayesfed.posterior.partition.decomposition_from_cov`, the function behind every
``decomposition`` in ``summary.json``) is evaluated at lme4's estimates, as a one-draw
posterior, with the predictors' covariance bayesfed stores in each fit. Both compute the same
quantities from the same numbers, so they must agree to rounding; the script prints the
largest difference and exits 1 above 0.0005 (agreement to 3 decimals).

Also printed: the within and between parts (:func:`bayesfed.posterior.partition.
decomposition_levels`) at the same estimates, which R's packages in Debian do not compute.

With ``--slopes``: M1 with a random KS2 slope by school, ``(1 + ks2 | school)``, in years 0-5
of a study simulated with random KS2 slopes (``SimConfig(sd_ks2_slope=1.5,
cor_ks2_slope=0.3)``), where the school part of the decomposition is the school effects'
variance averaged over the pupils, tr(Sigma M) (Johnson 2014), as ``performance`` computes it.

Usage: ``.venv/bin/python bench/r2_agreement.py [--slopes]`` (needs R with lme4, performance and
jsonlite from Debian's packages: ``apt-get install r-base-core r-cran-lme4
r-cran-performance r-cran-jsonlite``, or ``make bench-r``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from bayesfed.design.columns import design_for
from bayesfed.inputs.shipped import example_path, spec_path
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.posterior.checks import school_data
from bayesfed.posterior.partition import (
    decomposition_from_cov,
    decomposition_levels,
    predictor_cov,
    predictor_cov_levels,
)

ROOT = Path(__file__).resolve().parent.parent
R_SCRIPT = ROOT / "bench" / "r" / "r2_nakagawa.R"
YEARS = range(6)
TOLERANCE = 0.0005


def one_draw(beta: list[float], names: tuple[str, ...], sd_school: float, sigma: float,
             sd_slope: list[float] | None = None, cor: list[list[float]] | None = None
             ) -> xr.Dataset:
    """lme4's estimates as a one-draw posterior (with ``sd_slope`` and ``cor``: a random-slope
    model's, the slopes named ``SLOPE`` order)."""
    data = {"sd_school": (("chain", "draw"), [[sd_school]]),
            "sigma": (("chain", "draw"), [[sigma]])}
    coords = {"predictor": list(names)} if names else {}
    if names:
        data["beta"] = (("chain", "draw", "predictor"), [[beta]])
    if sd_slope is not None:
        terms = ["intercept", *SLOPES]
        data["sd_slope"] = (("chain", "draw", "slope"), [[sd_slope]])
        data["cor_school"] = (("chain", "draw", "re_term", "re_term_b"), [[cor]])
        coords |= {"slope": list(SLOPES), "re_term": terms, "re_term_b": terms}
    return xr.Dataset(data, coords=coords)


#: The random slope of ``--slopes``.
SLOPES = ("ks2",)


def run_r(frames: list[pd.DataFrame], slopes: str | None = None) -> dict | None:
    """Run ``bench/r/r2_nakagawa.R`` on the fits' pupils; None (with R's error) on failure."""
    with tempfile.TemporaryDirectory(prefix="bayesfed-r2-") as folder:
        data, out = Path(folder) / "fits.csv", Path(folder) / "r2.json"
        pd.concat(frames, ignore_index=True).to_csv(data, index=False)
        proc = subprocess.run(["Rscript", str(R_SCRIPT), str(data), str(out),
                               *([slopes] if slopes else [])], capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return None
        return json.loads(out.read_text())


def frame_of(label: str, d) -> pd.DataFrame:
    """A fit's pupils with its design columns x1..xp, for R."""
    frame = pd.DataFrame({"fit": label, "y": d.y, "school": np.asarray(d.schools)[
        d.school_idx]})
    for j in range(d.X.shape[1]):
        frame[f"x{j + 1}"] = d.X[:, j]
    return frame


def slopes_main() -> int:
    """``--slopes`` (module docstring)."""
    from bayesfed.inputs.simulate import DEFAULT_SEED, SimConfig, simulate

    raw, _ = simulate(SimConfig(sd_ks2_slope=1.5, cor_ks2_slope=0.3), seed=DEFAULT_SEED)
    spec = load_spec(spec_path("m1"))
    table = validate_table(raw, spec, years=YEARS)
    designs = {f"M1_k{year}": design_for(table, spec, year) for year in YEARS}
    first = next(iter(designs.values()))
    columns = [f"x{first.coef_names.index(s) + 1}" for s in SLOPES]
    found = run_r([frame_of(label, d) for label, d in designs.items()], ",".join(columns))
    if found is None:
        return 2
    print(f"lme4 {found['M1_k0']['lme4']}, performance {found['M1_k0']['performance']}; "
          "M1 with (1 + ks2 | school), bayesfed's decomposition at lme4's REML estimates\n")
    print("| fit | sd ks2 slope (lme4) | R2 marginal: performance | bayesfed | "
          "R2 conditional: performance | bayesfed |\n|---|---|---|---|---|---|")
    worst = 0.0
    for label, d in designs.items():
        r = found[label]
        cor = np.atleast_2d(r["cor"]).tolist()
        post = one_draw(r["beta"], d.coef_names, r["sd_school"], r["sigma"],
                        list(np.atleast_1d(r["sd_slope"])), cor)
        z = np.column_stack([np.ones(len(d.y)),
                             d.X[:, [d.coef_names.index(s) for s in SLOPES]]])
        ours = decomposition_from_cov(post, predictor_cov(d), z_moment=z.T @ z / len(z))
        marginal, conditional = (float(ours[k].squeeze()) for k in ("r2_marginal",
                                                                     "r2_conditional"))
        worst = max(worst, abs(marginal - r["r2_marginal"]),
                    abs(conditional - r["r2_conditional"]))
        print(f"| {label} | {np.atleast_1d(r['sd_slope'])[0]:.3f} | {r['r2_marginal']:.5f} | "
              f"{marginal:.5f} | {r['r2_conditional']:.5f} | {conditional:.5f} |")
    print(f"\nlargest difference {worst:.2e} (tolerance {TOLERANCE})")
    return 0 if worst <= TOLERANCE else 1


def main() -> int:
    if shutil.which("Rscript") is None:
        print("Rscript not found: install R, lme4, performance and jsonlite (see the docstring)")
        return 2
    if "--slopes" in sys.argv[1:]:
        return slopes_main()
    raw = pd.read_parquet(example_path())
    designs, frames = {}, []
    for short in ("m0", "m1", "m2"):
        spec = load_spec(spec_path(short))
        table = validate_table(raw, spec, years=YEARS)
        for year in YEARS:
            d = design_for(table, spec, year)
            label = f"{spec.name}_k{year}"
            designs[label] = d
            frames.append(frame_of(label, d))
    found = run_r(frames)
    if found is None:
        return 2
    first = next(iter(found.values()))
    print(f"lme4 {first['lme4']}, performance {first['performance']}; bayesfed's "
          "decomposition at lme4's REML estimates\n")
    print("| fit | R2 marginal: performance | bayesfed | R2 conditional: performance | "
          "bayesfed | R2 within | R2 between |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for label, d in designs.items():
        r = found[label]
        post = one_draw(r["beta"], d.coef_names, r["sd_school"], r["sigma"])
        ours = decomposition_from_cov(post, predictor_cov(d))
        levels = decomposition_levels(post, *predictor_cov_levels(school_data(d)))
        marginal, conditional = (float(ours[k].squeeze()) for k in ("r2_marginal",
                                                                     "r2_conditional"))
        worst = max(worst, abs(marginal - r["r2_marginal"]),
                    abs(conditional - r["r2_conditional"]))
        print(f"| {label} | {r['r2_marginal']:.5f} | {marginal:.5f} | "
              f"{r['r2_conditional']:.5f} | {conditional:.5f} | "
              f"{float(levels['r2_within'].squeeze()):.4f} | "
              f"{float(levels['r2_between'].squeeze()):.4f} |")
    print(f"\nlargest difference {worst:.2e} (tolerance {TOLERANCE})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
