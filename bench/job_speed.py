"""The paper's whole per-year job against lme4 (and brms) in the same run, and the summary of a
national per-year fit.

1. ``bayesfed fit`` of M0, M1 and M2 for years 0-5 of the shipped study (18 fits), run twice
   in fresh processes: the first fills the compile caches when they are cold, the second is the
   figure (wall seconds and the process's peak memory). The two runs' ``summary.json`` must be
   equal apart from ``sampling_seconds`` (same seed, same numbers), or the script exits 1.
2. lme4: the same 18 models by REML to the same pupils (``bench/r/per_year_lme4.R``; the
   columns are bayesfed's own design columns), timed inside R; skipped without ``Rscript``.
3. ``--brms``: one of the 18 (M2, year 0) with brms (``bench/r/m2_peers.R``: compile, then 4
   chains x 1,000 draws after 1,000 warm-up, 2 at a time); its seconds times 18 is printed as
   an estimate of the 18 fits (about 45 minutes were measured for all 18).
4. ``--national PARQUET``: ``bayesfed fit`` of M1 in year 0 of a national-size study, then
   its ``summary.json`` written again in a fresh process with the imports done first: the
   per-year summary's own seconds (``bayesfed.posterior.summarize.write_summary``); and the
   REML check of that year alone (``bayesfed.posterior.reml.fit_reml_stats`` of the year's
   statistics, reduced here).

Usage: ``.venv/bin/python bench/job_speed.py [--national out/bench/event_time/national.parquet]
[--brms]``. Prints a Markdown table; ratios are against bayesfed's warm job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayesfed.design.columns import design_for
from bayesfed.inputs.shipped import example_path, spec_path
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table

ROOT = Path(__file__).resolve().parent.parent
BAYESFED = str(Path(sys.executable).with_name("bayesfed"))
SPECS = ("m0", "m1", "m2")
YEARS = range(6)


def run_job(out: Path) -> tuple[float, float]:
    """The 18-fit job into a fresh folder ``out``: wall seconds and peak GB."""
    shutil.rmtree(out, ignore_errors=True)
    specs = [str(spec_path(s)) for s in SPECS]
    cmd = [BAYESFED, "fit", *specs, "--data", str(example_path()), "--years", "0-5",
           "--out", str(out)]
    return _wait(cmd)


def _wait(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` to the end: wall seconds and its peak resident memory in GB (``wait4``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 2**20


def numbers(folder: Path) -> list[dict]:
    fits = json.loads((folder / "summary.json").read_text())["fits"]
    for fit in fits:
        fit.pop("sampling_seconds")
    return fits


def lme4_fits(folder: Path) -> dict | None:
    """lme4's 18 REML fits (``bench/r/per_year_lme4.R``) on bayesfed's design columns."""
    if shutil.which("Rscript") is None:
        return None
    raw = pd.read_parquet(example_path())
    frames = []
    for short in SPECS:
        spec = load_spec(spec_path(short))
        table = validate_table(raw, spec, years=YEARS)
        for year in YEARS:
            d = design_for(table, spec, year)
            frame = pd.DataFrame({"fit": f"{spec.name}_k{year}", "y": d.y,
                                  "school": np.asarray(d.schools)[d.school_idx]})
            for j in range(d.X.shape[1]):
                frame[f"x{j + 1}"] = d.X[:, j]
            frames.append(frame)
    data, out = folder / "fits.csv", folder / "lme4.json"
    pd.concat(frames, ignore_index=True).to_csv(data, index=False)
    wall, _ = _wait(["Rscript", str(ROOT / "bench" / "r" / "per_year_lme4.R"), str(data),
                     str(out)])
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    return result


def brms_fit(folder: Path) -> dict:
    """brms on M2, year 0 (``bench/r/m2_peers.R``)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from peers import pupils_of_year

    raw = pd.read_parquet(example_path())
    data, out = folder / "m2_k0.csv", folder / "brms.json"
    pupils_of_year(raw, load_spec(spec_path("m2")), 0).to_csv(data, index=False)
    _wait(["Rscript", str(ROOT / "bench" / "r" / "m2_peers.R"), str(data), str(out), "1",
           "brms"])
    return json.loads(out.read_text())["peers"]["brms"]


