"""The command line as a user runs it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_main

from bayesfed.cli import parse_years

ROOT = Path(__file__).resolve().parent.parent


def bayesfed(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "bayesfed", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_simulate_twice_gives_identical_files(tmp_path):
    for name in ("a", "b"):
        run = bayesfed("simulate", "--out", str(tmp_path / name / "X.parquet"), "--seed", "1")
        assert run.returncode == 0, run.stderr
        assert "true parameters in" in run.stdout
    for file in ("X.parquet", "X.truth.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    other = bayesfed("simulate", "--out", str(tmp_path / "c.parquet"), "--seed", "2")
    assert other.returncode == 0
    assert (tmp_path / "c.parquet").read_bytes() != (tmp_path / "a" / "X.parquet").read_bytes()


def test_simulate_default_seed_reproduces_the_shipped_study(tmp_path):
    run = bayesfed("simulate", "--out", str(tmp_path / "s.parquet"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "s.parquet").read_bytes() == \
        (ROOT / "data" / "synthetic_study.parquet").read_bytes()
    assert (tmp_path / "s.truth.json").read_bytes() == \
        (ROOT / "data" / "synthetic_study.truth.json").read_bytes()


def test_validate_prints_one_screen_summary():
    run = bayesfed("validate", "data/synthetic_study.parquet", "--spec",
                   "models/m2_federation.toml", "--years", "0-5")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "is valid for M2" in out
    for word in ("pupils:", "schools:", "federations: 31", "cohorts:", "years since founding"):
        assert word in out
    assert len(out.splitlines()) < 30


def test_validate_reports_data_problems_with_exit_code_3(tmp_path, table):
    bad = table.copy()
    bad.loc[2, "idaci"] = 40
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    run = bayesfed("validate", str(path), "--spec", "models/m2_federation.toml")
    assert run.returncode == 3
    assert run.stderr.startswith(f"bayesfed: error: {path}: 1 problem in 144 rows")
    assert "column 'idaci': value outside 0-1 in 1 row (e.g. row 3), values '40.0'" in run.stderr
    assert "Traceback" not in run.stderr


def test_spec_error_exit_code_3(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('[model]\nname = "M9"\nfamly = "two_level"\n')
    run = bayesfed("validate", "data/synthetic_study.parquet", "--spec", str(spec))
    assert run.returncode == 3
    assert "unknown key 'model.famly' (did you mean 'family'?)" in run.stderr


def test_bad_year_selection_is_a_usage_error():
    run = bayesfed("validate", "data/synthetic_study.parquet", "--years", "five")
    assert run.returncode == 2
    assert "'five' is not a year selection" in run.stderr


@pytest.mark.parametrize(("text", "years"), [
    ("0-5", [0, 1, 2, 3, 4, 5]), ("0,2,4", [0, 2, 4]), ("3", [3]), ("-2--1", [-2, -1]),
    ("-2-1", [-2, -1, 0, 1]), (None, None),
])
def test_parse_years(text, years):
    assert parse_years(text) == years


def test_fit_and_report_commands(tmp_path, table):
    data = tmp_path / "t.csv"
    table.to_csv(data, index=False)
    out = tmp_path / "fits"
    args = ("fit", "models/m0_empty.toml", "models/m2_federation.toml", "--data", str(data),
            "--out", str(out), "--years", "0-1", "--draws", "200", "--tune", "200",
            "--chains", "2", "--seed", "4")
    run = bayesfed(*args)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "M0_k0.nc", "M0_k1.nc", "M2_k0.nc", "M2_k1.nc", "summary.json"]
    assert "fitting M2_k1 (4/4)" in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["model"], f["year"]) for f in summary["fits"]] == [
        ("M0", 0), ("M0", 1), ("M2", 0), ("M2", 1)]
    # an existing fit is never overwritten without --force, and nothing is sampled
    before = (out / "M0_k0.nc").read_bytes()
    again = bayesfed(*args)
    assert again.returncode == 4
    assert "already holds 4 of these fits (M0_k0.nc, M0_k1.nc, M2_k0.nc, M2_k1.nc); use " \
           "--force to replace them" in again.stderr
    assert (out / "M0_k0.nc").read_bytes() == before
    report = bayesfed("report", str(out))
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "## Federation impact by year" in text and "Model M0" not in text


def test_fit_refuses_bad_data_before_sampling(tmp_path, table):
    bad = table.copy()
    bad.loc[0, "sen"] = "unknown"
    data = tmp_path / "t.csv"
    bad.to_csv(data, index=False)
    run = bayesfed("fit", "models/m2_federation.toml", "--data", str(data), "--out",
                   str(tmp_path / "fits"), "--years", "0-1")
    assert run.returncode == 3
    assert "column 'sen': unknown label in 1 row (e.g. row 1)" in run.stderr
    assert "fitting" not in run.stdout and not (tmp_path / "fits").exists()


def test_only_the_command_lines_own_process_freezes_the_garbage_collector(monkeypatch):
    """``bayesfed`` (``cli.run``) freezes what exists once the fitting stack is imported; the
    same commands called from Python (``cli.main``, the API) leave the collector alone."""
    import gc

    from bayesfed import cli

    code, out, _ = run_main(["validate", "--help"])
    assert code == 0 and "validate" in out and gc.get_freeze_count() == 0
    monkeypatch.setitem(cli._OWN_PROCESS, "set", True)
    try:
        cli._long_lived(fitting=True)
        assert "nutpie" in sys.modules and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

