"""The demo job behind ``make demo``: the shipped synthetic study, end to end.

Steps: read the shipped study, validate it for each of the paper's models (M0, M1, M2) and
each year since founding 0-5, and write a data summary (``data_summary.json``) and a Markdown
report (``report.md``) into the output folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from bayesfed.read import read_table
from bayesfed.spec import load_spec
from bayesfed.store import write_json, write_text
from bayesfed.validate import describe, validate_table

#: The paper fits its models for the founding year and each of the five years after.
PAPER_YEARS = tuple(range(6))


def data_report(summary: dict, data: Path, models: Sequence[str]) -> str:
    """Markdown page describing the validated study.

    Parameters
    ----------
    summary : dict
        Output of :func:`bayesfed.validate.describe`.
    data : Path
        The table that was summarised.
    models : sequence of str
        Names of the models the table was validated for.
    """
    lines = [
        "# bayesfed demo: the shipped synthetic study",
        "",
        f"Data: `{data.name}`, validated for models {', '.join(models)} and years since "
        f"founding {PAPER_YEARS[0]}-{PAPER_YEARS[-1]}.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| pupils | {summary['pupils']:,} |",
        f"| schools | {summary['schools']:,} |",
        f"| federated schools | {summary['federated_schools']:,} |",
        f"| federations | {summary['federations']:,} |",
        f"| cohorts | {summary['cohorts'][0]}-{summary['cohorts'][-1]} |",
        "",
        "## Pupils and schools by year since founding",
        "",
        "| years since founding | pupils | schools |",
        "|---|---|---|",
    ]
    for year, row in summary["years_since"].items():
        lines.append(f"| {year} | {row['pupils']:,} | {row['schools']:,} |")
    return "\n".join(lines) + "\n"


def run_demo(out: Path, data: Path, specs: Sequence[Path], console: Console) -> Path:
    """Validate the shipped study for every spec and write the summary and report.

    Returns
    -------
    Path
        The Markdown report.
    """
    raw = read_table(data)
    models = []
    table = None
    for path in specs:
        spec = load_spec(path)
        table = validate_table(raw, spec, years=PAPER_YEARS, source=str(data))
        models.append(spec.name)
        console.print(f"validated {data.name} for {spec.name} ({path.name}): "
                      f"{len(table.frame):,} pupils")
    summary = describe(table)
    write_json(out / "data_summary.json", summary)
    return write_text(out / "report.md", data_report(summary, data, models))
