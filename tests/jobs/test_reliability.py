"""Reliability of ``bayesfed fit`` as a user runs it: nothing lost, gates, reproducibility.

- Nothing lost: a real ``bayesfed fit`` subprocess on a three-fit job is sent SIGINT (Ctrl-C,
  to its process group, with ``--jobs 2``) or SIGKILL (``--jobs 1``) while it fits; every file
  left is a complete fit or a hidden temporary that no glob for fits matches; ``--resume``
  removes the temporaries, keeps the finished fits and gives the numbers of a job that was
  never interrupted (compared after dropping ``sampling_seconds``).
- Ctrl-C while a sampler runs raises KeyboardInterrupt instead of returning the draws so far
  (both samplers would otherwise save a partial posterior as a fit).
- Diagnostic gates: E-BFMI; ``--strict`` exits with code 5 naming the failed fits.
- Reproducibility: the same fit in fresh processes with different empty PyTensor/numba caches,
  and with a cache another run filled, gives identical ``summary.json`` numbers.

The jobs are small (M0 on 3 x 144 pupils, 2 chains x 200 draws); compilation dominates.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import MODELS, ROOT, run_main, small_table

from bayesfed.errors import OutputError
from bayesfed.jobs.commands import fit_command
from bayesfed.posterior.summarize import GATES, diagnostics, summarize_dir
from bayesfed.store import (
    atomic_path,
    load_fit,
    remove_stale_temporaries,
    stale_temporaries,
    write_text,
)

#: The job every subprocess test runs (and resumes): M0 and M1 for years 0-2 since founding.
#: Two specifications, so that an interruption after the first fit file lands mid-job: the
#: years of one specification share a compiled model and take a fraction of a second each.
JOB = ("fit", str(MODELS / "m0_empty.toml"), str(MODELS / "m1_pupil.toml"), "--years", "0-2",
       "--draws", "200", "--tune", "200", "--chains", "2", "--seed", "4")
FITS = ["M0_k0.nc", "M0_k1.nc", "M0_k2.nc", "M1_k0.nc", "M1_k1.nc", "M1_k2.nc"]

#: A temporary of a writer that cannot be running (above Linux's largest process id).
DEAD_TEMP = ".M0_k2.nc.9999999999.abcd1234.tmp"


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """Ctrl-C reaches Python, as in a terminal's foreground job. A shell starts a background
    job (``make test &``) with SIGINT ignored, and that would pass on to this process and to
    every ``bayesfed`` it starts, which would then rightly go on through a Ctrl-C; a Python
    handler here is reset to the default in the children."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def three_years() -> pd.DataFrame:
    """conftest's small table plus a third cohort (2 years after founding)."""
    table = small_table()
    extra = small_table(seed=1).query("years_since == 0").assign(cohort=2010, years_since=2)
    return pd.concat([table, extra], ignore_index=True)


def env_with_cache(cache: Path) -> dict[str, str]:
    """The environment of a bayesfed process whose PyTensor and numba caches are ``cache``."""
    flags = ",".join(f for f in (os.environ.get("PYTENSOR_FLAGS", ""),
                                 f"base_compiledir={cache}") if f)
    return {**os.environ, "COLUMNS": "200", "PYTENSOR_FLAGS": flags,
            "NUMBA_CACHE_DIR": str(cache / "numba")}


def bayesfed(args, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bayesfed", *args], cwd=ROOT,
                          env=env_with_cache(cache), capture_output=True, text=True,
                          timeout=300)


