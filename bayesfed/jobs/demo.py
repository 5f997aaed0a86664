"""The demo job behind ``make demo``: the shipped synthetic study, end to end.

Steps: validate the shipped study for the paper's three models (M0, M1, M2), fit each of them
separately for the founding year and each of the five years after (18 fits, as the paper
did), then the joint event-time model over every cohort (one fit), write every fit and
``summary.json`` into ``<out>/fits`` and the Markdown report in the paper's layout, with the
event-time trajectory beside the per-year effects, to ``<out>/report.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from bayesfed.design.describe import describe_file
from bayesfed.inputs.spec import load_spec
from bayesfed.jobs.commands import fit_command, report_command

#: The paper fits its models for the founding year and each of the five years after.
PAPER_YEARS = tuple(range(6))


def run_demo(out: Path, data: Path, specs: Sequence[Path], console: Console,
             seed: int = 0, jobs: int = 1) -> Path:
    """Fit the paper's models by year to the shipped study and write the report.

    Parameters
    ----------
    out : Path
        Output folder; its ``fits`` subfolder is replaced on every run.
    data : Path
        The pupil table.
    specs : sequence of Path
        Model specifications, reference models first.
    console : Console
        Where progress is printed.
    seed : int
        Job seed.
    jobs : int
        Fits run at once in worker processes (:func:`bayesfed.jobs.schedule.run_job`); the numbers
        do not depend on it.

    Returns
    -------
    Path
        The Markdown report.
    """
    summary = describe_file(data, load_spec(specs[-1]), years=PAPER_YEARS, source=str(data))
    console.print(f"{data.name}: {summary['pupils']:,} pupils, {summary['schools']} schools, "
                  f"{summary['federations']} federations")
    fit_command(specs, data, out / "fits", PAPER_YEARS, seed=seed, force=True, console=console,
                jobs=jobs)
    return report_command(out / "fits", out / "report.md",
                          title="bayesfed demo: the paper's models, year by year, on the "
                                "shipped synthetic study")
