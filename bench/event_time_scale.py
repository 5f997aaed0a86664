"""The event-time model end to end at paper and national size: bayesfed vs REML peers.

bayesfed's joint event-time model (``models/event_time.toml``: every cohort, school and
school-by-cohort random intercepts, cohort effects, the federated-vs-matched gap, a lead at -2
and effects for years 0..5 since founding, year -1 the reference) fitted end to end by
``bayesfed fit models/event_time.toml --data DATA --out DIR --force`` (4 chains x 1,000 draws
after 1,000 warm-up, job seed 0), as a subprocess under ``/usr/bin/time -v``, on

- ``paper``: the shipped study (``data/synthetic_study.parquet``, 118,208 pupils, 77 schools);
- ``national``: ``bayesfed simulate --scale national`` (about 4.5 million pupils, 3,000
  schools), written once to ``out/bench/event_time/national.parquet`` and reused.

Peers, each a subprocess under ``/usr/bin/time -v`` on the same pupils and the same coding
(a CSV written once per size from bayesfed's own ``EventDesign``: the event-year columns are
bayesfed's, federated x 1[years_since = k]):

- ``statsmodels``: ``MixedLM`` by REML with the school as group, a random intercept and a
  school-by-cohort variance component (``vc_formula={"cell": "0 + C(cohort)"}``), paper size
  only (its dense per-school algebra does not reach national size in reasonable time);
- ``lme4`` (``bench/r/event_time_lme4.R``): ``lmer(y ~ ... + factor(cohort) + (1 | school) +
  (1 | school:cohort), REML = TRUE)``, both sizes, when ``Rscript`` exists (else a skip message;
  ``make bench-r`` installs R).

Printed per (size, tool): wall-clock seconds of the whole process (start-up, reading the file,
fitting, for bayesfed also saving the fit and ``summary.json``), the fit's own seconds
(bayesfed: compile + sampling as ``summary.json`` records, ``sampling_seconds``; peers: the
REML fit), peak resident memory (GB, ``time -v``'s maximum resident set size), the estimates
of the gap, the lead and the effects 0..5 (outcome units; bayesfed's posterior means), and the
ratios of each peer's wall seconds and peak memory to bayesfed's. bayesfed reads Parquet, the
peers the CSV (R has no Arrow reader in Debian's packages).

Re-runnable: the national study and the CSVs are made once (remade when the Parquet is newer);
each fit writes under ``out/bench/event_time/`` and a failed or timed-out tool is reported and
skipped, not fatal. Results go to ``out/bench/event_time_scale.json``. Run:
``.venv/bin/python bench/event_time_scale.py [--sizes paper,national] [--tools
bayesfed,statsmodels,lme4] [--timeout 1800]``; ``make bench`` / ``make bench-r`` run it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "models" / "event_time.toml"
PAPER = ROOT / "data" / "synthetic_study.parquet"
OUT = ROOT / "out" / "bench" / "event_time"
R_SCRIPT = ROOT / "bench" / "r" / "event_time_lme4.R"
BAYESFED = Path(sys.executable).parent / "bayesfed"
TOOLS = ("bayesfed", "statsmodels", "lme4")
SIZES = ("paper", "national")


def study_path(size: str) -> Path:
    """The size's Parquet study; the national one is simulated once, then reused."""
    if size == "paper":
        return PAPER
    path = OUT / "national.parquet"
    if not path.exists():
        print(f"simulating the national-size study into {path} (once)")
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(BAYESFED), "simulate", "--scale", "national", "--out", str(path)],
                       check=True)
    return path


def write_event_csv(study: Path, csv: Path) -> None:
    """The pupils of bayesfed's event design as a CSV for the peers: ``y``, ``school``,
    ``cohort``, the coded pupil predictors, ``federated``, ``lead_m2``, ``effect_0..K``.

    Built with bayesfed's own reading, validation and
    :func:`bayesfed.design.cells.event_design_for`, so the peers fit exactly the pupils and
    event-year coding bayesfed fits.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from bayesfed.design.cells import event_design_for
    from bayesfed.inputs.read import read_table
    from bayesfed.inputs.spec import load_spec
    from bayesfed.inputs.validate import validate_table

    spec = load_spec(SPEC)
    design = event_design_for(validate_table(read_table(study), spec), spec)
    columns = {"y": design.y,
               "school": np.asarray(design.schools, dtype=object)[design.school_idx],
               "cohort": np.asarray(design.cohorts, dtype=np.int64)[design.cohort_idx]}
    for j, name in enumerate(design.coef_names):
        columns[re.sub(r"\W+", "_", name).strip("_")] = design.X[:, j]
    columns["federated"] = design.federated
    for j, k in enumerate(design.event_terms):
        name = f"lead_m{-int(k)}" if int(k) < 0 else f"effect_{k}"
        columns[name] = design.E[:, j]
    csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv.with_name(f".{csv.name}.tmp")
    pacsv.write_csv(pa.table(columns), tmp)
    tmp.replace(csv)


def event_csv(size: str, study: Path) -> Path:
    """The size's peer CSV, written when missing or older than the study."""
    csv = OUT / f"{size}_event.csv"
    if not csv.exists() or csv.stat().st_mtime < study.stat().st_mtime:
        print(f"writing {csv} from bayesfed's event design (once)")
        write_event_csv(study, csv)
    return csv