def interrupted(args, cache: Path, sig: signal.Signals, out: Path
                ) -> subprocess.CompletedProcess:
    """Run ``bayesfed ARGS``; once its first fit file exists, send ``sig`` to its process
    group (what Ctrl-C in a terminal does; for SIGKILL, what a crash of the session does)."""
    proc = subprocess.Popen([sys.executable, "-m", "bayesfed", *args], cwd=ROOT,
                            env=env_with_cache(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not any((out / f).exists() for f in FITS) and proc.poll() is None:
        assert time.monotonic() < deadline, "no fit file appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next fit (compiling, sampling or saving: each must be safe)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    os.killpg(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def numbers(folder: Path) -> dict:
    """``summary.json``'s fits without the only field allowed to differ: wall time."""
    fits = json.loads((folder / "summary.json").read_text())["fits"]
    for fit in fits:
        fit.pop("sampling_seconds")
    return {fit["file"]: fit for fit in fits}


def assert_complete_fits(folder: Path, allow_temporaries: bool = False) -> list[str]:
    """Every file in ``folder`` is a fit that loads with all its draws, ``summary.json`` or,
    if allowed, a hidden temporary; returns the fits' names."""
    fits = []
    for path in sorted(folder.iterdir()):
        if path.name == "summary.json":
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            assert allow_temporaries, f"temporary left behind: {path.name}"
            continue
        assert path.name in FITS, f"unexpected file {path.name}"
        tree = load_fit(path)
        assert tree.posterior.sizes["chain"] == 2 and tree.posterior.sizes["draw"] == 200
        assert int(tree.sample_stats["diverging"].count()) == 400
        fits.append(path.name)
    return fits


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "t.csv"
    three_years().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def cache_a(tmp_path_factory) -> Path:
    """A compile cache the reference job fills (empty before it)."""
    return tmp_path_factory.mktemp("cache_a")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, study, cache_a) -> Path:
    """The job, never interrupted, in one fresh process with an empty compile cache."""
    out = tmp_path_factory.mktemp("reference") / "fits"
    run = bayesfed([*JOB, "--data", str(study), "--out", str(out)], cache_a)
    assert run.returncode == 0, run.stderr
    assert assert_complete_fits(out) == FITS
    return out


# -- temporaries ---------------------------------------------------------------------------

def test_temporaries_are_hidden_never_fits_and_removed_when_stale(tmp_path):
    target = tmp_path / "M0_k0.nc"
    with atomic_path(target) as tmp:
        # hidden, the writer's pid in the name, never ending in the target's suffix
        assert tmp.name.startswith(f".M0_k0.nc.{os.getpid()}.") and tmp.suffix == ".tmp"
        tmp.write_bytes(b"half")
        assert list(tmp_path.glob("*.nc")) == []
        assert stale_temporaries(tmp_path) == []  # its writer (this process) runs
    assert target.read_bytes() == b"half" and [p.name for p in tmp_path.iterdir()] == [
        "M0_k0.nc"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "M0_k1.nc") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # Ctrl-C mid-write: no temporary, no fit
    assert [p.name for p in tmp_path.iterdir()] == ["M0_k0.nc"]
    # what SIGKILL leaves: a dead writer's temporary (and one without a pid, older bayesfed)
    (tmp_path / DEAD_TEMP).write_bytes(b"half")
    (tmp_path / ".M0_k1.nc.x1y2z3.tmp").write_bytes(b"half")
    live = tmp_path / f".M0_k3.nc.{os.getpid()}.abcd1234.tmp"
    live.write_bytes(b"half")
    assert [p.name for p in stale_temporaries(tmp_path)] == [".M0_k1.nc.x1y2z3.tmp", DEAD_TEMP]
    assert len(remove_stale_temporaries(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "M0_k0.nc"]


def test_summary_ignores_temporaries(tmp_path, reference):
    shutil.copy(reference / "M0_k0.nc", tmp_path / "M0_k0.nc")
    (tmp_path / DEAD_TEMP).write_bytes((reference / "M0_k1.nc").read_bytes()[:1000])
    write_text(tmp_path / "note.txt", "x")
    summary = summarize_dir(tmp_path)
    assert [f["file"] for f in summary["fits"]] == ["M0_k0.nc"]


def test_summary_does_not_depend_on_the_order_fits_are_read(tmp_path, reference):
    """A fit's reference is found by model and year, not file name: read before the fit (its
    variances kept) or after it (only its variances read from the file), the same summary."""
    summary = summarize_dir(reference)
    for name, renamed in (("M1_k1.nc", "a.nc"), ("M0_k1.nc", "b.nc")):  # the reference last
        shutil.copy(reference / name, tmp_path / renamed)
    by_file = {f["file"]: f for f in summarize_dir(tmp_path)["fits"]}
    before = {f["file"]: f for f in summary["fits"]}
    assert by_file["a.nc"]["variance_explained"] == before["M1_k1.nc"]["variance_explained"]
    assert by_file["a.nc"]["reml"] == before["M1_k1.nc"]["reml"]
    assert "variance_explained" in by_file["a.nc"]
    assert "variance_explained" in by_file["a.nc"]["reml"]
    assert {k: v for k, v in by_file["b.nc"].items() if k != "file"} == {
        k: v for k, v in before["M0_k1.nc"].items() if k != "file"}


# -- Ctrl-C while sampling -----------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["nutpie", "pymc"])
def test_ctrl_c_while_sampling_raises_instead_of_returning_the_draws_so_far(monkeypatch,
                                                                            sampler):
    """Both samplers catch KeyboardInterrupt and return a partial posterior; bayesfed's
    ``sample`` must not: Ctrl-C (simulated 1 s after sampling starts) stops it."""
    import _thread

    import nutpie
    import pymc as pm

    from bayesfed.sampling import nuts as sampling

    module = nutpie if sampler == "nutpie" else pm
    real = module.sample
    timers = []

    def sample_then_ctrl_c(*args, **kwargs):
        timers.append(threading.Timer(1.0, _thread.interrupt_main))
        timers[-1].start()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "sample", sample_then_ctrl_c)
    with pm.Model() as model:
        pm.Normal("x")
    start = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            # minutes of sampling unless stopped
            sampling.sample(model, draws=5_000_000 if sampler == "nutpie" else 500_000,
                            tune=10, chains=2, sampler=sampler, seed=1)
    finally:
        for timer in timers:
            timer.cancel()
    assert len(timers) == 1
    assert time.perf_counter() - start < 60


# -- interrupted jobs, then --resume ----------------------------------------------------------

def test_sigint_exits_130_keeps_finished_fits_and_resume_completes(tmp_path, study, reference,
                                                                   cache_a):
    """Ctrl-C with two worker processes; resumed in one process with the compile cache the
    reference job filled (warm; the reference compiled from scratch)."""
    out = tmp_path / "fits"
    cache = cache_a
    args = [*JOB, "--data", str(study), "--out", str(out)]
    run = interrupted([*args, "--jobs", "2"], cache, signal.SIGINT, out)
    assert run.returncode == 130, run.stderr
    assert run.stderr == "bayesfed: interrupted\n"
    assert "Traceback" not in run.stdout
    assert "--resume fits the rest" in run.stdout
    kept = assert_complete_fits(out)  # the workers were stopped, their temporaries removed
    assert 1 <= len(kept) < len(FITS)
    before = {name: (out / name).read_bytes() for name in kept}
    resumed = bayesfed([*args, "--resume"], cache)
    assert resumed.returncode == 0, resumed.stderr
    assert f"kept {len(kept)} complete fit(s): {', '.join(kept)}" in resumed.stdout
    assert f"fitting M1_k2 ({len(FITS) - len(kept)}/{len(FITS) - len(kept)})" in resumed.stdout
    assert {name: (out / name).read_bytes() for name in kept} == before  # not refitted
    assert assert_complete_fits(out) == FITS
    assert numbers(out) == numbers(reference)


@pytest.mark.slow
def test_sigkill_leaves_complete_fits_or_temporaries_and_resume_completes(tmp_path, study,
                                                                          reference, cache_a):
    """Killed outright in one process, resumed with two worker processes: still the
    reference's numbers. (Slow: about 50 s on the shared 2-core machine.)"""
    out = tmp_path / "fits"
    args = [*JOB, "--data", str(study), "--out", str(out)]
    run = interrupted(args, cache_a, signal.SIGKILL, out)
    assert run.returncode == -signal.SIGKILL
    kept = assert_complete_fits(out, allow_temporaries=True)
    assert 1 <= len(kept) < len(FITS)
    # what a kill during a save leaves, whether or not this one did
    (out / DEAD_TEMP).write_bytes(b"\x89HDF\r\n half a file")
    assert sorted(out.glob("*.nc")) == [out / name for name in kept]
    resumed = bayesfed([*args, "--resume", "--jobs", "2"], cache_a)
    assert resumed.returncode == 0, resumed.stderr
    assert "removed " in resumed.stdout and DEAD_TEMP in resumed.stdout
    assert assert_complete_fits(out) == FITS
    assert numbers(out) == numbers(reference)


def test_resume_refuses_incomplete_and_foreign_fit_files(tmp_path, study, reference):
    out = tmp_path / "fits"
    shutil.copytree(reference, out)
    (out / "M0_k1.nc").write_bytes((reference / "M0_k1.nc").read_bytes()[:5000])
    with pytest.raises(OutputError) as refused:
        fit_command([MODELS / "m0_empty.toml"], study, out, [0, 1, 2], draws=200, tune=200,
                    chains=2, seed=4, resume=True)
    message = str(refused.value)
    assert "M0_k1.nc cannot be read as a fit" in message and "--force" in message
    assert "M0_k0.nc" not in message
    shutil.copy(reference / "M0_k1.nc", out / "M0_k1.nc")
    with pytest.raises(OutputError, match=r"M0_k0.nc was fitted with other sampler options "
                                          r"\(draws 200, not 300\); .*M0_k2.nc was fitted"):
        fit_command([MODELS / "m0_empty.toml"], study, out, [0, 1, 2], draws=300, tune=200,
                    chains=2, seed=4, resume=True)
    other = tmp_path / "other.csv"
    three_years().assign(gcse_score=lambda d: d["gcse_score"] + 1).to_csv(other, index=False)
    with pytest.raises(OutputError, match="M0_k0.nc was fitted to different data"):
        fit_command([MODELS / "m0_empty.toml"], other, out, [0, 1, 2], draws=200, tune=200,
                    chains=2, seed=4, resume=True)
    # complete and matching: nothing to fit, the summary is rewritten
    path = fit_command([MODELS / "m0_empty.toml"], study, out, [0, 1, 2], draws=200, tune=200,
                       chains=2, seed=4, resume=True)
    assert numbers(path.parent) == numbers(reference)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    """``bayesfed ARGS`` through ``cli.main`` as the console script runs it, in this process."""
    return run_main(args)


def test_resume_with_force_is_a_usage_error(tmp_path, study):
    code, _, err = run_cli([*JOB, "--data", str(study), "--out", str(tmp_path / "fits"),
                            "--resume", "--force"])
    assert code == 2
    assert "--resume" in err and "--force" in err
    assert not (tmp_path / "fits").exists()


# -- reproducibility -------------------------------------------------------------------------

def test_same_numbers_in_fresh_processes_with_different_empty_caches(tmp_path, study,
                                                                      reference):
    """One fit of the reference job in a fresh process with another empty compile cache: the
    reference's numbers to the last bit.

    The other half, a cache filled by an earlier run (warm) against an empty one (cold), is
    what the interrupt tests compare: their processes use the cache the reference job filled
    from empty. Before numba's fast-math was turned off, warm and cold runs gave different
    draws (``bayesfed.sampling.nuts``'s docstring).
    """
    cache = tmp_path / "cache_b"
    args = [a if a != "0-2" else "0" for a in JOB]
    run = bayesfed([*args, "--data", str(study), "--out", str(tmp_path / "fits")], cache)
    assert run.returncode == 0, run.stderr
    assert numbers(tmp_path / "fits") == {name: numbers(reference)[name]
                                          for name in ("M0_k0.nc", "M1_k0.nc")}
    assert any(cache.rglob("*.nbi")), "the run did not compile into its own cache"


def test_fit_files_record_what_reproduces_them(reference, study):
    from bayesfed.jobs.commands import file_sha256
    from bayesfed.jobs.fit_one import fit_seed

    attrs = load_fit(reference / "M0_k1.nc").attrs
    assert attrs["bayesfed_data_sha256"] == file_sha256(study)
    assert json.loads(attrs["bayesfed_spec"])["model"]["name"] == "M0"
    options = json.loads(attrs["bayesfed_options"])
    assert options["seed"] == 4 and options["fit_seed"] == fit_seed(4, "M0", 1)
    assert set(json.loads(attrs["bayesfed_versions"])) >= {
        "bayesfed", "pymc", "pytensor", "nutpie", "numba", "numpy", "arviz"}


def test_report_warns_when_fits_come_from_different_data(reference):
    from bayesfed.report.markdown import render_markdown

    summary = json.loads((reference / "summary.json").read_text())
    assert "different data files" not in render_markdown(summary, title="t")
    summary["fits"][1]["data_sha256"] = "0" * 64
    assert "WARNING: these fits come from 2 different data files" in render_markdown(
        summary, title="t")


# -- diagnostic gates ------------------------------------------------------------------------

def energy_tree(energy: np.ndarray) -> xr.DataTree:
    """A well-mixed posterior (iid draws) with the given energy (chain, draw)."""
    rng = np.random.default_rng(0)
    chains, draws = energy.shape
    post = xr.Dataset({"intercept": (("chain", "draw"), rng.normal(size=(chains, draws)))})
    stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((chains, draws), bool)),
                        "energy": (("chain", "draw"), energy)})
    return xr.DataTree.from_dict({"/posterior": post, "/sample_stats": stats})