def national_summary(data: Path, folder: Path) -> tuple[float, float, float, int]:
    """``bayesfed fit`` of M1, year 0, of a national study (wall seconds, peak GB), then the
    summary alone (seconds, imports excluded) and the fit's number of schools."""
    out = folder / "national"
    wall, peak = _wait([BAYESFED, "fit", str(spec_path("m1")), "--data", str(data), "--years",
                        "0", "--out", str(out)])
    (out / "summary.json").unlink()
    code = ("import sys, time\nfrom bayesfed.posterior.summarize import write_summary\n"
            "start = time.perf_counter()\nwrite_summary(sys.argv[1])\n"
            "print(time.perf_counter() - start)")
    summary_s = float(subprocess.run([sys.executable, "-c", code, str(out)], check=True,
                                     capture_output=True, text=True).stdout.split()[-1])
    schools = json.loads((out / "summary.json").read_text())["fits"][0]["n_schools"]
    return wall, peak, summary_s, schools


def national_reml(data: Path) -> tuple[float, bool, float]:
    """The REML check of M1, year 0, from the year's statistics: seconds, whether it
    converged, and the school variance."""
    from bayesfed.design.reduce import reduce_file
    from bayesfed.posterior.reml import fit_reml_stats

    summary = reduce_file(data, load_spec(spec_path("m1")), [0]).summaries[0]
    start = time.perf_counter()
    fit = fit_reml_stats(summary.pooled(), summary.coef_names)
    return time.perf_counter() - start, fit.converged, fit.var_school


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--national", type=Path, help="a national-size study (Parquet)")
    parser.add_argument("--brms", action="store_true", help="time brms on one of the fits")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bayesfed-job-") as tmp:
        folder = Path(tmp)
        first = run_job(folder / "first")
        warm = run_job(folder / "warm")
        same = numbers(folder / "first") == numbers(folder / "warm")
        rows = [("bayesfed, first run (compile caches as found)", *first),
                ("bayesfed, warm compile caches", *warm)]
        lme4 = lme4_fits(folder)
        if lme4 is not None:
            rows.append((f"lme4 {lme4['lme4']} (REML, inside R)", lme4["total_s"],
                         float("nan")))
        if args.brms:
            brms = brms_fit(folder)
            per_fit = brms["compile_s"] + brms["update_s"]
            rows.append(("brms, 18 x one fit's compile + sampling (estimate)", 18 * per_fit,
                         float("nan")))
        print("18 per-year fits (M0, M1, M2 x years 0-5) of the shipped study\n")
        print("| run | wall s | peak GB | ratio to bayesfed (warm) |\n|---|---|---|---|")
        for name, seconds, peak in rows:
            print(f"| {name} | {seconds:.1f} | {peak:.2f} | {seconds / warm[0]:.2f} |")
        print(f"\nsummary.json of the two bayesfed runs equal apart from sampling_seconds: "
              f"{same}")
        if lme4 is not None:
            bad = [k for k, v in lme4["fits"].items() if not v["converged"]]
            print(f"lme4 reported convergence in {18 - len(bad)} of 18 fits")
        if args.national:
            wall, peak, summary_s, schools = national_summary(args.national, folder)
            print(f"\nnational M1, year 0 ({schools:,} schools): `bayesfed fit` {wall:.1f} s "
                  f"wall, {peak:.2f} GB peak; its summary alone {summary_s:.1f} s")
            seconds, converged, var_school = national_reml(args.national)
            print(f"its REML check: {seconds:.3f} s, converged {converged}, school variance "
                  f"{var_school:.4f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
