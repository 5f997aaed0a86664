"""Coverage of the event-time models' year-by-year effects over simulated studies with known truth.

Each scenario simulates studies with the paper's design (31 federations with their matched
schools, founding years 2004-2008, cohorts from two years before to five after founding;
``--pupils`` a school and cohort instead of about 230, to keep the run short) and fits

- ``stacked``: the default event-time model (``bayesfed.modelling.event_stacked``), and
- ``pooled``: the earlier model (``[event] design = "pooled"``,
``bayesfed.modelling.event_pooled``),

recording, per study and year since founding k, the realised average effect on the federated
pupils ATT(k) (the simulator's truth, ``truth["att"]["pupils"]``), the posterior mean and the
94% HDI of the model's year-k effect (ATT(k) for the stacked model, delta_k for the pooled
one). Scenarios:

- ``homogeneous``: the Table 5 effect path, the same for every founding cohort;
- ``cohort``: effects that grow 0.12 a year faster for each later founding year;
- ``ar1_federation``: AR(1) school-by-cohort shocks, rho = 0.5, and federation deviations of
  the effect with sd 0.25;
- ``trend``: a national calendar trend of 0.1 a year;
- ``combined``: all of the above at once (the referee's design).

Results are appended, one JSON line a study, to ``out/bench/coverage/<scenario>.<model>.jsonl``
(a rerun skips the seeds already there), then summarised: per scenario and model, the coverage
of the 94% intervals per k and over all k (with its Monte Carlo standard error), the mean
error (posterior mean minus truth) per k and over all k, the mean absolute error and the
interval width. Diagnostics of every fit are kept; the summary counts fits that failed the
gates.

Run: ``.venv/bin/python bench/event_coverage.py [--n 100] [--n-pooled 50]
[--scenarios homogeneous,cohort,...] [--pupils 60] [--draws 500] [--refit-failed 2000]
[--report]`` (``--report`` only summarises what is recorded; ``--refit-failed`` refits the
studies whose fit failed the gates with more draws and summarises with them in place).
Figures and the command that made them: ``docs/validation.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bayesfed.design.reduce import reduce_table
from bayesfed.design.stacked import stacked_data
from bayesfed.inputs.simulate import SimConfig, simulate
from bayesfed.inputs.spec import load_spec, spec_from_dict
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.event_pooled import add_effect_draws, build_event_time_parts
from bayesfed.modelling.event_stacked import build_stacked, container_values
from bayesfed.modelling.priors import resolve_event_priors, resolve_stacked_priors
from bayesfed.posterior.event_draws import posterior_draws
from bayesfed.posterior.partition import hdi_summary
from bayesfed.posterior.summarize import GATES, diagnostics
from bayesfed.sampling.nuts import sample, sample_reusing

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench" / "coverage"
PROB = 0.94

SCENARIOS = {
    "homogeneous": {},
    "cohort": {"cohort_slope": 0.12},
    "ar1_federation": {"shock_ar": 0.5, "sd_federation_effect": 0.25},
    "trend": {"calendar_trend": 0.1},
    "combined": {"cohort_slope": 0.12, "shock_ar": 0.5, "sd_federation_effect": 0.25,
                 "calendar_trend": 0.1},
}

#: First seed of each scenario's studies (scenarios do not share studies).
SEED_BASE = {name: 1000 * (i + 1) for i, name in enumerate(SCENARIOS)}


def specs():
    """The shipped event-time spec (stacked) and the same with ``design = "pooled"``."""
    stacked = load_spec(ROOT / "models" / "event_time.toml")
    raw = json.loads(stacked.model_dump_json())
    raw.pop("source")
    raw["event"] |= {"design": "pooled", "shocks": "iid", "federation_deviations": False}
    return {"stacked": stacked, "pooled": spec_from_dict(raw, "<pooled>")}


def fit_stacked(stats, spec, seed: int, draws: int, cache: dict):
    """The stacked model's ATT(k) draws (chain, draw, k) and its diagnostics; the compiled
    model is reused from study to study (its data containers refilled)."""
    data = stacked_data(stats)
    priors = resolve_stacked_priors(data, spec.priors)
    event = spec.event_options

    # the graph depends on the founding cohorts' count and the grid (a study may lack one)
    key = ("stacked", len(data.foundings), data.years, data.coef_names)

    def build():
        cache[key] = build_stacked(data, priors, event.effect_prior, event.shocks,
                                   event.deviations)
        return cache[key].model

    tree = sample_reusing(key, build, container_values(data, priors), draws=draws,
                          tune=draws, chains=4, seed=seed)
    parts = cache[key]._replace(data=data, priors=priors)
    tree = posterior_draws(parts, tree, seed=seed, weights=event.weights)
    tree.attrs["bayesfed_family"] = "event_time"
    return tree.posterior["att"], tree


def fit_pooled(stats, spec, seed: int, draws: int):
    """The pooled model's delta_k draws and its diagnostics."""
    event = spec.event_options
    parts = build_event_time_parts(stats, resolve_event_priors(stats, spec.priors),
                                   event.effect_prior)
    tree = sample(parts.model, draws=draws, tune=draws, chains=4, seed=seed)
    tree = add_effect_draws(parts, tree, seed=seed)
    tree.attrs["bayesfed_family"] = "event_time"
    return tree.posterior["delta"], tree


