"""Reading a pupil table from CSV or Parquet, whole (:func:`read_table`) or in batches of rows
(:func:`read_batches`, for tables larger than memory). The input is only ever opened for
reading.

A CSV file is read as text, column by column, with pandas' semantics (every value a string,
pandas' default missing-value markers, spaces after a comma skipped, rows longer or shorter
than the header handled as pandas handles them). Arrow's CSV reader is used where it reads
the file exactly as pandas would: the header has at least two distinct, non-empty names, no
value starts with a space or a tab, every row has the header's number of fields, the file is
UTF-8 and has data rows. Batch by batch, Arrow's blocks are checked as they are read: a file
Arrow reads throughout is read once. From the first block Arrow reads otherwise, or refuses,
pandas gives the rest of the batches (its reader parses the file from the start, skipping the
batches already given, which are those it would have given). Read whole, the one Arrow read is
checked before it is used. Any other file is read by pandas, whose messages name
the problem. Arrow's reader is used because it reads a large CSV faster than pandas
(``docs/benchmarks.md``, section "A national-size CSV (``bench/csv_reading.py``)");
``tests/inputs/test_read.py`` checks that both give the same frames.
"""

from __future__ import annotations

import csv
import itertools
import warnings
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pandas._libs.parsers import STR_NA_VALUES

from bayesfed.errors import DataError

#: File endings the reader understands, and what it does with each.
FORMATS = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}

#: Separators a spreadsheet may have used instead of commas, as they are named in messages.
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


