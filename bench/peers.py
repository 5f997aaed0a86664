"""bayesfed against its peers on the per-year federation model (M2): bulk ESS per second.

The paper's Table 5 model (pupil predictors and the school-level federation dummy, school random
intercepts; ``models/m2_federation.toml``) on one year since founding of the shipped synthetic
study (year 5 by default: 14,710 pupils, 77 schools), the same pupils for every peer, in one
run:

- ``bayesfed``: the collapsed likelihood (``build_two_level_collapsed``: school intercepts
  integrated out), nutpie as :mod:`bayesfed.sampling.nuts` runs it (numba fast-math off, nutpie's
  C wrappers cached by :mod:`bayesfed.sampling.compiled`), the school
  intercepts drawn afterwards by ``add_school_draws`` (timed with the sampling). Its set-up
  time includes validating the table and building the design.
- ``pymc_rows``: bayesfed's pupil-row PyMC model (``build_two_level``, one likelihood term per
  pupil) sampled with a plain ``pm.sample(draws=1000, tune=1000, chains=4, cores=2,
  random_seed=1)``, what a PyMC user writes. PyMC 6 picks nutpie for it when nutpie is
  installed and PyTensor compiles with numba (its defaults), so this peer measures the
  likelihood, not the sampler.
- ``bambi``: ``bmb.Model("gcse_score ~ fsm + idaci + male + C(sen) + non_white_british + ks2 +
  federated + (1|school_id)", df).fit(chains=4, cores=2, random_seed=1)``: bambi's default
  priors, parameterisation (non-centred school intercepts) and sampler (bambi asks for PyMC's
  own NUTS), 1,000 draws after 1,000 warm-up. ``sen`` is a categorical with the spec's levels,
  so its reference level is ``none`` as in bayesfed.
- with ``--r``: ``lme4`` (REML point estimate) and ``brms`` (default priors and NUTS, 4 chains
  x 1,000 after 1,000 warm-up, 2 at a time), ``bench/r/m2_peers.R`` on a CSV of the same pupils.

Every sampler: 4 chains x 1,000 draws after 1,000 warm-up, seed 1, 2 chains at a time (the
machine's 2 cores; PyMC's own default here would be 1, as it counts half the CPUs), BLAS one
thread per chain. Priors differ: bayesfed and ``pymc_rows`` use bayesfed's data-scaled
defaults, bambi and brms their own (brms: flat coefficients), so posterior means agree only up
to prior and Monte Carlo error. The lme4 row's "sample s" is its REML fit's seconds.

Measured per peer, in seconds of wall-clock time: set-up (everything but sampling: validation
and design, formula parsing, building and compiling the model; for brms compiling the Stan
model with g++ and starting the chains' R processes), sampling (the sampler's own time: timed
around nutpie for bayesfed, PyMC's ``sampling_time``, Stan's per-chain times summed and divided
by the 2 chains run at once), and wall = set-up + sampling (from the table in memory to the
posterior; imports, reading the file and R's start-up excluded). Then the bulk ESS of the
federation effect, the school sd and sigma, the largest R-hat over coefficients, sds and school
intercepts, divergences, the federation effect's posterior mean, and bayesfed's bulk ESS per
second over each peer's, per sampling second and per wall second.

Last, nutpie's floor (:func:`sampler_floor`): the same sampling of as many independent standard
normals as bayesfed's model has free scalars, whose log density costs nothing, three times.
It is what no faster log density can remove, so bayesfed's ESS over the least of the three,
over each peer's ESS per sampling second, bounds the ratio that any faster log density could
reach in this run (printed as "at the floor"; the standard normals take about as many
leapfrog steps a draw as bayesfed's model, 6.8 against 5.8 on year 5).

Compile times depend on caches: PyTensor's on-disk cache holds the Python peers' graphs after
their first run (the figures of a repeated run are the warm ones); brms compiles its C++ every
run. Run: ``.venv/bin/python bench/peers.py [--year 5] [--r] [--only bayesfed,bambi,...]``;
``make bench`` (Python peers) and ``make bench-r`` (with lme4 and brms) run it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import arviz as az
import numpy as np
import nutpie
import pandas as pd
import pymc as pm
import pytensor
from threadpoolctl import threadpool_limits

from bayesfed.design.columns import design_for
from bayesfed.inputs.read import read_table
from bayesfed.inputs.spec import ModelSpec, load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.modelling.priors import resolve_priors
from bayesfed.modelling.two_level import (
    add_school_draws,
    build_two_level,
    build_two_level_collapsed,
)
from bayesfed.sampling.compiled import compile_model

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "models" / "m2_federation.toml"
DATA = ROOT / "data" / "synthetic_study.parquet"
R_SCRIPT = ROOT / "bench" / "r" / "m2_peers.R"
SEED = 1
DRAWS = TUNE = 1000
CHAINS = 4
#: Chains sampled at once by every peer: the machine's 2 cores (PyMC's own default would be 1
#: here: it counts half of ``os.cpu_count()``, taking the other half for hyper-threads).
CORES = 2
PEERS = ("bayesfed", "pymc_rows", "bambi", "lme4", "brms")
BAMBI_FORMULA = ("gcse_score ~ fsm + idaci + male + C(sen) + non_white_british + ks2 + federated"
                 " + (1|school_id)")
QUANTITIES = ("federated", "sd_school", "sigma")


@dataclass
class Result:
    """One peer's fit: seconds are wall-clock seconds, ESS counts of 4,000 draws."""

    peer: str
    setup_s: float
    sampling_s: float
    federated_mean: float
    ess: dict[str, float] = field(default_factory=dict)  # QUANTITIES -> bulk ESS
    max_rhat: float = float("nan")
    divergences: int = -1
    note: str = ""
    n_dim: int = 0  # free scalars NUTS samples (bayesfed only: the floor's dimension)

    @property
    def wall_s(self) -> float:
        """Set-up plus sampling seconds."""
        return self.setup_s + self.sampling_s


