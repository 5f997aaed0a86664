"""The ``bayesfed`` command line: simulate, validate, fit, report, demo.

Exit codes: 0 success; 1 another bayesfed error (e.g. a worker process of ``fit --jobs`` died);
2 a usage error (unknown option, bad value, ``--resume`` with ``--force``); 3 an input error (a
data or specification problem, reported before any sampling); 4 an output that cannot be
written safely (existing fits without ``--force`` or ``--resume``, fits ``--resume`` cannot
keep); 5 ``fit --strict`` and some fit failed its diagnostic gates (every file is written);
130 interrupted (Ctrl-C: one line "bayesfed: interrupted" on stderr, no traceback; ``fit``
keeps the fits finished so far, and ``fit --resume`` fits the rest).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bayesfed.errors import BayesfedError, DataError, DiagnosticsError, OutputError, SpecError
from bayesfed.inputs import shipped
from bayesfed.inputs.simulate import DEFAULT_SEED

app = typer.Typer(
    name="bayesfed",
    help="Bayesian multilevel re-analysis of school-federation studies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

#: The shipped files the demo fits (:data:`bayesfed.inputs.shipped.DEMO`).
SHIPPED_DATA = shipped.example_path()
SHIPPED_SPECS = tuple(shipped.spec_path(name) for name in shipped.DEMO)

EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_DIAGNOSTICS = 5
EXIT_INTERRUPTED = 130


def parse_years(text: str | None) -> list[int] | None:
    """``"0-5"`` -> [0..5]; ``"0,2,4"`` -> [0, 2, 4]; ``"-2--1"`` -> [-2, -1]; None -> None."""
    if text is None:
        return None
    years: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            dash = part.find("-", 1)  # a leading minus is a sign, not a range
            if dash > 0:
                lo, hi = int(part[:dash]), int(part[dash + 1:])
                if hi < lo:
                    raise ValueError
                years.extend(range(lo, hi + 1))
            else:
                years.append(int(part))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a year selection; use e.g. 0-5, 0,2,4 or 3") from None
    return sorted(set(years))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Parquet file to write; the truth JSON goes beside "
                                      "it as <name>.truth.json.")],
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes (the shipped "
                                      "study uses the default).")] = DEFAULT_SEED,
    federations: Annotated[int | None, typer.Option(help="Number of federations.")] = None,
    matched: Annotated[int | None, typer.Option(
        help="Matched non-federated schools per federation.")] = None,
    pupils: Annotated[int | None, typer.Option(
        help="Mean pupils per school and cohort.")] = None,
    scale: Annotated[str, typer.Option(
        help="'paper' (31 federations, as published) or 'national' (~3,000 schools, "
             "~4.5 million pupil rows, for benchmarks).")] = "paper",
    pre_trend: Annotated[float, typer.Option(
        help="Effect per year before founding, for a pre-trend scenario (outcome units).")] = 0.0,
    cohort_slope: Annotated[float, typer.Option(
        help="Effect heterogeneity by founding cohort: a federation founded e years after the "
             "middle founding year has its effect k years after founding raised by "
             "slope * e * k (outcome units per year since founding per founding year).")] = 0.0,
    calendar_trend: Annotated[float, typer.Option(
        help="National trend added to every pupil's outcome per calendar year since the "
             "study's first year (outcome units per year).")] = 0.0,
    shock_ar: Annotated[float, typer.Option(
        help="AR(1) correlation of a school's school-by-cohort shocks over consecutive years, "
             "in (-1, 1); their sd is unchanged (no unit).")] = 0.0,
    sd_federation_effect: Annotated[float, typer.Option(
        help="Sd of federation-level deviations of the effect from founding on "
             "(outcome units).")] = 0.0,
    sd_ks2_slope: Annotated[float, typer.Option(
        help="Sd of schools' random KS2 slopes, added to the fixed KS2 coefficient (outcome "
             "units per KS2 unit).")] = 0.0,
    cor_ks2_slope: Annotated[float, typer.Option(
        help="Correlation of a school's KS2 slope with its random intercept, in (-1, 1) "
             "(no unit).")] = 0.0,
    sd_log_sigma: Annotated[float, typer.Option(
        help="Sd of schools' log pupil-level residual sds around the median school's (log "
             "units): a residual sd by school.")] = 0.0,
    cor_log_sigma: Annotated[float, typer.Option(
        help="Correlation of a school's log residual sd with its random intercept, in (-1, 1) "
             "(no unit).")] = 0.0,
) -> None:
    """Write a synthetic federation study calibrated to the paper, with its true parameters."""
    from dataclasses import replace

    from bayesfed.inputs.simulate import SimConfig, write_study
    from bayesfed.inputs.simulate import simulate as run

    if scale not in ("paper", "national"):
        raise typer.BadParameter("use 'paper' or 'national'", param_hint="--scale")
    config = SimConfig.national() if scale == "national" else SimConfig()
    changes = {k: v for k, v in (("n_federations", federations),
                                 ("matched_per_federation", matched),
                                 ("pupils_per_school", pupils)) if v is not None}
    config = replace(config, pre_trend=pre_trend, cohort_slope=cohort_slope,
                     calendar_trend=calendar_trend, shock_ar=shock_ar,
                     sd_federation_effect=sd_federation_effect, sd_ks2_slope=sd_ks2_slope,
                     cor_ks2_slope=cor_ks2_slope, sd_log_sigma=sd_log_sigma,
                     cor_log_sigma=cor_log_sigma, **changes)
    frame, truth = run(config, seed=seed)
    json_path = write_study(frame, truth, out)
    console.print(f"wrote {len(frame):,} pupils in {frame['school_id'].nunique():,} schools to "
                  f"{out}\ntrue parameters in {json_path}")


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Pupil table (.csv or .parquet).")],
    spec: Annotated[Path, typer.Option(help="Model specification (TOML) with the column "
                                       "mapping.")] = SHIPPED_SPECS[2],
    years: Annotated[str | None, typer.Option(
        help="Years since founding to fit separately, e.g. 0-5.")] = None,
    drop_incomplete: Annotated[bool, typer.Option(
        help="Drop rows with missing values in needed columns (and say how many).")] = False,
) -> None:
    """Check a pupil table against a model specification and summarise it."""
    from bayesfed.api import model_spec
    from bayesfed.api import validate as validate_table

    model = model_spec(spec)
    summary = validate_table(data, model, years=parse_years(years),
                             drop_incomplete=drop_incomplete)
    print_summary(summary, title=f"{data} is valid for {model.name} ({spec.name})")


def print_summary(summary: dict, title: str) -> None:
    """One screen: counts, then pupils and schools per year since founding."""
    console.print(f"[bold]{title}[/bold]")
    lines = [f"pupils: {summary['pupils']:,}", f"schools: {summary['schools']:,}"]
    if "federated_schools" in summary:
        lines.append(f"federated schools: {summary['federated_schools']:,}")
    if "federations" in summary:
        lines.append(f"federations: {summary['federations']:,}")
    if "cohorts" in summary:
        c = summary["cohorts"]
        lines.append(f"cohorts: {c[0]}-{c[-1]} ({len(c)})")
    if summary["dropped"]:
        lines.append(f"dropped incomplete rows: {summary['dropped']:,} of "
                     f"{summary['input_rows']:,}")
    for line in lines:
        console.print(f"  {line}")
    if "years_since" in summary:
        table = Table("years since founding", "pupils", "schools")
        for year, row in summary["years_since"].items():
            table.add_row(str(year), f"{row['pupils']:,}", f"{row['schools']:,}")
        console.print(table)


@app.command()
def fit(
    specs: Annotated[list[Path], typer.Argument(help="One or more model specifications "
                                                "(TOML), e.g. models/m0_empty.toml.")],
    data: Annotated[Path, typer.Option(help="Pupil table (.csv or .parquet).")],
    out: Annotated[Path, typer.Option(help="Folder for <model>_k<year>.nc and summary.json.")],
    years: Annotated[str | None, typer.Option(
        help="Years since founding, each fitted separately, e.g. 0-5; omit to fit the whole "
             "table.")] = None,
    draws: Annotated[int, typer.Option(min=1, help="Kept draws per chain.")] = 1000,
    tune: Annotated[int, typer.Option(min=1, help="Warm-up iterations per chain.")] = 1000,
    chains: Annotated[int, typer.Option(min=1, help="Number of chains.")] = 4,
    seed: Annotated[int, typer.Option(help="Job seed: same seed, data and versions, same "
                                      "numbers.")] = 0,
    sampler: Annotated[str, typer.Option(help="nutpie (default) or pymc.")] = "nutpie",
    drop_incomplete: Annotated[bool, typer.Option(
        help="Drop rows with missing values in needed columns (and say how many): the "
             "columns any per-year model of the job needs, so they are fitted to the same "
             "pupils.")] = False,
    force: Annotated[bool, typer.Option(help="Replace fit files that already exist.")] = False,
    resume: Annotated[bool, typer.Option(
        help="Keep the fits already complete in --out for this job (same spec, data, sampler "
             "options and versions) and fit the rest, e.g. after Ctrl-C; any other existing "
             "fit file stops the job.")] = False,
    jobs: Annotated[int, typer.Option(
        min=1, help="Fits run at once, each in its own process with cores/N threads for its "
                    "chains; the numbers do not depend on it.")] = 1,
    strict: Annotated[bool, typer.Option(
        help="Exit with code 5 if any fit fails its diagnostic gates (after writing "
             "everything).")] = False,
    dask: Annotated[str | None, typer.Option(
        help="Address of a Dask scheduler (e.g. tcp://10.0.0.5:8786): reduce a Parquet "
             "dataset for an event-time spec on its workers, one file per task, and run the "
             "fits there (they must see --data and --out). Needs bayesfed[dask].")] = None,
) -> None:
    """Fit models to a pupil table, save each fit as NetCDF and write summary.json."""
    from bayesfed.api import fit as fit_models

    _long_lived(fitting=True)
    if sampler not in ("nutpie", "pymc"):
        raise typer.BadParameter("use 'nutpie' or 'pymc'", param_hint="--sampler")
    if resume and force:
        raise typer.BadParameter("not with --force: --resume keeps the complete fits, --force "
                                 "refits them", param_hint="--resume")
    fit_models(data, specs, years=parse_years(years), draws=draws, tune=tune, chains=chains,
               seed=seed, sampler=sampler, drop_incomplete=drop_incomplete, out=out,
               force=force, resume=resume, jobs=jobs, strict=strict, dask=dask,
               console=console)


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A folder written by `bayesfed fit`.")],
    out: Annotated[Path | None, typer.Option(
        help="markdown: the file to write (default: FOLDER/report.md). docs: the report's "
             "folder (required), e.g. docs/reports/NAME: a page of the documentation site "
             "(NAME/index.md and NAME/figures/).")] = None,
    format: Annotated[str, typer.Option(
        "--format", help="markdown: one Markdown file; docs: a MyST page for the Sphinx site "
                         "(`make docs`).")] = "markdown",
    title: Annotated[str | None, typer.Option(
        help="The report's title (default: 'bayesfed report: FOLDER name').")] = None,
) -> None:
    """Write a report of a fit folder: the paper's Tables 3-5 beside the posterior, figures,
    predictive checks, model comparison and diagnostics."""
    from bayesfed.api import load

    if format not in ("markdown", "docs"):
        raise typer.BadParameter("use 'markdown' or 'docs'", param_hint="--format")
    if format == "docs" and out is None:
        raise typer.BadParameter("--format docs needs --out FOLDER, e.g. docs/reports/NAME",
                                 param_hint="--out")
    path = load(folder).write_report(out, fmt=format, title=title)
    console.print(f"report written to {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path("out/demo"),
    jobs: Annotated[int, typer.Option(
        min=1, help="Fits run at once, as in `bayesfed fit --jobs`.")] = 1,
) -> None:
    """The main job: fit M0, M1 and M2 for years 0-5 to the shipped study and report."""
    from bayesfed.jobs.demo import run_demo

    _long_lived(fitting=True)
    report = run_demo(out, data=SHIPPED_DATA, specs=SHIPPED_SPECS, console=console, jobs=jobs)
    console.print(f"\n[bold green]demo finished[/bold green]: report written to {report}")


#: Whether this process is the command line's own (:func:`run`), ending with the command;
#: not when :func:`main` or the app is called from Python (tests), whose collector is left alone.
_OWN_PROCESS = {"set": False}


def _long_lived(fitting: bool = False) -> None:
    """In the command line's own process, mark every object that exists now as living until the
    process exits, so the garbage collector's full passes skip them (:func:`gc.freeze`): a
    national event-time fit spent 0.9 s in five full passes and 0.6 s more at exit
    (``docs/benchmarks.md``). With ``fitting``, the fitting stack (PyMC, PyTensor, nutpie,
    ArviZ: most of those objects) is imported first."""
    if not _OWN_PROCESS["set"]:
        return
    if fitting:
        import bayesfed.jobs.commands  # noqa: F401
    gc.freeze()


def main() -> None:
    """The command line: bayesfed's own errors become one clear message."""
    try:
        app()
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into exit code 130
            print("bayesfed: interrupted", file=sys.stderr)
        raise
    except DiagnosticsError as exc:
        print(f"bayesfed: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_DIAGNOSTICS)
    except (DataError, SpecError) as exc:
        print(f"bayesfed: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_INPUT)
    except OutputError as exc:
        print(f"bayesfed: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_OUTPUT)
    except BayesfedError as exc:
        print(f"bayesfed: error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        _long_lived()  # the process exits now: its last passes need not walk everything


def run() -> None:
    """The console script (``bayesfed``, ``python -m bayesfed``): :func:`main`, in a process
    that ends with the command."""
    _OWN_PROCESS["set"] = True
    main()