def run_study(scenario: str, model: str, seed: int, pupils: float, draws: int,
              cache: dict) -> dict:
    """Simulate one study, fit one model, return its record."""
    config = replace(SimConfig(pupils_per_school=pupils), **SCENARIOS[scenario])
    frame, truth = simulate(config, seed=seed)
    spec = specs()[model]
    start = time.perf_counter()
    stats = reduce_table(validate_table(frame, spec), spec).stats
    if model == "stacked":
        effect, tree = fit_stacked(stats, spec, seed, draws, cache)
    else:
        effect, tree = fit_pooled(stats, spec, seed, draws)
    seconds = time.perf_counter() - start
    checks = diagnostics(tree)
    record = {"scenario": scenario, "model": model, "seed": seed, "seconds": seconds,
              "ok": checks["ok"], "divergences": checks["divergences"],
              "max_r_hat": checks["max_r_hat"], "min_ess_bulk": checks["min_ess_bulk"],
              "truth": truth["att"]["pupils"], "years": {}}
    for k in effect["event_year"].to_numpy():
        record["years"][str(k)] = hdi_summary(effect.sel(event_year=k), PROB)
    average = effect.mean("event_year")
    record["average"] = hdi_summary(average, PROB)
    record["truth_average"] = truth["att"]["average"]["pupils"]
    return record


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summarise(records: list[dict]) -> dict:
    """Coverage, mean error, mean absolute error and width, per year and over all years."""
    years = sorted(records[0]["years"], key=int)
    out = {"studies": len(records), "failed_gates": sum(not r["ok"] for r in records),
           "median_seconds": float(np.median([r["seconds"] for r in records])), "years": {}}
    allcov, allerr, allabs, allwidth = [], [], [], []
    for k in years:
        truth = np.array([r["truth"][k] for r in records])
        mean = np.array([r["years"][k]["mean"] for r in records])
        low = np.array([r["years"][k]["hdi_low"] for r in records])
        high = np.array([r["years"][k]["hdi_high"] for r in records])
        cover = (low <= truth) & (truth <= high)
        err = mean - truth
        out["years"][k] = {"coverage": float(cover.mean()), "mean_error": float(err.mean()),
                           "mean_error_se": float(err.std(ddof=1) / np.sqrt(len(err))),
                           "mean_abs_error": float(np.abs(err).mean()),
                           "width": float((high - low).mean())}
        allcov.append(cover)
        allerr.append(err)
        allabs.append(np.abs(err))
        allwidth.append(high - low)
    cover = np.concatenate(allcov)
    per_study_err = np.mean(allerr, axis=0)
    out["all"] = {"coverage": float(cover.mean()),
                  "coverage_se": float(np.sqrt(cover.mean() * (1 - cover.mean()) / cover.size)),
                  "mean_error": float(np.concatenate(allerr).mean()),
                  "mean_error_se": float(per_study_err.std(ddof=1) / np.sqrt(len(records))),
                  "mean_abs_error": float(np.concatenate(allabs).mean()),
                  "width": float(np.concatenate(allwidth).mean())}
    truth = np.array([r["truth_average"] for r in records])
    low = np.array([r["average"]["hdi_low"] for r in records])
    high = np.array([r["average"]["hdi_high"] for r in records])
    mean = np.array([r["average"]["mean"] for r in records])
    out["average"] = {"coverage": float(((low <= truth) & (truth <= high)).mean()),
                      "mean_error": float((mean - truth).mean())}
    return out


def print_summary(name: str, summary: dict) -> None:
    a = summary["all"]
    print(f"{name}: {summary['studies']} studies ({summary['failed_gates']} failed the gates), "
          f"median {summary['median_seconds']:.1f} s a fit")
    print(f"  all years: coverage {a['coverage']:.3f} (se {a['coverage_se']:.3f}), mean error "
          f"{a['mean_error']:+.4f} (se {a['mean_error_se']:.4f}), mean |error| "
          f"{a['mean_abs_error']:.3f}, width {a['width']:.3f}; average over years: coverage "
          f"{summary['average']['coverage']:.3f}, mean error "
          f"{summary['average']['mean_error']:+.4f}")
    for k, v in summary["years"].items():
        print(f"  k={k}: coverage {v['coverage']:.3f}, mean error {v['mean_error']:+.4f} "
              f"(se {v['mean_error_se']:.4f}), mean |error| {v['mean_abs_error']:.3f}, "
              f"width {v['width']:.3f}")