def pupils_of_year(raw: pd.DataFrame, spec: ModelSpec, year: int) -> pd.DataFrame:
    """The year's pupils under the table's own column names, ``sen`` categorical with the
    spec's levels (first level = reference), as a bambi or R user would prepare them."""
    frame = raw.loc[raw["years_since"] == year].reset_index(drop=True)
    levels, reference = spec.categorical_coding()["sen"]
    assert levels[0] == reference, "bambi and R take the first level as the reference"
    frame["sen"] = pd.Categorical(frame["sen"], categories=list(levels))
    return frame


def posterior_stats(tree, fed: tuple[str, dict], sd: str, sigma: str,
                    rhat_vars: list[str]) -> dict:
    """Bulk ESS of the three quantities, federation-effect mean, max R-hat, divergences.

    ``fed`` is (variable, selection) of the federation effect; ``rhat_vars`` the variables
    over which the largest R-hat is taken.
    """
    fed_var, fed_sel = fed
    ess = az.ess(tree, var_names=[fed_var, sd, sigma])
    rhat = az.rhat(tree, var_names=rhat_vars)
    post = tree["posterior"]
    return {
        "ess": {"federated": float(ess[fed_var].sel(fed_sel)), "sd_school": float(ess[sd]),
                "sigma": float(ess[sigma])},
        "federated_mean": float(post[fed_var].sel(fed_sel).mean()),
        "max_rhat": max(float(rhat[v].max()) for v in rhat.data_vars),
        "divergences": int(np.sum(tree["sample_stats"]["diverging"])),
    }


def sampling_time(tree) -> float:
    """PyMC's ``sampling_time`` (seconds; warm-up and draws): in ``sample_stats``'s attributes
    with PyMC's NUTS, in ``posterior``'s with nutpie."""
    for group in ("sample_stats", "posterior"):
        if "sampling_time" in tree[group].attrs:
            return float(tree[group].attrs["sampling_time"])
    raise KeyError("the posterior records no sampling_time")


def warm_up_numba() -> None:
    """Compile and sample a one-variable model, so that numba's start-up (paid by the first
    compile in a process) lands on none of the timed peers."""
    with pm.Model() as model:
        pm.Normal("x")
    with threadpool_limits(limits=1):
        nutpie.sample(nutpie.compile_pymc_model(model), draws=10, tune=10, chains=1,
                      progress_bar=False)