#: Rows per batch of :func:`read_batches` (Parquet batches also end at row-group boundaries).
BATCH_ROWS = 250_000


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a pupil table.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` or ``.parquet`` file, or a folder of Parquet files (a partitioned dataset).

    Returns
    -------
    DataFrame
        One row per pupil, columns as in the file. CSV identifiers are read as text so that
        leading zeros survive; numeric columns are converted during validation, where a
        non-numeric value can be reported with its row. A column name the CSV header holds
        twice is kept twice (validation reports it if the model reads that column).

    Raises
    ------
    DataError
        The file is missing, has an unknown ending, or cannot be parsed: not UTF-8 text, rows
        with more fields than the header, or a header separated by semicolons or tabs.
    """
    path = Path(path)
    kind = _kind(path)
    with _reading(path, kind):
        if kind == "CSV":
            return _read_csv(path)
        return pd.read_parquet(path)


def read_batches(path: str | Path, columns: Sequence[str] | None = None,
                 batch_rows: int | None = None, part: str | None = None
                 ) -> Iterator[pd.DataFrame]:
    """Read a pupil table in consecutive batches of rows, as :func:`read_table` reads it whole.

    Parameters
    ----------
    path : str or Path
        As for :func:`read_table`. A folder of Parquet files is read file by file, in the
        order of their paths (Hive partition folders, ``cohort=2012/``, become columns).
    columns : sequence of str, optional
        Parquet: read only these columns (a CSV's rows are read whole).
    batch_rows : int, optional
        Rows per batch at most; default :data:`BATCH_ROWS`.
    part : str, optional
        One file of a Parquet dataset (:func:`parquet_parts`): read only its rows, with the
        dataset's partition columns.

    Yields
    ------
    DataFrame
        The table's rows in order, at most ``batch_rows`` at a time; one empty frame for a
        table without rows. Memory holds one batch.

    Raises
    ------
    DataError
        As :func:`read_table`, when the batch that cannot be read is reached.
    """
    path = Path(path)
    kind = _kind(path)
    batch_rows = batch_rows or BATCH_ROWS
    with _reading(path, kind):
        if kind == "CSV":
            yield from _csv_batches(path, batch_rows)
            return
        dataset = _parquet(path) if part is None else ds.dataset(
            [part], format="parquet", partitioning="hive",
            partition_base_dir=str(path) if path.is_dir() else None)
        empty = True
        for batch in dataset.to_batches(columns=None if columns is None else list(columns),
                                        batch_size=batch_rows):
            if batch.num_rows or empty:
                yield pa.Table.from_batches([batch]).to_pandas()
                empty = False
        if empty:  # no batch at all: the table's columns, no rows
            yield dataset.schema.empty_table().to_pandas()


def table_columns(path: str | Path) -> list[str]:
    """The column names of a pupil table, reading no more than its header (CSV) or schema."""
    path = Path(path)
    kind = _kind(path)
    with _reading(path, kind):
        if kind == "CSV":
            return list(next(_csv_batches(path, 1, arrow=False)).columns)
        return list(_parquet(path).schema.names)


def parquet_parts(path: str | Path) -> list[tuple[str, int]]:
    """The files of a Parquet dataset in reading order, each with its row count (read from
    the file's footer, not its rows)."""
    path = Path(path)
    if _kind(path) != "Parquet":
        raise DataError(f"{path}: a dataset read in parts must be Parquet (a file or folder)")
    with _reading(path, "Parquet"):
        dataset = _parquet(path)
        return [(f, pq.ParquetFile(f).metadata.num_rows) for f in dataset.files]


def _parquet(path: Path) -> ds.Dataset:
    """A Parquet file or folder as ``pandas.read_parquet`` reads it (Hive partitions)."""
    return ds.dataset(path, format="parquet", partitioning="hive")


def _kind(path: Path) -> str:
    """``"CSV"`` or ``"Parquet"``; DataError when the file is missing or of another type."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    kind = "Parquet" if path.is_dir() else FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"data file {path}: unknown file type {path.suffix!r}; "
            f"bayesfed reads {', '.join(FORMATS)} files (or a folder of Parquet files)"
        )
    return kind


@contextmanager
def _reading(path: Path, kind: str) -> Iterator[None]:
    """Reading ``path``: the readers' exceptions become one-line DataErrors."""
    try:
        yield
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(
            f"cannot read CSV file {path}: it is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); save it as UTF-8 (in Excel: 'CSV UTF-8')") from None
    except (OSError, ValueError, pd.errors.ParserError, pa.ArrowException) as exc:
        raise DataError(f"cannot read {kind} file {path}: {str(exc).strip()}") from None


#: pandas' options for a pupil CSV. index_col=False: a data row with one field more than the
#: header would otherwise turn the first column into the index and shift every value one
#: column to the left, silently.
_CSV_OPTIONS = {"dtype": str, "keep_default_na": True, "skipinitialspace": True,
                "index_col": False}


def _read_csv(path: Path) -> pd.DataFrame:
    header = _header(path)
    if _arrow_header(header):
        try:
            table = pa_csv.read_csv(path, **_arrow_options(header))
        except pa.ArrowInvalid:
            table = None  # pandas reads it, and names what is wrong
        if table is not None and table.num_rows and _arrow_as_pandas(table, header):
            return _csv_columns(path, table.to_pandas(), header)
    frames = list(_csv_batches(path, None, header))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


#: Bytes Arrow's CSV reader parses at a time (its batches; sliced to ``batch_rows``).
ARROW_BLOCK_BYTES = 16 << 20


def _arrow_header(header: list[str]) -> bool:
    """Whether a CSV header allows Arrow's reader (module docstring)."""
    return (len(header) >= 2 and len(set(header)) == len(header)
            and all(name and name.strip() == name for name in header))


def _arrow_options(header: list[str]) -> dict:
    """Arrow's CSV options for pandas' semantics: every column text, pandas' default
    missing-value markers (quoted or not) missing."""
    return {
        "read_options": pa_csv.ReadOptions(block_size=ARROW_BLOCK_BYTES),
        # quoted values may hold line breaks, as pandas allows
        "parse_options": pa_csv.ParseOptions(newlines_in_values=True),
        "convert_options": pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            null_values=sorted(STR_NA_VALUES), strings_can_be_null=True,
            quoted_strings_can_be_null=True),
    }


def _arrow_as_pandas(data: pa.Table | pa.RecordBatch, header: list[str]) -> bool:
    """Whether Arrow read this part as pandas would: the header's names (every column then
    text, :func:`_arrow_options`), no value starting with a space or a tab (pandas skips
    spaces after a comma)."""
    if data.schema.names != header:
        return False
    for column in data.columns:
        for blank in (" ", "\t"):
            if pc.any(pc.starts_with(column, blank)).as_py():
                return False
    return True


def _arrow_batches(path: Path, header: list[str], batch_rows: int
                   ) -> Generator[pd.DataFrame, None, int | None]:
    """A CSV file's rows read by Arrow, ``batch_rows`` at a time (the last batch fewer): the
    batches pandas' reader gives, whatever the sizes of Arrow's blocks, as long as Arrow reads
    the file as pandas would (module docstring).

    Returns None once every row is yielded, or else (a block Arrow reads otherwise than pandas,
    or refuses, or a file without data rows) the number of batches yielded before it: pandas
    reads the rest, from there.
    """
    pieces: list[pa.RecordBatch] = []
    held = done = rows = 0
    try:
        with pa_csv.open_csv(path, **_arrow_options(header)) as reader:
            for batch in reader:
                if not _arrow_as_pandas(batch, header):
                    return done
                rows += batch.num_rows
                while batch.num_rows:
                    piece = batch.slice(0, batch_rows - held)
                    pieces.append(piece)
                    held += piece.num_rows
                    batch = batch.slice(piece.num_rows)
                    if held == batch_rows:
                        yield pa.Table.from_batches(pieces).to_pandas()
                        pieces, held, done = [], 0, done + 1
    except pa.ArrowInvalid:
        return done
    if not rows:
        return 0
    if held:
        yield pa.Table.from_batches(pieces).to_pandas()
    return None


def _csv_batches(path: Path, batch_rows: int | None, header: list[str] | None = None,
                 arrow: bool = True) -> Iterator[pd.DataFrame]:
    """A CSV file's rows, whole (``batch_rows`` None: pandas) or in batches (Arrow where it
    reads the file as pandas would, unless not ``arrow``), columns as in the file."""
    header = _header(path) if header is None else header
    done = 0  # batches yielded
    if arrow and batch_rows is not None and _arrow_header(header):
        # Arrow's frames carry the header's names already (_arrow_as_pandas)
        done = yield from _arrow_batches(path, header, batch_rows)
        if done is None:
            return
    ignore_empty = False  # extra fields, all empty (a delimiter at the end of each row)
    while True:  # restarted once, when the extra fields turn out to be empty
        try:
            for frame in _csv_reader(path, batch_rows, ignore_empty, skip=done):
                yield _csv_columns(path, frame, header)
                done += 1
            return
        except (pd.errors.ParserWarning, pd.errors.ParserError) as exc:
            # pandas drops extra fields of the first data row (warning) or stops at a later one
            rows = _long_rows(path)
            if rows:
                raise DataError(
                    f"cannot read CSV file {path}: {len(rows)} data row(s) have more fields "
                    f"than the header has column names (e.g. row(s) "
                    f"{', '.join(map(str, rows[:5]))}; rows count from 1, the header "
                    "excluded): quote values that contain commas, or remove the extra "
                    "fields") from None
            if isinstance(exc, pd.errors.ParserError) or ignore_empty:
                raise
            ignore_empty = True


def _csv_reader(path: Path, batch_rows: int | None, ignore_empty: bool, skip: int
                ) -> Iterator[pd.DataFrame]:
    """pandas' batches after the first ``skip``; its ParserWarning (extra fields) raised as an
    exception unless ``ignore_empty`` (warning filters set only while pandas parses)."""
    action = "ignore" if ignore_empty else "error"
    with warnings.catch_warnings():
        warnings.simplefilter(action, pd.errors.ParserWarning)
        reader = (iter([pd.read_csv(path, **_CSV_OPTIONS)]) if batch_rows is None
                  else pd.read_csv(path, chunksize=batch_rows, **_CSV_OPTIONS))
    try:
        for k in itertools.count():
            with warnings.catch_warnings():
                warnings.simplefilter(action, pd.errors.ParserWarning)
                frame = next(reader, None)
            if frame is None:
                return
            if k >= skip:
                yield frame
    finally:  # also when the caller stops early (table_columns reads one batch)
        if batch_rows is not None:
            reader.close()


def _csv_columns(path: Path, frame: pd.DataFrame, header: list[str]) -> pd.DataFrame:
    """A CSV batch with the file's own column names (checked for other separators)."""
    if len(frame.columns) == 1:
        name = str(frame.columns[0])
        for sep, names in OTHER_SEPARATORS.items():
            if sep in name:
                raise DataError(
                    f"cannot read CSV file {path}: its header {name[:60]!r} is separated by "
                    f"{names}, not commas; save the file with commas as separators")
    if len(header) == len(frame.columns) and len(set(header)) < len(header):
        # pandas renames a repeated name 'x' to 'x.1'; keep the file's names so that
        # validation can tell the user which column is ambiguous
        frame.columns = [h if h else c for h, c in zip(header, frame.columns, strict=True)]
    return frame


def _header(path: Path) -> list[str]:
    """The first non-blank row of a CSV file, as pandas reads it."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for row in csv.reader(handle, skipinitialspace=True):
            if row:
                return row
    return []


def _long_rows(path: Path) -> list[int]:
    """Data rows (from 1, blank lines skipped) with more non-blank fields than the header.

    Empty fields beyond the header (a delimiter at the end of each row) lose nothing.
    """
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = (row for row in csv.reader(handle, skipinitialspace=True) if row)
            width = len(next(rows, []))
            return [i for i, row in enumerate(rows, 1)
                    if any(field.strip() for field in row[width:])]
    except csv.Error:  # pandas' own message describes what else is wrong
        return []
