"""bayesfed's ATT(k) against a frequentist heterogeneity-robust estimator on the same data.

One large simulated study with the referee's design (``--scenario combined``: effects growing
0.12 a year faster for each later founding year, a national calendar trend of 0.1 a year,
AR(1) school-by-cohort shocks with rho = 0.5, federation deviations of the effect with sd
0.25) or with the heterogeneity and the trend only (``--scenario cohort``), ``--federations``
federations (600 by default: about 1,440 schools) with one matched school each, ``--pupils``
pupils a school and cohort. Fitted by

- bayesfed's default event-time model (stacked design), through the Python API the command
  line uses (``bayesfed.jobs.commands.fit_command``), and its earlier pooled design for contrast;
- the saturated event study on the same stacked comparisons, with pyfixest (:func:`saturated`:
  one coefficient per founding cohort and year since founding, school and founding cohort x
  calendar-year fixed effects, standard errors clustered by school), the frequentist
  counterpart of bayesfed's model without its partial pooling;
- the imputation estimator of Borusyak, Jaravel & Spiess (2024), with pyfixest
  (:func:`imputation`: school and calendar-year fixed effects fitted on every untreated
  pupil, the point estimate of Gardner's two-stage ``did2s``; ``--did2s`` also runs
  ``pf.did2s`` and checks that its estimates equal these: its variance correction holds
  dense fixed-effect columns, about 30 GB at national size). Its controls include the other
  cohorts' schools, so its noise differs from the stacked comparisons'.

All estimate the average effect on the federated pupils k years after founding, each pupil
weighted equally (``weights = "pupils"``). Printed: per year the realised ATT(k) (the
simulator's truth), bayesfed's posterior mean, sd and 94% HDI, the saturated event study's
estimate and standard error, the imputation estimate, the pooled model's, and the largest
absolute difference between bayesfed and the saturated event study (the issue's bar: below
0.03). Written to ``out/bench/did/agreement.<scenario>.<federations>.json``.

Run: ``.venv/bin/python bench/did_agreement.py [--federations 600] [--pupils 60] [--seed 21]
[--scenario combined|cohort] [--did2s]``
(pyfixest is a bench dependency: ``pip install -e '.[bench]'``). Figures: ``docs/validation.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyfixest as pf

from bayesfed.inputs.simulate import SimConfig, simulate, write_study
from bayesfed.inputs.spec import load_spec
from bayesfed.jobs.commands import fit_command

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench" / "did"
YEARS = [str(k) for k in range(6)]

SCENARIOS = {
    "combined": {"cohort_slope": 0.12, "calendar_trend": 0.1, "shock_ar": 0.5,
                 "sd_federation_effect": 0.25},
    "cohort": {"cohort_slope": 0.12, "calendar_trend": 0.1},
}


FIRST_STAGE = ("gcse_score ~ fsm + idaci + male + C(sen) + non_white_british + ks2"
               " | school_id + cohort")


def _treated(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(
        treat=((frame["federated"] == 1) & (frame["years_since"] >= 0)).astype(int),
        sen=frame["sen"].astype(str))


def imputation(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The imputation estimate of the effect k = 0..5 years after founding (Borusyak, Jaravel
    & Spiess 2024; did2s's point estimate): school and calendar-year fixed effects and the
    pupil predictors fitted by pyfixest's ``feols`` on the untreated pupils, each treated
    pupil's untreated outcome predicted, and observed minus predicted averaged by year."""
    data = _treated(frame)
    untreated = data["treat"] == 0
    first = pf.feols(FIRST_STAGE, data=data[untreated])
    treated = data[data["treat"] == 1].reset_index(drop=True)
    effect = treated["gcse_score"].to_numpy() - first.predict(newdata=treated)
    by_year = pd.Series(effect).groupby(treated["years_since"].to_numpy()).mean()
    return {k: {"estimate": float(by_year[int(k)])} for k in YEARS}