def fit_bayesfed(raw: pd.DataFrame, spec: ModelSpec, year: int) -> Result:
    """bayesfed's collapsed fit: validate, design, priors, build, compile (set-up), then
    nutpie sampling and the exact school-intercept draws (sampling)."""
    with threadpool_limits(limits=1), pytensor.config.change_flags(numba__fastmath=False):
        start = time.perf_counter()
        table = validate_table(raw, spec, years=[year])
        validated = time.perf_counter()
        design = design_for(table, spec, year)
        model = build_two_level_collapsed(design, resolve_priors(design, spec.priors))
        built = time.perf_counter()
        compiled = compile_model(model)
        set_up = time.perf_counter()
        tree = nutpie.sample(compiled, draws=DRAWS, tune=TUNE, chains=CHAINS, seed=SEED,
                             cores=CORES, save_warmup=False, progress_bar=False)
        tree = add_school_draws(tree, design, seed=SEED)
        done = time.perf_counter()
    stats = posterior_stats(tree, ("beta", {"predictor": "federated"}), "sd_school", "sigma",
                            ["intercept", "beta", "sd_school", "sigma", "u"])
    return Result("bayesfed", set_up - start, done - set_up, **stats, n_dim=int(compiled.n_dim),
                  note=f"collapsed likelihood, nutpie; set-up: validation {validated - start:.1f}"
                       f" s, design and model {built - validated:.1f} s, compilation "
                       f"{set_up - built:.1f} s")


def fit_pymc_rows(raw: pd.DataFrame, spec: ModelSpec, year: int) -> Result:
    """bayesfed's pupil-row model with a plain ``pm.sample``; sampling seconds are PyMC's
    ``sampling_time``, set-up the rest of the wall time (design, build, compile, checks)."""
    table = validate_table(raw, spec, years=[year])
    with threadpool_limits(limits=1):
        start = time.perf_counter()
        design = design_for(table, spec, year)
        model = build_two_level(design, resolve_priors(design, spec.priors))
        tree = pm.sample(draws=DRAWS, tune=TUNE, chains=CHAINS, cores=CORES, random_seed=SEED,
                         model=model, progressbar=False)
        wall = time.perf_counter() - start
    attrs = tree["sample_stats"].attrs
    sampling = sampling_time(tree)
    stats = posterior_stats(tree, ("beta", {"predictor": "federated"}), "sd_school", "sigma",
                            ["intercept", "beta", "sd_school", "sigma", "u"])
    return Result("pymc_rows", wall - sampling, sampling, **stats,
                  note=f"pupil rows, pm.sample default ({attrs.get('inference_library')})")


def fit_bambi(frame: pd.DataFrame) -> Result:
    """bambi's default model and sampler on the year's pupils."""
    import bambi as bmb

    with threadpool_limits(limits=1):
        start = time.perf_counter()
        model = bmb.Model(BAMBI_FORMULA, frame)
        tree = model.fit(draws=DRAWS, tune=TUNE, chains=CHAINS, cores=CORES, random_seed=SEED,
                         progressbar=False)
        wall = time.perf_counter() - start
    attrs = tree["sample_stats"].attrs
    sampling = sampling_time(tree)
    stats = posterior_stats(tree, ("federated", {}), "1|school_id_sigma", "sigma",
                            list(tree["posterior"].data_vars))
    return Result("bambi", wall - sampling, sampling, **stats,
                  note=f"bambi {bmb.__version__} defaults ({attrs.get('inference_library')} "
                       "NUTS), non-centred")


