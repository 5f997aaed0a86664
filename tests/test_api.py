"""The Python API (bayesfed.api): a fit from a frame in memory equals the command's fit of the
same table's file, the result tables read summary.json, and importing bayesfed stays light."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayesfed
from bayesfed.errors import OutputError, SpecError
from bayesfed.jobs.commands import fit_command, report_command
from bayesfed.store import folder_lock, load_fit, lock_path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "data" / "synthetic_study.parquet"
OPTIONS = {"draws": 150, "tune": 150, "chains": 2, "seed": 5}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_parquet(STUDY)


@pytest.fixture(scope="module")
def in_memory(frame):
    before = frame.copy(deep=True)
    results = bayesfed.fit(frame, ["m0", "m2"], years=[0, 1], **OPTIONS)
    pd.testing.assert_frame_equal(frame, before)  # the input is never modified
    return results


@pytest.fixture(scope="module")
def from_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli")
    fit_command([ROOT / "models" / "m0_empty.toml", ROOT / "models" / "m2_federation.toml"],
                STUDY, out, [0, 1], **OPTIONS)
    return out


def test_import_loads_neither_pymc_nor_pytensor_nor_matplotlib():
    code = ("import sys, bayesfed; bayesfed.fit; bayesfed.load; "
            "print([m for m in ('pymc', 'pytensor', 'matplotlib', 'arviz', 'numba') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_frame_in_memory_gives_the_draws_of_its_file(in_memory, from_file):
    files = sorted(p.name for p in from_file.glob("*.nc"))
    assert files == sorted(p.name for p in in_memory.folder.glob("*.nc"))
    assert files == ["M0_k0.nc", "M0_k1.nc", "M2_k0.nc", "M2_k1.nc"]
    for name in files:
        a = load_fit(in_memory.folder / name)["posterior"]
        b = load_fit(from_file / name)["posterior"]
        assert set(a.data_vars) == set(b.data_vars)
        for var in a.data_vars:
            np.testing.assert_array_equal(a[var].to_numpy(), b[var].to_numpy(), err_msg=var)
    cli = json.loads((from_file / "summary.json").read_text())
    params = {(f["model"], f["year"]): f["params"] for f in cli["fits"]}
    for f in in_memory.fits:
        assert f["params"] == params[(f["model"], f["year"])]


def test_result_tables_hold_the_summary(in_memory):
    effects = in_memory.effects()
    assert list(effects[["model", "year", "estimand"]].itertuples(index=False, name=None)) == [
        ("M2", 0, "federated"), ("M2", 1, "federated")]
    m2 = {f["year"]: f["federation_effect"] for f in in_memory.fits if f["model"] == "M2"}
    assert effects["mean"].tolist() == [m2[0]["mean"], m2[1]["mean"]]
    assert (effects["hdi_low"] < effects["mean"]).all()
    assert (effects["mean"] < effects["hdi_high"]).all()
    shares = in_memory.partition().groupby(["model", "year"])["mean"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0, rtol=1e-12)
    summary = in_memory.summary()
    assert {"intercept", "sigma", "sd_school", "federated"} <= set(summary["parameter"])
    assert summary[["mean", "sd", "r_hat", "ess_bulk"]].notna().all().all()
    diagnostics = in_memory.diagnostics()
    assert len(diagnostics) == 4
    assert {"ok", "max_r_hat", "min_ess_bulk", "divergences", "problems"} <= set(diagnostics)
    tree = in_memory.tree("M2", 1)
    assert "federated" in tree["posterior"]["predictor"].to_numpy()
    with pytest.raises(KeyError, match="no fit of model 'M2' for year 7"):
        in_memory.tree("M2", 7)
    assert "M2 | 0 | federated" in in_memory._repr_markdown_()


def test_plot_methods_return_figures(in_memory):
    from matplotlib.figure import Figure

    effects = in_memory.plot_effects()
    assert isinstance(effects, Figure)
    points = effects.axes[0].containers  # error bars: the per-year fits, the paper
    assert len(points) == 2
    assert isinstance(in_memory.plot_partition(), Figure)
    assert len(in_memory.plot_predictive("M2").axes) == 4  # two years x two statistics
    with pytest.raises(ValueError, match="nothing to draw: no stacked event-time fit"):
        in_memory.plot_event_study()


def test_save_and_load_round_trip(in_memory, tmp_path):
    saved = in_memory.save(tmp_path / "kept")
    loaded = bayesfed.load(tmp_path / "kept")
    assert loaded.summary_json == in_memory.summary_json == saved.summary_json
    assert not list((tmp_path / "kept").glob(".*"))  # no partial file left
    text = loaded.report(title="API report")
    assert text.startswith("# API report")
    assert (tmp_path / "kept" / "report.md").exists()


def test_a_column_mapping_renames_the_tables_columns(frame, in_memory):
    renamed = frame.rename(columns={"gcse_score": "score"})
    results = bayesfed.fit(renamed, "m0", years=[0], columns={"outcome": "score"}, **OPTIONS)
    (fit,) = results.fits
    (same,) = [f for f in in_memory.fits if (f["model"], f["year"]) == ("M0", 0)]
    assert fit["params"] == same["params"]


def test_the_example_is_the_shipped_study(frame):
    pd.testing.assert_frame_equal(bayesfed.load_example(), frame)


def test_unknown_model_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(SpecError, match=r"model 'm9': not a shipped model \(m0, m1, m2, "
                                        r"event_time, m1_scale\), a formula, a TOML file or a "
                                        r"ModelSpec"):
        bayesfed.fit(STUDY, "m9")
    with pytest.raises(OutputError, match="holds no fit files"):
        bayesfed.load(tmp_path)
    with pytest.raises(TypeError, match="data must be a path"):
        bayesfed.fit(42, "m0")


def test_the_python_pages_examples_run(tmp_path, monkeypatch):
    """docs/python.md's code blocks, one after another, in an empty folder."""
    page = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 7
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), namespace)
    assert namespace["counts"]["schools"] == 77  # bayesfed.validate's counts of the example
    assert namespace["markdown"].startswith("# Year 0 and year 5")
    assert (tmp_path / "out" / "python-example" / "M2_k5.nc").exists()
    effects = namespace["results"].effects()
    assert effects[["model", "year"]].to_numpy().tolist() == [["M2", 0], ["M2", 5]]
    (formula,) = namespace["m2"].fits
    (toml,) = [f for f in namespace["results"].fits if (f["model"], f["year"]) == ("M2", 5)]
    assert formula["params"] == toml["params"]
    same = namespace["same"].fits[0]["params"]
    (m0,) = [f for f in namespace["results"].fits if (f["model"], f["year"]) == ("M0", 0)]
    assert same == m0["params"]


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_a_damaged_fit_file_is_named_with_the_fix(in_memory, tmp_path, damage):
    folder = in_memory.save(tmp_path / "fits").folder
    target = folder / "M2_k1.nc"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:5000])
    else:
        target.unlink()
        xr.Dataset({"x": ("i", np.arange(3.0))}).to_netcdf(target, engine="netcdf4")
    expected = (rf"{re.escape(str(target))} is not a bayesfed fit that can be read \(.+\): the "
                r"file is damaged \(a copy cut short\?\) or was not written by bayesfed\. Fit it "
                r"again \(`bayesfed fit \.\.\. --force`")
    with pytest.raises(OutputError, match=expected):
        bayesfed.load(folder)
    with pytest.raises(OutputError, match=expected):
        report_command(folder)


