"""R-squared within and between schools against the simulator's truth: one large study, and
the coverage of the 94% intervals over repeated studies.

The simulator computes, from its own coefficients and its realised pupils, the values M1's
Rights & Sterba decomposition implies in each year since founding
(``truth["implied"][k]["r2_within_m1"]``, ``["r2_between_m1"]``:
:func:`bayesfed.inputs.simulate.implied_by_year`). bayesfed fits M1 (collapsed, the default)
to that year's pupils and reports the same two quantities per posterior draw
(``r2_within``, ``r2_between`` in ``summary.json``).

1. One large study (1,500 federations and their matched schools, 60 pupils a school and
   cohort): the posterior means must lie within 0.01 of the truths.
2. ``--studies`` (default 100) studies with the paper's design (31 federations and their
   matched schools, 120 pupils a school and cohort to keep the run short), seeds 1, 2, ...:
   the share of studies whose 94% HDI covers the truth, for each quantity, must lie in
   90-98%.

Usage: ``.venv/bin/python bench/r2_coverage.py [--studies N] [--year K]``; prints a table and
exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import bayesfed
from bayesfed.inputs.simulate import SimConfig, simulate

QUANTITIES = ("r2_within", "r2_between")
FIT = dict(draws=500, tune=500, chains=4)


def fit_and_truth(config: SimConfig, seed: int, year: int) -> tuple[dict, dict]:
    """M1's summary of one year of one simulated study, and that year's implied truths."""
    frame, truth = simulate(config, seed=seed)
    results = bayesfed.fit(frame, "m1", years=[year], seed=seed, **FIT)
    (fit,) = results.fits
    implied = truth["implied"][str(year)]
    return fit, {q: implied[f"{q}_m1"] for q in QUANTITIES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--year", type=int, default=3)
    args = parser.parse_args()
    ok = True

    start = time.perf_counter()
    large = replace(SimConfig(), n_federations=1500, pupils_per_school=60.0)
    fit, truth = fit_and_truth(large, 1, args.year)
    print(f"One large study (1,500 federations, {fit['n_schools']:,} schools, "
          f"{fit['n_pupils']:,} pupils in year {args.year}; {time.perf_counter() - start:.0f} s)")
    print("| quantity | truth | posterior mean | 94% HDI | error |\n|---|---|---|---|---|")
    for q in QUANTITIES:
        s = fit[q]
        error = s["mean"] - truth[q]
        ok &= abs(error) <= 0.01
        print(f"| {q} | {truth[q]:.4f} | {s['mean']:.4f} | [{s['hdi_low']:.4f}, "
              f"{s['hdi_high']:.4f}] | {error:+.4f} |")

    start = time.perf_counter()
    paper = replace(SimConfig(), pupils_per_school=120.0)
    covered = {q: 0 for q in QUANTITIES}
    errors = {q: [] for q in QUANTITIES}
    failed = 0
    for seed in range(1, args.studies + 1):
        fit, truth = fit_and_truth(paper, seed, args.year)
        failed += not fit["diagnostics"]["ok"]
        for q in QUANTITIES:
            covered[q] += fit[q]["hdi_low"] <= truth[q] <= fit[q]["hdi_high"]
            errors[q].append(fit[q]["mean"] - truth[q])
    n = args.studies
    print(f"\n{n} studies with the paper's design, year {args.year} "
          f"({time.perf_counter() - start:.0f} s; {failed} fits failed their diagnostic gates)")
    print("| quantity | coverage of the 94% HDI | mean error |\n|---|---|---|")
    for q in QUANTITIES:
        share = covered[q] / n
        ok &= 0.90 <= share <= 0.98
        mean_error = sum(errors[q]) / n
        print(f"| {q} | {covered[q]}/{n} = {share:.2f} | {mean_error:+.4f} |")
    print("\nall targets met" if ok else "\nTARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