def fit_r_peers(frame: pd.DataFrame, peers: list[str]) -> list[Result]:
    """lme4 and brms through ``bench/r/m2_peers.R`` on a CSV of the same pupils; an empty list,
    with a message saying why, when R or its packages are missing."""
    if shutil.which("Rscript") is None:
        print("R peers (lme4, brms) skipped: Rscript not found; `make bench-r` installs R, "
              "lme4 and brms from Debian's packages and runs them")
        return []
    with tempfile.TemporaryDirectory(prefix="bayesfed-peers-") as folder:
        data, out = Path(folder) / "pupils.csv", Path(folder) / "r.json"
        frame.to_csv(data, index=False)
        proc = subprocess.run(["Rscript", str(R_SCRIPT), str(data), str(out), str(SEED),
                               ",".join(peers)], capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            print(f"R peers skipped: {R_SCRIPT.name} failed (exit {proc.returncode}):\n"
                  + proc.stderr[-2000:])
            return []
        found = json.loads(out.read_text())["peers"]
    results = []
    if "lme4" in found:
        r = found["lme4"]
        results.append(Result("lme4", 0.0, r["fit_s"], r["federated"],
                              note=f"lme4 {r['version']} REML (no sampling: the fit's seconds), "
                                   f"se {r['federated_se']:.3f}, "
                                   f"sd_school {r['sd_school']:.3f}, sigma {r['sigma']:.3f}"))
    if "brms" in found:
        r = found["brms"]
        wall = r["compile_s"] + r["update_s"]
        results.append(Result(
            "brms", wall - r["sampling_s"], r["sampling_s"], r["federated"],
            ess={"federated": r["ess_federated"], "sd_school": r["ess_sd_school"],
                 "sigma": r["ess_sigma"]},
            max_rhat=r["max_rhat"], divergences=r["divergences"],
            note=f"brms {r['version']} / rstan {r['rstan_version']} defaults; compile "
                 f"{r['compile_s']:.1f} s, update() {r['update_s']:.1f} s"))
    return results


def sampler_floor(n_dim: int, repeats: int = 3) -> list[float]:
    """Seconds nutpie takes for this benchmark's draws when the log density costs nothing.

    A model of ``n_dim`` independent standard normals, compiled and sampled as bayesfed is
    (``compile_model``, fast-math off, BLAS one thread, the same draws, warm-up, chains, cores
    and seed), timed ``repeats`` times around ``nutpie.sample``: nutpie's own work per run (its
    NUTS loop, adaptation, storing the draws and turning them into an ArviZ DataTree), which
    no faster log density can remove. Seconds of wall-clock time.
    """
    with pm.Model() as model:
        pm.Normal("x", shape=n_dim)
    times = []
    with threadpool_limits(limits=1), pytensor.config.change_flags(numba__fastmath=False):
        compiled = compile_model(model)
        for _ in range(repeats):
            start = time.perf_counter()
            nutpie.sample(compiled, draws=DRAWS, tune=TUNE, chains=CHAINS, seed=SEED,
                          cores=CORES, save_warmup=False, progress_bar=False)
            times.append(time.perf_counter() - start)
    return times


def print_floor(results: list[Result], floor: list[float]) -> dict:
    """The floor's seconds and, per peer with ESS, the most bayesfed's bulk ESS per sampling
    second could be over the peer's were its sampling as fast as the floor (its own ESS over
    the least floor time); returns them for the JSON."""
    ours = next(r for r in results if r.peer == "bayesfed")
    least = min(floor)
    print(f"nutpie's floor ({ours.n_dim} independent standard normals, sampled as bayesfed is):"
          f" {', '.join(f'{t:.3f}' for t in floor)} s; bayesfed sampled in "
          f"{ours.sampling_s:.3f} s")
    ceiling = {}
    for peer in results:
        if peer is ours or not peer.ess:
            continue
        ceiling[peer.peer] = {q: (ours.ess[q] / least) / (peer.ess[q] / peer.sampling_s)
                              for q in QUANTITIES}
        text = ", ".join(f"{ceiling[peer.peer][q]:,.1f}" for q in QUANTITIES)
        print(f"  at the floor, over {peer.peer:<10} per sampling second: {text}")
    return {"seconds": floor, "n_dim": ours.n_dim, "ceiling": ceiling}


def print_table(results: list[Result]) -> None:
    """Seconds, ESS, R-hat, divergences and posterior mean of each peer."""
    print(f"{'peer':<10} {'set-up s':>8} {'sample s':>8} {'wall s':>7} {'ESS fed':>7} "
          f"{'ESS sd_sch':>10} {'ESS sigma':>9} {'max R-hat':>9} {'div':>4} {'mean fed':>8}")
    for r in results:
        ess = [f"{r.ess[q]:.0f}" if q in r.ess else "-" for q in QUANTITIES]
        rhat = f"{r.max_rhat:.3f}" if r.ess else "-"
        div = str(r.divergences) if r.ess else "-"
        print(f"{r.peer:<10} {r.setup_s:8.1f} {r.sampling_s:8.2f} {r.wall_s:7.1f} "
              f"{ess[0]:>7} {ess[1]:>10} {ess[2]:>9} {rhat:>9} {div:>4} "
              f"{r.federated_mean:8.3f}")
    for r in results:
        print(f"  {r.peer}: {r.note}")


def ratios(ours: Result, peer: Result) -> dict[str, dict[str, float]]:
    """bayesfed's bulk ESS per second over the peer's, per sampling and per wall second."""
    def per(r: Result, q: str, seconds: float) -> float:
        return r.ess[q] / seconds

    return {label: {q: per(ours, q, pick(ours)) / per(peer, q, pick(peer)) for q in QUANTITIES}
            for label, pick in (("sampling", lambda r: r.sampling_s),
                                ("wall", lambda r: r.wall_s))}


def print_ratios(results: list[Result]) -> dict:
    """Ratios of bayesfed over every peer that has ESS; returns them for the JSON."""
    ours = next((r for r in results if r.peer == "bayesfed"), None)
    out = {}
    if ours is None:
        return out
    print("bayesfed's bulk ESS/s over the peer's (federated, sd_school, sigma):")
    for peer in results:
        if peer is ours or not peer.ess:
            continue
        out[peer.peer] = ratios(ours, peer)
        for label, values in out[peer.peer].items():
            text = ", ".join(f"{values[q]:,.1f}" for q in QUANTITIES)
            print(f"  over {peer.peer:<10} per {label:<8} second: {text}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--year", type=int, default=5, help="years since founding (default 5)")
    parser.add_argument("--r", action="store_true", help="also run lme4 and brms (needs R)")
    parser.add_argument("--only", default=",".join(PEERS),
                        help=f"comma-separated peers to run, of {','.join(PEERS)}")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the results here (default out/bench/peers_k<YEAR>.json)")
    args = parser.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; choose from {list(PEERS)}")
    warnings.filterwarnings("ignore", category=FutureWarning)
    spec = load_spec(SPEC)
    raw = read_table(DATA)
    frame = pupils_of_year(raw, spec, args.year)
    selected = validate_table(raw, spec, years=[args.year]).select_year(args.year)
    if not np.array_equal(selected["outcome"].to_numpy(), frame["gcse_score"].to_numpy()):
        raise SystemExit("the peers' pupils are not the pupils bayesfed fits")
    print(f"per-year M2, year {args.year}: {len(frame):,} pupils, "
          f"{frame['school_id'].nunique()} schools; {CHAINS} chains x {DRAWS:,} draws after "
          f"{TUNE:,} warm-up, seed {SEED}")
    warm_up_numba()
    fitters = {"bayesfed": lambda: fit_bayesfed(raw, spec, args.year),
               "pymc_rows": lambda: fit_pymc_rows(raw, spec, args.year),
               "bambi": lambda: fit_bambi(frame)}
    results = [fitters[p]() for p in fitters if p in only]
    r_peers = [p for p in ("lme4", "brms") if p in only]
    if args.r and r_peers:
        results += fit_r_peers(frame, r_peers)
    elif r_peers:
        print("R peers (lme4, brms) not run: pass --r (`make bench-r` installs R and runs them)")
    print_table(results)
    found = print_ratios(results)
    floor = (print_floor(results, sampler_floor(results[0].n_dim))
             if results and results[0].peer == "bayesfed" else None)
    path = args.json or ROOT / "out" / "bench" / f"peers_k{args.year}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"year": args.year, "n_pupils": len(frame),
                                "results": [asdict(r) | {"wall_s": r.wall_s} for r in results],
                                "ratios": found, "floor": floor}, indent=2))
    print(f"results written to {path}")


if __name__ == "__main__":
    sys.exit(main())
