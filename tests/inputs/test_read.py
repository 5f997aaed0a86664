"""Readers: CSV and Parquet give the same validated table; input files are never changed."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from bayesfed.errors import DataError
from bayesfed.inputs import read as read_module
from bayesfed.inputs.read import read_batches, read_table
from bayesfed.inputs.validate import validate_table


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_csv_and_parquet_agree_and_are_untouched(tmp_path, table, m2):
    csv, pq = tmp_path / "t.csv", tmp_path / "t.parquet"
    table.to_csv(csv, index=False)
    table.to_parquet(pq, index=False)
    before = {p: (digest(p), p.stat().st_mtime_ns) for p in (csv, pq)}
    a = validate_table(read_table(csv), m2, years=[0, 1]).frame
    b = validate_table(read_table(pq), m2, years=[0, 1]).frame
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert before == {p: (digest(p), p.stat().st_mtime_ns) for p in (csv, pq)}


def test_csv_keeps_identifier_text(tmp_path):
    csv = tmp_path / "ids.csv"
    csv.write_text("school_id,gcse_score\n007,1.5\n010,2\n")
    assert list(read_table(csv)["school_id"]) == ["007", "010"]


def test_partitioned_parquet_folder(tmp_path, table):
    folder = tmp_path / "parts"
    folder.mkdir()
    table.iloc[:70].to_parquet(folder / "a.parquet", index=False)
    table.iloc[70:].to_parquet(folder / "b.parquet", index=False)
    assert len(read_table(folder)) == len(table)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.csv", None, r"^data file .*missing.csv does not exist$"),
    ("t.xlsx", b"x", r"unknown file type '.xlsx'; bayesfed reads .csv, .parquet, .pq files"),
    ("t.parquet", b"not parquet", r"^cannot read Parquet file .*t.parquet: "),
    ("t.csv", b"", r"^cannot read CSV file .*t.csv: "),
])
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(path)


# -- Arrow's CSV reader against pandas' ----------------------------------------------------------

#: CSV files Arrow must read exactly as pandas: missing-value markers quoted and not, quoted
#: commas and quotes, leading zeros, trailing spaces, non-ASCII text, a BOM, CRLF, blank lines.
ARROW_READS = {
    "markers": 'id,a,b\n1,NA,""\n2,"NA",\n3,null,None\n4,n/a,#N/A\n5,NaN,-nan\n6,<NA>,nan\n',
    "quoting": 'id,text,x\n007,"a, b",1e-3\n010,"say ""hi""",2  \n0,Zoë  ,-0\n',
    "line break in a quoted value": 'id,x\n1,"a\nb"\n2,"c\r\nd"\n',
    "bom crlf blank lines": "\ufeffid,x\r\n\r\n01,1.5\r\n02,2\r\n\r\n03,\r\n",
}

#: CSV files Arrow must leave to pandas (whose semantics or messages differ).
PANDAS_READS = {
    "space after comma": "id,x\n1, 2\n",
    "short row": "id,x,y\n1,2,3\n4,5\n",
    "delimiter at row ends": "id,x\n1,2,\n3,4,\n",
    "extra field": "id,x\n1,2\n3,4,5\n",
    "repeated name": "id,id\n1,2\n",
    "one column": "id;x\n1;2\n",
    "header only": "id,x\n",
}


def arrow_reads_whole(path, header) -> bool:
    """Whether Arrow's batches cover the whole file (else pandas reads from where they stop)."""
    if not read_module._arrow_header(header):
        return False
    batches = read_module._arrow_batches(path, header, 1000)
    while True:
        try:
            next(batches)
        except StopIteration as stop:
            return stop.value is None


def pandas_frame(path) -> pd.DataFrame:
    """The file as the pandas reader reads it (whole)."""
    return pd.concat(list(read_module._csv_batches(path, None)), ignore_index=True)


@pytest.mark.parametrize("name", list(ARROW_READS))
def test_arrow_reads_csv_as_pandas_does(tmp_path, name):
    path = tmp_path / "t.csv"
    path.write_bytes(ARROW_READS[name].encode("utf-8"))
    header = read_module._header(path)
    assert arrow_reads_whole(path, header)  # else the test compares pandas with itself
    expected = pandas_frame(path)
    pd.testing.assert_frame_equal(read_table(path), expected)
    for rows in (1, 2, 1000):
        batches = list(read_batches(path, batch_rows=rows))
        assert [len(b) for b in batches][:-1] == [rows] * (len(batches) - 1)
        pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), expected)


@pytest.mark.parametrize("name", list(PANDAS_READS))
def test_arrow_leaves_other_csv_files_to_pandas(tmp_path, name):
    path = tmp_path / "t.csv"
    path.write_bytes(PANDAS_READS[name].encode("utf-8"))
    assert not arrow_reads_whole(path, read_module._header(path))


def csv_with_tail(tmp_path, tail: str):
    """60 rows Arrow reads as pandas does, then ``tail``."""
    path = tmp_path / "t.csv"
    path.write_text("id,x\n" + "".join(f"{i:03d},{i}\n" for i in range(60)) + tail)
    return path


@pytest.mark.parametrize("tail", ["7, 8\n", "7\n"])
def test_pandas_reads_on_from_the_first_block_arrow_reads_otherwise(tmp_path, monkeypatch,
                                                                    tail):
    """One pass: Arrow's batches up to a block it would read otherwise (a space after a comma,
    a short row), then pandas' from there, the frames pandas alone gives."""
    monkeypatch.setattr(read_module, "ARROW_BLOCK_BYTES", 64)
    path = csv_with_tail(tmp_path, tail)
    header = read_module._header(path)
    batches = read_module._arrow_batches(path, header, 7)
    arrow_done = 0
    with pytest.raises(StopIteration) as stop:
        while True:
            next(batches)
            arrow_done += 1
    assert arrow_done > 0 and stop.value.value == arrow_done  # Arrow began, pandas goes on
    expected = list(read_module._csv_batches(path, 7, arrow=False))
    got = list(read_batches(path, batch_rows=7))
    assert [len(b) for b in got] == [len(b) for b in expected]
    pd.testing.assert_frame_equal(pd.concat(got, ignore_index=True),
                                  pd.concat(expected, ignore_index=True))


def test_a_long_row_after_arrows_first_batches_is_named_by_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(read_module, "ARROW_BLOCK_BYTES", 64)
    path = csv_with_tail(tmp_path, "7,8,9\n")
    with pytest.raises(DataError, match=r"1 data row\(s\) have more fields .* row\(s\) 61;"):
        list(read_batches(path, batch_rows=7))


def test_arrow_leaves_a_file_that_is_not_utf8_to_pandas(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("id,name\n1,Zoë\n".encode("cp1252"))
    assert not arrow_reads_whole(path, ["id", "name"])
    with pytest.raises(DataError, match="not UTF-8 text"):
        list(read_batches(path))
