"""What the ``fit`` and ``report`` commands do, as plain functions a script can call too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
from rich.console import Console

from bayesfed.design.distributed import reduce_dask
from bayesfed.design.reduce import reduce_file, reduce_frame
from bayesfed.errors import BayesfedError, DiagnosticsError, OutputError
from bayesfed.inputs.families import fit_kind
from bayesfed.inputs.published import load_published
from bayesfed.inputs.read import read_table
from bayesfed.inputs.rules import needed_roles
from bayesfed.inputs.spec import ModelSpec, load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.jobs.fit_one import FitOptions, fit_name
from bayesfed.jobs.schedule import planned_fits, run_job
from bayesfed.jobs.summaries import MIN_FITS, SummaryWorker
from bayesfed.jobs.workers import spawn_safe
from bayesfed.posterior.summarize import write_summary
from bayesfed.report.markdown import Flavour, render_markdown
from bayesfed.report.plots import (
    RANK_EVENT_VARS,
    RANK_VARS,
    event_study,
    federation_trajectory,
    predictive_bands,
    rank_by_year,
    rank_event_time,
    school_blocks,
    school_caterpillar,
    sensitivity_intervals,
    variance_partition,
)
from bayesfed.store import folder_lock, load_fit, write_text


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files in name order (a partitioned dataset)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def frame_sha256(frame: pd.DataFrame) -> str:
    """SHA-256 of a table in memory: its column names, dtypes and pandas' hash of each row."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def fit_command(
    spec_paths: Sequence[Path | ModelSpec],
    data: Path | pd.DataFrame,
    out: Path,
    years: Sequence[int] | None,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
    sampler: str = "nutpie",
    drop_incomplete: bool = False,
    force: bool = False,
    console: Console | None = None,
    resume: bool = False,
    jobs: int = 1,
    strict: bool = False,
    dask: str | None = None,
) -> Path:
    """Validate, fit every spec x year, save the fits and write ``summary.json``.

    ``spec_paths`` are TOML files or specs already loaded; ``data`` a pupil table's path or
    the table itself (a pandas DataFrame, read as its file would be:
    :func:`bayesfed.design.reduce.reduce_frame`; never modified).

    Every spec is validated against the data (and every year) before the first fit starts,
    so a data or spec problem never costs sampling time. ``resume`` keeps the complete fits of
    an interrupted job and fits the rest, ``jobs`` fits in that many worker processes
    (:func:`bayesfed.jobs.schedule.run_job`). ``dask``, the address of a Dask scheduler, reduces a
    Parquet dataset for each spec on the cluster's workers and runs the fits there
    (:mod:`bayesfed.design.distributed`; ``jobs`` is then the cluster's worker threads).

    Returns
    -------
    Path
        ``out/summary.json``.

    Raises
    ------
    DiagnosticsError
        ``strict`` and some fit failed its diagnostic gates; raised after every file is
        written, its message naming each failed fit and why.
    KeyboardInterrupt
        Ctrl-C; the fits finished so far are kept (a line says how many, and how to resume).
    """
    console = console or Console(quiet=True)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    specs = [p if isinstance(p, ModelSpec) else load_spec(p) for p in spec_paths]
    if isinstance(data, pd.DataFrame) and dask is not None:
        raise OutputError("--dask reduces a Parquet dataset on the cluster: give its path, "
                          "not a table in memory")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise OutputError(f"two specs share a model name ({', '.join(names)}); their fit files "
                          "would overwrite each other")
    # one job a folder; the cluster, if any, reduces an event-time spec's table and runs the fits
    with folder_lock(out), _connect(dask) if dask is not None else nullcontext() as client:
        # the per-year fits' summaries made beside the fits, in a worker process started now
        beside = (client is None and jobs == 1 and spawn_safe() and sum(
            s.kind.per_year for s, _ in planned_fits(specs, years)) >= MIN_FITS)
        with SummaryWorker() if beside else nullcontext() as worker:
            tables = _tables(specs, data, years, drop_incomplete, client)
            for table in tables.values():
                if table.n_dropped:
                    console.print(f"dropped {table.n_dropped:,} incomplete rows of "
                                  f"{table.n_input_rows:,}")
                    break
            options = FitOptions(draws=draws, tune=tune, chains=chains, seed=seed,
                                 sampler=sampler, progress=console.is_terminal)
            data_hash = (frame_sha256(data) if isinstance(data, pd.DataFrame)
                         else file_sha256(data))
            try:
                run_job(tables, specs, years, out, options, data_hash, force=force,
                        resume=resume,
                        jobs=jobs if client is None else max(1, sum(client.nthreads().values())),
                        executor=None if client is None else client.get_executor(),
                        on_note=console.print,
                        on_fit=lambda name, i, n: console.print(f"fitting {name} ({i + 1}/{n})"),
                        on_saved=None if worker is None else worker.submit)
            except KeyboardInterrupt:
                plan = [out / f"{fit_name(s.name, y)}.nc" for s, y in planned_fits(specs, years)]
                complete = sum(p.exists() for p in plan)
                console.print(f"interrupted: {complete} of {len(plan)} fits are complete in "
                              f"{out}; the same command with --resume fits the rest")
                raise
            done = {} if worker is None else worker.results()
        path = write_summary(out, done)
    summary = json.loads(path.read_text())
    failed = [f for f in summary["fits"] if not f["diagnostics"]["ok"]]
    console.print(f"wrote {len(summary['fits'])} fits and {path}")
    if failed:
        console.print(f"[bold red]WARNING: {len(failed)} fits failed their diagnostics:[/]")
        for f in failed:
            console.print(f"  {f['file']}: {'; '.join(f['diagnostics']['problems'])}")
    if strict and failed:
        raise DiagnosticsError(
            f"--strict: {len(failed)} of {len(summary['fits'])} fits failed their diagnostic "
            f"gates (everything is written, {path} marks them):\n" + "\n".join(
                f"  {f['file']}: {'; '.join(f['diagnostics']['problems'])}" for f in failed))
    return path