M2_FORMULA = ("gcse_score ~ fsm + idaci + male + C(sen) + non_white_british + ks2 + federated"
              " + (1 | school_id)")


def test_a_formula_gives_the_draws_of_the_toml_spec(frame, in_memory):
    results = bayesfed.fit(frame, M2_FORMULA, years=[0], name="M2",
                           columns={"federation": "federation_id"}, **OPTIONS)
    a = load_fit(results.folder / "M2_k0.nc")["posterior"]
    b = load_fit(in_memory.folder / "M2_k0.nc")["posterior"]
    assert set(a.data_vars) == set(b.data_vars)
    for var in a.data_vars:
        np.testing.assert_array_equal(a[var].to_numpy(), b[var].to_numpy(), err_msg=var)
    spec = bayesfed.model_spec(M2_FORMULA)
    assert spec.name == "formula"
    assert spec.predictors.school == ["federated"]
    assert spec.categorical["sen"].reference == "none"


@pytest.mark.parametrize(("formula", "message"), [
    ("gcse_score ~ fsm + (1 | school_id) + (1 | federation_id)",
     "the two-level family has one grouping, the school, with a random intercept and "
     "optionally random slopes: (1 | school) or (1 + ks2 | school)"),
    ("gcse_score ~ fsm + (1 + ks2 | school_id)",
     "random.slopes: 'ks2' is not a pupil-level predictor (pupil: ['fsm'])"),
    ("gcse_score ~ fsm:ks2 + (1 | school_id)",
     "predictors.interactions: 'fsm:ks2' is not the product of two predictors, \"a:b\" "
     "(predictors: [])"),
    ("gcse_score ~ fsm + (1 | school_id); sigma ~ fsm",
     "after ';' the two-level family takes a pupil sd by school, sigma ~ 1 + (1 | school), "
     "and nothing else"),
    ("gcse_score ~ fsm + (1 | school_id); sigma ~ 1 + (1 | federation_id)",
     "sigma ~ 1 + (1 | federation_id) must vary by the school, school_id"),
    ("gcse_score ~ fsm:ks2:male + fsm + ks2 + male + (1 | school_id)",
     "term fsm:ks2:male is an interaction of more than two columns; the two-level family "
     "takes main effects and products of two"),
    ("gcse_score ~ 0 + fsm + (1 | school_id)",
     "has no intercept: the two-level family always has one"),
    ("gcse_score ~ C(ks2) + (1 | school_id)",
     "C(ks2): ks2 is not a categorical column of the schema; declare its levels in a TOML "
     "specification ([categorical.ks2])"),
])
def test_a_formula_the_family_cannot_fit_is_refused(formula, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        bayesfed.fit(STUDY, formula)


def test_a_second_job_on_a_folder_in_use_is_refused(tmp_path):
    out = tmp_path / "fits"
    message = (f"another bayesfed job (pid {os.getpid()}) is writing to {out}: wait for it to "
               "finish, or give this job another output folder")
    with folder_lock(out):
        with pytest.raises(OutputError, match=re.escape(message)):
            bayesfed.fit(STUDY, "m0", years=[0], out=out, **OPTIONS)
        run = subprocess.run([sys.executable, "-m", "bayesfed", "fit",
                              ROOT / "models" / "m0_empty.toml", "--data", STUDY, "--out", out,
                              "--years", "0"], capture_output=True, text=True)
        assert run.returncode == 4
        assert "another bayesfed job" in run.stdout + run.stderr
    assert not out.exists() and not lock_path(out).exists()


def test_a_killed_job_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "fits"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bayesfed.store import folder_lock\n"
         f"with folder_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"another bayesfed job \(pid {holder.pid}\)"):
            with folder_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert lock_path(out).exists()  # the killed job's file stays ...
    with folder_lock(out):  # ... and the next job takes it
        pass
