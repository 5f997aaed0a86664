"""bayesfed's ATT(k) against a frequentist heterogeneity-robust estimator on the same data.

One large simulated study with the referee's design (effects growing 0.12 a year faster for
each later founding year, a national calendar trend of 0.1 a year, AR(1) school-by-cohort
shocks with rho = 0.5, federation deviations of the effect with sd 0.25), ``--federations``
federations (600 by default: about 1,440 schools) with one matched school each, ``--pupils``
pupils a school and cohort. Fitted by

- bayesfed's default event-time model (stacked design), through the Python API the command
  line uses (``bayesfed.job.fit_command``), and its earlier pooled design for contrast;
- pyfixest's ``did2s`` (Gardner's two-stage difference-in-differences, the imputation
  estimator of Borusyak, Jaravel & Spiess 2024): school and calendar-year fixed effects and the
  pupil predictors estimated on the untreated observations (matched schools, federated schools
  before founding), then the residualised outcome of the treated observations regressed on
  the years since founding 0..5; standard errors clustered by school.

Both estimate the average effect on the federated pupils k years after founding, each pupil
weighted equally (``weights = "pupils"``). Printed: per year the realised ATT(k) (the
simulator's truth), bayesfed's posterior mean and 94% HDI, did2s's estimate and 94% interval,
the pooled model's, and the largest absolute difference between bayesfed and did2s (the
issue's bar: below 0.03). Written to ``out/bench/did/agreement.json``.

Run: ``.venv/bin/python bench/did_agreement.py [--federations 600] [--pupils 60] [--seed 21]``
(pyfixest is a bench dependency: ``pip install -e '.[bench]'``). Figures: ``docs/validation.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyfixest as pf

from bayesfed.job import fit_command
from bayesfed.simulate import SimConfig, simulate, write_study
from bayesfed.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench" / "did"
YEARS = [str(k) for k in range(6)]
Z94 = 1.8808  # two-sided 94% normal quantile

SCENARIO = {"cohort_slope": 0.12, "calendar_trend": 0.1, "shock_ar": 0.5,
            "sd_federation_effect": 0.25}


def did2s(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """pyfixest's did2s estimates of the effect k = 0..5 years after founding."""
    data = frame.assign(
        treat=((frame["federated"] == 1) & (frame["years_since"] >= 0)).astype(int),
        sen=frame["sen"].astype(str))
    for k in YEARS:
        data[f"k{k}"] = ((data["treat"] == 1) & (data["years_since"] == int(k))).astype(int)
    fit = pf.did2s(data, yname="gcse_score",
                   first_stage="~ fsm + idaci + male + C(sen) + non_white_british + ks2"
                               " | school_id + cohort",
                   second_stage="~ 0 + " + " + ".join(f"k{k}" for k in YEARS),
                   treatment="treat", cluster="school_id")
    tidy = fit.tidy()
    return {k: {"estimate": float(tidy.loc[f"k{k}", "Estimate"]),
                "se": float(tidy.loc[f"k{k}", "Std. Error"])} for k in YEARS}


def bayesfed_fit(data: Path, out: Path, design: str) -> dict:
    """The event-time fit's summary (the shipped spec, or its pooled design)."""
    spec = ROOT / "models" / "event_time.toml"
    if design == "pooled":
        text = spec.read_text()
        text = text.replace('design = "stacked"', 'design = "pooled"')
        text = text.replace('shocks = "ar1"', 'shocks = "iid"')
        text = text.replace("federation_deviations = true", "federation_deviations = false")
        spec = out.parent / "event_time_pooled.toml"
        spec.write_text(text)
        load_spec(spec)  # a typo in the replacements fails here
    path = fit_command([spec], data, out, None, seed=7)
    return json.loads(path.read_text())["fits"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--federations", type=int, default=600)
    parser.add_argument("--pupils", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    config = replace(SimConfig(n_federations=args.federations, pupils_per_school=args.pupils),
                     **SCENARIO)
    frame, truth = simulate(config, seed=args.seed)
    data = OUT / "study.parquet"
    write_study(frame, truth, data)
    print(f"study: {len(frame):,} pupils in {frame['school_id'].nunique():,} schools, "
          f"{args.federations} federations")
    timing = {}
    start = time.perf_counter()
    stacked = bayesfed_fit(data, OUT / "stacked", "stacked")
    timing["bayesfed"] = time.perf_counter() - start
    start = time.perf_counter()
    pooled = bayesfed_fit(data, OUT / "pooled", "pooled")
    timing["bayesfed_pooled"] = time.perf_counter() - start
    start = time.perf_counter()
    freq = did2s(frame)
    timing["did2s"] = time.perf_counter() - start
    rows, diffs = [], []
    for k in YEARS:
        b, p, d = stacked["federation_effect"][k], pooled["federation_effect"][k], freq[k]
        diffs.append(abs(b["mean"] - d["estimate"]))
        rows.append({"k": k, "truth": truth["att"]["pupils"][k], "bayesfed": b["mean"],
                     "bayesfed_low": b["hdi_low"], "bayesfed_high": b["hdi_high"],
                     "did2s": d["estimate"], "did2s_low": d["estimate"] - Z94 * d["se"],
                     "did2s_high": d["estimate"] + Z94 * d["se"], "pooled": p["mean"],
                     "difference": b["mean"] - d["estimate"]})
    table = pd.DataFrame(rows).set_index("k")
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(table)
    verdict = max(diffs) < 0.03
    print(f"largest |bayesfed - did2s| = {max(diffs):.4f} ({'below' if verdict else 'NOT below'}"
          f" 0.03); bayesfed diagnostics ok: {stacked['diagnostics']['ok']}; seconds "
          + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    result = {"federations": args.federations, "pupils": args.pupils, "seed": args.seed,
              "scenario": SCENARIO, "n_pupils": len(frame), "rows": rows,
              "max_abs_difference": max(diffs), "below_0.03": verdict, "seconds": timing,
              "bayesfed_diagnostics": stacked["diagnostics"]}
    (OUT / "agreement.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