def test_low_e_bfmi_fails_the_gates():
    rng = np.random.default_rng(1)
    iid = rng.normal(size=(4, 1000))
    good = diagnostics(energy_tree(iid))
    assert good["ok"] and good["problems"] == []
    # E-BFMI = mean squared energy change / energy variance: about 2 for iid energies
    expected = (np.diff(iid, axis=1) ** 2).mean(axis=1) / iid.var(axis=1, ddof=1)
    assert good["min_bfmi"] == pytest.approx(expected.min(), rel=1e-9)
    # a chain whose energy barely moves between draws (a random walk): poor exploration
    sticky = iid.copy()
    sticky[2] = np.cumsum(rng.normal(scale=0.1, size=1000))
    bad = diagnostics(energy_tree(sticky))
    assert GATES["min_bfmi"] == 0.3 and bad["min_bfmi"] < 0.3 and not bad["ok"]
    assert bad["problems"] == [f"E-BFMI {bad['min_bfmi']:.2f} < 0.3 (chain 2)"]


def test_strict_exits_5_naming_the_failed_fits(tmp_path):
    data = tmp_path / "t.csv"
    small_table().to_csv(data, index=False)
    out = tmp_path / "fits"
    # far too few draws and one warm-up iteration: the ESS gates cannot pass
    code, stdout, err = run_cli(["fit", str(MODELS / "m0_empty.toml"), "--data", str(data),
                                 "--out", str(out), "--years", "0", "--draws", "15", "--tune",
                                 "1", "--chains", "2", "--seed", "1", "--strict"])
    assert code == 5, err
    lines = err.splitlines()
    assert lines[0] == (f"bayesfed: error: --strict: 1 of 1 fits failed their diagnostic gates "
                        f"(everything is written, {out / 'summary.json'} marks them):")
    assert lines[1].startswith("  M0_k0.nc: ") and "bulk ESS" in lines[1]
    assert len(lines) == 2 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["M0_k0.nc", "summary.json"]
    [fit] = json.loads((out / "summary.json").read_text())["fits"]
    assert fit["diagnostics"]["ok"] is False and "min_bfmi" in fit["diagnostics"]
    # without --strict the same job succeeds (and only warns)
    code, stdout, err = run_cli(["fit", str(MODELS / "m0_empty.toml"), "--data", str(data),
                                 "--out", str(out), "--years", "0", "--draws", "15", "--tune",
                                 "1", "--chains", "2", "--seed", "1", "--force"])
    assert code == 0, err
    assert "WARNING: 1 fits failed their diagnostics" in stdout


