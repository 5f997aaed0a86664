"""Validation of a pupil table against a model specification, before any model is built.

Every problem found is collected and raised together as one :class:`~bayesfed.errors.DataError`
whose lines name the column (and its role), how many rows break the rule, a few example rows
and the fix. Row numbers count data rows from 1, the header excluded, as a spreadsheet user
would find them (row 1 is the file's second line in a CSV).

The rules, in the order they are reported:

1. Columns: a column the model needs is not in the table; a column name the table holds more
   than once; one column mapped to several roles; an identifier or label column used as a
   numeric predictor.
2. ``not numeric``: text (or dates) in a numeric column.
3. ``missing value``: blank / NA in a needed column (``drop_incomplete=True`` drops those rows
   instead and reports how many). With a year selection, years since founding are needed.
4. ``out of range``: infinities; magnitudes above ``MAX_ABS``; flags not 0/1; IDACI outside 0-1;
   years not whole numbers; categorical labels not among the spec's levels.
5. ``not constant within school``: a school-level column (federated flag, founding year,
   federation id and type) that varies within a school.
6. ``inconsistent years since founding``: ``years_since != cohort - founding_year``.
7. ``federation id without flag``: a federation id on a school whose federated flag is 0, or the
   reverse.
8. ``duplicated pupil id``: the same pupil id twice in one cohort.
9. Selection rules: a requested year (or, without years, the table) with no pupils or a single
   school, an outcome or predictor with no variation among the selected pupils (or variation
   too small to scale the default priors by), and predictors that are exact linear
   combinations of each other (their coefficients would not be identified).

The rules run batch by batch, so a table larger than memory is checked with the same code and
messages as one held whole (:func:`validate_table` itself works in batches of
:data:`BATCH_ROWS`): :func:`~bayesfed.inputs.rows.check_batch` applies the rules of single rows
(2-4, 6, 7);
:func:`scan` gathers, from the clean rows, what the rules across rows need, as a
:class:`Scan` that merges over consecutive row ranges (distinct school-level values per
school, a hash per pupil id, and per fit a :class:`~bayesfed.inputs.sample.Sample`: moments, labels
seen and the QR factor of the design); :func:`conclude` applies rules 5, 8 and 9 to the merged scan
and raises, reading the table a second time only to name the rows of a broken cross-row rule.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from bayesfed.errors import DataError
from bayesfed.inputs.problems import (
    N_EXAMPLES,
    Problem,
    example_rows,
    merge_problem,
    message,
    plural,
    shown_values,
)
from bayesfed.inputs.rows import Batch, check_batch
from bayesfed.inputs.rules import SCHOOL_LEVEL, Rules, column_error, rules_for
from bayesfed.inputs.sample import Sample, sample_of, sample_problems
from bayesfed.inputs.spec import ModelSpec


@dataclass(frozen=True)
class PupilTable:
    """A validated pupil table with canonical column names.

    Attributes
    ----------
    frame : DataFrame
        A new frame (the input is never modified) whose columns are named by role or term:
        ``outcome``, ``school``, each predictor term, and whichever optional roles were present
        or derived (``years_since`` is derived from ``cohort - founding_year`` when absent).
        Numeric columns are float or int; identifiers are strings.
    n_input_rows : int
        Rows in the table as read.
    n_dropped : int
        Rows dropped for missing values (only with ``drop_incomplete=True``).
    columns : dict of str to str
        Canonical name -> the user's column it came from.
    """

    frame: pd.DataFrame
    n_input_rows: int
    n_dropped: int
    columns: dict[str, str] = field(default_factory=dict)

    def select_year(self, year: int | None) -> pd.DataFrame:
        """Pupils with ``years_since == year``; the whole table when ``year`` is None."""
        if year is None:
            return self.frame
        return self.frame.loc[self.frame["years_since"] == year].reset_index(drop=True)


#: Rows per batch when a table held in memory is validated. A file too large to hold is
#: validated batch by batch with the same rules (:func:`scan`); tests set this small to check
#: that batching changes no message.
BATCH_ROWS = 1_000_000


@dataclass
class Scan:
    """What one pass over consecutive rows of a table found; scans of consecutive row ranges
    merge (:meth:`merge`), so batches can be read one after the other or by several workers.

    Attributes
    ----------
    n_rows, n_kept, n_dropped : int
        Rows read, kept, and dropped for a missing value.
    problems : dict
        ``(column, role, what) -> (rank, Problem)``: the rules single rows broke.
    clean : bool
        No value rule was broken; only then are the cross-row facts below gathered.
    pairs : dict of str to list of DataFrame
        Per school-level column, its (school, value) pairs: distinct within each frame, and
        across frames only once :func:`distinct_pairs` has been taken (merging consecutive
        scans concatenates the lists; see :data:`PAIR_PARTS`).
    hashes : list of ndarray of uint64
        A 64-bit hash of each (pupil id, cohort), for the duplicate rule (8 bytes a pupil).
    samples : dict
        Year since founding (None: the whole table) -> :class:`~bayesfed.inputs.sample.Sample`.
    years_seen : set of int
        Years since founding present (only with a year selection).
    reduced : object
        What the caller's ``reduce`` made of the clean rows (see :func:`scan`).
    """

    n_rows: int = 0
    n_kept: int = 0
    n_dropped: int = 0
    problems: dict = field(default_factory=dict)
    clean: bool = True
    pairs: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
    hashes: list[np.ndarray] = field(default_factory=list)
    samples: dict = field(default_factory=dict)
    years_seen: set = field(default_factory=set)
    reduced: object = None

    def merge(self, other: Scan, reduce: Reducer | None = None) -> Scan:
        """This scan's rows followed by ``other``'s."""
        problems = dict(self.problems)
        for key, (rank, problem) in other.problems.items():
            problems[key] = (rank, merge_problem(problems[key][1], problem)
                             if key in problems else problem)
        pairs = {k: _compact(v + other.pairs.get(k, [])) for k, v in self.pairs.items()}
        pairs |= {k: v for k, v in other.pairs.items() if k not in pairs}
        samples = dict(self.samples)
        for key, sample in other.samples.items():
            samples[key] = samples[key].merge(sample) if key in samples else sample
        reduced = (other.reduced if self.reduced is None else self.reduced
                   if other.reduced is None else reduce.merge(self.reduced, other.reduced))
        return Scan(self.n_rows + other.n_rows, self.n_kept + other.n_kept,
                    self.n_dropped + other.n_dropped, problems, self.clean and other.clean,
                    pairs, self.hashes + other.hashes, samples,
                    self.years_seen | other.years_seen, reduced)


#: Frames of (school, value) pairs a merged :class:`Scan` keeps per column before they are
#: deduplicated as one: deduplicating at every merge handled every school's pairs again at each
#: of a national table's 22 merges, in the thread that reads and merges; 16 frames are a few
#: hundred thousand pairs at most.
PAIR_PARTS = 16


def _compact(parts: list[pd.DataFrame]) -> list[pd.DataFrame]:
    return [distinct_pairs(parts)] if len(parts) >= PAIR_PARTS else parts


def distinct_pairs(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The distinct (school, value) rows of a :class:`Scan`'s frames of pairs, in their order."""
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts).drop_duplicates(ignore_index=True)


