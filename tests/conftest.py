"""Shared fixtures: a small valid pupil table in the shipped study's column names."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesfed.inputs.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def small_table(seed: int = 0, schools: int = 6, pupils: int = 12) -> pd.DataFrame:
    """Pupils in ``schools`` schools (half federated) over cohorts founding+0 and +1.

    Every school has ``pupils`` pupils in each of two cohorts; every SEN level occurs in each
    cohort. Column names are those of the shipped synthetic study.
    """
    rng = np.random.default_rng(seed)
    rows = []
    sen = np.array(["none", "school_action", "school_action_plus", "statemented"])
    for s in range(schools):
        fed = s % 2
        for k in (0, 1):
            for p in range(pupils):
                rows.append({
                    "pupil_id": f"P{s:02d}{p:03d}",
                    "school_id": f"S{s:02d}",
                    "federation_id": f"F{s // 2}" if fed else None,
                    "federated": fed,
                    "cohort": 2008 + k,
                    "founding_year": 2008,
                    "years_since": k,
                    "gcse_score": float(np.round(rng.normal(4, 4), 3)),
                    "fsm": int(rng.random() < 0.2),
                    "idaci": float(np.round(rng.uniform(0, 0.6), 3)),
                    "male": int(rng.random() < 0.5),
                    "sen": sen[p % 4],
                    "non_white_british": int(rng.random() < 0.2),
                    "ks2": float(np.round(rng.normal(0, 0.15), 3)),
                })
    return pd.DataFrame(rows)


@pytest.fixture
def table() -> pd.DataFrame:
    return small_table()


@pytest.fixture
def m2():
    return load_spec(MODELS / "m2_federation.toml")


@pytest.fixture
def m0():
    return load_spec(MODELS / "m0_empty.toml")


def run_main(args: list[str]) -> tuple[int, str, str]:
    """``bayesfed ARGS`` through ``cli.main`` (which maps errors to exit codes; typer's
    ``CliRunner.invoke(app)`` does not), in this process: exit code, stdout, stderr. The console
    script (``cli.run``) is ``cli.main`` plus the garbage-collector setting of a process of its
    own, left out here."""
    from typer.testing import CliRunner

    from bayesfed.cli import main

    argv = sys.argv
    with CliRunner().isolation() as (out, err, _):
        sys.argv = ["bayesfed", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            sys.argv = argv
            sys.stdout.flush()
            sys.stderr.flush()
        return code, out.getvalue().decode(), err.getvalue().decode()


#: Cases tried by tests/test_fuzz.py: corruption kind -> outcome ("valid", "DataError",
#: "SpecError") -> count. Printed at the end of every run that tried any.
FUZZ_COUNTS = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    counts = config.stash.get(FUZZ_COUNTS, None)
    if not counts:
        return
    terminalreporter.section("bad input, fuzzed: cases tried per corruption kind")
    width = max(len(kind) for kind in counts)
    for kind, outcomes in counts.items():
        detail = ", ".join(f"{outcome} {n}" for outcome, n in sorted(outcomes.items()))
        terminalreporter.write_line(f"{kind:<{width}}  {sum(outcomes.values()):4d}  ({detail})")
    total = sum(sum(o.values()) for o in counts.values())
    terminalreporter.write_line(f"{'all kinds':<{width}}  {total:4d}")
