"""The Python API: fit from a script or a notebook, and read a fit folder back.

::

    import bayesfed
    frame = bayesfed.load_example()  # the shipped synthetic study, or your own table
    results = bayesfed.fit(frame, ["m0", "m1", "m2"], years=range(6), seed=1)
    results.effects()        # the federation effect by year, one row per (model, year)
    results.summary()        # every reported parameter of every fit, tidy
    results.diagnostics()    # R-hat, ESS, divergences and the verdict of every fit
    results.save("fits/")    # the files `bayesfed fit` writes
    bayesfed.load("fits/")   # the same results again

:func:`fit` runs the job of ``bayesfed fit`` (:func:`bayesfed.jobs.commands.fit_command`): the same
validation before any sampling, the same fits and files, the same numbers for the same seed and
data, whether the table is a file or a frame in memory. :class:`Results` reads the job's
``summary.json`` (the numbers every report prints, computed once by
:mod:`bayesfed.posterior.summarize`) into DataFrames; ``report()`` is the Markdown report of
``bayesfed report``. Intervals are the summary's: highest-density intervals at
``summary["prob"]`` (94%).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from bayesfed.errors import OutputError, SpecError
from bayesfed.inputs.families import fit_kind
from bayesfed.inputs.formula import is_formula, spec_from_formula
from bayesfed.inputs.shipped import SPECS, load_example, spec_path
from bayesfed.inputs.spec import ModelSpec, load_spec
from bayesfed.posterior.intervals import PERCENT

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Results", "fit", "load", "load_example", "model_spec", "validate"]

#: Statistics of a parameter in ``summary.json``, in :meth:`Results.summary`'s column order.
STATS = ("mean", "sd", "hdi_low", "hdi_high", "mcse_mean", "ess_bulk", "ess_tail", "r_hat")


def model_spec(model: str | os.PathLike | ModelSpec,
               columns: Mapping[str, str] | None = None, name: str | None = None
               ) -> ModelSpec:
    """A model specification from a shipped name (:data:`bayesfed.inputs.shipped.SPECS`), a formula
    (:mod:`bayesfed.inputs.formula`), a TOML path or a spec, with ``columns`` (role -> the table's
    column) overriding its ``[columns]`` and ``name`` its name (a formula's default:
    ``"formula"``; fit files and each fit's seed derive from the name).

    Raises
    ------
    SpecError
        An unknown name, a formula the two-level family cannot fit, or a file that is not a
        valid specification.
    """
    if is_formula(model):
        return spec_from_formula(model, name or "formula", columns)
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, str) and model.lower() in SPECS:
        spec = load_spec(spec_path(model.lower()))
    elif isinstance(model, os.PathLike) or Path(model).suffix == ".toml" or Path(model).exists():
        spec = load_spec(Path(model))
    else:
        raise SpecError(f"model {model!r}: not a shipped model ({', '.join(SPECS)}), a "
                        "formula, a TOML file or a ModelSpec")
    if columns:
        spec = spec.model_copy(update={"columns": {**spec.columns, **dict(columns)}})
    if name is not None:
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"name": name})})
    return spec


def _table(data) -> Path | pd.DataFrame:
    """A path or a pandas DataFrame from what :func:`fit` accepts."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, os.PathLike)):
        return Path(data)
    if hasattr(data, "to_pandas"):  # a polars DataFrame or an Arrow table
        return data.to_pandas()
    raise TypeError(f"data must be a path, a pandas or polars DataFrame or an Arrow table, "
                    f"not {type(data).__name__}")


def fit(data, model: str | os.PathLike | ModelSpec | Sequence, *,
        years: Iterable[int] | None = None, columns: Mapping[str, str] | None = None,
        draws: int = 1000, tune: int = 1000, chains: int = 4, seed: int = 0,
        sampler: str = "nutpie", drop_incomplete: bool = False,
        out: str | os.PathLike | None = None, jobs: int = 1, name: str | None = None,
        force: bool = False, resume: bool = False, strict: bool = False,
        dask: str | None = None, console: Console | None = None) -> Results:
    """Fit models to a pupil table: ``bayesfed fit`` from Python.

    Parameters
    ----------
    data : path, pandas or polars DataFrame, or Arrow table
        The pupil table (:doc:`the schema </data>`); never modified.
    model : str, path, ModelSpec, or a list of them
        A shipped model (``"m0"``, ``"m1"``, ``"m2"``, ``"event_time"``, ``"m1_scale"``: M1 with
        a pupil sd by school), a two-level formula
        such as ``"gcse_score ~ fsm + C(sen) + ks2 + federated + (1 | school_id)"``
        (:mod:`bayesfed.inputs.formula`), a TOML specification or a spec.
    years : iterable of int, optional
        Years since founding, each fitted separately by the two-level models (None: the whole
        table as one); the event-time model fits every year at once.
    columns : mapping of str to str, optional
        Role -> the table's column, over each spec's ``[columns]``.
    draws, tune, chains, seed, sampler, drop_incomplete, jobs, force, resume, strict, dask
        As ``bayesfed fit``'s options (``--force``, ``--resume``, ``--strict``, ``--dask``).
        ``drop_incomplete`` drops the rows missing a value that any of the per-year models
        needs, so the models compared with each other are fitted to the same pupils.
    name : str, optional
        The model's name (one model only; a formula's default is ``"formula"``).
    out : path, optional
        Folder for the fit files and ``summary.json`` (default: a temporary folder, removed
        with the :class:`Results`; :meth:`bayesfed.api.Results.save` keeps them).
    console : rich.console.Console, optional
        Where the job's progress notes go (the command line's console); default: none.

    Returns
    -------
    Results

    Raises
    ------
    SpecError, DataError
        Before any sampling, as ``bayesfed fit``.
    OutputError
        ``out`` holds fits already (without ``force`` or ``resume``), or another job writes
        to it.
    DiagnosticsError
        ``strict`` and some fit failed its diagnostic gates (after every file is written).

    Notes
    -----
    With ``jobs=1``, a job of six or more per-year fits run from a notebook, an interactive
    session or ``python -m`` makes each fit's summary in a second process while the next fit
    samples (:mod:`bayesfed.jobs.summaries`); run from a script file it does not, since the
    spawned process would import the script. ``jobs`` above 1 spawns worker processes from a
    script too: its job must then sit under ``if __name__ == "__main__":``.
    """
    from bayesfed.jobs.commands import fit_command

    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if name is not None and len(models) != 1:
        raise SpecError("name= renames one model; give each of several models its name in "
                        "its specification (bayesfed.model_spec(model, name=...))")
    specs = [model_spec(m, columns, name) for m in models]
    table = _table(data)
    temporary = out is None
    folder = Path(tempfile.mkdtemp(prefix="bayesfed-")) if temporary else Path(out)
    try:
        fit_command(specs, table, folder, None if years is None else sorted(set(years)),
                    draws=draws, tune=tune, chains=chains, seed=seed, sampler=sampler,
                    drop_incomplete=drop_incomplete, jobs=jobs, force=force, resume=resume,
                    strict=strict, dask=dask, console=console)
    except BaseException:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return Results(folder, temporary=temporary)


def validate(data, model: str | os.PathLike | ModelSpec, *, years: Iterable[int] | None = None,
             columns: Mapping[str, str] | None = None, drop_incomplete: bool = False
             ) -> dict[str, object]:
    """Check a pupil table against a model specification, as ``bayesfed validate`` does, and
    count what it holds; nothing is fitted.

    Parameters
    ----------
    data, model, years, columns, drop_incomplete
        As :func:`fit`'s (one model).

    Returns
    -------
    dict
        ``input_rows``, ``dropped``, ``pupils``, ``schools`` and, where mapped,
        ``federated_schools``, ``federations``, ``cohorts`` and ``years_since`` (year ->
        ``{"pupils", "schools"}``): :func:`bayesfed.design.describe.describe`'s counts.

    Raises
    ------
    SpecError, DataError
        Every problem of the specification or the table, in one message.
    """
    from bayesfed.design.describe import describe, describe_file
    from bayesfed.inputs.validate import validate_table

    spec = model_spec(model, columns)
    table = _table(data)
    selected = None if years is None else sorted(set(years))
    if isinstance(table, Path):
        return describe_file(table, spec, years=selected, drop_incomplete=drop_incomplete,
                             source=str(table))
    return describe(validate_table(table, spec, selected, drop_incomplete))


def load(folder: str | os.PathLike) -> Results:
    """The :class:`Results` of a folder written by ``bayesfed fit`` or
    :meth:`bayesfed.api.Results.save`.

    Raises
    ------
    OutputError
        The folder holds no fit files, or one of them is damaged or not a bayesfed fit (the
        message names it and the fix).
    """
    return Results(Path(folder))


class Results:
    """The fits of one job: the folder of fit files and its ``summary.json``.

    Parameters
    ----------
    folder : Path
    temporary : bool
        The folder is :func:`bayesfed.fit`'s temporary one, removed with this object.
    """

    def __init__(self, folder: Path, temporary: bool = False) -> None:
        fits = sorted(folder.glob("*.nc")) if folder.is_dir() else []
        if not fits:
            raise OutputError(f"{folder} holds no fit files (*.nc); fit first "
                              "(bayesfed.fit or `bayesfed fit`)")
        self.folder = folder
        if temporary:
            weakref.finalize(self, shutil.rmtree, folder, True)
        path = folder / "summary.json"
        if not path.exists() or path.stat().st_mtime_ns < max(f.stat().st_mtime_ns
                                                               for f in fits):
            from bayesfed.posterior.summarize import write_summary

            write_summary(folder)
        self.summary_json: dict = json.loads(path.read_text())

    @property
    def fits(self) -> list[dict]:
        """Each fit's entry of ``summary.json``."""
        return self.summary_json["fits"]

    def summary(self) -> pd.DataFrame:
        """Every reported parameter of every fit: one row per (model, year, parameter), the
        columns of ``bayesfed.api.STATS`` (``hdi_low``/``hdi_high``: the 94% HDI)."""
        rows = [{"model": f["model"], "year": f["year"], "parameter": name,
                 **{k: stats.get(k) for k in STATS}}
                for f in self.fits for name, stats in f["params"].items()]
        return pd.DataFrame(rows, columns=["model", "year", "parameter", *STATS])

    def effects(self) -> pd.DataFrame:
        """The federation effect by year since founding: one row per (model, year), with the
        posterior mean, sd, 94% HDI and the probability that it is positive. A per-year fit's
        row is its ``federated`` coefficient; an event-time fit has a row per year since
        founding (its leads included, negative years) and its ``estimand`` names what the
        number is (``ATT(k)`` for the stacked design)."""
        rows = []
        for f in self.fits:
            effect = f.get("federation_effect")
            if not effect:
                continue
            if fit_kind(f).joint:
                estimand = fit_kind(f).estimand
                for k, stats in effect.items():
                    rows.append(_effect_row(f["model"], int(k), estimand, stats))
            else:
                rows.append(_effect_row(f["model"], f["year"], "federated", effect))
        columns = ["model", "year", "estimand", "mean", "sd", "hdi_low", "hdi_high",
                   "p_positive"]
        return pd.DataFrame(rows, columns=columns)

    def partition(self) -> pd.DataFrame:
        """The variance partition of every fit: one row per (model, year, level), the share
        of the outcome's variance at the school and pupil levels (mean, sd, 94% HDI)."""
        rows = [{"model": f["model"], "year": f["year"], "level": level,
                 **{k: stats.get(k) for k in ("mean", "sd", "hdi_low", "hdi_high")}}
                for f in self.fits for level, stats in f.get("variance_partition", {}).items()]
        return pd.DataFrame(rows, columns=["model", "year", "level", "mean", "sd", "hdi_low",
                                           "hdi_high"])

    def diagnostics(self) -> pd.DataFrame:
        """The convergence diagnostics of every fit against the gates of ``summary.json``:
        one row per fit, with ``ok`` and the problems found."""
        rows = [{"model": f["model"], "year": f["year"], "file": f["file"],
                 **{k: v for k, v in f["diagnostics"].items() if k != "problems"},
                 "problems": "; ".join(f["diagnostics"]["problems"])} for f in self.fits]
        return pd.DataFrame(rows)

    def tree(self, model: str, year: int | None = None):
        """The ArviZ DataTree of one fit (``year`` None: the event-time fit or a fit of the
        whole table)."""
        from bayesfed.store import load_fit

        for f in self.fits:
            if f["model"] == model and f["year"] == year:
                return load_fit(self.folder / f["file"])
        raise KeyError(f"no fit of model {model!r} for year {year!r}; the fits are "
                       + ", ".join(f"{f['model']} {f['year']}" for f in self.fits))

    def plot_effects(self):
        """The federation effect by year since founding (event-time model, per-year fits and
        the paper's Table 5): a matplotlib Figure."""
        from bayesfed.inputs.published import load_published
        from bayesfed.report.plots import federation_trajectory_figure

        return _figure(federation_trajectory_figure(self.summary_json, load_published()),
                       "no fit has a federation effect")

    def plot_partition(self):
        """The school and pupil shares of the variance, per year and two-level model, beside
        REML and the paper's Table 3: a matplotlib Figure."""
        from bayesfed.inputs.published import load_published
        from bayesfed.report.plots import variance_partition_figure

        return _figure(variance_partition_figure(self.summary_json, load_published()),
                       "no two-level fit")

    def plot_event_study(self):
        """The stacked event-time model's event study (ATT(k), each cohort, the leads): a
        matplotlib Figure."""
        from bayesfed.report.plots import event_study_figure

        return _figure(event_study_figure(self.summary_json), "no stacked event-time fit")

    def plot_sensitivity(self):
        """The stacked event-time model's sensitivity analysis: a matplotlib Figure."""
        from bayesfed.report.plots import sensitivity_figure

        return _figure(sensitivity_figure(self.summary_json),
                       "no stacked event-time fit with leads")

    def plot_predictive(self, model: str):
        """The posterior predictive check of one two-level model, per year: a matplotlib
        Figure."""
        from bayesfed.report.plots import predictive_figure

        return _figure(predictive_figure(self.summary_json, model),
                       f"no fit of model {model!r} with predictive checks")

    def report(self, title: str | None = None) -> str:
        """The Markdown report of ``bayesfed report`` (written with its figures into the
        folder, as the command does), as text."""
        return self.write_report(title=title).read_text(encoding="utf-8")

    def write_report(self, out: str | os.PathLike | None = None, fmt: str = "markdown",
                     title: str | None = None) -> Path:
        """Write the report as ``bayesfed report`` does; returns the Markdown file written.

        Parameters
        ----------
        out : path, optional
            ``fmt="markdown"``: the file (default ``<folder>/report.md``); ``fmt="docs"``:
            the report's folder (required), e.g. ``docs/reports/NAME``, a page of the
            documentation site with its figures.
        fmt : {"markdown", "docs"}
        title : str, optional
            Default: ``"bayesfed report: <folder name>"``.
        """
        from bayesfed.jobs.commands import report_command

        return report_command(self.folder, None if out is None else Path(out), title=title,
                              fmt=fmt)

    def save(self, folder: str | os.PathLike) -> Results:
        """Copy the fit files and ``summary.json`` into ``folder`` (each written to a hidden
        file, then renamed: an interrupted copy leaves no partial file), and return the
        results of the copy."""
        target = Path(folder)
        if target.exists() and not target.is_dir():
            raise OutputError(f"{target} exists and is not a folder")
        target.mkdir(parents=True, exist_ok=True)
        for source in [*sorted(self.folder.glob("*.nc")), self.folder / "summary.json"]:
            partial = target / f".{source.name}.partial"
            shutil.copy2(source, partial)
            os.replace(partial, target / source.name)
        return Results(target)

    def _repr_markdown_(self) -> str:
        fits = self.diagnostics()
        failed = fits[~fits["ok"]]
        lines = [f"**bayesfed results** ({len(fits)} fits in `{self.folder}`; "
                 + ("all pass their diagnostics)" if failed.empty
                    else f"**{len(failed)} fail their diagnostics**)"), ""]
        effects = self.effects()
        if not effects.empty:
            lines += [f"| model | year | estimand | mean | {PERCENT} HDI |",
                      "|---|---|---|---|---|"]
            lines += [f"| {r.model} | {r.year} | {r.estimand} | {r.mean:.2f} | "
                      f"[{r.hdi_low:.2f}, {r.hdi_high:.2f}] |" for r in effects.itertuples()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Results({str(self.folder)!r}: {len(self.fits)} fits)"


def _figure(drawn, missing: str):
    """The figure of a ``bayesfed.report.plots`` ``*_figure`` function, or a ValueError saying what
    the results lack."""
    if drawn is None:
        raise ValueError(f"nothing to draw: {missing}")
    return drawn[0]


def _effect_row(model: str, year: int | None, estimand: str, stats: dict) -> dict:
    return {"model": model, "year": year, "estimand": estimand,
            **{k: stats.get(k) for k in ("mean", "sd", "hdi_low", "hdi_high", "p_positive")}}