def saturated(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The saturated (interaction-weighted) event study on the stacked comparisons (Sun &
    Abraham 2021; Cengiz et al. 2019): pyfixest's ``feols`` of the outcome on the pupil
    predictors, one dummy per founding cohort and year since founding of the federated schools
    (every year but the reference k = -1, leads included), school fixed effects and founding
    cohort x calendar-year fixed effects, with standard errors clustered by school. The
    frequentist counterpart of bayesfed's model without its partial pooling: ATT(k) is the
    cohorts' effects weighted by their shares of the federated pupils in year k, and its
    variance the weighted sum of their clustered covariance."""
    data = _treated(frame)
    fed = data["federated"] == 1
    data["ek"] = np.where(fed & (data["years_since"] != -1),
                          data["founding_year"].astype(str) + "_"
                          + data["years_since"].astype(str), "ref")
    fit = pf.feols(FIRST_STAGE.split(" |")[0] + " + i(ek, ref='ref') | school_id + "
                   "founding_year^cohort", data=data, vcov={"CRV1": "school_id"})
    coef = fit.coef()  # the covariance matrix: pyfixest keeps it as _vcov only
    vcov = pd.DataFrame(fit._vcov, index=coef.index, columns=coef.index)
    out = {}
    for k in YEARS:
        treated = data[fed & (data["years_since"] == int(k))]
        share = treated["founding_year"].value_counts(normalize=True)
        names = [f"ek::{e}_{k}" for e in share.index]
        w = share.to_numpy()
        out[k] = {"estimate": float(coef[names].to_numpy() @ w),
                  "se": float(np.sqrt(w @ vcov.loc[names, names].to_numpy() @ w))}
    return out


def did2s(frame: pd.DataFrame) -> dict[str, float]:
    """pyfixest's did2s estimates of the effect k = 0..5 years after founding (its variance
    correction holds dense fixed-effect columns: about 30 GB at national size, so only for
    smaller studies)."""
    data = _treated(frame)
    for k in YEARS:
        data[f"k{k}"] = ((data["treat"] == 1) & (data["years_since"] == int(k))).astype(int)
    fit = pf.did2s(data, yname="gcse_score", first_stage="~ " + FIRST_STAGE.split("~ ")[1],
                   second_stage="~ 0 + " + " + ".join(f"k{k}" for k in YEARS),
                   treatment="treat", cluster="school_id")
    return {k: float(fit.coef()[f"k{k}"]) for k in YEARS}


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
    path = fit_command([spec], data, out, None, seed=7, force=True)
    return json.loads(path.read_text())["fits"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--federations", type=int, default=600)
    parser.add_argument("--pupils", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="combined",
                        help="combined: the referee's design; cohort: effects differing by "
                             "founding cohort and a calendar trend only (iid shocks, no "
                             "federation deviations)")
    parser.add_argument("--did2s", action="store_true",
                        help="also run pyfixest's did2s, whose point estimates must equal the "
                             "imputation's (about 30 GB at national size)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    config = replace(SimConfig(n_federations=args.federations, pupils_per_school=args.pupils),
                     **SCENARIOS[args.scenario])
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
    freq = saturated(frame)
    timing["saturated"] = time.perf_counter() - start
    start = time.perf_counter()
    imputed = imputation(frame)
    timing["imputation"] = time.perf_counter() - start
    if args.did2s:
        start = time.perf_counter()
        estimates = did2s(frame)
        timing["did2s"] = time.perf_counter() - start
        for k in YEARS:
            gap = abs(estimates[k] - imputed[k]["estimate"])
            assert gap < 1e-8, f"did2s and the imputation estimate differ by {gap} at {k}"
    rows, diffs = [], []
    for k in YEARS:
        b, p, d = stacked["federation_effect"][k], pooled["federation_effect"][k], freq[k]
        diffs.append(abs(b["mean"] - d["estimate"]))
        rows.append({"k": k, "truth": truth["att"]["pupils"][k], "bayesfed": b["mean"],
                     "bayesfed_sd": b["sd"], "bayesfed_low": b["hdi_low"],
                     "bayesfed_high": b["hdi_high"], "saturated": d["estimate"],
                     "saturated_se": d["se"], "difference": b["mean"] - d["estimate"],
                     "imputation": imputed[k]["estimate"], "pooled": p["mean"]})
    table = pd.DataFrame(rows).set_index("k")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(table)
    verdict = max(diffs) < 0.03
    print(f"largest |bayesfed - saturated event study| = {max(diffs):.4f} ("
          f"{'below' if verdict else 'NOT below'} 0.03); largest |bayesfed - imputation| = "
          f"{max(abs(r['bayesfed'] - r['imputation']) for r in rows):.4f}; bayesfed "
          f"diagnostics ok: {stacked['diagnostics']['ok']}; seconds "
          + ", ".join(f"{k} {v:.1f}" for k, v in timing.items()))
    result = {"federations": args.federations, "pupils": args.pupils, "seed": args.seed,
              "scenario": args.scenario, "knobs": SCENARIOS[args.scenario],
              "n_pupils": len(frame), "rows": rows,
              "max_abs_difference": max(diffs), "below_0.03": verdict, "seconds": timing,
              "bayesfed_diagnostics": stacked["diagnostics"]}
    path = OUT / f"agreement.{args.scenario}.{args.federations}.json"
    path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