def timed(command: list[str], timeout: float) -> dict:
    """Run ``command`` under ``/usr/bin/time -v``: exit code, wall seconds, peak RSS (GB)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result = {"ok": proc.returncode == 0, "wall_s": wall,
              "peak_rss_gb": int(rss.group(1)) / 1024**2 if rss else float("nan")}
    if proc.returncode != 0:
        result["error"] = (proc.stdout + proc.stderr)[-1500:]
    return result


def run_bayesfed(size: str, study: Path, timeout: float) -> dict:
    """``bayesfed fit`` end to end; estimates and diagnostics from its ``summary.json``."""
    out = OUT / f"{size}_fits"
    result = timed([str(BAYESFED), "fit", str(SPEC), "--data", str(study), "--out", str(out),
                    "--force"], timeout)
    if not result["ok"]:
        return result
    summary = json.loads((out / "summary.json").read_text())
    fit = next(f for f in summary["fits"] if f.get("family") == "event_time")
    effects = fit["federation_effect"]
    params = fit["params"]
    return result | {
        "fit_s": fit["sampling_seconds"],
        "n_pupils": fit["n_pupils"], "n_schools": fit["n_schools"], "n_cells": fit["n_cells"],
        "estimate": {"federated": params["federated_gap"]["mean"]}
        | {_term(k): v["mean"] for k, v in effects.items()},
        "sd_school": params["sd_school"]["mean"], "sd_cell": params["sd_cell"]["mean"],
        "sigma": params["sigma"]["mean"],
        "diagnostics": {k: fit["diagnostics"][k]
                        for k in ("divergences", "max_r_hat", "min_ess_bulk", "ok")},
    }


def _term(k: str) -> str:
    """bayesfed's event-term key ("-2", "0") as the CSV's column name."""
    return f"lead_m{-int(k)}" if int(k) < 0 else f"effect_{k}"


def run_lme4(csv: Path, size: str, timeout: float) -> dict:
    """``bench/r/event_time_lme4.R`` on the size's CSV."""
    out = OUT / f"{size}_lme4.json"
    out.unlink(missing_ok=True)
    result = timed(["Rscript", str(R_SCRIPT), str(csv), str(out)], timeout)
    if result["ok"]:
        result |= json.loads(out.read_text())
    return result


def run_statsmodels(csv: Path, size: str, timeout: float) -> dict:
    """This script's ``--statsmodels`` worker on the size's CSV, in its own process."""
    out = OUT / f"{size}_statsmodels.json"
    out.unlink(missing_ok=True)
    result = timed([sys.executable, str(Path(__file__).resolve()), "--statsmodels-worker",
                    str(csv), str(out)], timeout)
    if result["ok"]:
        result |= json.loads(out.read_text())
    return result