def _label(key: str) -> tuple[str, str]:
    """``scenario.model[.refitDRAWS]`` -> (scenario, model as the tables name it)."""
    scenario, model, *refit = key.split(".")
    if refit:
        model += f", failed fits refitted ({refit[0].removeprefix('refit')} draws)"
    return scenario, model


def markdown(summaries: dict) -> str:
    """The summaries as the Markdown tables of ``docs/validation.md``: one row per scenario
    and model (overall), then one per year of each."""
    lines = ["| scenario | model | studies | failed gates | coverage (se) | mean error (se) | "
             "mean abs error | width |", "|---|---|---|---|---|---|---|---|"]
    for key, v in summaries.items():
        scenario, model = _label(key)
        a = v["all"]
        lines.append(f"| {scenario} | {model} | {v['studies']} | {v['failed_gates']} | "
                     f"{a['coverage']:.3f} ({a['coverage_se']:.3f}) | {a['mean_error']:+.3f} "
                     f"({a['mean_error_se']:.3f}) | {a['mean_abs_error']:.3f} | "
                     f"{a['width']:.3f} |")
    lines += ["", "| scenario | model | " + " | ".join(f"k={k}" for k in range(6)) + " |",
              "|---|---|" + "---|" * 6]
    for key, v in summaries.items():
        scenario, model = _label(key)
        cells = [f"{y['coverage']:.2f} / {y['mean_error']:+.3f}" for y in v["years"].values()]
        lines.append(f"| {scenario} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def refit_failed(records: list[dict], scenario: str, model: str, args, cache: dict
                 ) -> dict[int, dict]:
    """The studies of ``records`` whose fit failed the gates, refitted with
    ``args.refit_failed`` draws per chain (recorded in ``<scenario>.<model>.refit<DRAWS>.jsonl``
    and reused), by seed."""
    path = OUT / f"{scenario}.{model}.refit{args.refit_failed}.jsonl"
    done = {r["seed"]: r for r in recorded(path)}
    for record in records:
        seed = record["seed"]
        if record["ok"] or seed in done or args.report:
            continue
        done[seed] = run_study(scenario, model, seed, args.pupils, args.refit_failed, cache)
        with path.open("a") as fh:
            fh.write(json.dumps(done[seed]) + "\n")
        print(f"{scenario} {model} seed {seed} refitted: ok {done[seed]['ok']}", flush=True)
    failed = {r["seed"] for r in records if not r["ok"]}
    return {seed: r for seed, r in done.items() if seed in failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="studies per scenario (stacked)")
    parser.add_argument("--n-pooled", type=int, default=50, help="studies (pooled model)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--pupils", type=float, default=60.0,
                        help="mean pupils a school and cohort")
    parser.add_argument("--draws", type=int, default=500,
                        help="draws (and warm-up) per chain, 4 chains")
    parser.add_argument("--refit-failed", type=int, default=0, metavar="DRAWS",
                        help="refit the studies whose fit failed the gates with DRAWS draws "
                             "(and warm-up) per chain, and summarise with the refits in "
                             "their place")
    parser.add_argument("--report", action="store_true", help="only summarise the records")
    parser.add_argument("--markdown", action="store_true",
                        help="print the summaries as docs/validation.md's tables")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    summaries = {}
    cache: dict = {}  # the stacked model compiled once per structure (fit_stacked)
    for scenario in args.scenarios.split(","):
        for model, n in (("stacked", args.n), ("pooled", args.n_pooled)):
            path = OUT / f"{scenario}.{model}.jsonl"
            done = {r["seed"] for r in recorded(path)}
            for seed in range(SEED_BASE[scenario], SEED_BASE[scenario] + n):
                if args.report or seed in done:
                    continue
                record = run_study(scenario, model, seed, args.pupils, args.draws, cache)
                with path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
                print(f"{scenario} {model} seed {seed}: {record['seconds']:.1f} s, ok "
                      f"{record['ok']}", flush=True)
            records = [r for r in recorded(path)
                       if SEED_BASE[scenario] <= r["seed"] < SEED_BASE[scenario] + n]
            if records:
                summaries[f"{scenario}.{model}"] = summarise(records)
                print_summary(f"{scenario} / {model}", summaries[f"{scenario}.{model}"])
            if records and args.refit_failed:
                refits = refit_failed(records, scenario, model, args, cache)
                key = f"{scenario}.{model}.refit{args.refit_failed}"
                summaries[key] = summarise([refits.get(r["seed"], r) for r in records])
                print(f"{scenario} / {model}: {sum(r['ok'] for r in refits.values())} of "
                      f"{len(refits)} failed fits pass the gates at {args.refit_failed} draws")
                print_summary(f"{scenario} / {model}, refits in place", summaries[key])
    (OUT / "summary.json").write_text(json.dumps(summaries, indent=1, sort_keys=True))
    if args.markdown:
        print(markdown(summaries))
    print(f"summary: {OUT / 'summary.json'}; gates {GATES}")


if __name__ == "__main__":
    main()
