"""What the ``fit`` and ``report`` commands do, as plain functions a script can call too."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from bayesfed.errors import OutputError
from bayesfed.fit import FitOptions, run_job
from bayesfed.plots import federation_trajectory
from bayesfed.published import load_published
from bayesfed.read import read_table
from bayesfed.report import render_markdown
from bayesfed.spec import load_spec
from bayesfed.store import write_text
from bayesfed.summarize import write_summary
from bayesfed.validate import validate_table


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files in name order (a partitioned dataset)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def fit_command(
    spec_paths: Sequence[Path],
    data: Path,
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
) -> Path:
    """Validate, fit every spec x year, save the fits and write ``summary.json``.

    Every spec is validated against the data (and every year) before the first fit starts,
    so a data or spec problem never costs sampling time.

    Returns
    -------
    Path
        ``out/summary.json``.
    """
    console = console or Console(quiet=True)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    specs = [load_spec(p) for p in spec_paths]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise OutputError(f"two specs share a model name ({', '.join(names)}); their fit files "
                          "would overwrite each other")
    raw = read_table(data)
    tables = {s.name: validate_table(raw, s, years=years if s.model.family == "two_level"
                                     else None, drop_incomplete=drop_incomplete,
                                     source=str(data)) for s in specs}
    for table in tables.values():
        if table.n_dropped:
            console.print(f"dropped {table.n_dropped:,} incomplete rows of {table.n_input_rows:,}")
            break
    options = FitOptions(draws=draws, tune=tune, chains=chains, seed=seed, sampler=sampler,
                         progress=console.is_terminal)
    data_hash = file_sha256(data)
    run_job(tables, specs, years, out, options, data_hash, force=force,
            on_fit=lambda name, i, n: console.print(f"fitting {name} ({i + 1}/{n})"))
    path = write_summary(out)
    summary = json.loads(path.read_text())
    failed = [f for f in summary["fits"] if not f["diagnostics"]["ok"]]
    console.print(f"wrote {len(summary['fits'])} fits and {path}")
    if failed:
        console.print(f"[bold red]WARNING: {len(failed)} fits failed their diagnostics:[/]")
        for f in failed:
            console.print(f"  {f['file']}: {'; '.join(f['diagnostics']['problems'])}")
    return path


def report_command(folder: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Write the Markdown report of a fit folder (titled by the folder's name by default),
    with its figures in ``figures/`` beside it.

    ``summary.json`` is rewritten first unless it is newer than every fit file in the folder.
    """
    fits = list(folder.glob("*.nc")) if folder.is_dir() else []
    if not fits:
        raise OutputError(f"{folder} holds no fit files (*.nc); run `bayesfed fit` first")
    path = folder / "summary.json"
    if not path.exists() or path.stat().st_mtime_ns < max(f.stat().st_mtime_ns for f in fits):
        write_summary(folder)
    summary = json.loads(path.read_text())
    out = out or folder / "report.md"
    figures = {}
    drawn = federation_trajectory(summary, load_published(),
                                  out.parent / "figures" / "federation_trajectory.png")
    if drawn is not None:
        figures["trajectory"] = f"![{drawn[1]}](figures/{drawn[0].name})"
    return write_text(out, render_markdown(
        summary, title=title or f"bayesfed report: {folder.name}", figures=figures))
