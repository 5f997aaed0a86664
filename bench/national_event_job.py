"""The national event-time job end to end, from Parquet and from CSV, against lme4 in the
same run (issue 21's target: under 30 s from Parquet, 35 s from CSV, 2 GB).

``bayesfed fit models/event_time.toml --data DATA --out DIR --draws D --tune T --seed S``
(the default event-time model, the stacked design), each run a fresh process under
``/usr/bin/time -v``, for every format and seed asked for, on the national study
(``bayesfed simulate --scale national``, made once by ``bench/event_time_scale.py``'s
``study_path``; its CSV written once from the Parquet file with Arrow). Printed per run: wall
seconds, peak resident memory, the diagnostic gates (divergences, max R-hat, smallest bulk and
tail ESS), the smallest bulk ESS of the ATT(k) and ATT(k) themselves. The peer: lme4's REML
point estimate of the frequentist twin (``bench/r/event_time_lme4.R`` on
``bench/event_time_scale.py``'s peer CSV of the same pupils), once, when ``Rscript`` exists;
the ratio printed is lme4's wall seconds over bayesfed's median.

Run: ``.venv/bin/python bench/national_event_job.py [--formats parquet,csv] [--seeds 0-4]
[--draws 500] [--tune 300] [--no-lme4]``. Figures: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from event_time_scale import BAYESFED, SPEC, event_csv, run_lme4, study_path, timed


def national_csv(parquet: Path) -> Path:
    """A study as CSV beside its Parquet file, written when missing or older (also
    ``bench/csv_reading.py``'s)."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    csv = parquet.with_suffix(".csv")
    if not csv.exists() or csv.stat().st_mtime < parquet.stat().st_mtime:
        print(f"writing {csv} (once)", flush=True)
        tmp = csv.with_name(f".{csv.name}.tmp")
        pa_csv.write_csv(pq.read_table(parquet), tmp)
        tmp.replace(csv)
    return csv


def run(data: Path, seed: int, draws: int, tune: int, timeout: float) -> dict:
    """One ``bayesfed fit`` of the event-time spec: time, memory, gates and ATT(k)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fits"
        result = timed([str(BAYESFED), "fit", str(SPEC), "--data", str(data), "--out", str(out),
                        "--draws", str(draws), "--tune", str(tune), "--seed", str(seed)],
                       timeout)
        if not result["ok"]:
            return result
        fit = json.loads((out / "summary.json").read_text())["fits"][0]
    d = fit["diagnostics"]
    att = {k: v for k, v in fit["federation_effect"].items() if int(k) >= 0}  # ATT(k)
    return result | {
        "gates": d["ok"], "divergences": d["divergences"], "max_r_hat": d["max_r_hat"],
        "min_ess_bulk": d["min_ess_bulk"], "min_ess_tail": d["min_ess_tail"],
        "att": [att[k]["mean"] for k in sorted(att, key=int)],
        "att_min_ess_bulk": min(att[k]["ess_bulk"] for k in att),
    }


def seeds_of(text: str) -> list[int]:
    """``"0-4"`` or ``"0,3"`` -> the seeds."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", default="parquet,csv")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--tune", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--no-lme4", action="store_true")
    args = parser.parse_args()
    parquet = study_path("national")
    files = {"parquet": parquet, "csv": national_csv(parquet)}
    formats = [f for f in args.formats.split(",") if f]
    print("| data | seed | wall s | peak GB | gates | divergences | max R-hat | "
          "min bulk / tail ESS | ATT(k) min bulk ESS | ATT(0..5) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    walls: dict[str, list[float]] = {}
    for fmt in formats:
        for seed in seeds_of(args.seeds):
            r = run(files[fmt], seed, args.draws, args.tune, args.timeout)
            if not r["ok"]:
                print(f"| {fmt} | {seed} | failed: {r.get('error', '')[-200:]!r} |")
                continue
            walls.setdefault(fmt, []).append(r["wall_s"])
            print(f"| {fmt} | {seed} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | "
                  f"{'pass' if r['gates'] else '**fail**'} | {r['divergences']} | "
                  f"{r['max_r_hat']:.4f} | {r['min_ess_bulk']:,.0f} / {r['min_ess_tail']:,.0f} | "
                  f"{r['att_min_ess_bulk']:,.0f} | "
                  f"{', '.join(f'{a:.2f}' for a in r['att'])} |", flush=True)
    for fmt, w in walls.items():
        print(f"\n{fmt}: median {statistics.median(w):.1f} s, range {min(w):.1f}-{max(w):.1f} s "
              f"over {len(w)} runs")
    if args.no_lme4 or shutil.which("Rscript") is None:
        print("\nlme4 not run (--no-lme4, or no Rscript: `make bench-r` installs R)")
        return
    lme4 = run_lme4(event_csv("national", parquet), "national", 3600.0)
    if not lme4["ok"]:
        print(f"\nlme4 failed: {lme4.get('error', '')[-300:]}")
        return
    print(f"\nlme4 (REML point estimate, same pupils): {lme4['wall_s']:.1f} s wall, "
          f"{lme4['peak_rss_gb']:.2f} GB")
    for fmt, w in walls.items():
        print(f"lme4 / bayesfed from {fmt} (median): wall "
              f"{lme4['wall_s'] / statistics.median(w):.1f}x")


if __name__ == "__main__":
    main()
