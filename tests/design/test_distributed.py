"""The reduction and the fits on a local Dask cluster (two worker processes): the same
statistics, messages and draws as on one machine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import MODELS, ROOT, run_main
from distributed import Client, LocalCluster

from bayesfed.design.distributed import reduce_dask
from bayesfed.design.reduce import reduce_file
from bayesfed.errors import DataError
from bayesfed.inputs.read import read_table
from bayesfed.inputs.spec import load_spec
from bayesfed.inputs.validate import validate_table
from bayesfed.jobs import commands as job
from bayesfed.jobs.fit_one import FitOptions
from bayesfed.jobs.schedule import run_job
from bayesfed.store import load_fit

STUDY = ROOT / "data" / "synthetic_study.parquet"


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def spec():
    return load_spec(MODELS / "event_time.toml")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Every 4th pupil of the shipped study, one Parquet file per cohort."""
    path = tmp_path_factory.mktemp("dataset") / "study"
    pd.read_parquet(STUDY).iloc[::4].to_parquet(path, index=False, partition_cols=["cohort"])
    return path


def test_the_cluster_reduces_a_partitioned_dataset_as_one_machine_does(client, spec, folder):
    local = reduce_file(folder, spec)
    remote = reduce_dask(client, folder, spec)
    assert remote.n_input_rows == local.n_input_rows
    for name in ("n", "y_mean", "X_mean", "E", "school_idx", "cohort_idx", "XX", "Xy"):
        np.testing.assert_allclose(getattr(remote.stats, name), getattr(local.stats, name),
                                   rtol=1e-10, atol=1e-9, err_msg=name)
    assert remote.stats.cells == local.stats.cells
    assert remote.stats.yy == pytest.approx(local.stats.yy, rel=1e-10)


def test_the_cluster_reports_what_one_machine_reports(client, spec, tmp_path):
    """A duplicated pupil id in two files and text in a third: the message names the rows
    of the whole dataset."""
    frame = pd.read_parquet(STUDY).iloc[::6].reset_index(drop=True)
    first, last = frame.index[frame["cohort"] == 2003][0], frame.index[-1]
    frame.loc[last, ["pupil_id", "cohort"]] = frame.loc[first, ["pupil_id", "cohort"]].values
    frame["ks2"] = frame["ks2"].astype(str)
    frame.loc[frame.index[frame["cohort"] == 2008][3], "ks2"] = "n/k"
    path = tmp_path / "bad"
    frame.to_parquet(path, index=False, partition_cols=["cohort"])
    with pytest.raises(DataError) as local:
        validate_table(read_table(path), spec, source=str(path))
    with pytest.raises(DataError) as remote:
        reduce_dask(client, path, spec)
    assert str(remote.value) == str(local.value)
    assert "not numeric" in str(remote.value)
    frame.loc[frame.index[frame["cohort"] == 2008][3], "ks2"] = "0.1"
    frame.to_parquet(tmp_path / "dup", index=False, partition_cols=["cohort"])
    with pytest.raises(DataError) as remote:
        reduce_dask(client, tmp_path / "dup", spec)
    assert "duplicated pupil id within a cohort in 2 rows" in str(remote.value)


def test_fits_farmed_out_to_the_workers_equal_local_fits(client, tmp_path):
    m0 = load_spec(MODELS / "m0_empty.toml")
    table = validate_table(read_table(STUDY), m0, years=[4, 5])
    options = FitOptions(draws=200, tune=200, seed=3)
    local = run_job({"M0": table}, [m0], [4, 5], tmp_path / "local", options, "hash")
    remote = run_job({"M0": table}, [m0], [4, 5], tmp_path / "remote", options, "hash",
                     jobs=2, executor=client.get_executor())
    assert sorted(p.name for p in remote) == sorted(p.name for p in local) == [
        "M0_k4.nc", "M0_k5.nc"]
    for path in local:
        a = load_fit(path).posterior.to_dataset()
        b = load_fit(tmp_path / "remote" / path.name).posterior.to_dataset()
        np.testing.assert_array_equal(a["sigma"].values, b["sigma"].values)
        np.testing.assert_array_equal(a["sd_school"].values, b["sd_school"].values)


def test_fit_dask_runs_the_job_on_the_cluster(client, tmp_path, monkeypatch):
    """`bayesfed fit --dask ADDRESS`: the fits are written by the workers, the summary by the
    command; an address nobody answers at is one line and exit code 1."""
    code, out, err = run_main(["fit", str(MODELS / "m0_empty.toml"), "--data", str(STUDY),
                               "--out", str(tmp_path / "fits"), "--years", "5", "--draws",
                               "200", "--tune", "200", "--dask", client.scheduler.address])
    assert code == 0, err
    assert (tmp_path / "fits" / "M0_k5.nc").exists()
    assert (tmp_path / "fits" / "summary.json").exists()
    monkeypatch.setattr(job, "CONNECT_TIMEOUT", 2)
    code, out, err = run_main(["fit", str(MODELS / "m0_empty.toml"), "--data", str(STUDY),
                               "--out", str(tmp_path / "other"), "--years", "5", "--dask",
                               "tcp://127.0.0.1:9"])
    assert code == 1
    assert err.startswith("bayesfed: error: cannot reach the Dask scheduler at "
                          "tcp://127.0.0.1:9: ")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
