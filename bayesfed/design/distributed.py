"""The reduction and the fits on a Dask cluster (the optional extra ``bayesfed[dask]``).

For a user who has outgrown one machine: a partitioned Parquet dataset (a folder of files,
e.g. one per cohort or local authority) is reduced file by file on the cluster's workers, and
the fits of a job run on its workers.

* :func:`reduce_dask`: each worker scans one file
  (:func:`bayesfed.inputs.validate.scan`, with the row numbers of the whole dataset: each file's
  first row is known from the row counts in the files' footers) and reduces it to the spec's
  statistics (per cell, or per year and school); the scans come back (the statistics, 8 bytes
  per pupil for the duplicated-id rule) and merge in file order, so the result and every
  error message are those of :func:`bayesfed.design.reduce.reduce_file` on one machine.
* :func:`bayesfed.jobs.schedule.run_job` with ``executor=client.get_executor()`` sends each fit (its
  spec, its year's pupils or the reduced statistics) to a worker, which writes the fit file
  atomically. The workers must see the output folder (a shared file system). Fits already
  running on a worker when the job is interrupted finish there; the others are cancelled.

The cluster is the caller's: ``bayesfed fit --dask ADDRESS`` connects to a running
scheduler, and a script passes a ``distributed.Client`` (for a laptop,
``Client(LocalCluster(n_workers=2))``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce as fold
from pathlib import Path

from bayesfed.design.reduce import Reduced, ReducedYears, file_rules, reduced_from, reducer_for
from bayesfed.inputs.read import parquet_parts, read_batches
from bayesfed.inputs.rules import Rules
from bayesfed.inputs.spec import ModelSpec
from bayesfed.inputs.validate import Scan, scan


def _scan_part(path: str, part: str, rules: Rules, first_row: int) -> Scan:
    """One worker's task: the scan of one file of the dataset."""
    columns = rules.read_columns
    return scan(read_batches(path, columns=columns, part=part), rules, first_row,
                reduce=reducer_for(rules.spec, rules.years))


def reduce_dask(client, path: str | Path, spec: ModelSpec, years: Sequence[int] | None = None,
                drop_incomplete: bool = False, source: str | None = None,
                complete: Sequence[str] = ()
                ) -> Reduced | ReducedYears:
    """:func:`bayesfed.design.reduce.reduce_file` on a Dask cluster, one file of a Parquet dataset
    per task.

    Parameters
    ----------
    client : distributed.Client
        Connected to the cluster whose workers read the files (they must see ``path``).
    path : str or Path
        A Parquet file or a folder of Parquet files.
    spec : ModelSpec
    years : sequence of int, optional
        A ``two_level`` spec's years since founding (None: the whole table); an
        ``event_time`` spec fits every year at once and ignores them.
    drop_incomplete : bool
    source : str, optional
        Name of the table in messages (default: the path).
    complete : sequence of str
        More columns whose blank values drop a row with ``drop_incomplete`` (the other
        models' columns of a job: :attr:`bayesfed.inputs.rules.Rules.complete`).

    Returns
    -------
    Reduced or ReducedYears
        Equal to what :func:`bayesfed.design.reduce.reduce_file` returns for the same data.

    Raises
    ------
    DataError
        As the one-machine reduction, with the same message. A rule broken
        across rows (a school-level value that varies, a duplicated pupil id) is named with
        its rows by a second pass, run here.
    """
    path = str(path)
    rules, batches = file_rules(path, spec, years, drop_incomplete, source, complete)
    parts = parquet_parts(path)
    first_rows = [sum(n for _, n in parts[:i]) for i in range(len(parts))]
    futures = [client.submit(_scan_part, path, part, rules, first_row, pure=False)
               for (part, _), first_row in zip(parts, first_rows, strict=True)]
    scans = client.gather(futures)
    reducer = reducer_for(spec, rules.years)
    result = fold(lambda a, b: a.merge(b, reducer), scans, Scan())
    return reduced_from(result, rules, batches, reducer)