def statsmodels_worker(csv: Path, out: Path) -> None:
    """Fit the event-time model by REML with statsmodels MixedLM; write timings and estimates.

    School groups with a random intercept, a school-by-cohort variance component, fixed
    effects for every column but ``y``, ``school`` and ``cohort`` plus ``C(cohort)``.
    """
    import warnings

    import pandas as pd
    import statsmodels
    import statsmodels.formula.api as smf

    start = time.perf_counter()
    pupils = pd.read_csv(csv, dtype={"school": str})
    read = time.perf_counter()
    fixed = [c for c in pupils.columns if c not in ("y", "school", "cohort")]
    formula = "y ~ " + " + ".join([*fixed, "C(cohort)"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = smf.mixedlm(formula, pupils, groups="school", re_formula="1",
                            vc_formula={"cell": "0 + C(cohort)"})
        fit = model.fit(reml=True)
    done = time.perf_counter()
    event = ["federated", *[c for c in fixed if c.startswith(("lead_", "effect_"))]]
    out.write_text(json.dumps({
        "peer": "statsmodels", "version": statsmodels.__version__,
        "n_pupils": len(pupils), "read_s": read - start, "fit_s": done - read,
        "estimate": {c: float(fit.fe_params[c]) for c in event},
        "se": {c: float(fit.bse_fe[c]) for c in event},
        "sd_school": float(fit.cov_re.iloc[0, 0]) ** 0.5,
        "sd_cell": float(fit.vcomp[0]) ** 0.5,
        "sigma": float(fit.scale) ** 0.5,
        "converged": bool(fit.converged),
        "warnings": sorted({str(w.message)[:200] for w in caught}),
    }, indent=2))


def print_size(size: str, results: dict[str, dict]) -> None:
    """One size's table: seconds, memory, estimates, and the ratios to bayesfed."""
    print(f"\n{size} size:")
    print(f"  {'tool':<12} {'wall s':>8} {'fit s':>8} {'peak GB':>8} {'gap':>7} "
          f"{'lead -2':>7} " + " ".join(f"{'eff ' + str(k):>6}" for k in range(6))
          + f" {'sd_sch':>6} {'sd_cell':>7} {'sigma':>6}")
    for tool, r in results.items():
        if not r.get("ok"):
            print(f"  {tool:<12} failed or skipped: {r.get('error', '')[-300:]}")
            continue
        est = r["estimate"]
        cols = ["federated", "lead_m2", *[f"effect_{k}" for k in range(6)]]
        values = " ".join(f"{est.get(c, float('nan')):{7 if i < 2 else 6}.3f}"
                          for i, c in enumerate(cols))
        print(f"  {tool:<12} {r['wall_s']:8.1f} {r['fit_s']:8.1f} {r['peak_rss_gb']:8.2f} "
              f"{values} {r['sd_school']:6.3f} {r['sd_cell']:7.3f} {r['sigma']:6.3f}")
    for tool, r in results.items():
        for message in [*r.get("messages", []), *r.get("warnings", [])]:
            print(f"  {tool} warned: {' '.join(message.split())}")
        if r.get("ok") and "converged" in r and not r["converged"]:
            print(f"  {tool}: the optimiser reported no convergence")
    ours = results.get("bayesfed", {})
    if ours.get("ok"):
        d = ours["diagnostics"]
        print(f"  bayesfed diagnostics: {d['divergences']} divergences, max R-hat "
              f"{d['max_r_hat']:.3f}, smallest bulk ESS {d['min_ess_bulk']:,.0f}, "
              f"gates {'passed' if d['ok'] else 'FAILED'}")
        for tool, r in results.items():
            if tool != "bayesfed" and r.get("ok"):
                print(f"  {tool} / bayesfed: wall {r['wall_s'] / ours['wall_s']:.2f}x, "
                      f"fit {r['fit_s'] / ours['fit_s']:.2f}x, "
                      f"peak memory {r['peak_rss_gb'] / ours['peak_rss_gb']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="paper,national")
    parser.add_argument("--tools", default=",".join(TOOLS), help="bayesfed,statsmodels,lme4")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds allowed to each tool's process (default 1800)")
    parser.add_argument("--statsmodels-worker", nargs=2, type=Path, metavar=("CSV", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.statsmodels_worker:
        statsmodels_worker(*args.statsmodels_worker)
        return
    sizes = [s for s in args.sizes.split(",") if s]
    tools = [t for t in args.tools.split(",") if t]
    bad = sorted(set(sizes) - set(SIZES)) + sorted(set(tools) - set(TOOLS))
    if bad:
        parser.error(f"unknown sizes or tools {bad}")
    has_r = shutil.which("Rscript") is not None
    if "lme4" in tools and not has_r:
        print("lme4 skipped: Rscript not found (`make bench-r` installs R and lme4 from "
              "Debian's packages)")
    elif "lme4" not in tools:
        print("lme4 not run (--tools; `make bench-r` runs it)")
    OUT.mkdir(parents=True, exist_ok=True)
    report = {}
    for size in sizes:
        study = study_path(size)
        results: dict[str, dict] = {}
        if "bayesfed" in tools:
            print(f"{size}: bayesfed fit ...", flush=True)
            results["bayesfed"] = run_bayesfed(size, study, args.timeout)
        needs_csv = ("statsmodels" in tools and size == "paper") or ("lme4" in tools and has_r)
        csv = event_csv(size, study) if needs_csv else None
        if "statsmodels" in tools and size == "paper":
            print(f"{size}: statsmodels MixedLM ...", flush=True)
            results["statsmodels"] = run_statsmodels(csv, size, args.timeout)
        elif "statsmodels" in tools:
            print(f"{size}: statsmodels not run (paper size only)")
        if "lme4" in tools and has_r:
            print(f"{size}: lme4 ...", flush=True)
            results["lme4"] = run_lme4(csv, size, args.timeout)
        if results:
            report[size] = results
            print_size(size, results)
    path = ROOT / "out" / "bench" / "event_time_scale.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    for size, results in report.items():  # sizes and tools not run this time are kept
        merged[size] = merged.get(size, {}) | results
    path.write_text(json.dumps(merged, indent=2))
    print(f"\nresults written to {path}")


if __name__ == "__main__":
    main()