#: Seconds to wait for a Dask scheduler to answer (``fit --dask``).
CONNECT_TIMEOUT = 30


def _connect(address: str):
    """A ``distributed.Client`` of the scheduler at ``address`` (closed on leaving ``with``)."""
    try:
        from distributed import Client
    except ImportError:
        raise BayesfedError("--dask needs the optional Dask extra: pip install "
                            "'bayesfed[dask]'") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise BayesfedError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def _tables(specs, data: Path | pd.DataFrame, years, drop_incomplete: bool, client) -> dict:
    """Model name -> the table each spec's fits need, every spec validated before any fit.

    With ``drop_incomplete``, a per-year spec drops the rows missing a value that any of the
    job's per-year specs needs, so the models compared with each other (variance explained,
    leave-one-school-out) are fitted to the same pupils.

    A spec with the collapsed likelihood (the default) gets its statistics, reduced as the
    table is read in batches (:func:`bayesfed.design.reduce.reduce_file`: per year and school, or
    per cell for the event-time model; on the cluster's workers for Parquet
    when ``client``), so memory holds the statistics, not the rows. A per-year spec with the
    pupil-row likelihood gets its validated pupils, in memory.
    """
    def needs_rows(spec) -> bool:
        return spec.kind.per_year and spec.model.likelihood == "pupil_rows"

    in_memory = isinstance(data, pd.DataFrame)
    source = "data" if in_memory else str(data)
    raw = (data if in_memory else read_table(data)) if any(needs_rows(s) for s in specs) else None
    # the per-year models are compared with each other (variance explained, LOO): with
    # drop_incomplete each drops the rows missing a value any of them needs
    shared = [s.column(name) for s in specs if s.kind.per_year
              for name in needed_roles(s, years)]
    tables = {}
    for s in specs:
        complete = shared if s.kind.per_year else ()
        if needs_rows(s):
            tables[s.name] = validate_table(raw, s, years=years, drop_incomplete=drop_incomplete,
                                            source=source, complete=complete)
            continue
        if in_memory:
            tables[s.name] = reduce_frame(data, s, years, drop_incomplete, source=source,
                                          complete=complete)
        elif client is not None and (data.is_dir() or data.suffix.lower() != ".csv"):
            tables[s.name] = reduce_dask(client, data, s, years, drop_incomplete,
                                         source=str(data), complete=complete)
        else:
            tables[s.name] = reduce_file(data, s, years, drop_incomplete, source=str(data),
                                         complete=complete)
    return tables