def test_summaries_made_beside_the_fits_are_the_ones_made_afterwards(tmp_path, monkeypatch):
    """A job of six per-year fits summarises each in a worker process as it is saved
    (bayesfed.jobs.summaries); summary.json is the same as summarising the folder afresh, and
    a fit replaced afterwards is not summarised from the worker's stale summary."""
    from bayesfed.jobs import summaries

    study = tmp_path / "study.csv"
    three_years().to_csv(study, index=False)
    used = {}
    results = summaries.SummaryWorker.results

    def spy(self):
        used.update(results(self))
        return used

    monkeypatch.setattr(summaries.SummaryWorker, "results", spy)
    # pytest's own script as the main module would be unsafe to spawn from: say it is safe
    # (the worker imports the test module's imports, never runs a test)
    monkeypatch.setattr("bayesfed.jobs.commands.spawn_safe", lambda: True)
    out = tmp_path / "fits"
    path = fit_command([MODELS / "m0_empty.toml", MODELS / "m1_pupil.toml"], study, out,
                       [0, 1, 2], draws=200, tune=200, chains=2, seed=4)
    assert sorted(used) == FITS  # every fit was summarised by the worker
    assert json.loads(path.read_text()) == json.loads(json.dumps(summarize_dir(out)))
    # M0_k1 refitted with another seed: its summary, and M1_k1's (M0 is its reference), are
    # no longer current
    stale = {name: used[name] for name in ("M0_k1.nc", "M1_k1.nc")}
    fit_command([MODELS / "m0_empty.toml"], study, tmp_path / "other", [1], draws=200,
                tune=200, chains=2, seed=5)
    shutil.copy(tmp_path / "other" / "M0_k1.nc", out / "M0_k1.nc")
    assert not any(part.current(out / name, part.reference) for name, part in stale.items())
    assert summarize_dir(out, used) == summarize_dir(out)


@pytest.mark.parametrize(("spec", "file", "safe"), [
    ("bayesfed.__main__", "/x/bayesfed/__main__.py", True),  # python -m bayesfed
    (None, None, True),  # an interactive session, a notebook, python -c
    (None, "/venv/bin/bayesfed", True),  # the bayesfed command (its script is guarded)
    (None, "/home/me/analysis.py", False),  # a user's script: maybe unguarded
])
def test_a_worker_is_spawned_only_where_it_cannot_rerun_a_script(monkeypatch, spec, file,
                                                                 safe):
    import types

    from bayesfed.jobs.workers import spawn_safe

    main = types.ModuleType("__main__")
    main.__spec__ = None if spec is None else types.SimpleNamespace(name=spec)
    if file is not None:
        main.__file__ = file
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert spawn_safe() is safe