class Reducer(Protocol):
    """What a scan makes of the clean rows besides validating them: ``of(frame)`` one batch's
    part (the canonical frame of :class:`~bayesfed.inputs.rows.Batch`), ``merge(a, b)`` two
    consecutive parts."""

    def of(self, frame: pd.DataFrame) -> object: ...

    def merge(self, a: object, b: object) -> object: ...


def _key_hash(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose pupil id (and cohort) are known, and a 64-bit hash of each one's key.

    Equal keys have equal hashes; rows whose hashes repeat are compared by their values
    before any is reported (:func:`_cross_row_problems`).
    """
    keys = ["pupil_id", "cohort"] if "cohort" in frame else ["pupil_id"]
    known = frame[keys].notna().all(axis=1).to_numpy()
    h = text_hash(frame["pupil_id"][known])
    if "cohort" in frame:
        cohort = frame["cohort"].to_numpy(dtype=np.int64, na_value=0)[known]
        h = _mix(h ^ _mix(cohort.astype(np.uint64)))
    return known, h


def text_hash(values: pd.Series) -> np.ndarray:
    """A 64-bit hash of each (non-missing) text value, computed on its UTF-8 bytes in Arrow's
    buffers: a polynomial over the bytes, mixed with the length (no Python object a value,
    which at national size cost seconds: ``docs/benchmarks.md``).

    Returns
    -------
    ndarray of uint64, shape (len(values),)
    """
    array = pa.array(values.array)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = array.cast(pa.large_string())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[
        array.offset: array.offset + len(array) + 1]
    data = array.buffers()[2]
    start = int(offsets[0]) if len(offsets) else 0
    data = (np.frombuffer(data, dtype=np.uint8)[start: int(offsets[-1])] if data is not None
            else np.zeros(0, dtype=np.uint8))
    offsets = offsets - start
    lengths = np.diff(offsets)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, _PRIME, dtype=np.uint64))
    h = lengths.astype(np.uint64)
    for length in np.unique(lengths):  # identifiers come in a few lengths
        rows = np.flatnonzero(lengths == length)
        if length:
            chars = data[offsets[rows][:, None] + np.arange(length)[None, :]]
            h[rows] += chars.astype(np.uint64) @ powers[:length]  # wraps modulo 2**64
    return _mix(h)


_PRIME = np.uint64(1099511628211)  # FNV's 64-bit prime


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (uint64, wrapping)."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


#: Batches :func:`scan` checks and reduces at once, in threads: NumPy, pandas and Arrow release
#: the GIL for much of a batch's work (a national table, 4.5 million rows: 5.7-5.8 s with two
#: threads on two cores against 6.8-7.4 s with one, the same statistics).
SCAN_THREADS = min(2, os.cpu_count() or 1)


def scan(batches: Iterable[pd.DataFrame], rules: Rules, first_row: int = 0,
         reduce: Reducer | None = None) -> Scan:
    """One pass over consecutive batches of a table, from row ``first_row`` (0-based).

    Each batch is checked (:func:`~bayesfed.inputs.rows.check_batch`); while no value rule is broken
    its clean rows feed the cross-row facts (school-level values, pupil-id hashes, the samples of
    each fit) and ``reduce``. Up to :data:`SCAN_THREADS` batches are processed at once and their
    results merged in the table's order, so the result is that of one batch after another.
    Memory holds a few batches and those facts, not the rows.
    """
    def one(raw: pd.DataFrame, start: int) -> Scan:
        return _scan_one(check_batch(raw, rules, start), rules, reduce)

    out, start = Scan(), first_row
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        pending: deque[Future[Scan]] = deque()
        for raw in batches:
            pending.append(pool.submit(one, raw, start))
            start += len(raw)
            while len(pending) > SCAN_THREADS:
                out = out.merge(pending.popleft().result(), reduce)
        while pending:
            out = out.merge(pending.popleft().result(), reduce)
    return out


def _scan_one(batch: Batch, rules: Rules, reduce: Reducer | None) -> Scan:
    problems = {(p.column, p.role, p.what): (rank, p) for rank, p in batch.problems}
    out = Scan(batch.n_rows, len(batch.frame), batch.n_dropped, problems, batch.clean)
    if not batch.clean:
        return out
    frame = batch.frame
    school = pd.factorize(frame["school"])[0]
    for name in SCHOOL_LEVEL:
        if name in frame:
            # the first row of each distinct (school, value), found by integer codes
            value, uniques = pd.factorize(frame[name], use_na_sentinel=False)
            first = np.unique(school * (len(uniques) + 1) + value, return_index=True)[1]
            out.pairs[name] = [pd.DataFrame({"school": frame["school"].iloc[first],
                                             "value": frame[name].iloc[first]}
                                            ).reset_index(drop=True)]
    if "pupil_id" in frame:
        out.hashes.append(_key_hash(frame)[1])
    spec = rules.spec
    if rules.years is None:
        out.samples[None] = sample_of(frame, spec)
    elif "years_since" in frame:
        since = frame["years_since"]
        out.years_seen = {int(v) for v in since.dropna().unique()}
        for year in rules.years:
            mask = (since == year).fillna(False).to_numpy(dtype=bool)
            out.samples[year] = sample_of(frame.loc[mask].reset_index(drop=True), spec)
    if reduce is not None:
        out.reduced = reduce.of(frame)
    return out


def conclude(result: Scan, rules: Rules, batches: Callable[[], Iterable[pd.DataFrame]]) -> None:
    """Raise the table's :class:`DataError`, if any, once every row has been scanned.

    Parameters
    ----------
    result : Scan
        The merged scan of every row.
    rules : Rules
    batches : callable
        Returns the table's batches again: the cross-row rules (values not constant within a
        school, duplicated pupil ids) read the table a second time to name the rows, only
        when one is broken.
    """
    ranked = list(result.problems.values())
    if result.clean:
        if result.n_kept == 0:
            ranked.append(((2, -1), Problem("", "", "no rows",
                                            "check the export: bayesfed needs one row per pupil")))
        else:
            ranked += _cross_row_problems(result, rules, batches)
    else:  # the cross-row rules need clean values
        ranked = [(rank, p) for rank, p in ranked if rank[0] < 2]
    if ranked:
        ranked.sort(key=lambda item: item[0])
        raise DataError(message(rules.source, [p for _, p in ranked], result.n_rows,
                                 result.n_dropped))
    problems: list[Problem] = []
    if rules.years is not None:
        for year in rules.years:
            problems += sample_problems(result.samples.get(year, Sample()), rules, year,
                                         result.years_seen)
    else:
        problems += sample_problems(result.samples[None], rules, None, set())
    if problems:
        raise DataError(message(rules.source, problems, result.n_rows, result.n_dropped))


def _cross_row_problems(result: Scan, rules: Rules,
                        batches: Callable[[], Iterable[pd.DataFrame]]
                        ) -> list[tuple[tuple, Problem]]:
    """School-level values not constant within a school, and duplicated pupil ids."""
    varying = {}
    for name, parts in result.pairs.items():
        counts = distinct_pairs(parts).groupby("school", sort=False, dropna=False).size()
        if (counts > 1).any():
            varying[name] = counts.index[counts > 1]
    hashes = np.concatenate(result.hashes) if result.hashes else np.zeros(0, np.uint64)
    hashes.sort()
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    if not varying and repeated.size == 0:
        return []
    # a second pass names the rows
    school_rows = {name: ([], 0, []) for name in varying}
    candidates = []  # (positions, ids, cohorts) of rows whose key hash is repeated
    first_row = 0
    for raw in batches():
        batch = check_batch(raw, rules, first_row)
        first_row += batch.n_rows
        frame = batch.frame
        for name, schools in varying.items():
            mask = frame["school"].isin(schools).to_numpy(dtype=bool)
            rows, n, seen = school_rows[name]
            if mask.any():
                more, count = example_rows(mask, batch.positions)
                seen += [s for s in pd.unique(frame.loc[mask, "school"]) if s not in seen]
                school_rows[name] = ((rows + list(more))[:N_EXAMPLES], n + count, seen)
        if repeated.size:
            known, h = _key_hash(frame)
            idx = np.flatnonzero(known)[np.isin(h, repeated)]
            cohort = (frame["cohort"].to_numpy(dtype=object)[idx] if "cohort" in frame
                      else np.zeros(idx.size, dtype=object))
            candidates.append(pd.DataFrame({"position": batch.positions[idx],
                                            "id": frame["pupil_id"].to_numpy(dtype=object)[idx],
                                            "cohort": cohort}))
    ranked = []
    for i, name in enumerate(SCHOOL_LEVEL):
        if name not in varying:
            continue
        rows, n, seen = school_rows[name]
        shown = ", ".join(repr(s) for s in seen[:N_EXAMPLES])
        more = ", ..." if len(varying[name]) > N_EXAMPLES else ""
        ranked.append(((2, i), Problem(
            rules.present[name], name,
            f"not constant within school ({plural(len(varying[name]), 'school')}: "
            f"{shown}{more})",
            "a school-level value must be the same for every pupil of a school; correct the "
            "school's rows or split it into separate school ids", tuple(rows), n)))
    if candidates:
        rows = pd.concat(candidates, ignore_index=True)
        rows = rows[rows.duplicated(["id", "cohort"], keep=False)].sort_values("position")
        if len(rows):
            within = " within a cohort" if "cohort" in rules.present else ""
            first = rows.head(N_EXAMPLES)
            ranked.append(((5,), Problem(
                rules.present["pupil_id"], "pupil_id", f"duplicated pupil id{within}",
                "each pupil appears once per cohort; remove repeated rows",
                tuple(int(p) + 1 for p in first["position"]), len(rows),
                shown_values(first["id"].to_numpy()))))
    return ranked


def validate_table(
    raw: pd.DataFrame,
    spec: ModelSpec,
    years: Iterable[int] | None = None,
    drop_incomplete: bool = False,
    source: str = "data",
    complete: Sequence[str] = (),
) -> PupilTable:
    """Check a pupil table against a spec and return it with canonical column names.

    The table is checked in batches of :data:`BATCH_ROWS` rows, with the rules a file too
    large to hold is checked with (:func:`scan`), so both give the same messages.

    Parameters
    ----------
    raw : DataFrame
        The table as read (never modified).
    spec : ModelSpec
        Supplies the column mapping, predictors and categorical levels.
    years : iterable of int, optional
        Years since founding that will be fitted separately; each must have pupils in at least
        two schools. None fits the whole table and needs no year columns.
    drop_incomplete : bool
        Drop rows with a missing value in a needed column (reported in ``n_dropped``) instead
        of raising.
    source : str
        Name of the table in messages (usually its path).
    complete : sequence of str
        More columns whose blank values drop a row with ``drop_incomplete`` (the other
        models' columns of a job: :attr:`bayesfed.inputs.rules.Rules.complete`).

    Returns
    -------
    PupilTable

    Raises
    ------
    DataError
        Listing every problem found.
    """
    rules, problems = rules_for(raw.columns, spec, years, drop_incomplete, source, complete)
    if problems:  # nothing else can be checked reliably without the columns
        raise column_error(rules, problems, len(raw))

    def batches() -> Iterable[pd.DataFrame]:
        for start in range(0, max(len(raw), 1), BATCH_ROWS):
            yield raw.iloc[start: start + BATCH_ROWS]

    result = scan(batches(), rules, reduce=_Frames())
    conclude(result, rules, batches)
    frames = result.reduced
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return PupilTable(frame=frame, n_input_rows=result.n_rows, n_dropped=result.n_dropped,
                      columns=dict(rules.present))


class _Frames:
    """Keeps the clean batches (a table validated in memory keeps its rows)."""

    def of(self, frame: pd.DataFrame) -> list[pd.DataFrame]:
        return [frame]

    def merge(self, a: list[pd.DataFrame], b: list[pd.DataFrame]) -> list[pd.DataFrame]:
        return a + b
