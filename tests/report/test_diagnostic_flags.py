"""A badly sampled fit is flagged in summary.json, in the command's output and in the report."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from bayesfed.jobs.commands import fit_command, report_command


@pytest.fixture(scope="module")
def bad_fit(tmp_path_factory):
    from conftest import MODELS, small_table

    folder = tmp_path_factory.mktemp("bad")
    small_table().to_csv(folder / "t.csv", index=False)
    console = Console(record=True, width=120)
    # far too few draws and a single warm-up iteration: ESS cannot pass
    fit_command([MODELS / "m0_empty.toml"], folder / "t.csv", folder / "fits", [0], draws=15,
                tune=1, chains=2, seed=1, console=console)
    return folder / "fits", console.export_text()


def test_failed_diagnostics_in_summary(bad_fit):
    folder, _ = bad_fit
    [fit] = json.loads((folder / "summary.json").read_text())["fits"]
    diag = fit["diagnostics"]
    assert diag["ok"] is False
    assert any(p.startswith("bulk ESS") for p in diag["problems"])
    assert diag["min_ess_bulk"] < 400


def test_failed_diagnostics_printed(bad_fit):
    _, printed = bad_fit
    assert "WARNING: 1 fits failed their diagnostics:" in printed
    assert "M0_k0.nc: " in printed


def test_failed_diagnostics_at_top_of_report(bad_fit):
    folder, _ = bad_fit
    lines = report_command(folder).read_text().splitlines()
    assert lines[2].startswith("> **WARNING: 1 of 1 fits failed their sampling diagnostics")
    assert lines[4].startswith("> - M0 Year of foundation: ")
    assert "| diagnostics | **FAILED** |" in lines