def report_command(folder: Path, out: Path | None = None, title: str | None = None,
                   fmt: Flavour = "markdown") -> Path:
    """Write the report of a fit folder (titled by the folder's name by default), with its
    figures in ``figures/`` beside it.

    ``summary.json`` is rewritten first unless it is newer than every fit file in the folder.

    Parameters
    ----------
    folder : Path
        A folder written by ``bayesfed fit``.
    out : Path, optional
        ``fmt="markdown"``: the Markdown file (default ``folder/report.md``).
        ``fmt="docs"``: the report's folder, required; ``docs/reports/NAME`` makes it a page
        of the documentation site (``out/index.md`` and ``out/figures/``).
    title : str, optional
    fmt : {"markdown", "docs"}

    Returns
    -------
    Path
        The Markdown file written.
    """
    if fmt not in ("markdown", "docs"):
        raise OutputError(f"unknown report format {fmt!r}: use 'markdown' or 'docs'")
    fits = list(folder.glob("*.nc")) if folder.is_dir() else []
    if not fits:
        raise OutputError(f"{folder} holds no fit files (*.nc); run `bayesfed fit` first")
    if fmt == "docs" and out is None:
        raise OutputError("--format docs needs --out FOLDER, e.g. docs/reports/NAME")
    if fmt == "docs" and out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    path = folder / "summary.json"
    if not path.exists() or path.stat().st_mtime_ns < max(f.stat().st_mtime_ns for f in fits):
        write_summary(folder)
    summary = json.loads(path.read_text())
    target = (out / "index.md") if fmt == "docs" else (out or folder / "report.md")
    figures = draw_figures(summary, folder, target.parent / "figures")
    return write_text(target, render_markdown(
        summary, title=title or f"bayesfed report: {folder.name}", figures=figures,
        flavour=fmt))


def draw_figures(summary: dict, folder: Path, figures: Path) -> dict[str, tuple[str, str]]:
    """Draw a report's figures into ``figures`` (stale ones of a previous run are removed).

    The rank plots load the fit files they show: the per-year fits of the model with a
    federation effect (else of the last model by name) and the event-time fit. A stacked
    event-time fit also gets its event-study and sensitivity figures.

    Returns
    -------
    dict of str to (str, str)
        Figure name -> (path relative to the report, alt text), for
        :func:`bayesfed.report.markdown.render_markdown`.
    """
    published = load_published()
    fits = summary["fits"]
    two_level = [f for f in fits if fit_kind(f).per_year]
    models = sorted({f["model"] for f in two_level})
    main = next((m for m in models if any("federation_effect" in f for f in two_level
                                          if f["model"] == m)), models[-1] if models else None)
    drawn: dict[str, tuple[Path, str] | None] = {
        "trajectory": federation_trajectory(summary, published,
                                            figures / "federation_trajectory.png"),
        "variance_partition": variance_partition(summary, published,
                                                 figures / "variance_partition.png"),
        "predictive": None if main is None else predictive_bands(
            summary, main, figures / "predictive_check.png"),
        "event_study": event_study(summary, figures / "event_study.png"),
        "sensitivity": sensitivity_intervals(summary, figures / "sensitivity.png"),
    }
    if main is not None:
        trees = {f["year"]: load_fit(folder / f["file"], posterior=RANK_VARS)
                 for f in two_level if f["model"] == main}
        drawn["rank_by_year"] = rank_by_year(trees, figures / "rank_by_year.png")
    joint = next((f for f in fits if fit_kind(f).joint), None)
    if joint is not None:
        drawn["rank_event_time"] = rank_event_time(
            load_fit(folder / joint["file"], posterior=RANK_EVENT_VARS),
            figures / "rank_event_time.png")
    for model in models:  # caterpillar plots of random slopes and pupil sds by school
        fit = next(f for f in two_level if f["model"] == model)
        for quantity in school_blocks(fit):
            name = f"school_{quantity.replace('[', '_').rstrip(']')}_{model}"
            drawn[name] = school_caterpillar(summary, model, quantity, figures / f"{name}.png")
    written = {v[0].name for v in drawn.values() if v is not None}
    for stale in figures.glob("*.png") if figures.is_dir() else ():
        if stale.name not in written:
            stale.unlink(missing_ok=True)
    return {name: (f"figures/{v[0].name}", v[1]) for name, v in drawn.items() if v is not None}
